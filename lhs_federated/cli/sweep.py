"""``lhs-fed sweep``: run a grid of simulated studies with confidence intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from lhs_federated.cli.progress_display import mode_of, print_result, progress_display
from lhs_federated.cli.simulate import console
from lhs_federated.errors import StudyRunError
from lhs_federated.research.report import REPORT_NAME
from lhs_federated.research.sweep import Sweep, load_sweep, run_sweep


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
    quiet: Annotated[bool, typer.Option(help="No progress bar (warnings only).")] = False,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="Print each finished run as a JSON line, then the folder."),
    ] = False,
) -> None:
    """Run a grid of simulated studies (resuming finished runs) and aggregate over seeds."""
    sweep = load_sweep(sweep_file)
    mode = mode_of(quiet=quiet, json_lines=json_lines)
    with progress_display(
        sweep.spec.name, len(sweep.runs), mode=mode, console=console, unit="runs"
    ):
        rows, aggregate, folder = run_sweep(sweep, out, workers=workers)
    failed = rows[rows["status"] != "completed"] if len(rows) else rows
    if json_lines:
        print_result(
            f"sweep {sweep.spec.name}: {len(rows) - len(failed)} of {len(rows)} runs completed",
            {
                "folder": str(folder),
                "runs": str(folder / "runs.csv"),
                "aggregate": str(folder / "aggregate.csv"),
                "report": str(folder / REPORT_NAME),
                "failed": [str(r) for r in failed["run"]] if len(failed) else [],
            },
        )
        if len(failed):
            raise StudyRunError(f"{len(failed)} of {len(rows)} runs failed (see runs.csv).")
        return
    console.print(aggregate_table(aggregate, sweep))
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
