"""Sweeps: one study run over a grid of settings and seeds, with confidence intervals.

A sweep file names a base study, fixed overrides and a grid::

    name = "heterogeneity"
    study = "default.toml"              # relative to the sweep file
    metrics = ["auroc", "accuracy"]
    plot = ["federated_auroc", "gain_auroc"]

    [fixed]
    rounds = 5

    [grid]
    seed = [1, 2, 3]                    # replicates
    "data.synthetic.covariate_shift" = [0.0, 1.0, 2.0]

Every combination of the grid is a run of :func:`lhs_federated.simulate` on
the in-process engine, in worker processes (one per core). The whole grid is
checked before anything is written: an unknown field or a bad value fails with
the key named. Each finished run appends its row to ``runs.csv`` (federated,
pooled, local and gain means over sites); ``aggregate.csv`` gives, per
configuration (the grid without ``seed``), the mean, SD and 95% confidence
interval over seeds (Student's t). Runs live in ``runs/<study hash>/``, so
re-running the same sweep into the same folder skips every finished run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from lhs_federated.config import build, read_toml, setting, to_plain
from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.learning.metrics import METRIC_NAMES
from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER
from lhs_federated.results.progress import ProgressEvent
from lhs_federated.results.writer import versions, write_json
from lhs_federated.study import Study, load_study

MODEL_KINDS = ("federated", "pooled", "local", "gain")
RUNS_NAME = "runs.csv"
AGGREGATE_NAME = "aggregate.csv"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file: a base study, fixed overrides and a grid (see the module docstring)."""

    name: str = setting("sweep", doc="short name of the sweep, used for its folder")
    description: str = setting("", doc="what the sweep asks")
    study: str | None = setting(
        None, doc="base study TOML, relative to the sweep file (default: the built-in study)"
    )
    fixed: dict[str, Any] = setting(
        default_factory=dict, doc="study overrides applied to every run (dotted keys or tables)"
    )
    grid: dict[str, tuple[Any, ...]] = setting(
        default_factory=dict, doc="study field -> values; every combination is a run"
    )
    metrics: tuple[str, ...] = setting(
        ("auroc", "accuracy", "brier"), doc="metrics recorded per run and aggregated"
    )
    plot: tuple[str, ...] = setting(
        ("federated_auroc", "local_auroc", "gain_auroc"),
        doc="aggregate columns the report plots against each grid key",
    )
    workers: int | None = setting(None, doc="worker processes (default: one per core)", ge=1)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its folder name, its grid values and its study."""

    run_id: str
    labels: dict[str, Any]
    study: Study


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: its spec and every run it plans."""

    spec: SweepSpec
    runs: list[PlannedRun]
    source: str

    @property
    def hash(self) -> str:
        """What identifies the sweep: the hashes of its planned studies, in order."""
        return hashlib.sha256(" ".join(r.study.hash for r in self.runs).encode()).hexdigest()


@dataclass(frozen=True)
class SweepProgress:
    """One finished run of a sweep (sent on the progress logger)."""

    sweep: str
    done: int
    total: int
    run_id: str
    status: str
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for logs."""
        return f"{self.sweep}: {self.done}/{self.total} runs ({self.run_id} {self.status})"

    def as_event(self) -> ProgressEvent:
        """The finished run as a general progress event (what ``--json`` prints)."""
        return ProgressEvent("sweep-run", self.describe(), dataclasses.asdict(self))


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file and check every run it plans.

    Raises
    ------
    ConfigError
        If the file is not a valid sweep, the grid is empty, a grid or fixed
        key is not a study field, a value is invalid for its field, or a
        metric is unknown; nothing has been written.
    """
    path = Path(path)
    table = read_toml(path, what="sweep")
    for section in ("fixed", "grid"):
        if isinstance(table.get(section), dict):
            table[section] = _flatten(table[section])
    spec = build(SweepSpec, table, source=str(path))
    return plan_sweep(spec, base_dir=path.parent, source=str(path))


