"""The results folder of a run: files a person can open, written as they happen.

A run folder holds ``study.resolved.toml`` (what ran, with its hash),
``versions.json`` (what it ran on), ``sites.csv`` (who took part, with counts
below the minimum cell size withheld), ``metrics.csv`` (one row per round,
site, split and metric, appended and fsynced each round so a crash keeps every
finished round), ``rounds.csv`` (who trained, who failed and why, how long
each round took), ``summary.json`` (written last: its presence means the run
completed) and ``model/`` (the released model).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from lhs_federated.study import Study, write_study

METRICS_COLUMNS = ("round", "site", "split", "metric", "value", "reason")
ROUNDS_COLUMNS = ("round", "seconds", "trained", "failed", "mean_auroc")
SITES_COLUMNS = ("site", "n_train", "n_test", "positives_train", "positives_test")

_VERSIONED = ("lhs-federated", "flwr", "torch", "opacus", "scikit-learn", "numpy", "pandas", "ray")


def versions() -> dict[str, Any]:
    """Versions of Python, the platform and every library a run depends on."""
    python, system, found = _versions()
    return {"python": python, "platform": system, "packages": dict(found)}


@cache
def _versions() -> tuple[str, str, tuple[tuple[str, str | None], ...]]:
    """The versions, read once per process.

    Reading package metadata costs ~15 ms a run, and the libraries a process
    has imported cannot change under it.
    """
    found = []
    for name in _VERSIONED:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, None))
    return sys.version.split()[0], platform.platform(), tuple(found)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8"
    )
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


class RunWriter:
    """Writes one run's folder as the run goes.

    Parameters
    ----------
    out_dir : Path
        The run folder; created, and must not already hold a run.
    study : Study
        The resolved study.
    """

    def __init__(
        self, out_dir: Path, study: Study, *, engine: str, resume_after: int | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.study = study
        if resume_after is None:
            if (self.out_dir / "study.resolved.toml").exists():
                raise FileExistsError(
                    f"{self.out_dir} already holds a run; choose another --out folder"
                )
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_study(study, self.out_dir / "study.resolved.toml")
            write_json(
                self.out_dir / "versions.json",
                {
                    **versions(),
                    "engine": engine,
                    "seed": study.seed,
                    "split_seed": study.data.split_seed,
                },
            )
        else:
            (self.out_dir / "failure.json").unlink(missing_ok=True)
        self._metrics = self._open_csv("metrics.csv", METRICS_COLUMNS, resume_after)
        self._rounds = self._open_csv("rounds.csv", ROUNDS_COLUMNS, resume_after)

    def _open_csv(self, name: str, columns: tuple[str, ...], resume_after: int | None) -> Any:
        """Open a table for appending; on resume keep only rows up to ``resume_after``.

        Rows of a round that was under way when the run stopped are dropped,
        since that round runs again.
        """
        path = self.out_dir / name
        kept: list[list[str]] = []
        if resume_after is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))[1:]
            kept = [row for row in rows if row and int(row[0]) <= resume_after]
        handle = path.open("w", newline="", encoding="utf-8")
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(kept)
        _sync(handle)
        return handle

    def write_sites(self, rows: list[dict[str, Any]]) -> None:
        """Write ``sites.csv``; withheld counts are written as ``<min cell size``."""
        with (self.out_dir / "sites.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SITES_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def add_metrics(self, rows: list[tuple[int, str, str, str, float, str]]) -> None:
        """Append metric rows and make them durable (flush and fsync)."""
        writer = csv.writer(self._metrics)
        for rnd, site, split, metric, value, reason in rows:
            writer.writerow(
                (rnd, site, split, metric, "" if _is_nan(value) else repr(float(value)), reason)
            )
        _sync(self._metrics)

    def add_round(
        self,
        rnd: int,
        seconds: float,
        trained: list[str],
        failed: dict[str, str],
        mean_auroc: float,
    ) -> None:
        """Append one round's participation and timing."""
        failures = "; ".join(f"{site}: {reason}" for site, reason in failed.items())
        csv.writer(self._rounds).writerow(
            (
                rnd,
                f"{seconds:.3f}",
                " ".join(trained),
                failures,
                "" if _is_nan(mean_auroc) else f"{mean_auroc:.6f}",
            )
        )
        _sync(self._rounds)

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the tables and write ``summary.json``, which marks completion."""
        self.close()
        write_json(self.out_dir / "summary.json", summary)

    def fail(self, error: BaseException) -> None:
        """Close the tables and write ``failure.json`` saying why the run stopped.

        Every finished round stays in ``metrics.csv``; there is no
        ``summary.json``, so nobody mistakes the folder for a completed run.
        """
        self.close()
        write_failure(self.out_dir, error)

    def close(self) -> None:
        """Close the open tables (also on failure)."""
        for handle in (self._metrics, self._rounds):
            if not handle.closed:
                handle.close()


def write_failure(out_dir: Path, error: BaseException) -> None:
    """Write ``failure.json`` saying why a run stopped, unless its outcome is already written.

    A run that stops before its first round (no site ready, every site
    refused) has no tables yet; the note is still its operator's only record
    of the reason when the ServerApp runs in another process.
    """
    out_dir = Path(out_dir)
    if (out_dir / "summary.json").exists() or (out_dir / "failure.json").exists():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
    write_json(out_dir / "failure.json", {"status": "failed", "at": utc_now(), "error": message})


def _sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp."""
    return datetime.now(UTC).isoformat(timespec="seconds")
