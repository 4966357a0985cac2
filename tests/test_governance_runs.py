"""Simulated runs leave the ledgers deployment will: the coordinator's and one per site."""

from __future__ import annotations

import base64
import json
import logging
import shutil

import pandas as pd
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from lhs_federated import StudyRunError, simulate
from lhs_federated.apps import client_app, records, server_app
from lhs_federated.apps.client_app import site_errors_mod
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.site_governance import (
    CLOSE_ACTION,
    acknowledge_close,
    site_governance_mod,
)
from lhs_federated.governance.code import installed_code_hash
from lhs_federated.governance.crosscheck import crosscheck
from lhs_federated.governance.keys import load_private_key, load_public_key, write_key_pair
from lhs_federated.governance.ledger import Entry, record_hash
from lhs_federated.governance.ledger_view import StudyView
from lhs_federated.governance.report import render_report
from lhs_federated.governance.run_audit import audit_run
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.governance.verify import Anchor, load_entries, verify_ledger
from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER

SITES = ("site-01", "site-02", "site-03")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    write_key_pair(folder / "coordinator.key")
    return folder / "coordinator.key"


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_study, keys):
    """A small simulated run whose coordinator key the tests hold (to play a rogue one)."""
    return simulate(
        small_study, out_dir=tmp_path_factory.mktemp("runs") / "run", coordinator_key=keys
    ).out_dir


def coordinator(run_dir):
    return run_dir / "governance" / "coordinator.jsonl"


def site_ledger(run_dir, site):
    return run_dir / "governance" / "sites" / site / "ledger.jsonl"


def site_key(run_dir, site):
    return load_public_key(run_dir / "governance" / "sites" / site / "site.pub")


def test_coordinator_ledger_records_the_whole_study(run, small_study, keys):
    summary = json.loads((run / "summary.json").read_text())
    named = summary["ledger"]
    assert named["sealed_seq"] == named["finished_seq"] + 1
    anchor = Anchor(named["finished_seq"], named["finished_hash"], "summary", then=1)
    public = load_public_key(keys.with_suffix(".pub"))
    result = verify_ledger(coordinator(run), public, anchor=anchor)
    assert result.ok, result.describe()
    assert (run / "governance" / "coordinator.pub").read_bytes() == keys.with_suffix(
        ".pub"
    ).read_bytes()
    kinds = [e.kind for e in result.entries]
    per_round = ["round-started", *["site-reply"] * 3, "round-aggregated"]
    per_round += [*["site-reply"] * 3, "evaluation"]
    assert kinds == [
        "ledger-opened",
        "study-started",
        *["site-reply"] * 3,  # discovery
        *per_round * 2,
        "study-finished",
        "results-sealed",
    ]
    started = result.entries[1].data
    assert started["study_hash"] == small_study.hash
    assert started["study"] == small_study.to_plain()
    assert started["versions"]["flwr"] == "1.42.0"
    assert started["code"] == {"kind": "installed-package", "hash": installed_code_hash()}
    assert [p["site"] for p in started["participants"]] == list(SITES)
    assert started["key"]["made_for_this_run"] is False
    view = StudyView.from_entries(list(result.entries))
    assert view.status == "completed" and [r.round for r in view.rounds] == [1, 2]
    first, second = view.rounds
    assert second.sent_arrays_hash == first.aggregated_hash  # lineage
    assert view.final_model_hash == second.aggregated_hash == summary["model"]["arrays_sha256"]
    assert sum(r.examples for r in first.train.values()) > 0
    assert all(r.update_norm > 0 for r in first.train.values())
    assert set(first.evaluation) == set(SITES) and "auroc" in first.evaluation["site-01"]
    assert set(view.result_files) >= {"metrics.csv", "rounds.csv", "model/model.npz"}
    # The seal, written last, covers every file a reader sees, summary.json included.
    assert view.sealed and set(view.sealed_files) >= {
        "summary.json",
        "comparison.csv",
        "calibration.csv",
        "report.html",
        *view.result_files,
    }
    assert set(view.sealed_logs) == {"events.jsonl"}