def plan_sweep(spec: SweepSpec, *, base_dir: Path, source: str) -> Sweep:
    """Expand a sweep spec into its runs, checking each (see :func:`load_sweep`)."""
    unknown = [m for m in spec.metrics if m not in METRIC_NAMES]
    if unknown:
        raise ConfigError(
            f"{source}: metrics {unknown} are not metrics; choose from {', '.join(METRIC_NAMES)}."
        )
    columns = {f"{kind}_{m}" for kind in MODEL_KINDS for m in spec.metrics}
    bad_plots = [c for c in spec.plot if c not in columns]
    if bad_plots:
        raise ConfigError(
            f"{source}: plot {bad_plots} are not aggregate columns; choose from "
            f"{', '.join(sorted(columns))}."
        )
    if not spec.grid:
        raise ConfigError(
            f"{source}: the grid is empty; a sweep needs at least one [grid] key with values "
            '(e.g. seed = [1, 2, 3] or "training.learning_rate" = [0.05, 0.2]).'
        )
    empty = [key for key, values in spec.grid.items() if not values]
    if empty:
        raise ConfigError(f"{source}: grid key {empty[0]!r} has no values; list at least one.")
    import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks; Flower)

    base = load_study((base_dir / spec.study) if spec.study else None)
    base = _override(base, spec.fixed, source=source, what="fixed")
    for key, values in spec.grid.items():  # name the key at fault before building combinations
        _override(base, {key: values[0]}, source=source, what="grid")
    runs = []
    keys = list(spec.grid)
    for combination in itertools.product(*spec.grid.values()):
        labels = dict(zip(keys, combination, strict=True))
        study = _override(base, labels, source=source, what="grid")
        runs.append(PlannedRun(study.hash[:16], labels, study))
    twice = len({r.run_id for r in runs}) < len(runs)
    if twice:
        raise ConfigError(
            f"{source}: two grid combinations give the same study (a grid key lists a value "
            "twice, or sets a field to its own default next to that default); remove the repeat."
        )
    return Sweep(spec, runs, source)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables to dotted keys (``[grid.training]`` -> ``training.x``)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _override(study: Study, overrides: dict[str, Any], *, source: str, what: str) -> Study:
    try:
        return study.with_overrides(overrides)
    except ConfigError as exc:
        text = exc.message.removeprefix("overrides: ")
        raise ConfigError(f"{source}: [{what}] {', '.join(overrides)}: {text}") from exc


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    report: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Run (or resume) a sweep; return its runs table, aggregate table and folder.

    Parameters
    ----------
    sweep : Sweep
        A checked sweep (:func:`load_sweep`).
    out_dir : str or Path, optional
        The sweep folder (default ``runs/sweeps/<name>``). A folder holding
        the same sweep is resumed; one holding anything else is refused.
    workers : int, optional
        Worker processes (default: the sweep's ``workers``, else one per core).
    report : bool
        Write ``report.html`` at the end.

    Raises
    ------
    ConfigError
        If the folder holds a different sweep or other files.
    """
    out = Path(out_dir) if out_dir is not None else Path("runs") / "sweeps" / sweep.spec.name
    _claim_folder(out, sweep)
    write_json(out / "versions.json", versions())
    rows = execute_runs(
        sweep.runs,
        out,
        metrics=sweep.spec.metrics,
        workers=workers or sweep.spec.workers,
        name=sweep.spec.name,
    )
    grid_keys = [k for k in sweep.spec.grid if k != "seed"]
    aggregate = aggregate_runs(rows, grid_keys, metric_columns(sweep.spec.metrics))
    _write_frame(out / AGGREGATE_NAME, aggregate)
    if report:
        from lhs_federated.research.report import write_sweep_report

        write_sweep_report(out)
    return rows, aggregate, out


def _claim_folder(out: Path, sweep: Sweep) -> None:
    marker = out / "sweep.toml"
    header = f"# sweep hash {sweep.hash}\n"
    if marker.is_file():
        if not marker.read_text(encoding="utf-8").startswith(header):
            raise ConfigError(
                f"{str(out)!r} holds a different sweep (its runs or settings differ); "
                "choose another --out folder to keep both."
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{str(out)!r} exists and is not a sweep folder; choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    import tomli_w

    plain = to_plain(sweep.spec)
    plain["study_hashes"] = {r.run_id: r.study.hash for r in sweep.runs}
    tmp = out / ".sweep.toml.tmp"
    tmp.write_text(header + f"# from {sweep.source}\n" + tomli_w.dumps(plain), encoding="utf-8")
    tmp.replace(marker)


def metric_columns(metrics: Sequence[str]) -> list[str]:
    """Per-run columns: ``<kind>_<metric>`` for federated, pooled, local and gain."""
    return [f"{kind}_{m}" for m in metrics for kind in MODEL_KINDS]


def execute_runs(
    runs: Sequence[PlannedRun],
    folder: str | Path,
    *,
    metrics: Sequence[str],
    workers: int | None = None,
    name: str = "runs",
) -> pd.DataFrame:
    """Run every planned run not yet finished in ``folder``; return one row per run.

    Finished runs (a ``runs/<id>/summary.json`` and a completed row in
    ``runs.csv``) are skipped; an unfinished run's folder is removed and the
    run started again. ``runs.csv`` is rewritten atomically after every run.
    """
    folder = Path(folder)
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    recorded = {str(r["run"]): r for r in read_runs(folder).to_dict("records")}
    done = {
        r.run_id
        for r in runs
        if recorded.get(r.run_id, {}).get("status") == "completed"
        and (folder / "runs" / r.run_id / "summary.json").is_file()
    }
    pending = [r for r in runs if r.run_id not in done]
    rows = {r.run_id: recorded[r.run_id] for r in runs if r.run_id in done}
    order = [r.run_id for r in runs]

    def record(row: dict[str, Any]) -> None:
        rows[row["run"]] = row
        _write_frame(folder / RUNS_NAME, pd.DataFrame([rows[i] for i in order if i in rows]))
        failures = [i for i, r in rows.items() if r["status"] != "completed"]
        event = SweepProgress(
            name, len(rows), len(runs), row["run"], row["status"], len(done), failures
        )
        PROGRESS_LOGGER.info(
            "%s", event.describe(), extra={"lhs_progress": event, "lhs_event": event.as_event()}
        )

    for run in pending:
        target = folder / "runs" / run.run_id
        if target.exists():
            shutil.rmtree(target)
    jobs = [
        (r.run_id, r.labels, r.study.to_json(), str(folder / "runs" / r.run_id), tuple(metrics))
        for r in pending
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if workers == 1:
        flower = logging.getLogger("flwr")
        level = flower.level
        flower.setLevel(logging.WARNING)  # Flower's per-round INFO lines, once per run
        try:
            for job in jobs:
                record(_execute(*job))
        finally:
            flower.setLevel(level)
    else:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker
        ) as pool:
            for future in as_completed([pool.submit(_execute, *job) for job in jobs]):
                record(future.result())
    return read_runs(folder)


def _init_worker() -> None:
    """One torch thread per worker; Flower's per-round INFO lines silenced.

    Flower sets its logger's level when first imported, so import it first.
    """
    import torch

    import lhs_federated.research.simulation  # noqa: F401  (imports Flower)

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)


def _execute(
    run_id: str, labels: dict[str, Any], study_json: str, out_dir: str, metrics: tuple[str, ...]
) -> dict[str, Any]:
    """Run one study (in a worker); return its row. Failures become rows, not exceptions."""
    from lhs_federated.research.simulation import simulate

    started = time.monotonic()
    row: dict[str, Any] = {"run": run_id, **{k: _label(v) for k, v in labels.items()}}
    try:
        study = Study.from_json(study_json, source=f"sweep run {run_id}")
        summary = simulate(study, out_dir=out_dir, report=False).summary
    except LhsError as error:
        return {
            **row,
            "status": "failed",
            "seconds": time.monotonic() - started,
            "error": error.message,
        }
    except Exception as error:  # a bug in one run must not lose the others
        return {
            **row,
            "status": "failed",
            "seconds": time.monotonic() - started,
            "error": f"{type(error).__name__}: {error}",
        }
    means = summary["comparison"]["mean"]
    row.update(
        {"status": "completed", "seconds": round(time.monotonic() - started, 3), "error": ""}
    )
    for metric in metrics:
        for kind in MODEL_KINDS:
            value = means.get(kind, {}).get(metric)
            row[f"{kind}_{metric}"] = math.nan if value is None else value
    return row


def _label(value: Any) -> Any:
    return (
        value if isinstance(value, (int, float, str, bool)) else json.dumps(value, sort_keys=True)
    )


def aggregate_runs(
    rows: pd.DataFrame, grid_keys: Sequence[str], columns: Sequence[str]
) -> pd.DataFrame:
    """Mean, SD and 95% confidence interval of each column per configuration.

    A configuration is one combination of ``grid_keys`` (the grid without
    ``seed``); its completed runs are the replicates. The interval is
    ``mean ± t(0.975, n-1) * SD / sqrt(n)``; with one run, SD and interval
    are undefined (empty).
    """
    completed = rows[rows["status"] == "completed"] if len(rows) else rows
    present = [c for c in columns if c in completed.columns]
    groups = (
        completed.groupby(list(grid_keys), sort=False, dropna=False)
        if grid_keys
        else [((), completed)]
    )
    records = []
    for key, group in groups:
        record: dict[str, Any] = dict(
            zip(grid_keys, key if isinstance(key, tuple) else (key,), strict=True)
        )
        record["runs"] = len(group)
        for column in present:
            values = group[column].dropna().to_numpy(float)
            n = len(values)
            mean = values.mean() if n else math.nan
            sd = values.std(ddof=1) if n > 1 else math.nan
            half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
            record.update(
                {
                    f"{column}_mean": mean,
                    f"{column}_sd": sd,
                    f"{column}_ci_low": mean - half,
                    f"{column}_ci_high": mean + half,
                }
            )
        records.append(record)
    return pd.DataFrame(records)


def read_runs(folder: str | Path) -> pd.DataFrame:
    """The ``runs.csv`` of a sweep folder (empty if no run has finished)."""
    path = Path(folder) / RUNS_NAME
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path, dtype={"run": str, "status": str, "error": str})
    table["error"] = table["error"].fillna("")
    return table


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
