"""One line of truth for long commands: a live bar, JSON lines, or quiet.

Long commands (``simulate``, ``server run``, ``server start``) show the
coordinator's progress events (:mod:`lhs_federated.results.progress`) as a
Rich progress bar, with every log line (ours and Flower's) printed above it
through Rich's logging handler on the same console, never into the bar.
``--json`` prints each event as one JSON object a line on stdout (logs go to
stderr), and the command's outcome as a last line of the same shape (kind
``result``, see :func:`print_result`); ``--quiet`` prints warnings only. While
a display is open, Flower's own console handler is set aside so that each line
prints once.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER
from lhs_federated.results.progress import ProgressEvent, RoundProgress

Mode = Literal["bar", "lines", "json", "quiet"]
#: What the bar counts: a study's rounds, or a sweep's runs.
Unit = Literal["rounds", "runs"]
#: Loggers whose INFO lines the bar says more briefly; their warnings still show.
CHATTY = ("flwr", "ray")


def mode_of(*, quiet: bool, json_lines: bool, bar: bool = True) -> Mode:
    """The display mode the ``--quiet`` / ``--json`` flags ask for."""
    if json_lines:
        return "json"
    if quiet:
        return "quiet"
    return "bar" if bar else "lines"


class Display:
    """Shows progress events one way (see :func:`progress_display`)."""

    def __init__(
        self, mode: Mode, console: Console, title: str, total: int | None, unit: Unit = "rounds"
    ) -> None:
        self.mode = mode
        self.title = title
        self.console = console
        self.unit = unit
        columns = (
            [TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
             TextColumn("sites {task.fields[sites]}"),
             TextColumn("mean AUROC {task.fields[auroc]}")]
            if unit == "rounds"
            else [TextColumn("{task.completed:.0f}/{task.total:.0f} runs")]
        )  # fmt: skip
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            *columns,
            TimeElapsedColumn(),
            console=console,
            disable=mode != "bar",
        )
        self.task = self.progress.add_task(title, total=total, sites="-", auroc="-")

    def show(self, event: ProgressEvent) -> None:
        """Show one event."""
        if self.unit == "runs" and event.kind in ("round", "step"):
            return  # a sweep's bar counts runs; the rounds inside them are not its news
        if self.mode == "json":
            sys.stdout.write(json.dumps(event.to_dict(), default=str) + "\n")
            sys.stdout.flush()
        elif self.mode == "lines":
            self.console.print(f"[dim]{event.at[11:19]}[/] {escape(event.message)}", soft_wrap=True)
        elif self.mode == "bar":
            self._draw(event)

    def _draw(self, event: ProgressEvent) -> None:
        if event.kind == "round":
            done = RoundProgress.from_event(event)
            auroc = event.data.get("mean_auroc")
            self.progress.update(
                self.task,
                description=self.title,  # the wait a step named is over
                completed=done.round,
                total=done.rounds,
                sites=f"{done.sites_done}/{done.sites_total}",
                auroc="n/a" if auroc is None else f"{auroc:.3f}",
            )
            for site, why in done.failed.items():
                self.console.print(f"[yellow]round {done.round}: {escape(site)} {escape(why)}[/]")
        elif event.kind == "sweep-run":
            self.progress.update(self.task, completed=event.data["done"], total=event.data["total"])
            if event.data["status"] != "completed":
                self.console.print(f"[yellow]run {escape(event.data['run_id'])} failed[/]")
        elif event.kind == "run-failed":
            self.console.print(f"[red]{escape(event.message)}[/]")
        else:  # the line prints once, above; the bar names only the step
            if event.kind in ("step", "waiting"):
                step = event.data.get("step") or event.kind
                self.progress.update(self.task, description=f"{self.title} ({step})")
            self.console.print(f"[dim]{event.at[11:19]}[/] {escape(event.message)}", soft_wrap=True)


def print_result(message: str, data: dict[str, Any]) -> None:
    """A ``--json`` command's last line: its outcome, shaped like every event before it.

    ``{"at", "kind": "result", "message", "data"}``, so a reader parses every
    line the same way and finds the outcome (a results folder, a consortium's
    files) under ``data``.
    """
    sys.stdout.write(json.dumps(ProgressEvent("result", message, data).to_dict()) + "\n")
    sys.stdout.flush()


class _EventHandler(logging.Handler):
    def __init__(self, display: Display) -> None:
        super().__init__(logging.INFO)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "lhs_event", None)
        if event is not None:
            self.display.show(event)


@contextmanager
def progress_display(
    title: str, total: int | None, *, mode: Mode, console: Console, unit: Unit = "rounds"
) -> Iterator[Display]:
    """Show this process's progress events, and route every log line above them.

    Parameters
    ----------
    title : str
        The bar's label (the study's name).
    total : int or None
        Rounds (or runs) expected (None when not yet known).
    mode : str
        ``bar``, ``lines`` (one line per event), ``json`` or ``quiet``.
    console : Console
        Where the bar and log lines go (stdout); JSON mode logs to stderr.
    unit : str
        ``rounds`` (a study) or ``runs`` (a sweep).
    """
    display = Display(mode, console, title, total, unit)
    log_console = Console(stderr=True) if mode == "json" else console
    handler = RichHandler(console=log_console, show_path=False, rich_tracebacks=False)
    handler.setLevel(logging.WARNING if mode in ("quiet", "json") else logging.INFO)
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    chatty = {name: logging.getLogger(name) for name in CHATTY}
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in chatty.items()}
    events = _EventHandler(display)
    saved_progress = (PROGRESS_LOGGER.level, PROGRESS_LOGGER.propagate)
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for logger in chatty.values():
        logger.handlers = []  # Flower's own console handler would print each line again
        logger.setLevel(logging.WARNING)
        logger.propagate = True
    PROGRESS_LOGGER.addHandler(events)
    PROGRESS_LOGGER.setLevel(logging.INFO)
    PROGRESS_LOGGER.propagate = False  # events are drawn, not logged twice
    try:
        with display.progress:
            yield display
    finally:
        PROGRESS_LOGGER.removeHandler(events)
        PROGRESS_LOGGER.setLevel(saved_progress[0])
        PROGRESS_LOGGER.propagate = saved_progress[1]
        root.handlers, _ = saved_root
        root.setLevel(saved_root[1])
        for name, logger in chatty.items():
            logger.handlers, level, logger.propagate = saved[name]
            logger.setLevel(level)