@pytest.mark.parametrize("site", SITES)
def test_each_site_ledger_matches_the_coordinator(run, site):
    result = verify_ledger(site_ledger(run, site), site_key(run, site))
    assert result.ok, result.describe()
    entries = list(result.entries)
    approval = entries[1]
    assert approval.kind == "approval" and approval.data["preapproved"] is True
    assert approval.data["code_hash"] == installed_code_hash()
    sent = [e for e in entries if e.kind == "message-sent"]
    assert [e.data["message_type"] for e in sent] == ["query", *["train", "evaluate"] * 2]
    assert {e.data["approval"] for e in sent} == {approval.data["registry_record"]}
    closed = entries[-1]
    seal = load_entries(coordinator(run))[-1]
    assert closed.kind == "study-closed" and seal.kind == "results-sealed"
    assert closed.data["coordinator_ledger"]["final_hash"] == seal.hash
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "ledger-sealed"
    assert events[-1]["data"] == {"sites_notified": list(SITES), "sites_not_notified": {}}
    check = crosscheck(load_entries(coordinator(run)), entries)
    assert check.ok and check.matched == 5, check.describe()


def test_run_audit_and_report_say_intact(run):
    audit = audit_run(run)
    assert audit.ok, audit.problems
    assert [s.owner for s in audit.sites] == list(SITES)
    assert audit.files.pop("events.jsonl") == "appended"  # the "ledger sealed" event
    assert set(audit.files.values()) == {"unchanged"}
    html = render_report(audit)
    for heading in (
        "INTACT",
        "Participation per round",
        "Privacy spent per site",
        "Model lineage",
        "Result files",
        "Timeline (coordinator ledger)",
    ):
        assert heading in html
    assert "<script" not in html and "http" not in html.replace("http-equiv", "")
    assert "<tr><th></th><th></th></tr>" not in html  # the Study table has no empty header row
    assert "<th scope='row'>study hash</th>" in html
    assert "td.time{white-space:nowrap}" in html and "<td class='time'>20" in html


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / "copy")


def test_changed_result_file_fails_the_audit(run, tmp_path):
    copied = copy_run(run, tmp_path)
    with (copied / "metrics.csv").open("a") as handle:
        handle.write("2,site-01,test,auroc,0.99,\n")
    audit = audit_run(copied)
    assert len(audit.problems) == 1, audit.problems
    assert audit.problems[0].startswith(
        "result file metrics.csv was changed after the ledger's closing record: the ledger "
        "records SHA-256 "
    )
    assert "NOT INTACT: 1 problem(s)" in render_report(audit)


def resign(entries: list[Entry], key, change) -> list[Entry]:
    """What a coordinator holding its key could do: edit records and re-sign the chain."""
    out, previous = [], "0" * 64
    for entry in change(entries):
        body = {**entry.body(), "seq": len(out), "prev_hash": previous}
        digest = record_hash(body)
        signature = base64.b64encode(key.sign(bytes.fromhex(digest))).decode()
        out.append(Entry(**body, hash=digest, signature=signature))
        previous = digest
    return out


def write(path, entries):
    path.write_bytes(b"".join(e.to_line() for e in entries))


def edit_reply(site, field, value):
    """Change ``field`` of the site's first training reply."""

    def change(entries):
        result, done = [], False
        for e in entries:
            wanted = e.kind == "site-reply" and e.data["site"] == site
            if not done and wanted and e.data["stage"] == "train":
                e = Entry(**{**e.body(), "data": {**e.data, field: value}}, hash="", signature="")
                done = True
            result.append(e)
        return result

    return change


def test_rogue_coordinator_is_caught_by_sites_and_summary(run, tmp_path, keys):
    copied = copy_run(run, tmp_path)
    key = load_private_key(keys)
    original = load_entries(coordinator(copied))
    # 1. It claims site-02 sent different weights: still a valid chain, but site-02 disagrees.
    forged = resign(original, key, edit_reply("site-02", "content_hash", "0" * 64))
    write(coordinator(copied), forged)
    assert verify_ledger(coordinator(copied), key.public_key()).ok
    check = crosscheck(forged, load_entries(site_ledger(copied, "site-02")))
    assert any("content_hash is '" + "0" * 64 in p for p in check.problems)
    assert any("the ledger was rewritten" in p for p in check.problems)  # site's final hash
    assert crosscheck(forged, load_entries(site_ledger(copied, "site-01"))).problems == [
        f"the site was told record {len(original) - 1} has hash "
        f"{original[-1].hash[:16]}…, the coordinator's ledger has {forged[-1].hash[:16]}…: "
        "the ledger was rewritten"
    ]
    audit = audit_run(copied)
    assert not audit.ok
    assert any(p.startswith("coordinator ledger: ") and "rewritten" in p for p in audit.problems)

    # 2. It drops one of site-03's replies and the records after round 1.
    def drop(entries):
        kept = [e for e in entries if not (e.kind == "site-reply" and e.data["site"] == "site-03")]
        return kept[:-4]

    shortened = resign(original, key, drop)
    check = crosscheck(shortened, load_entries(site_ledger(copied, "site-03")))
    assert any("does not record: left out of the coordinator's ledger" in p for p in check.problems)
    assert any("was cut short" in p for p in check.problems)


