"""Run folders read back for the dashboard: status, rounds, per-site metrics, events.

The dashboard shows only what a run already wrote to its own files (which
are under disclosure control when written: counts below the minimum cell size
are withheld there, metrics a site could not compute carry a reason), so
nothing here computes a statistic on patient rows. A run may be under way or
may have crashed half way: every reader tolerates a missing file, a table cut
in the middle of a row and a JSON file that does not parse, and says so
instead of failing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhs_federated.errors import ConfigError

STUDY_FILE = "study.resolved.toml"
EVENTS_FILE = "events.jsonl"
#: Files whose change means the run moved on (what the live view watches).
WATCHED = (
    "rounds.csv",
    "metrics.csv",
    EVENTS_FILE,
    "summary.json",
    "failure.json",
    "report.html",
)
#: A run with neither summary.json nor failure.json and no write for this long has stopped.
STALE_AFTER = 300.0
#: Metrics the run page tabulates per site, in this order.
SITE_METRICS = ("auroc", "auprc", "brier", "calibration_slope", "ece")
#: What may be served from a run folder: tables, reports, plots; never pickles or keys.
SERVED_SUFFIXES = (".csv", ".json", ".jsonl", ".html", ".png", ".svg", ".toml", ".txt")


class NotServedError(ConfigError):
    """A run or file the dashboard was asked for that it does not serve."""


@dataclass
class RoundRow:
    """One row of ``rounds.csv``."""

    round: int
    seconds: float
    trained: list[str]
    failed: dict[str, str]
    mean_auroc: float | None


@dataclass
class RunView:
    """What the dashboard shows of one run folder.

    Attributes
    ----------
    run_id : str
        The folder's path below the runs folder (``/``-separated).
    status : str
        ``completed``, ``failed``, ``running`` or ``stopped`` (neither outcome
        file and nothing written for :data:`STALE_AFTER` seconds).
    rounds_total : int
        The study's number of rounds.
    rounds : list of RoundRow
        Finished rounds.
    metrics : dict
        ``{round: {site: {metric: (value or None, reason)}}}`` on the test splits.
    warnings : list of str
        What could not be read, and why (a half-written file, bad JSON).
    """

    run_id: str
    path: Path
    study_name: str = "?"
    description: str = ""
    rounds_total: int = 0
    min_cell_size: int | None = None
    privacy: str = "none"
    epsilon_budget: float | None = None
    status: str = "running"
    last_change: float = 0.0
    rounds: list[RoundRow] = field(default_factory=list)
    metrics: dict[int, dict[str, dict[str, tuple[float | None, str]]]] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    failure: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def current_round(self) -> int:
        """The last finished round (0 before the first)."""
        return self.rounds[-1].round if self.rounds else 0

    @property
    def sites(self) -> list[str]:
        """Every site named by a round or a metric, sorted."""
        names = {s for r in self.rounds for s in (*r.trained, *r.failed)}
        names |= {s for per_site in self.metrics.values() for s in per_site}
        return sorted(names)

    @property
    def latest_metrics(self) -> dict[str, dict[str, tuple[float | None, str]]]:
        """Per-site test metrics of the last evaluated round."""
        return self.metrics[max(self.metrics)] if self.metrics else {}

    @property
    def has_report(self) -> bool:
        """Whether the run wrote its HTML report."""
        return (self.path / "report.html").is_file()

    @property
    def has_ledger(self) -> bool:
        """Whether the run has a coordinator ledger to audit."""
        return (self.path / "governance" / "coordinator.jsonl").is_file()

    def progress(self) -> dict[str, Any]:
        """The figures the live view updates (sent as a server-sent event)."""
        last = self.rounds[-1] if self.rounds else None
        return {
            "run": self.run_id,
            "status": self.status,
            "round": self.current_round,
            "rounds": self.rounds_total,
            "trained": len(last.trained) if last else 0,
            "sites": len(last.trained) + len(last.failed) if last else 0,
            "mean_auroc": None if last is None else last.mean_auroc,
            "failure": self.failure,
        }


def fingerprint(run_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Sizes and modification times of the watched files: changes when the run moves on."""
    found = []
    for name in WATCHED:
        try:
            stat = (run_dir / name).stat()
        except OSError:
            continue
        found.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class RunsFolder:
    """The folder of run folders the dashboard was given, and nothing outside it.

    Parameters
    ----------
    root : Path
        A folder of run folders (``runs/``, a coordinator's ``state/runs``);
        runs may sit one level deeper (a sweep's folder of runs).

    Raises
    ------
    ConfigError
        If ``root`` is not a folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ConfigError(
                f"runs folder {str(root)!r} does not exist or is not a folder; pass the "
                "folder that holds your run folders (e.g. --runs runs) or --server server.toml."
            )

    def run_ids(self) -> list[str]:
        """Run folders below the root (those holding a resolved study), newest first."""
        found = [*self.root.glob(f"*/{STUDY_FILE}"), *self.root.glob(f"*/*/{STUDY_FILE}")]
        if (self.root / STUDY_FILE).is_file():
            found.append(self.root / STUDY_FILE)
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [_run_id(self.root, study.parent) for study in found]

    def run_dir(self, run_id: str) -> Path:
        """The folder of run ``run_id``, checked to lie inside the root.

        Raises
        ------
        NotServedError
            If ``run_id`` leaves the root, or names no run folder.
        """
        path = _inside(self.root, run_id, what="run")
        if not (path / STUDY_FILE).is_file():
            raise NotServedError(f"no run {run_id!r} in {self.root}")
        return path

    def file(self, run_id: str, name: str) -> Path:
        """A result file of a run, checked to lie inside that run's folder.

        Raises
        ------
        NotServedError
            If the name leaves the run folder, is not a file or is not of a
            kind the dashboard serves (tables, reports, plots).
        """
        run_dir = self.run_dir(run_id)
        path = _inside(run_dir, name, what="file")
        if not path.is_file() or path.suffix.lower() not in SERVED_SUFFIXES:
            raise NotServedError(f"run {run_id!r} has no file {name!r} the dashboard serves")
        return path

    def read(self, run_id: str) -> RunView:
        """Everything the run page shows of one run (see :func:`read_run`)."""
        return read_run(self.run_dir(run_id), run_id)


def _run_id(root: Path, run_dir: Path) -> str:
    relative = run_dir.relative_to(root).as_posix()
    return "." if relative in ("", ".") else relative


def _inside(base: Path, relative: str, *, what: str) -> Path:
    """``base / relative`` resolved (symbolic links too), refused unless inside ``base``."""
    if "\x00" in relative or Path(relative).is_absolute():
        raise NotServedError(f"no {what} {relative!r}")
    path = (base / relative).resolve()
    if path != base and base not in path.parents:
        raise NotServedError(f"no {what} {relative!r}")
    return path


def read_run(run_dir: Path, run_id: str) -> RunView:
    """Read one run folder, tolerating what a crash leaves half written."""
    view = RunView(run_id=run_id, path=run_dir)
    _read_study(view)
    view.rounds = _read_rounds(run_dir / "rounds.csv", view.warnings)
    view.metrics, view.epsilon = _read_metrics(run_dir / "metrics.csv", view.warnings)
    view.summary = _read_json(run_dir / "summary.json", view.warnings)
    failure = _read_json(run_dir / "failure.json", view.warnings)
    view.failure = str(failure.get("error")) if failure else None
    view.events = read_events(run_dir / EVENTS_FILE, view.warnings)
    stamps = [s[2] for s in fingerprint(run_dir)]
    view.last_change = max(stamps) / 1e9 if stamps else (run_dir / STUDY_FILE).stat().st_mtime
    if view.summary is not None:
        view.status = "completed"
    elif failure is not None:
        view.status = "failed"
    elif time.time() - view.last_change > STALE_AFTER:
        view.status = "stopped"
        view.warnings.append(
            "neither summary.json nor failure.json, and nothing written for "
            f"{(time.time() - view.last_change) / 60:.0f} min: the run stopped without "
            "finishing (a crash?); its finished rounds are below."
        )
    return view


def _read_study(view: RunView) -> None:
    try:
        study = tomllib.loads((view.path / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        view.warnings.append(f"{STUDY_FILE} could not be read ({exc})")
        return
    view.study_name = str(study.get("name", "?"))
    view.description = str(study.get("description", ""))
    view.rounds_total = int(study.get("rounds", 0))
    sites = study.get("sites", {})
    view.min_cell_size = sites.get("min_cell_size")
    view.privacy = str(study.get("privacy", {}).get("mode", "none"))
    if view.privacy == "sample-dp":
        view.epsilon_budget = sites.get("epsilon_budget")


def _rows(path: Path, warnings: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV table; a last row cut short by a crash is dropped with a warning."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name} could not be read ({exc})")
        return []
    if text and not text.endswith("\n"):
        warnings.append(f"{path.name} ends in the middle of a row (still being written?)")
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    return [row for row in reader if None not in row and None not in row.values()]


def _read_rounds(path: Path, warnings: list[str]) -> list[RoundRow]:
    rounds = []
    for row in _rows(path, warnings):
        try:
            failed = dict(part.split(": ", 1) for part in row["failed"].split("; ") if ": " in part)
            rounds.append(
                RoundRow(
                    round=int(row["round"]),
                    seconds=float(row["seconds"]),
                    trained=row["trained"].split(),
                    failed=failed,
                    mean_auroc=float(row["mean_auroc"]) if row["mean_auroc"] else None,
                )
            )
        except (KeyError, ValueError):
            warnings.append(f"{path.name}: a row could not be read ({row!r}); skipped")
    return rounds


def _read_metrics(
    path: Path, warnings: list[str]
) -> tuple[dict[int, dict[str, dict[str, tuple[float | None, str]]]], dict[str, float]]:
    metrics: dict[int, dict[str, dict[str, tuple[float | None, str]]]] = {}
    epsilon: dict[str, float] = {}
    for row in _rows(path, warnings):
        try:
            rnd, value = int(row["round"]), float(row["value"]) if row["value"] else None
        except (KeyError, ValueError):
            warnings.append(f"{path.name}: a row could not be read ({row!r}); skipped")
            continue
        if value is not None and math.isnan(value):
            value = None
        if row["split"] == "test":
            metrics.setdefault(rnd, {}).setdefault(row["site"], {})[row["metric"]] = (
                value,
                row.get("reason", ""),
            )
        elif row["split"] == "privacy" and row["metric"] == "epsilon" and value is not None:
            epsilon[row["site"]] = value
    return metrics, epsilon


def _read_json(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{path.name} is not valid JSON ({exc}): half written?")
        return None
    if not isinstance(payload, dict):
        warnings.append(f"{path.name} does not hold a JSON object")
        return None
    return payload


def read_events(path: Path, warnings: list[str], *, last: int = 200) -> list[dict[str, Any]]:
    """The last ``last`` progress events of a run's ``events.jsonl`` (one JSON object a line).

    A line cut short by a crash, or one that is not a JSON object, is skipped.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name} could not be read ({exc})")
        return []
    events = []
    for line in lines[-last:]:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "kind" in event:
            events.append(event)
    return events
