"""The coordinator's checkpoint: everything needed to continue a study after a crash.

After every completed round the coordinator saves the global arrays, the
Flower strategy object itself (so server-side optimiser state such as FedAdam's
moments carries over), the preprocessing statistics, the state of Python's
``random`` (which Flower's strategies sample sites with) and the last round's
reports. Resuming from it gives exactly the model an uninterrupted run would
have given: sites' local training is seeded by (study seed, site, round).

The file is written atomically (temporary file, fsync, rename), so a crash
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import importlib
import os
import pickle
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from lhs_federated.data.statistics import Standardizer
from lhs_federated.errors import StudyRunError
from lhs_federated.learning.metrics import MetricReport
from lhs_federated.study import Study

CHECKPOINT_FILE = "checkpoint.pkl"


@dataclass
class Checkpoint:
    """The coordinator's state after ``round`` completed rounds (and epsilon spent so far)."""

    study_hash: str
    round: int
    arrays: dict[str, np.ndarray]
    strategy: Strategy
    standardizer: Standardizer | None
    random_state: Any
    reports: dict[str, MetricReport]
    privacy_spent: dict[str, float]


class _Pickler(pickle.Pickler):
    """Pickles module references by name.

    Flower's ``RdpAccountant`` (inside the client-level DP wrappers) keeps the
    modules it imported lazily as attributes; a module is restored by import.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> None:
    """Replace the run's checkpoint atomically."""
    path = out_dir / CHECKPOINT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    # 0600: a checkpoint holds the model and the sites' counts; only the operator reads it.
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        _Pickler(handle, protocol=pickle.HIGHEST_PROTOCOL).dump(checkpoint)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def load_checkpoint(out_dir: Path, study: Study) -> Checkpoint:
    """The checkpoint of a run folder, checked against the study being resumed.

    Raises
    ------
    StudyRunError
        If the folder has no checkpoint, the run already completed, or the
        checkpoint belongs to another study.
    """
    path = out_dir / CHECKPOINT_FILE
    if (out_dir / "summary.json").exists():
        raise StudyRunError(f"{out_dir} holds a completed run (summary.json); nothing to resume.")
    if not path.is_file():
        raise StudyRunError(
            f"{out_dir} has no {CHECKPOINT_FILE}: the run stopped before its first round "
            "completed, so start it again instead of resuming."
        )
    with path.open("rb") as handle:
        checkpoint: Checkpoint = pickle.load(handle)  # the coordinator's own file
    if checkpoint.study_hash != study.hash:
        raise StudyRunError(
            f"{path} belongs to study {checkpoint.study_hash[:12]}…, not {study.hash[:12]}…; "
            "resume a run with the study it started with."
        )
    return checkpoint