def test_study_without_approval_is_refused_and_logged(tmp_path, small_study):
    study = small_study.with_overrides({"governance.preapproved": False})
    with pytest.raises(
        StudyRunError,
        match=r"sites could not join the study: node \d+: site 'site-0\d' refused: study \w{12}… "
        r"\(code \w{12}…\) is not approved at this site; .* a simulated site approves a study "
        r"the study declares pre-approved \(\[governance\] preapproved = true\)",
    ):
        simulate(study, out_dir=tmp_path / "run")
    for site in SITES:
        folder = SiteFolder.open(tmp_path / "run" / "governance" / "sites" / site, with_key=False)
        entries = verify_ledger(folder.folder / "ledger.jsonl", folder.public_key).entries
        assert [e.kind for e in entries] == ["ledger-opened", "refusal", "message-sent"]
        assert entries[2].data["status"] == "refused" and entries[2].data["error_code"] == 4031
    assert not (tmp_path / "run" / "summary.json").exists()


def test_site_folders_decide_and_a_site_can_withdraw_mid_study(tmp_path, small_study):
    folders = tmp_path / "sites"
    study = small_study.with_overrides(
        {
            "rounds": 3,
            "federation.min_sites": 2,
            "governance.preapproved": False,
            "governance.site_folders": str(folders),
        }
    )
    sites = {name: SiteFolder.init(folders / name, name) for name in SITES}
    for site in sites.values():
        site.approve(
            study.hash, installed_code_hash(), study_name=study.name, by="steward", reason="IRB-1"
        )

    class Withdraw(logging.Handler):
        def emit(self, record):
            if getattr(record, "lhs_progress", None) and record.lhs_progress.round == 1:
                sites["site-03"].revoke(study.hash, by="site-03 DPO", reason="consent withdrawn")

    handler = Withdraw()
    PROGRESS_LOGGER.addHandler(handler)
    PROGRESS_LOGGER.setLevel(logging.INFO)
    try:
        results = simulate(study, out_dir=tmp_path / "run")
    finally:
        PROGRESS_LOGGER.removeHandler(handler)
    rounds = pd.read_csv(results.out_dir / "rounds.csv", keep_default_na=False)
    assert rounds["trained"].tolist() == [
        "site-01 site-02 site-03",
        "site-01 site-02",
        "site-01 site-02",
    ]
    assert "site-03: refused: site 'site-03' refused: the approval of study" in rounds["failed"][1]
    assert "by site-03 DPO: consent withdrawn" in rounds["failed"][1]
    view = StudyView.from_entries(load_entries(coordinator(results.out_dir)))
    assert [r.status_of("site-03") for r in view.rounds] == ["trained", "refused", "refused"]
    withdrawn = load_entries(folders / "site-03" / "ledger.jsonl")
    kinds = [e.kind for e in withdrawn]
    assert kinds.count("revocation") == 1 and kinds.count("refusal") == 4  # 2 rounds x 2 stages
    check = crosscheck(load_entries(coordinator(results.out_dir)), withdrawn)
    assert check.ok and check.matched == 7, check.describe()
    assert any("refused 4 message(s)" in note for note in check.notes)
    audit = audit_run(results.out_dir)
    assert audit.ok, audit.problems
    assert [s.path.parent for s in audit.sites] == [folders / s for s in SITES]


def client_with(train) -> ClientApp:
    """The real ClientApp, governance mod included, with another training handler."""
    app = ClientApp(mods=[site_governance_mod, site_errors_mod])
    app.query()(client_app.describe)
    app.evaluate()(client_app.evaluate)
    app.query(CLOSE_ACTION)(acknowledge_close)
    app.train()(train)
    return app


