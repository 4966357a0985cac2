"""The audit's mutation suite: change a finished run one way, expect exactly that finding.

Each mutation works on a fresh copy of a run folder (and of the site ledgers
that go with it) and says which findings describe it; the audit must report
at least one problem and every problem it reports must be one of those. Used
on a simulated run (tests/test_audit_mutations.py) and on a deployed one
(tests/test_deployment.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lhs_federated.governance.keys import fingerprint, public_key_b64, public_key_pem
from lhs_federated.governance.ledger import Entry, canonical_json, record_hash
from lhs_federated.governance.run_audit import audit_run
from lhs_federated.governance.run_files import SEAL, seal_files
from lhs_federated.governance.verify import load_entries

#: The kinds of mutation issue 11 lists; each mutation below belongs to one.
KINDS = (
    "edit a record's field",
    "delete a record",
    "insert a duplicate",
    "reorder two records",
    "truncate",
    "append a forged record",
    "replace the ledger, re-signed by a fresh key",
    "roll a site's ledger back",
    "edit a result file",
    "delete a result file",
    "add a file",
)


@dataclass(frozen=True)
class Mutation:
    """One change: its kind, a name, what it does to a copy, and the findings that say so."""

    kind: str
    name: str
    apply: Callable[[Path, dict[str, Path]], None]
    describes: Callable[[str], bool]
    pinned: bool = False  # audit with the coordinator's published key


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    problems: list[str]

    @property
    def exact(self) -> bool:
        """Reported, and nothing else reported."""
        return bool(self.problems) and all(self.mutation.describes(p) for p in self.problems)


def _ledger(run: Path) -> Path:
    return run / "governance" / "coordinator.jsonl"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _edit_field(seq: int) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        lines = _lines(_ledger(run))
        record = json.loads(lines[seq])
        record["data"]["examples"] = 100_000
        lines[seq] = canonical_json(record) + b"\n"
        _ledger(run).write_bytes(b"".join(lines))

    return apply


def _delete(seq: int) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        lines = _lines(_ledger(run))
        _ledger(run).write_bytes(b"".join(lines[:seq] + lines[seq + 1 :]))

    return apply


def _duplicate(seq: int) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        lines = _lines(_ledger(run))
        _ledger(run).write_bytes(b"".join([*lines[: seq + 3], lines[seq], *lines[seq + 3 :]]))

    return apply


def _swap(seq: int) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        lines = _lines(_ledger(run))
        lines[seq], lines[seq + 1] = lines[seq + 1], lines[seq]
        _ledger(run).write_bytes(b"".join(lines))

    return apply


def _truncate(run: Path, sites: dict[str, Path]) -> None:
    _ledger(run).write_bytes(b"".join(_lines(_ledger(run))[:-3]))


def _append_forged(run: Path, sites: dict[str, Path]) -> None:
    last = load_entries(_ledger(run))[-1]
    body = {
        "seq": last.seq + 1,
        "time": last.time,
        "kind": "evaluation",
        "data": {"round": 99, "per_site": {}},
        "prev_hash": last.hash,
    }
    forged = Entry(**body, hash=record_hash(body), signature=base64.b64encode(b"x" * 64).decode())
    with _ledger(run).open("ab") as handle:
        handle.write(forged.to_line())


def _resign(run: Path, sites: dict[str, Path]) -> None:
    """A whole forged run: AUROC 0.99 everywhere, summary and seal consistent, a new key."""
    key = Ed25519PrivateKey.generate()
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text())
    for site in summary["final"]["per_site"].values():
        site["auroc"] = 0.99
    entries, previous, out = load_entries(_ledger(run)), "0" * 64, []
    for entry in entries:
        data = dict(entry.data)
        if entry.seq == 0:
            data["public_key"] = public_key_b64(key.public_key())
            data["key_fingerprint"] = fingerprint(key.public_key())
        if entry.kind == "evaluation":
            data["per_site"] = {s: {**m, "auroc": 0.99} for s, m in data["per_site"].items()}
        if entry.kind == SEAL:
            summary["ledger"]["finished_hash"] = previous
            summary["ledger"]["key_fingerprint"] = fingerprint(key.public_key())
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
            data = seal_files(run)
        body = {**entry.body(), "data": data, "prev_hash": previous}
        digest = record_hash(body)
        signature = base64.b64encode(key.sign(bytes.fromhex(digest))).decode()
        out.append(Entry(**body, hash=digest, signature=signature))
        previous = digest
    _ledger(run).write_bytes(b"".join(e.to_line() for e in out))
    (run / "governance" / "coordinator.pub").write_bytes(public_key_pem(key.public_key()))


def _roll_back(site: str) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        path = sites[site]
        path.write_bytes(b"".join(_lines(path)[:-3]))

    return apply


def _roll_back_before_run(site: str, run_id: int) -> Callable[[Path, dict[str, Path]], None]:
    """The site ledger as it was before the study: its approval and the run's records cut off."""

    def apply(run: Path, sites: dict[str, Path]) -> None:
        path = sites[site]
        lines = _lines(path)
        first = next(
            i for i, line in enumerate(lines) if json.loads(line)["data"].get("run_id") == run_id
        )
        path.write_bytes(b"".join(lines[: first - 1]))

    return apply


def _edit_file(name: str) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        path = run / name
        data = bytearray(path.read_bytes())
        if name == "summary.json":
            summary = json.loads(data)
            summary["final"]["mean"]["auroc"] = 0.99
            path.write_text(json.dumps(summary, indent=2) + "\n")
            return
        position = len(data) // 2
        data[position] = (data[position] + 1) % 256  # one character
        path.write_bytes(bytes(data))

    return apply


