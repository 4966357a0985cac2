"""Where governance files live in a run folder, and the hashes of its result files.

A run folder's ``governance/`` holds the coordinator's ledger
(``coordinator.jsonl``), its public key (``coordinator.pub``), the ledgers of
earlier attempts when the run was resumed (``coordinator.segment-N.jsonl``)
and, in simulation, one site folder per simulated site (``sites/<site>/``). The
``study-finished`` record lists every result file with its SHA-256, so an
auditor can tell whether metrics, rounds or the released model were changed
after the study ended.
"""

from __future__ import annotations

import hashlib
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
