"""Every kind of change to a finished simulated run is reported exactly, and nothing else.

The deployed run gets the same suite in tests/test_deployment.py.
"""

from __future__ import annotations

import base64
import shutil

import pytest
from audit_mutations import KINDS, run_mutations, summarise
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from malicious import site_app_below

from lhs_federated import StudyRunError, simulate
from lhs_federated.apps import records, server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.cli import main
from lhs_federated.governance.keys import load_private_key, write_key_pair
from lhs_federated.governance.ledger import Entry, record_hash
from lhs_federated.governance.run_audit import audit_run
from lhs_federated.governance.verify import load_entries

SITES = ("site-01", "site-02", "site-03")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return write_key_pair(folder / "coordinator.key"), folder / "coordinator.key"


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_study, published):
    return simulate(
        small_study, out_dir=tmp_path_factory.mktemp("runs") / "run", coordinator_key=published[1]
    ).out_dir


def test_the_untouched_run_is_intact_and_pinned_by_the_sites(run):
    audit = audit_run(run)
    assert audit.ok, audit.problems
    assert audit.key_trust.endswith("the key the sites' ledgers record")


def test_every_mutation_is_reported_exactly(run, tmp_path, published):
    sites = {site: run / "governance" / "sites" / site / "ledger.jsonl" for site in SITES}
    outcomes = run_mutations(run, sites, tmp_path, published_key=published[0])
    report = summarise(outcomes)
    print(report)  # the figure for the closing note
    assert {o.mutation.kind for o in outcomes} == set(KINDS)
    assert all(o.exact for o in outcomes), report


def shifted_model_client(site: int, server_round: int) -> ClientApp:
    """The real ClientApp; one site's model arrives shifted by 0.75 in one round.

    The shift happens before any site code sees the message: what a coordinator
    that sends one site another model than it records does.
    """

    def shift(message: Message, context: Context, call_next) -> Message:
        config = message.content["config"]
        if (
            context.node_config.get("partition-id") == site
            and message.metadata.message_type == "train"
            and int(config["server-round"]) == server_round
        ):
            arrays = records.from_array_record(message.content[records.ARRAYS])
            message.content[records.ARRAYS] = records.to_array_record(
                {name: value + 0.75 for name, value in arrays.items()}
            )
        return call_next(message, context)

    return site_app_below(shift)


def test_a_site_sent_another_model_than_recorded_is_named(tmp_path, small_study):
    out = tmp_path / "run"
    config = {server_app.STUDY_KEY: small_study.to_json(), server_app.OUT_DIR_KEY: str(out)}
    run_inprocess(config, 3, client=shifted_model_client(site=1, server_round=2))
    audit = audit_run(out)
    assert len(audit.problems) == 1, audit.problems
    assert audit.problems[0].startswith(
        "site site-02: the site received another model for message "
    )
    assert "(train, round 2) than the coordinator's ledger says it sent" in audit.problems[0]


def test_a_coordinator_recording_another_model_for_one_site_is_named(run, tmp_path, published):
    """The coordinator's own ledger says it sent site-02 another model than the others."""
    copied = shutil.copytree(run, tmp_path / "copy")
    ledger = copied / "governance" / "coordinator.jsonl"
    key = load_private_key(published[1])
    entries, previous, out = load_entries(ledger), "0" * 64, []
    for entry in entries:
        data = entry.data
        wanted = ("site-02", 2, "train")
        if entry.kind == "site-reply" and (data["site"], data["round"], data["stage"]) == wanted:
            data = {**data, "sent_arrays_hash": "f" * 64}
        body = {**entry.body(), "data": data, "prev_hash": previous}
        digest = record_hash(body)
        signature = base64.b64encode(key.sign(bytes.fromhex(digest))).decode()
        out.append(Entry(**body, hash=digest, signature=signature))
        previous = digest
    ledger.write_bytes(b"".join(e.to_line() for e in out))
    problems = audit_run(copied, public_key=published[0]).problems
    assert (
        "round 2 (train): site-02 was sent model ffffffffffffffff…, not the model " in problems[0]
    )
    assert "the coordinator sent sites different models" in problems[0]


def test_an_approval_pinning_the_coordinator_key_refuses_another_coordinator(
    tmp_path, small_study, published
):
    folders = tmp_path / "sites"
    study = small_study.with_overrides(
        {"rounds": 1, "governance.preapproved": False, "governance.site_folders": str(folders)}
    )
    toml = tmp_path / "study.toml"
    toml.write_text(study.to_toml())
    for site in SITES:
        assert main(["site", "init", str(folders / site), "--name", site]) == 0
        approve = ["site", "approve", str(toml), "--site-folder", str(folders / site)]
        pin = ["--installed", "--reason", "IRB-3", "--coordinator-key", str(published[0])]
        assert main([*approve, *pin]) == 0
    with pytest.raises(StudyRunError, match=r"accepts only coordinator key ed25519:\w+, and "):
        simulate(study, out_dir=tmp_path / "other", report=False)  # a key made for the run
    done = simulate(study, out_dir=tmp_path / "pinned", coordinator_key=published[1], report=False)
    assert audit_run(done.out_dir).ok