def _delete_file(name: str) -> Callable[[Path, dict[str, Path]], None]:
    def apply(run: Path, sites: dict[str, Path]) -> None:
        os.remove(run / name)

    return apply


def _add_file(run: Path, sites: dict[str, Path]) -> None:
    (run / "comparison-final.csv").write_text("model,auroc\nfederated,0.99\n")


def mutations(run: Path, sites: dict[str, Path]) -> list[Mutation]:
    """Every mutation of a finished run (one per kind, one per result file for files)."""
    entries = load_entries(_ledger(run))
    reply = next(e.seq for e in entries if e.kind == "site-reply" and e.data["stage"] == "train")
    last = entries[-1].seq
    seal = entries[-1].data
    files = sorted([*seal["files"], *seal["logs"]])
    site = sorted(sites)[1]
    found: list[Mutation] = [
        Mutation(
            KINDS[0],
            f"edit record {reply}",
            _edit_field(reply),
            lambda p: f"(record {reply}): modified" in p,
        ),
        Mutation(
            KINDS[1],
            f"delete record {reply}",
            _delete(reply),
            lambda p: f"deleted: record {reply} is missing" in p,
        ),
        Mutation(
            KINDS[2],
            f"copy record {reply}",
            _duplicate(reply),
            lambda p: f"inserted: a second copy of record {reply}" in p,
        ),
        Mutation(
            KINDS[3],
            f"swap records {reply} and {reply + 1}",
            _swap(reply),
            lambda p: (
                f"records {reply + 1} and {reply} are swapped" in p
                or f"records {reply} and {reply + 1} are swapped" in p
                or "reordered" in p
            ),
        ),
        Mutation(
            KINDS[4],
            "cut the last 3 records",
            _truncate,
            lambda p: f"ends at record {last - 3}" in p and ("cut" in p or "truncated" in p),
        ),
        Mutation(
            KINDS[5],
            "append a forged record",
            _append_forged,
            lambda p: f"(record {last + 1}): bad signature" in p,
        ),
        Mutation(
            KINDS[6],
            "re-sign with a fresh key (run folder's key)",
            _resign,
            lambda p: "coordinator key" in p and "re-signed" in p,
        ),
        Mutation(
            KINDS[6],
            "re-sign with a fresh key (published key)",
            _resign,
            lambda p: "none of its" in p and "signed by the given public key" in p,
            pinned=True,
        ),
        Mutation(
            KINDS[7],
            f"roll {site}'s ledger back",
            _roll_back(site),
            lambda p: f"site {site}" in p and "rolled back" in p,
        ),
        Mutation(
            KINDS[7],
            f"roll {site}'s ledger back to before the study",
            _roll_back_before_run(site, int(entries[1].data["run_id"])),
            lambda p: f"site {site}" in p and "rolled back" in p and "at the start of run" in p,
        ),
        Mutation(
            KINDS[10],
            "add comparison-final.csv",
            _add_file,
            lambda p: "file comparison-final.csv" in p and "covered by no ledger record" in p,
        ),
    ]
    for name in files:
        found.append(
            Mutation(
                KINDS[8],
                f"edit {name}",
                _edit_file(name),
                lambda p, n=name: f" {n} was changed" in p,
            )
        )
        found.append(
            Mutation(
                KINDS[9],
                f"delete {name}",
                _delete_file(name),
                lambda p, n=name: f" {n} is missing" in p,
            )
        )
    return found


def run_mutations(
    run: Path, sites: dict[str, Path], work: Path, *, published_key: Path
) -> list[Outcome]:
    """Apply each mutation to fresh copies of ``run`` and ``sites``; audit each copy.

    ``sites`` maps each site to its ledger (with ``site.pub`` beside it); for a
    simulated run they are inside the run folder, for a deployed one outside.
    """
    outcomes = []
    for number, mutation in enumerate(mutations(run, sites)):
        copy = work / f"m{number}"
        shutil.copytree(run, copy / "run")
        copied_sites = {}
        for site, ledger in sites.items():
            if ledger.is_relative_to(run):
                copied_sites[site] = copy / "run" / ledger.relative_to(run)
            else:
                shutil.copytree(ledger.parent, copy / "sites" / site)
                copied_sites[site] = copy / "sites" / site / ledger.name
        mutation.apply(copy / "run", copied_sites)
        outside = [p for s, p in copied_sites.items() if not sites[s].is_relative_to(run)]
        audit = audit_run(
            copy / "run",
            public_key=published_key if mutation.pinned else None,
            site_ledgers=outside,
        )
        outcomes.append(Outcome(mutation, list(audit.problems)))
        shutil.rmtree(copy)
    return outcomes


def summarise(outcomes: list[Outcome]) -> str:
    """Kinds covered, the share reported exactly, and each miss with its findings."""
    kinds = {o.mutation.kind for o in outcomes}
    exact = [o for o in outcomes if o.exact]
    lines = [
        f"{len(kinds)} of {len(KINDS)} mutation kinds, {len(outcomes)} mutations: "
        f"{len(exact)} reported exactly ({100 * len(exact) / len(outcomes):.0f}%)"
    ]
    for outcome in outcomes:
        if not outcome.exact:
            lines.append(f"  {outcome.mutation.name}: {outcome.problems}")
    return "\n".join(lines)
