"""``lhs-fed keys``, ``lhs-fed site`` and ``lhs-fed audit``: exit codes and messages."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from foreign_keys import write_foreign_key
from readme import README, ordered_blocks

from lhs_federated.cli import main
from lhs_federated.governance.ledger import canonical_json

REPO = README.parent


@pytest.fixture(scope="module")
def audited(tmp_path_factory, small_study):
    """A run from the CLI, signed with a key made by ``lhs-fed keys init``."""
    folder = tmp_path_factory.mktemp("cli")
    study = folder / "study.toml"
    study.write_text(small_study.to_toml())
    assert main(["keys", "init", str(folder / "coordinator.key")]) == 0
    args = ["simulate", str(study), "--quiet", "--out", str(folder / "run")]
    assert main([*args, "--coordinator-key", str(folder / "coordinator.key")]) == 0
    return folder


def ledger_of(folder):
    return folder / "run" / "governance" / "coordinator.jsonl"


def verify(folder, ledger=None, key=None):
    return main(
        [
            "audit",
            "verify",
            str(ledger or ledger_of(folder)),
            "--public-key",
            str(key or folder / "coordinator.pub"),
        ]
    )


@pytest.mark.parametrize("commands", ordered_blocks(), ids=lambda c: c[0])
def test_readme_governance_blocks_run_in_order(commands, tmp_path, monkeypatch):
    shutil.copytree(REPO / "simulations", tmp_path / "simulations")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command


def test_keys_init_writes_a_private_file_only_its_owner_reads(audited, capsys):
    key = audited / "coordinator.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (audited / "coordinator.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert main(["keys", "init", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err
    run_key = audited / "run" / "governance" / "coordinator.pub"
    assert run_key.read_bytes() == (audited / "coordinator.pub").read_bytes()


def test_verify_clean_ledger_exits_0(audited, capsys):
    assert verify(audited) == 0
    assert "intact: 25 records" in capsys.readouterr().out


def test_verify_tampered_ledger_exits_1_naming_the_record(audited, tmp_path, capsys):
    lines = ledger_of(audited).read_bytes().splitlines(keepends=True)
    record = json.loads(lines[7])
    record["data"]["examples"] = 10_000  # a site "trained on" more patients than it has
    lines[7] = canonical_json(record) + b"\n"
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"".join(lines))
    assert verify(audited, tampered) == 1
    out = capsys.readouterr().out
    assert (
        "NOT INTACT: 1 problem(s): line 8 (record 7): modified: its content no longer matches "
        "its hash (the next record still chains to its stored hash: edited in place). The other "
        "24 records verify" in out
    )
    tampered.write_bytes(b"".join(lines[:7] + lines[8:]))
    assert verify(audited, tampered) == 1
    assert "line 8 (record 8): deleted: record 7 is missing before it" in capsys.readouterr().out


def test_verify_with_another_key_exits_2(audited, tmp_path, capsys):
    assert main(["keys", "init", str(tmp_path / "other.key")]) == 0
    assert verify(audited, key=tmp_path / "other.pub") == 2  # a wrong input, as the README says
    assert "its header names signing key ed25519:" in capsys.readouterr().err


def test_verify_against_summary_catches_truncation(audited, tmp_path, capsys):
    lines = ledger_of(audited).read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-1]))
    summary = str(audited / "run" / "summary.json")
    args = ["audit", "verify", str(cut), "--public-key", str(audited / "coordinator.pub")]
    assert main([*args, "--summary", summary, "--allow-open"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out
    assert "truncated: the ledger ends at record 23, but" in out and "names record 24" in out


def rsa_key(path, *, private):
    return write_foreign_key(path, rsa.generate_private_key(65537, 2048), private=private)


def test_bad_inputs_exit_2_with_a_clear_message(audited, tmp_path, capsys):
    csv = tmp_path / "metrics.jsonl"
    csv.write_text("round,site\n1,site-01\n")
    rsa_public = rsa_key(tmp_path / "rsa.pub", private=False)
    rsa_private = rsa_key(tmp_path / "rsa.key", private=True)
    ledger = str(ledger_of(audited))
    cases = [
        (lambda: verify(audited, ledger=csv), r"is not an lhs-federated ledger \(JSON Lines"),
        (lambda: verify(audited, key=tmp_path / "no.pub"), r"public key file .* does not exist"),
        (lambda: verify(audited, key=rsa_public), r"is a RSA public key"),
        (
            lambda: main(["simulate", "--coordinator-key", str(rsa_private)]),
            r"is a RSA private key; ledgers are signed with Ed25519",
        ),
        (lambda: main(["audit", "report", str(tmp_path)]), r"is not a run folder with a ledger"),
        (
            lambda: main(["audit", "crosscheck", ledger, str(csv)]),
            r"is not an lhs-federated ledger",
        ),
        (
            lambda: main(["audit", "crosscheck", ledger, ledger]),
            r"no public key for .*coordinator.jsonl: pass --site-key",
        ),
    ]
    capsys.readouterr()
    for run, pattern in cases:
        code = run()
        err = capsys.readouterr().err
        assert code == 2, err
        assert re.search(pattern, err), (pattern, err)


def test_site_commands_and_their_bad_inputs(tmp_path, small_study, capsys):
    study = tmp_path / "study.toml"
    study.write_text(small_study.to_toml())
    folder = str(tmp_path / "site")
    assert main(["site", "init", folder, "--name", "site-01"]) == 0
    approve = ["site", "approve", str(study), "--site-folder", folder, "--reason", "IRB-9"]
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = [\n")
    fab = tmp_path / "app.fab"
    fab.write_bytes(b"PK\x03\x04 bundle")
    bad = [
        (
            [
                "site",
                "approve",
                str(broken),
                "--site-folder",
                folder,
                "--reason",
                "x",
                "--installed",
            ],
            "not valid TOML",
        ),
        (approve, "an approval names the code that will run the study"),
        ([*approve, "--code-hash", "12ab"], "--code-hash must be 64 hex digits"),
        (
            [*approve, "--installed", "--fab", str(fab)],
            "give one of --fab, --code-hash, --installed or --deployment",
        ),
        (
            [
                "site",
                "approve",
                str(study),
                "--site-folder",
                str(tmp_path),
                "--reason",
                "x",
                "--installed",
            ],
            "is not a site folder",
        ),
        (
            ["site", "revoke", str(study), "--site-folder", folder, "--reason", "x"],
            "has no approval of study",
        ),
    ]
    capsys.readouterr()
    for args, message in bad:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err
    assert main([*approve, "--fab", str(fab), "--by", "dr. a"]) == 0
    assert main([*approve, "--installed"]) == 0
    assert f"approved study 'small' {small_study.hash}" in capsys.readouterr().out
    assert main(["site", "approvals", "--site-folder", folder]) == 0
    listed = capsys.readouterr().out
    assert listed.count(small_study.hash[:16]) == 2 and "dr. a" in listed
    assert main(["site", "revoke", str(study), "--site-folder", folder, "--reason", "done"]) == 0
    assert "every code version" in capsys.readouterr().out


def test_show_and_report(audited, capsys):
    ledger = str(ledger_of(audited))
    assert main(["audit", "show", ledger, "--public-key", str(audited / "coordinator.pub")]) == 0
    out = capsys.readouterr().out
    assert "intact: 25 records" in out and "participants: site-01, site-02, site-03" in out
    assert "status completed; final model" in out
    site = audited / "run" / "governance" / "sites" / "site-02" / "ledger.jsonl"
    assert main(["audit", "show", str(site)]) == 0
    assert "site ledger of 'site-02'" in capsys.readouterr().out
    assert main(["audit", "report", str(audited / "run")]) == 0
    assert "INTACT" in capsys.readouterr().out
    assert (audited / "run" / "governance" / "report.html").is_file()


def test_gitignore_covers_the_keys_certificates_and_state_the_kits_create():
    """`lhs-fed keys init keys/coordinator.key` (and the kits' set-up) in a checkout."""
    import subprocess

    made = [
        "keys/coordinator.key",
        "keys/coordinator.pub",
        "certs/ca.key",
        "certs/server.crt",
        "state/runs/study-1/summary.json",
        "server/keys/coordinator.key",
        "server/certs/sites/site-01.pub",
        "server/state/flwr/superlink.db",
        "client/keys/site-01",
        "client/state/privacy-ledger.json",
        "client/governance/site.key",
        "governance/approvals.jsonl",
        "hospital-a/ledger.jsonl",
        "any/folder/signing.key",
    ]
    kept = ["lhs_federated/governance/ledger.py", "server/server.toml", "client/site.toml"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *made, *kept],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == made
