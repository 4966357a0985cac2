"""A site's approvals registry and governance folder (no Flower involved)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lhs_federated.errors import ConfigError, SiteRefusal
from lhs_federated.governance.code import fab_hash, installed_code_hash
from lhs_federated.governance.ledger import Entry, canonical_json, record_hash
from lhs_federated.governance.site_folder import SentMessage, SiteFolder, error_digest
from lhs_federated.governance.verify import load_entries, verify_ledger

STUDY = hashlib.sha256(b"study").hexdigest()
OTHER_STUDY = hashlib.sha256(b"other study").hexdigest()
CODE = hashlib.sha256(b"fab v1").hexdigest()
NEW_CODE = hashlib.sha256(b"fab v2").hexdigest()


@pytest.fixture
def site(tmp_path):
    return SiteFolder.init(tmp_path / "site-01", "site-01")


def approve(site, study=STUDY, code=CODE):
    return site.approve(study, code, study_name="cvd", by="dr. steward", reason="IRB-2025-17")


def site_kinds(site):
    return [e.kind for e in load_entries(site.folder / "ledger.jsonl")]


def test_approved_study_and_code_pass_the_check(site):
    approval = approve(site)
    found = site.check(STUDY, CODE)
    assert found == approval
    assert (found.site, found.approved_by, found.reason) == (
        "site-01",
        "dr. steward",
        "IRB-2025-17",
    )
    assert not found.preapproved
    assert site_kinds(site) == ["ledger-opened", "approval"]
    mirrored = load_entries(site.folder / "ledger.jsonl")[1].data
    assert mirrored["registry_record"] == approval.record_hash


@pytest.mark.parametrize(
    ("study", "code", "match"),
    [
        (
            OTHER_STUDY,
            CODE,
            r"site 'site-01' refused: study \w{12}… \(code \w{12}…\) is not approved",
        ),
        (STUDY, NEW_CODE, r"approved here only with code \w{12}…, not with the code \w{12}…"),
    ],
)
def test_unapproved_study_or_code_is_refused_and_logged(site, study, code, match):
    approve(site)
    with pytest.raises(SiteRefusal, match=match):
        site.check(study, code, context={"run_id": 7, "message_id": "m1"})
    refusal = load_entries(site.folder / "ledger.jsonl")[-1]
    assert refusal.kind == "refusal"
    assert refusal.data["run_id"] == 7 and refusal.data["study_hash"] == study


def test_revocation_withdraws_and_reapproval_restores(site):
    approve(site)
    approve(site, code=NEW_CODE)
    site.revoke(STUDY, code_hash=CODE, by="dr. steward", reason="code v1 withdrawn")
    with pytest.raises(SiteRefusal, match=r"was revoked at .* by dr. steward: code v1 withdrawn"):
        site.check(STUDY, CODE)
    assert site.check(STUDY, NEW_CODE).code_hash == NEW_CODE
    site.revoke(STUDY, by="ethics board", reason="consent withdrawn")  # every code version
    with pytest.raises(SiteRefusal, match=r"by ethics board: consent withdrawn"):
        site.check(STUDY, NEW_CODE)
    approve(site, code=NEW_CODE)
    assert site.check(STUDY, NEW_CODE).code_hash == NEW_CODE
    assert site_kinds(site).count("revocation") == 2
    with pytest.raises(ConfigError, match=r"has no approval of study \w{12}… with code"):
        site.revoke(STUDY, code_hash=CODE, by="x", reason="y")


def test_a_restored_older_registry_is_detected_not_obeyed(site):
    approve(site)
    registry = site.folder / "approvals.jsonl"
    older = registry.read_bytes()  # a backup taken while the study was approved
    site.revoke(STUDY, by="site DPO", reason="consent withdrawn")
    registry.write_bytes(older)  # the backup restored: a valid registry, one record short
    reopened = SiteFolder.open(site.folder)
    with pytest.raises(
        SiteRefusal,
        match=r"the approvals registry '.*approvals\.jsonl' lacks record \w{16}…, which the "
        r"site's signed ledger '.*ledger\.jsonl' names as its latest approval or revocation: "
        r"the registry is an older copy",
    ):
        reopened.check(STUDY, CODE)
    assert site_kinds(site)[-1] == "refusal"


def test_a_site_ledger_rolled_back_behind_the_registry_is_detected(site):
    approve(site)
    ledger = site.folder / "ledger.jsonl"
    site.record_refusal(OTHER_STUDY, CODE, "not approved")
    older = ledger.read_bytes()  # a copy taken before the revocation
    site.revoke(STUDY, by="site DPO", reason="consent withdrawn")
    approve(site)  # approved again: the registry now names the ledger's later head
    ledger.write_bytes(older)
    with pytest.raises(
        SiteRefusal,
        match=r"its signed ledger '.*ledger\.jsonl' does not hold record 3 \(\w{16}…\), which "
        r"the approvals registry '.*approvals\.jsonl' names .* rolled back to an older copy",
    ):
        SiteFolder.open(site.folder).check(STUDY, CODE)


def test_registry_state_survives_reopening_and_continues(site):
    approve(site)
    reopened = SiteFolder.open(site.folder, site="site-01")
    assert [a.study_hash for a in reopened.registry.approvals()] == [STUDY]
    approve(reopened, study=OTHER_STUDY)
    assert {a.study_hash for a in SiteFolder.open(site.folder).registry.approvals()} == {
        STUDY,
        OTHER_STUDY,
    }
    assert verify_ledger(site.folder / "approvals.jsonl", site.public_key).ok


def test_tampered_registry_makes_the_site_refuse_everything(site):
    approve(site)
    path = site.folder / "approvals.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["data"]["study_hash"] = OTHER_STUDY  # someone edits an approval in place
    path.write_bytes(lines[0] + canonical_json(record) + b"\n")
    with pytest.raises(SiteRefusal, match=r"failed verification \(line 2 \(record 1\): modified"):
        site.check(OTHER_STUDY, CODE)
    with pytest.raises(SiteRefusal, match=r"failed verification"):
        site.check(STUDY, CODE)


def test_approval_forged_with_another_key_is_not_honoured(site):
    approve(site)
    path = site.folder / "approvals.jsonl"
    last = load_entries(path)[-1]
    body = {
        "seq": last.seq + 1,
        "time": last.time,
        "kind": "approval",
        "data": {"study_hash": OTHER_STUDY, "code_hash": CODE, "by": "x", "reason": "y"},
        "prev_hash": last.hash,
    }
    digest = record_hash(body)
    signature = base64.b64encode(Ed25519PrivateKey.generate().sign(bytes.fromhex(digest)))
    forged = Entry(**body, hash=digest, signature=signature.decode())
    with path.open("ab") as handle:
        handle.write(forged.to_line())
    with pytest.raises(SiteRefusal, match=r"line 3 \(record 2\): bad signature"):
        site.check(OTHER_STUDY, CODE)


def test_site_ledger_records_what_was_sent(site):
    approval = approve(site)
    digest, size = error_digest(4031, "refused")
    entry = site.record_sent(
        SentMessage(
            run_id=1,
            reply_to="m1",
            message_type="train",
            server_round=2,
            study_hash=STUDY,
            status="ok",
            content_hash=digest,
            size=size,
            epsilon=1.5,
            approval=approval.record_hash,
        )
    )
    assert entry.data["epsilon"] == 1.5 and entry.data["approval"] == approval.record_hash
    closed = site.record_closed(
        run_id=1, study_hash=STUDY, ledger_id="abc", final_seq=9, final_hash="f" * 64, status="ok"
    )
    assert closed.data["coordinator_ledger"]["final_seq"] == 9
    assert verify_ledger(site.folder / "ledger.jsonl", site.public_key).ok


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.approve("abc", CODE, study_name="x", by="a", reason="b"), r"64 lowercase hex"),
        (lambda s: s.approve(STUDY, CODE, study_name="x", by=" ", reason="b"), r"non-empty 'by'"),
        (
            lambda s: s.approve(STUDY, CODE, study_name="x", by="a", reason=""),
            r"non-empty 'reason'",
        ),
        (lambda s: s.revoke(STUDY, by="a", reason="b"), r"no approval of study"),
    ],
)
def test_bad_approvals_are_refused(site, change, match):
    with pytest.raises(ConfigError, match=match):
        change(site)


def test_site_folder_errors(tmp_path, site):
    with pytest.raises(ConfigError, match=r"is already a site folder \(it has site.key"):
        SiteFolder.init(site.folder, "site-01")
    with pytest.raises(ConfigError, match=r"is not a site folder \(no ledger.jsonl\).*site init"):
        SiteFolder.open(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"belongs to site 'site-01', not to 'site-02'"):
        SiteFolder.open(site.folder, site="site-02")
    with pytest.raises(ConfigError, match=r"a site name must be letters"):
        SiteFolder.init(tmp_path / "x", "site 01")
    auditor = SiteFolder.open(site.folder, with_key=False)
    with pytest.raises(ConfigError, match=r"needs the site's private key"):
        approve(auditor)


def test_code_hashes(tmp_path):
    fab = tmp_path / "app.fab"
    fab.write_bytes(b"PK\x03\x04 a zip archive")
    assert fab_hash(fab) == hashlib.sha256(fab.read_bytes()).hexdigest()
    (tmp_path / "study.toml").write_text("rounds = 2\n")
    with pytest.raises(ConfigError, match=r"is not a Flower App bundle"):
        fab_hash(tmp_path / "study.toml")
    with pytest.raises(ConfigError, match=r"FAB file .* does not exist"):
        fab_hash(tmp_path / "missing.fab")
    assert len(installed_code_hash()) == 64
