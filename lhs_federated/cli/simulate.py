"""``lhs-fed simulate``: run a study on simulated sites with a live progress bar."""

from __future__ import annotations

import logging
import math
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lhs_federated.apps.run_config import BACKENDS
from lhs_federated.errors import ConfigError
from lhs_federated.research.report import REPORT_NAME
from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER
from lhs_federated.results.progress import RoundProgress
from lhs_federated.results.reader import RunResults
from lhs_federated.study import Study, load_study

console = Console(highlight=False)
if not console.is_terminal:  # pipes and CI logs: room for the results table
    console.width = max(console.width, 120)

# Column labels of the results table (calibration intercept: calibration-in-the-large).
SHORT_LABELS = {
    "n": "n",
    "prevalence": "prev",
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "accuracy": "acc",
    "balanced_accuracy": "bal.acc",
    "brier": "Brier",
    "calibration_slope": "slope",
    "calibration_intercept": "CITL",
    "ece": "ECE",
}


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are TOML (bare words are strings).

    Raises
    ------
    ConfigError
        If an assignment has no ``=``.
    """
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set rounds=20")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text
        overrides[key.strip()] = value
    return overrides


def load_with_overrides(study_path: Path | None, assignments: list[str]) -> Study:
    """The study a command names, with its ``--set`` overrides applied."""
    import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)

    study = load_study(study_path)
    overrides = parse_overrides(assignments)
    return study.with_overrides(overrides) if overrides else study


class _ProgressHandler(logging.Handler):
    """Draws the coordinator's round events on a Rich progress bar."""

    def __init__(self, progress: Progress, task: Any) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.task = task

    def emit(self, record: logging.LogRecord) -> None:
        event: RoundProgress | None = getattr(record, "lhs_progress", None)
        if event is None:
            return
        auroc = "n/a" if math.isnan(event.mean_auroc) else f"{event.mean_auroc:.3f}"
        self.progress.update(
            self.task,
            completed=event.round,
            total=event.rounds,
            sites=f"{event.sites_done}/{event.sites_total}",
            auroc=auroc,
        )
        for site, why in event.failed.items():
            self.progress.console.print(f"[yellow]round {event.round}: {site} {why}[/]")


