"""The signed, hash-chained ledger: appends, verification and every single-record mutation."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from foreign_keys import write_foreign_key

from lhs_federated.errors import ConfigError
from lhs_federated.governance.keys import (
    fingerprint,
    load_private_key,
    load_public_key,
    write_key_pair,
)
from lhs_federated.governance.ledger import (
    TORN_RECOVERED,
    Ledger,
    LedgerError,
    canonical_json,
    parse_line,
    record_hash,
)
from lhs_federated.governance.run_files import SEAL
from lhs_federated.governance.verify import Anchor, verify_ledger

N_RECORDS = 50


def build_ledger(path, key, n=N_RECORDS, *, close=True):
    ledger = Ledger.open(path, key, role="coordinator", owner="coordinator", new=True)
    for i in range(1, n - 1):
        ledger.append("event", {"i": i, "value": i * 0.5, "site": f"site-{i % 3:02d}"})
    if close:
        ledger.append(SEAL, {"files": {}, "logs": {}})
    else:
        ledger.append("event", {"i": n - 1})
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, key):
    """The 50 lines of a clean, closed coordinator ledger."""
    return build_ledger(tmp_path_factory.mktemp("ledger") / "clean.jsonl", key)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, key):
    """Lines of another ledger signed with the same key (a second run of the coordinator)."""
    return build_ledger(tmp_path_factory.mktemp("foreign") / "other.jsonl", key, N_RECORDS + 2)


def check_all(tmp_path, key, cases):
    """Verify every mutated ledger; return the cases not reported exactly: one finding."""
    path = tmp_path / "mutated.jsonl"
    wrong = []
    for name, lines, kind, line in cases:
        path.write_bytes(b"".join(lines))
        result = verify_ledger(path, key.public_key())
        got = [(problem.kind, problem.line) for problem in result.problems]
        if got != [(kind, line)]:
            wrong.append(f"{name}: expected {[(kind, line)]}, got {got}")
    return wrong


def test_clean_ledger_verifies(tmp_path, key, clean):
    path = tmp_path / "clean.jsonl"
    path.write_bytes(b"".join(clean))
    result = verify_ledger(path, key.public_key())
    assert result.ok and result.problem is None
    assert [e.seq for e in result.entries] == list(range(N_RECORDS))
    assert result.final.kind == SEAL
    assert result.entries[0].data["key_fingerprint"] == fingerprint(key.public_key())
    assert "intact: 50 records" in result.describe()


def test_every_record_is_chained_and_signed(clean):
    entries = [parse_line(line.rstrip(b"\n"), n + 1) for n, line in enumerate(clean)]
    assert entries[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    assert all(e.hash == record_hash(e.body()) for e in entries)


def test_wrong_public_key_fails_on_the_header(tmp_path, clean):
    path = tmp_path / "clean.jsonl"
    path.write_bytes(b"".join(clean))
    other = Ed25519PrivateKey.generate().public_key()
    result = verify_ledger(path, other)
    assert not result.ok
    assert (result.problem.kind, result.problem.line) == ("bad signature", 1)
    assert "wrong public key" in result.problem.detail


def modified(line: bytes, *, rehash: bool) -> bytes:
    record = json.loads(line)
    record["data"]["tampered"] = True
    if rehash:
        body = {k: record[k] for k in ("seq", "time", "kind", "data", "prev_hash")}
        record["hash"] = record_hash(body)
    return canonical_json(record) + b"\n"


def test_every_single_record_modification_is_detected(tmp_path, key, clean):
    cases = []
    for i in range(N_RECORDS):
        for rehash, kind in ((False, "modified"), (True, "bad signature")):
            lines = list(clean)
            lines[i] = modified(lines[i], rehash=rehash)
            cases.append((f"modify {i} rehash={rehash}", lines, kind, i + 1))
        lines = list(clean)
        lines[i] = lines[i].replace(b'"time":"', b'"time":"1', 1)
        cases.append((f"retime {i}", lines, "modified", i + 1))
    assert check_all(tmp_path, key, cases) == []


def test_every_single_record_deletion_is_detected(tmp_path, key, clean):
    cases = []
    for i in range(N_RECORDS):
        lines = clean[:i] + clean[i + 1 :]
        kind, line = ("truncated", N_RECORDS) if i == N_RECORDS - 1 else ("deleted", i + 1)
        cases.append((f"delete {i}", lines, kind, line))
    assert check_all(tmp_path, key, cases) == []


def test_every_single_record_insertion_is_detected(tmp_path, key, clean, foreign):
    forger = Ed25519PrivateKey.generate()
    forged = build_ledger(tmp_path / "forged.jsonl", forger, N_RECORDS + 2)
    cases = []
    for at in range(N_RECORDS + 1):
        cases.append(
            (f"forged at {at}", [*clean[:at], forged[at], *clean[at:]], "bad signature", at + 1)
        )
        # A record of another ledger signed with the same key: the one that does not chain.
        cases.append(
            (f"foreign at {at}", [*clean[:at], foreign[at], *clean[at:]], "inserted", at + 1)
        )
        if at > 0:
            copy = [*clean[:at], clean[at - 1], *clean[at:]]
            cases.append((f"copy of {at - 1} at {at}", copy, "inserted", at + 1))
        if at < N_RECORDS - 1:
            later = [*clean[:at], clean[at + 1], *clean[at:]]
            cases.append((f"copy of {at + 1} at {at}", later, "inserted", at + 1))
    assert len(cases) > 4 * N_RECORDS
    assert check_all(tmp_path, key, cases) == []


def test_swaps_of_two_records_are_detected(tmp_path, key, clean):
    """Every record swapped with its neighbour and with ones 2, 7 and 30 lines away."""
    cases = []
    for i, j in itertools.combinations(range(N_RECORDS), 2):
        if j - i not in (1, 2, 7, 30):
            continue
        lines = list(clean)
        lines[i], lines[j] = lines[j], lines[i]
        cases.append((f"swap {i} {j}", lines, "reordered", i + 1))
    assert len(cases) == 4 * N_RECORDS - 1 - 2 - 7 - 30
    assert check_all(tmp_path, key, cases) == []


def test_one_edited_record_leaves_the_others_verified(tmp_path, key, clean):
    lines = list(clean)
    lines[11] = modified(lines[11], rehash=False)
    path = tmp_path / "edited.jsonl"
    path.write_bytes(b"".join(lines))
    result = verify_ledger(path, key.public_key())
    assert [(p.kind, p.line, p.seq) for p in result.problems] == [("modified", 12, 11)]
    assert "edited in place" in result.problem.detail
    assert [e.seq for e in result.entries] == [s for s in range(N_RECORDS) if s != 11]
    assert [e.seq for e in result.unverified] == [11]
    assert "1 problem(s)" in result.describe() and "other 49 records verify" in result.describe()


def test_every_truncation_is_detected(tmp_path, key, clean):
    cases = []
    for keep in range(1, N_RECORDS):
        cases.append((f"keep {keep} records", clean[:keep], "truncated", keep + 1))
    for cut in range(N_RECORDS):
        torn = [*clean[:cut], clean[cut][: len(clean[cut]) // 2]]
        cases.append((f"cut inside line {cut + 1}", torn, "torn last line", cut + 1))
    assert check_all(tmp_path, key, cases) == []


def test_truncation_after_re_signing_is_caught_by_the_anchor(tmp_path, key):
    path = tmp_path / "ledger.jsonl"
    lines = build_ledger(path, key, 10)
    final = parse_line(lines[-1].rstrip(b"\n"), 10)
    anchor = Anchor(final.seq, final.hash, "summary.json")
    assert verify_ledger(path, key.public_key(), anchor=anchor).ok
    # Whoever holds the key cuts the tail and re-closes the ledger with a new final record:
    # self-consistent, but not the ledger summary.json names.
    for keep, kind, words in ((6, "truncated", "cut off the end"), (9, "modified", "rewritten")):
        path.write_bytes(b"".join(lines[:keep]))
        Ledger.open(path, key, role="coordinator", owner="coordinator").append(SEAL, {"files": {}})
        assert verify_ledger(path, key.public_key()).ok
        result = verify_ledger(path, key.public_key(), anchor=anchor)
        assert result.problem.kind == kind and words in result.problem.detail
    # Records appended after the final one are caught too.
    path.write_bytes(b"".join(lines))
    Ledger.open(path, key, role="coordinator", owner="coordinator").append("event", {})
    result = verify_ledger(path, key.public_key(), anchor=anchor)
    assert (result.problem.kind, result.problem.line) == ("inserted", 11)


def test_open_ledger_is_accepted_only_when_allowed(tmp_path, key):
    path = tmp_path / "running.jsonl"
    build_ledger(path, key, 5, close=False)
    assert verify_ledger(path, key.public_key()).problem.kind == "truncated"
    assert verify_ledger(path, key.public_key(), allow_open=True).ok


def test_append_after_a_torn_line_records_the_recovery(tmp_path, key):
    path = tmp_path / "site.jsonl"
    ledger = Ledger.open(path, key, role="site", owner="site-01")
    for i in range(3):
        ledger.append("message-sent", {"i": i})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq":4,"time":"2026')  # a crash in the middle of an append
    result = verify_ledger(path, key.public_key())
    assert result.problem.kind == "torn last line" and result.problem.line == 5
    assert "4 records before it are intact" in result.problem.detail
    ledger.append("message-sent", {"i": 3})
    result = verify_ledger(path, key.public_key())
    assert result.ok
    kinds = [e.kind for e in result.entries]
    assert kinds[-2:] == [TORN_RECOVERED, "message-sent"]
    note = result.entries[-2].data
    assert note["bytes"] == len(b'{"seq":4,"time":"2026') and note["after_seq"] == 3
    assert (tmp_path / note["saved_as"]).read_bytes() == b'{"seq":4,"time":"2026'


def test_record_missing_only_its_newline_is_completed(tmp_path, key):
    path = tmp_path / "site.jsonl"
    ledger = Ledger.open(path, key, role="site", owner="site-01")
    ledger.append("message-sent", {"i": 0})
    path.write_bytes(path.read_bytes()[:-1])
    assert verify_ledger(path, key.public_key()).ok
    ledger.append("message-sent", {"i": 1})
    assert [e.seq for e in verify_ledger(path, key.public_key()).entries] == [0, 1, 2]


def test_appending_over_a_damaged_last_record_is_refused(tmp_path, key, clean):
    path = tmp_path / "ledger.jsonl"
    lines = list(clean[:10])
    lines[-1] = modified(lines[-1], rehash=False)
    path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match=r"does not match its hash or signature; appending"):
        Ledger.open(path, key, role="coordinator", owner="coordinator").append("event", {})


def test_ledger_refuses_another_key_role_or_reuse(tmp_path, key):
    path = tmp_path / "ledger.jsonl"
    Ledger.open(path, key, role="site", owner="site-01").append("message-sent", {})
    with pytest.raises(LedgerError, match=r"signed with key ed25519:\w+, not with the given key"):
        Ledger.open(path, Ed25519PrivateKey.generate(), role="site", owner="site-01")
    with pytest.raises(LedgerError, match=r"is the site ledger of 'site-01', not the site ledger"):
        Ledger.open(path, key, role="site", owner="site-02")
    with pytest.raises(LedgerError, match=r"already has records"):
        Ledger.open(path, key, role="site", owner="site-01", new=True)


def _append_many(path, key_bytes, worker, n):
    key = Ed25519PrivateKey.from_private_bytes(key_bytes)
    ledger = Ledger.open(path, key, role="site", owner="site-01")
    for i in range(n):
        ledger.append("message-sent", {"worker": worker, "i": i})


def test_processes_appending_at_once_keep_one_chain(tmp_path, key):
    path = tmp_path / "shared.jsonl"
    Ledger.open(path, key, role="site", owner="site-01")
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, raw, w, 25)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    result = verify_ledger(path, key.public_key())
    assert result.ok and len(result.entries) == 1 + 3 * 25


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"is empty"),
        (b"site,round\nsite-01,1\n", r"not an lhs-federated ledger .*line 1 is not JSON"),
        (b'{"seq": 0}\n', r"line 1 is field\(s\) time, kind, data, prev_hash, hash, signature"),
        (b"[1, 2]\n", r"line 1 is a JSON list, not an object"),
    ],
)
def test_files_that_are_not_ledgers_are_bad_input(tmp_path, key, content, match):
    path = tmp_path / "not-a-ledger.jsonl"
    path.write_bytes(content)
    with pytest.raises(LedgerError, match=match) as raised:
        verify_ledger(path, key.public_key())
    assert raised.value.exit_code == 2


def test_key_pair_files(tmp_path):
    public = write_key_pair(tmp_path / "keys" / "coordinator.key")
    private = tmp_path / "keys" / "coordinator.key"
    assert public == tmp_path / "keys" / "coordinator.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key(private)
    assert fingerprint(load_public_key(public)) == fingerprint(key.public_key())
    with pytest.raises(ConfigError, match=r"already exists; ledgers signed with it"):
        write_key_pair(private)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p, r"private key file .* does not exist"),
        (
            lambda p: write_foreign_key(p, rsa.generate_private_key(65537, 2048), private=True),
            r"is a RSA private key; ledgers are signed with Ed25519 keys",
        ),
        (
            lambda p: write_foreign_key(p, ec.generate_private_key(ec.SECP256R1()), private=True),
            r"is a EC private key",
        ),
        (
            lambda p: write_foreign_key(p, Ed25519PrivateKey.generate(), private=False),
            r"holds a public key; signing needs the private key",
        ),
        (lambda p: (p.write_text("hello"), os.chmod(p, 0o600), p)[2], r"not a PEM private key"),
    ],
)
def test_bad_private_keys_are_refused(tmp_path, make, match):
    path = make(tmp_path / "signing.key")
    with pytest.raises(ConfigError, match=match):
        load_private_key(path)


def test_private_key_readable_by_others_is_refused(tmp_path):
    write_key_pair(tmp_path / "c.key")
    os.chmod(tmp_path / "c.key", 0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\).*chmod 600"):
        load_private_key(tmp_path / "c.key")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p, r"public key file .* does not exist"),
        (
            lambda p: write_foreign_key(p, ec.generate_private_key(ec.SECP384R1()), private=False),
            r"is a EC public key; ledgers are signed with Ed25519 keys",
        ),
        (
            lambda p: write_foreign_key(p, Ed25519PrivateKey.generate(), private=True),
            r"holds a private key; verification needs only the public key",
        ),
    ],
)
def test_bad_public_keys_are_refused(tmp_path, make, match):
    path = make(tmp_path / "owner.pub")
    with pytest.raises(ConfigError, match=match):
        load_public_key(path)