def test_site_whose_code_crashes_is_recorded_on_both_sides(tmp_path, small_study):
    def train(message: Message, context: Context) -> Message:
        first_round = message.content[records.CONFIG][records.ROUND] == 1
        if context.node_config["partition-id"] == 2 and first_round:
            raise RuntimeError("out of memory")
        return client_app.train(message, context)

    out = tmp_path / "run"
    study = small_study.with_overrides({"federation.min_sites": 2})
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out)}
    run_inprocess(config, 3, client=client_with(train))
    sent = [e.data for e in load_entries(site_ledger(out, "site-03")) if e.kind == "message-sent"]
    assert sent[1]["status"] == "crashed" and sent[1]["detail"] == "RuntimeError: out of memory"
    view = StudyView.from_entries(load_entries(coordinator(out)))
    assert view.rounds[0].status_of("site-03") == "error"
    check = crosscheck(load_entries(coordinator(out)), load_entries(site_ledger(out, "site-03")))
    assert check.ok and check.matched == 5, check.describe()
    assert any("ClientApp raised" in note and "out of memory" in note for note in check.notes)


def test_resumed_run_chains_its_ledgers(tmp_path, small_study):
    study = small_study.with_overrides({"rounds": 3})

    def train(message: Message, context: Context) -> Message:
        if message.content[records.CONFIG][records.ROUND] == 2:
            raise RuntimeError("power cut")  # the coordinator cannot go on without this site
        return client_app.train(message, context)

    out = tmp_path / "run"
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out)}
    with pytest.raises(StudyRunError, match="round 2"):
        run_inprocess(config, 3, client=client_with(train))
    run_inprocess({**config, server_app.RESUME_KEY: True}, 3)
    governance = out / "governance"
    first = load_entries(governance / "coordinator.segment-1.jsonl")
    assert first[-1].kind == "study-failed"
    started = load_entries(governance / "coordinator.jsonl")[1]
    link = started.data["resumed_from"]
    assert (link["final_hash"], link["after_round"]) == (first[-1].hash, 1)
    audit = audit_run(out)
    assert audit.ok, audit.problems
    assert [c.owner for c in audit.segments] == ["coordinator, before round 2"]
    assert [r.round for r in audit.view.rounds] == [1, 2, 3]
    assert audit.view.status == "completed"
    # Cutting the first attempt's ledger short is caught through the resumed ledger's link.
    lines = (governance / "coordinator.segment-1.jsonl").read_bytes().splitlines(keepends=True)
    (governance / "coordinator.segment-1.jsonl").write_bytes(b"".join(lines[:-1]))
    assert any("before round 2: " in p and "truncated" in p for p in audit_run(out).problems)


def test_a_site_that_cannot_record_does_not_reply(tmp_path, small_study):
    """Fail closed: a site whose ledger cannot be written sends an error, not its update."""
    out = tmp_path / "run"

    def damage_ledger(message: Message, context: Context, call_next) -> Message:
        config = message.content[records.CONFIG]
        if context.node_config["partition-id"] == 2 and config.get(records.ROUND) == 2:
            with site_ledger(out, "site-03").open("ab") as handle:
                handle.write(b'{"seq": "not a record"}\n')  # appending would now hide it
        return call_next(message, context)

    app = ClientApp(mods=[damage_ledger, site_governance_mod, site_errors_mod])
    app.query()(client_app.describe)
    app.train()(client_app.train)
    app.evaluate()(client_app.evaluate)
    app.query(CLOSE_ACTION)(acknowledge_close)
    study = small_study.with_overrides({"federation.min_sites": 2})
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out)}
    run_inprocess(config, 3, client=app)
    view = StudyView.from_entries(load_entries(coordinator(out)))
    reply = view.rounds[1].train["site-03"]
    assert reply.status == "error" and reply.arrays_hash is None and reply.examples is None
    assert "site 'site-03' cannot record its reply in its ledger" in reply.detail
    assert "it sends nothing it has not recorded" in reply.detail
    assert view.rounds[1].contributors == ["site-01", "site-02"]
    sent = [e.data for e in load_entries(site_ledger(out, "site-03")) if e.kind == "message-sent"]
    assert [(s["message_type"], s["server_round"]) for s in sent] == [
        ("query", 0),
        ("train", 1),
        ("evaluate", 1),
    ]
