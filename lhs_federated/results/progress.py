"""Progress events of a running study, sent through :mod:`logging` and the run folder.

The coordinator runs inside a Flower ServerApp (in this process for the
in-process and Ray engines, in a SuperLink's process in deployment), so it
reports progress as log records on the ``lhs_federated.progress`` logger
rather than by calling a display: the CLI attaches a handler that draws a
progress bar, a notebook can attach its own, and without a handler nothing is
printed. Every event is also appended to the run folder's ``events.jsonl``
(one JSON object a line), which is how ``lhs-fed server run`` and the
dashboard follow a run that lives in another process.

One small event type serves every kind: :class:`ProgressEvent` has a
``kind`` (``round``, ``step``, ``waiting``, ``run-started``, ...), one
human-readable ``message`` and a flat ``data`` dict of JSON values. New kinds
need no new class. The event rides on the log record as
``record.lhs_event``; a round also as ``record.lhs_progress`` (a
:class:`RoundProgress`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("lhs_federated.progress")
EVENTS_FILE = "events.jsonl"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ProgressEvent:
    """One thing a long command did or waits for.

    Attributes
    ----------
    kind : str
        What happened: ``round``, ``step`` (work after the rounds: baselines,
        report), ``waiting`` (for a process or sites), ``run-started``,
        ``run-finished``, ``run-failed``; other modules add their own.
    message : str
        One line for a person.
    data : dict
        The figures, as JSON values (a round's number, sites, mean AUROC...).
    at : str
        ISO 8601 UTC time.
    """

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``events.jsonl`` and printed by ``--json``."""
        return {"at": self.at, "kind": self.kind, "message": self.message, "data": self.data}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ProgressEvent:
        """Read an event back (from ``events.jsonl``)."""
        return cls(
            kind=str(payload["kind"]),
            message=str(payload.get("message", "")),
            data=dict(payload.get("data") or {}),
            at=str(payload.get("at", "")),
        )


@dataclass(frozen=True)
class RoundProgress:
    """One finished round."""

    study: str
    round: int
    rounds: int
    sites_done: int
    sites_total: int
    mean_auroc: float
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs."""
        auroc = "n/a" if math.isnan(self.mean_auroc) else f"{self.mean_auroc:.3f}"
        text = (
            f"{self.study}: round {self.round}/{self.rounds}, "
            f"{self.sites_done}/{self.sites_total} sites trained, mean AUROC {auroc}"
        )
        if self.failed:
            text += "; " + "; ".join(f"{site} {why}" for site, why in self.failed.items())
        return text

    def as_event(self) -> ProgressEvent:
        """The round as a general event (NaN AUROC becomes null)."""
        return ProgressEvent(
            "round",
            self.describe(),
            {
                "study": self.study,
                "round": self.round,
                "rounds": self.rounds,
                "sites_done": self.sites_done,
                "sites_total": self.sites_total,
                "mean_auroc": None if math.isnan(self.mean_auroc) else self.mean_auroc,
                "failed": dict(self.failed),
            },
        )

    @classmethod
    def from_event(cls, event: ProgressEvent) -> RoundProgress:
        """A ``round`` event read back (from ``events.jsonl``)."""
        data = event.data
        auroc = data.get("mean_auroc")
        return cls(
            study=str(data.get("study", "")),
            round=int(data["round"]),
            rounds=int(data["rounds"]),
            sites_done=int(data.get("sites_done", 0)),
            sites_total=int(data.get("sites_total", 0)),
            mean_auroc=math.nan if auroc is None else float(auroc),
            failed=dict(data.get("failed") or {}),
        )


def report_progress(
    event: RoundProgress | ProgressEvent, *, run_dir: str | Path | None = None
) -> None:
    """Log ``event`` at INFO on the progress logger and append it to the run's events file.

    Parameters
    ----------
    event : RoundProgress or ProgressEvent
        What happened.
    run_dir : str or Path, optional
        The run folder; its ``events.jsonl`` gets the event (flushed and synced,
        so a follower in another process sees it at once and a crash keeps it).
    """
    general = event.as_event() if isinstance(event, RoundProgress) else event
    if run_dir is not None:
        append_event(Path(run_dir) / EVENTS_FILE, general)
    extra: dict[str, Any] = {"lhs_event": general}
    if isinstance(event, RoundProgress):
        extra["lhs_progress"] = event
    LOGGER.info("%s", general.message, extra=extra)


def append_event(path: Path, event: ProgressEvent) -> None:
    """Append one event as a JSON line, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(event.to_dict(), default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_events(path: str | Path, *, offset: int = 0) -> tuple[list[ProgressEvent], int]:
    """Events appended to ``path`` since byte ``offset``; returns them and the new offset.

    A last line still being written (no newline yet) is left for the next call.
    """
    try:
        with Path(path).open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    events = []
    for line in complete.splitlines():
        try:
            events.append(ProgressEvent.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return events, offset + len(complete)
