"""``lhs-fed sweep``: run a grid of simulated studies with confidence intervals."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lhs_federated.cli.simulate import console
from lhs_federated.errors import StudyRunError
from lhs_federated.research.report import REPORT_NAME
from lhs_federated.research.sweep import Sweep, SweepProgress, load_sweep, run_sweep
from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER


class _SweepHandler(logging.Handler):
    """Advances the progress bar as runs finish; reports failed runs."""

    def __init__(self, progress: Progress, task: Any) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.task = task

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "lhs_progress", None)
        if not isinstance(event, SweepProgress):
            return  # round events of runs executed in this process
        self.progress.update(self.task, completed=event.done, total=event.total)
        if event.status != "completed":
            self.progress.console.print(f"[yellow]run {event.run_id} failed[/]")


@contextmanager
def sweep_progress(sweep: Sweep, *, enabled: bool):
    """A progress bar over the sweep's runs."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )
    task = progress.add_task(sweep.spec.name, total=len(sweep.runs))
    handler = _SweepHandler(progress, task)
    previous = PROGRESS_LOGGER.level
    PROGRESS_LOGGER.setLevel(logging.INFO)
    PROGRESS_LOGGER.addHandler(handler)
    try:
        with progress:
            yield
    finally:
        PROGRESS_LOGGER.removeHandler(handler)
        PROGRESS_LOGGER.setLevel(previous)


def aggregate_table(aggregate: pd.DataFrame, sweep: Sweep) -> Table:
    """Per configuration: runs, and mean ± 95% CI half-width of the plotted columns."""
    keys = [k for k in sweep.spec.grid if k != "seed"]
    columns = list(sweep.spec.plot)
    table = Table(
        title=f"{sweep.spec.name}: mean ± 95% CI half-width over seeds", box=box.SIMPLE_HEAD
    )
    for key in keys:
        table.add_column(key.rsplit(".", 1)[-1], no_wrap=True)
    table.add_column("runs", justify="right")
    for column in columns:
        table.add_column(column.replace("_", "\n", 1), justify="right", no_wrap=True)

    def cell(row: pd.Series, column: str) -> str:
        mean, high = row.get(f"{column}_mean"), row.get(f"{column}_ci_high")
        if mean is None or pd.isna(mean):
            return "—"
        return f"{mean:.3f}" if pd.isna(high) else f"{mean:.3f} ±{high - mean:.3f}"

    for _, row in aggregate.iterrows():
        table.add_row(
            *(str(row[k]) for k in keys), str(int(row["runs"])), *(cell(row, c) for c in columns)
        )
    return table


def sweep_command(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep TOML file.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Sweep folder (default: runs/sweeps/<name>/); resumed if it exists."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: one per core).", min=1)
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Run a grid of simulated studies (resuming finished runs) and aggregate over seeds."""
    sweep = load_sweep(sweep_file)
    with sweep_progress(sweep, enabled=not quiet):
        rows, aggregate, folder = run_sweep(sweep, out, workers=workers)
    console.print(aggregate_table(aggregate, sweep))
    failed = rows[rows["status"] != "completed"] if len(rows) else rows
    for _, row in failed.iterrows():
        console.print(f"[red]run {escape(str(row['run']))} failed:[/] {escape(str(row['error']))}")
    console.print(
        f"runs: [bold]{folder / 'runs.csv'}[/]; aggregate: [bold]{folder / 'aggregate.csv'}[/]"
    )
    console.print(f"report: [bold]{folder / REPORT_NAME}[/]")
    if len(failed):
        raise StudyRunError(
            f"{len(failed)} of {len(rows)} runs failed (reasons above and in runs.csv); "
            "re-run the same command to retry them: finished runs are skipped."
        )
