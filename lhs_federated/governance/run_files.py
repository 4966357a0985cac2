"""Where governance files live in a run folder, and the hashes of the files readers see.

A run folder's ``governance/`` holds the coordinator's ledger
(``coordinator.jsonl``), its public key (``coordinator.pub``), the ledgers of
earlier attempts when the run was resumed (``coordinator.segment-N.jsonl``)
and, in simulation, one site folder per simulated site (``sites/<site>/``).

Every other file of the run folder is for readers, and the ledger's closing
record (``results-sealed``, or ``study-failed``), written after all of them,
hashes each one: ``summary.json``, the tables, ``comparison.csv``,
``calibration.csv``, ``report.html``, the model files. So an auditor can tell
which file was changed, deleted or added after the run ended
(:func:`compare_files`). ``events.jsonl`` is a log that goes on being
appended to (the command line and dashboard follow it): the seal records its
length and the hash of that prefix, so an edit of what it said is caught and
lines appended later are named as such.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GOVERNANCE_DIR = "governance"
COORDINATOR_LEDGER = "coordinator.jsonl"
COORDINATOR_PUBLIC_KEY = "coordinator.pub"
SIMULATED_SITES_DIR = "sites"
#: Ledgers of interrupted runs that were resumed: coordinator.segment-1.jsonl, -2, ...
SEGMENT_GLOB = "coordinator.segment-*.jsonl"
#: Files written after the study-finished record, so not covered by it (events.jsonl is
#: the live progress log that goes on after it: analysis and report steps).
WRITTEN_AFTER = ("summary.json", "failure.json", "events.jsonl")
#: The record that closes a completed run's ledger, written after every reader's file.
SEAL = "results-sealed"
#: Logs that may grow after the seal; the seal covers the prefix it saw.
APPEND_ONLY = ("events.jsonl",)
_LAST_LINE_MAX = 1 << 20  # a closing record lists every file: at most about this long


def segment_name(number: int) -> str:
    """File name of the ``number``-th set-aside coordinator ledger."""
    return f"coordinator.segment-{number}.jsonl"


def hash_result_files(run_dir: str | Path) -> dict[str, str]:
    """SHA-256 of every result file of a run, by path relative to the run folder.

    Governance files (ledgers change after the record is written), hidden
    temporary files and the files written after the study closes are left out.
    """
    run_dir = Path(run_dir)
    hashes = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if (
            not path.is_file()
            or relative.parts[0] == GOVERNANCE_DIR
            or any(part.startswith(".") for part in relative.parts)
            or relative.as_posix() in WRITTEN_AFTER
        ):
            continue
        hashes[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _reader_paths(run_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if (
            path.is_file()
            and relative.parts[0] != GOVERNANCE_DIR
            and not any(part.startswith(".") for part in relative.parts)
        ):
            found.append((relative.as_posix(), path))
    return found


def seal_files(run_dir: str | Path) -> dict[str, dict[str, object]]:
    """What the closing record says about every reader's file: ``files`` and ``logs``.

    ``files`` maps each file (path relative to the run folder) to its SHA-256;
    ``logs`` maps each append-only log to the length and SHA-256 of its
    content so far.
    """
    files: dict[str, object] = {}
    logs: dict[str, object] = {}
    for name, path in _reader_paths(Path(run_dir)):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if name in APPEND_ONLY:
            logs[name] = {"bytes": len(data), "sha256": digest}
        else:
            files[name] = digest
    return {"files": files, "logs": logs}


@dataclass(frozen=True)
class FileFinding:
    """What re-hashing one file of a run folder found.

    Attributes
    ----------
    name : str
        Path relative to the run folder.
    state : str
        ``unchanged``, ``changed``, ``missing``, ``unexpected`` (no record
        covers it) or ``appended`` (a log that grew after the seal, its sealed
        part unchanged).
    expected : str or None
        The SHA-256 the ledger records (None for an unexpected file).
    found : str or None
        The SHA-256 on disk (None for a missing file).
    """

    name: str
    state: str
    expected: str | None
    found: str | None

    @property
    def ok(self) -> bool:
        """Whether the file is as the ledger says."""
        return self.state in ("unchanged", "appended")

    def describe(self, record: str) -> str:
        """The finding as a sentence naming the file and what the ledger expects."""
        if self.state == "changed":
            return (
                f"result file {self.name} was changed after {record}: the ledger records "
                f"SHA-256 {_short(self.expected)}, the file has {_short(self.found)}"
            )
        if self.state == "missing":
            return (
                f"result file {self.name} is missing: {record} records it with SHA-256 "
                f"{_short(self.expected)}"
            )
        if self.state == "unexpected":
            return (
                f"file {self.name} (SHA-256 {_short(self.found)}) is covered by no ledger "
                f"record: it was added after {record}"
            )
        if self.state == "appended":
            return f"log {self.name} grew after {record}; the part it covers is unchanged"
        return f"result file {self.name} is unchanged"


def compare_files(
    run_dir: str | Path,
    files: Mapping[str, str],
    logs: Mapping[str, Mapping[str, object]] | None = None,
    *,
    complete: bool = True,
) -> list[FileFinding]:
    """Re-hash a run folder's files against what a ledger record says.

    Parameters
    ----------
    run_dir : str or Path
        The run folder.
    files : mapping
        File -> SHA-256, as the record lists them.
    logs : mapping, optional
        Append-only log -> ``{"bytes", "sha256"}`` of the prefix the record saw.
    complete : bool
        The record lists every reader's file (a seal): any other file is
        ``unexpected``. False for older records that listed some files only.
    """
    run_dir = Path(run_dir)
    logs = logs or {}
    on_disk = dict(_reader_paths(run_dir))
    findings = []
    for name, expected in files.items():
        path = on_disk.pop(name, None)
        if path is None:
            findings.append(FileFinding(name, "missing", expected, None))
            continue
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        state = "unchanged" if found == expected else "changed"
        findings.append(FileFinding(name, state, expected, found))
    for name, sealed in logs.items():
        path = on_disk.pop(name, None)
        expected = str(sealed.get("sha256"))
        if path is None:
            findings.append(FileFinding(name, "missing", expected, None))
            continue
        data = path.read_bytes()
        size = int(str(sealed.get("bytes", 0)))
        prefix = hashlib.sha256(data[:size]).hexdigest()
        if len(data) < size or prefix != expected:
            findings.append(FileFinding(name, "changed", expected, prefix))
        else:
            state = "appended" if len(data) > size else "unchanged"
            findings.append(FileFinding(name, state, expected, prefix))
    if complete:
        for name, path in on_disk.items():
            found = hashlib.sha256(path.read_bytes()).hexdigest()
            findings.append(FileFinding(name, "unexpected", None, found))
    return findings


def _short(value: str | None) -> str:
    return "—" if not value else f"{value[:16]}…"


def ledger_closed(run_dir: str | Path) -> bool:
    """Whether a run's coordinator ledger ends with its closing record (sealed or failed).

    Reads only the file's last line: a follower of a deployed run waits for
    this, not for ``summary.json``, which is written before the seal.
    """
    path = Path(run_dir) / GOVERNANCE_DIR / COORDINATOR_LEDGER
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _LAST_LINE_MAX))
            last = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except OSError:
        return False
    return any(f'"kind":"{kind}"'.encode() in last for kind in (SEAL, "study-failed"))