@contextmanager
def round_progress(study: Study, *, enabled: bool):
    """Show a progress bar fed by the coordinator's progress events.

    Flower's and Ray's own INFO logging is quietened meanwhile, since the bar
    says the same more briefly.
    """
    quiet = {name: logging.getLogger(name) for name in ("flwr", "ray")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.WARNING)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("sites {task.fields[sites]}"),
        TextColumn("mean AUROC {task.fields[auroc]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )
    task = progress.add_task(study.name, total=study.rounds, sites="-", auroc="-")
    handler = _ProgressHandler(progress, task)
    previous_level = PROGRESS_LOGGER.level
    PROGRESS_LOGGER.setLevel(logging.INFO)
    PROGRESS_LOGGER.addHandler(handler)
    try:
        with progress:
            yield
    finally:
        PROGRESS_LOGGER.removeHandler(handler)
        PROGRESS_LOGGER.setLevel(previous_level)
        for name, logger in quiet.items():
            logger.setLevel(levels[name])


def results_table(results: RunResults) -> Table:
    """The final round's metrics per site, with the federation's means.

    A study with differential privacy gets a last column: the epsilon each
    site has spent on the study.
    """
    from lhs_federated.learning.metrics import (
        METRIC_NAMES,  # scikit-learn: only when there are results
    )

    final = results.summary["final"]
    privacy = results.summary.get("privacy")
    table = Table(
        title=f"{results.summary['study']}: final round, test splits", box=box.SIMPLE_HEAD
    )
    table.add_column("site", no_wrap=True)
    for metric in METRIC_NAMES:
        table.add_column(SHORT_LABELS[metric], justify="right", no_wrap=True)
    epsilon: dict[str, float | None] = {}
    if privacy:
        table.add_column("ε", justify="right", no_wrap=True)
        epsilon = privacy["epsilon"]

    def cell(value: float | None, metric: str) -> str:
        if value is None:
            return "—"
        return f"{value:.0f}" if metric == "n" else f"{value:.3f}"

    spent = [cell(epsilon.get(site), "ε") for site in final["per_site"]] if privacy else []
    for k, (site, values) in enumerate(final["per_site"].items()):
        extra = [spent[k]] if privacy else []
        table.add_row(site, *(cell(values.get(m), m) for m in METRIC_NAMES), *extra)
    for label, values in (("mean", final["mean"]), ("weighted mean", final["weighted_mean"])):
        cells = [cell(values.get(m), m) for m in METRIC_NAMES[1:]]
        table.add_row(f"[bold]{label}[/]", "", *cells, *([""] if privacy else []))
    return table


def comparison_table(results: RunResults) -> Table | None:
    """Federated vs pooled vs local-only per site and on average, with the gain."""
    comparison = results.summary.get("comparison")
    if comparison is None or "pooled" not in comparison["mean"]:
        return None
    columns = ("federated", "pooled", "local", "gain")
    table = Table(
        title="federated vs pooled (all rows in one place) vs local-only (each site alone)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("site", no_wrap=True)
    for metric in ("auroc", "accuracy"):
        for column in columns:
            table.add_column(f"{SHORT_LABELS[metric]}\n{column}", justify="right", no_wrap=True)

    def cell(value: float | None, column: str) -> str:
        if value is None:
            return "—"
        if column != "gain" or value == 0:
            return f"{value:.3f}" if column != "gain" else f"{value:+.3f}"
        return f"[{'green' if value > 0 else 'red'}]{value:+.3f}[/]"

    rows = [*comparison["per_site"].items(), ("[bold]mean[/]", comparison["mean"])]
    for site, values in rows:
        table.add_row(
            site,
            *(cell(values[c].get(m), c) for m in ("auroc", "accuracy") for c in columns),
        )
    return table


def simulate_command(
    study: Annotated[
        Path | None, typer.Argument(help="Study TOML file (default: the built-in default study).")
    ] = None,
    backend: Annotated[str, typer.Option(help=f"Engine: {' or '.join(BACKENDS)}.")] = "inprocess",
    out: Annotated[
        Path | None, typer.Option("--out", help="Results folder (default: runs/<study>-<time>/).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a study key, e.g. --set rounds=20 (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    coordinator_key: Annotated[
        Path | None,
        typer.Option(
            "--coordinator-key",
            help="Private key signing the run's ledger (default: a key for this run only).",
        ),
    ] = None,
) -> None:
    """Run a study on its simulated sites and print the per-site results."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    from lhs_federated.research.simulation import (
        simulate,  # PyTorch and Flower: only to run a study
    )

    resolved = load_with_overrides(study, set_ or [])
    with round_progress(resolved, enabled=not quiet):
        results = simulate(
            resolved,
            backend=backend,  # type: ignore[arg-type]
            out_dir=out,
            coordinator_key=coordinator_key,
        )
    console.print(results_table(results))
    console.print("slope: calibration slope; CITL: calibration-in-the-large (intercept)")
    comparison = comparison_table(results)
    if comparison is not None:
        console.print(comparison)
        console.print("gain: federated minus local-only, each site on its own test split")
    privacy = results.summary.get("privacy")
    if privacy:
        console.print(
            f"ε: {privacy['mode']} epsilon spent on this study (delta {privacy['delta']:g}, "
            f"target {privacy['target_epsilon']}); {privacy['note']}"
        )
    for site, reasons in results.summary["final"]["undefined"].items():
        for metric, reason in reasons.items():
            console.print(f"  — {site} {metric}: {reason}")
    console.print(f"study hash {results.summary['study_hash']}")
    console.print(f"results in [bold]{results.out_dir}[/]")
    ledger = results.summary["ledger"]
    console.print(
        f"ledger {ledger['file']} (final hash {ledger['final_hash'][:16]}…); "
        f"audit it with: lhs-fed audit report {results.out_dir}"
    )
    if (results.out_dir / REPORT_NAME).is_file():
        console.print(f"report: [bold]{results.out_dir / REPORT_NAME}[/]")
