"""``lhs-fed simulate``: run a study on simulated sites with a live progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lhs_federated.apps.run_config import BACKENDS
from lhs_federated.cli.progress_display import mode_of, print_result, progress_display
from lhs_federated.cli.study_input import load_with_overrides
from lhs_federated.errors import ConfigError

if TYPE_CHECKING:
    from lhs_federated.results.reader import RunResults

REPORT_NAME = "report.html"  # lhs_federated.research.report.REPORT_NAME, without pandas

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
    "auroc_ci_low": "AUROC low",
    "auroc_ci_high": "AUROC high",
}


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
    shown = [m for m in METRIC_NAMES if not m.startswith("auroc_ci")]
    left_out = final.get("left_out", {})
    table = Table(
        title=f"{results.summary['study']}: final round, test splits", box=box.SIMPLE_HEAD
    )
    table.add_column("site", no_wrap=True)
    for metric in shown:
        table.add_column(SHORT_LABELS[metric], justify="right", no_wrap=True)
    table.add_column("AUROC 95% CI", justify="right", no_wrap=True)
    epsilon: dict[str, float | None] = {}
    if privacy:
        table.add_column("ε", justify="right", no_wrap=True)
        epsilon = privacy["epsilon"]

    def cell(value: float | None, metric: str) -> str:
        if value is None:
            return "—"
        return f"{value:.0f}" if metric == "n" else f"{value:.3f}"

    def interval(values: dict[str, float | None]) -> str:
        low, high = values.get("auroc_ci_low"), values.get("auroc_ci_high")
        return "—" if low is None or high is None else f"{low:.2f}–{high:.2f}"

    spent = [cell(epsilon.get(site), "ε") for site in final["per_site"]] if privacy else []
    for k, (site, values) in enumerate(final["per_site"].items()):
        extra = [spent[k]] if privacy else []
        label = f"{site} *" if site in left_out else site
        table.add_row(
            escape(label), *(cell(values.get(m), m) for m in shown), interval(values), *extra
        )
    for label, values in (("mean", final["mean"]), ("weighted mean", final["weighted_mean"])):
        cells = [cell(values.get(m), m) for m in shown[1:]]
        table.add_row(f"[bold]{label}[/]", "", *cells, "", *([""] if privacy else []))
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

    left_out = results.summary["final"].get("left_out", {})
    rows = [
        *(
            (escape(f"{site} *" if site in left_out else site), v)
            for site, v in comparison["per_site"].items()
        ),
        ("[bold]mean[/]", comparison["mean"]),
    ]
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
    quiet: Annotated[bool, typer.Option(help="No progress bar (warnings only).")] = False,
    json_lines: Annotated[
        bool,
        typer.Option(
            "--json", help="Print progress events as JSON lines, then the results' location."
        ),
    ] = False,
    coordinator_key: Annotated[
        Path | None,
        typer.Option(
            "--coordinator-key",
            help="Private key signing the run's ledger (default: a key for this run only).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --backend ray: the Ray cluster's head (host:port or ray://host:10001; "
            "default: RAY_ADDRESS, else Ray on this machine).",
        ),
    ] = None,
) -> None:
    """Run a study on its simulated sites and print the per-site results."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    if ray_address is not None and backend != "ray":
        raise ConfigError(
            f"--ray-address {ray_address!r} names a Ray cluster, which only --backend ray "
            f"uses; got --backend {backend!r}."
        )
    from lhs_federated.research.simulation import (
        simulate,  # PyTorch and Flower: only to run a study
    )

    resolved = load_with_overrides(study, set_ or [])
    mode = mode_of(quiet=quiet, json_lines=json_lines)
    with progress_display(resolved.name, resolved.rounds, mode=mode, console=console):
        results = simulate(
            resolved,
            backend=backend,  # type: ignore[arg-type]
            out_dir=out,
            coordinator_key=coordinator_key,
            ray_address=ray_address,
        )
    if json_lines:
        print_result(
            f"results in {results.out_dir}",
            {"out_dir": str(results.out_dir), "summary": str(results.out_dir / "summary.json")},
        )
        return
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
    from lhs_federated.results.notes import run_notes

    for note in run_notes(results.summary):
        console.print(f"note: {note}", markup=False)
    for site, reasons in results.summary["final"]["undefined"].items():
        for metric, reason in reasons.items():
            console.print(f"  — {site} {metric}: {reason}", markup=False)
    console.print(f"study hash {results.summary['study_hash']}")
    console.print(f"results in [bold]{escape(str(results.out_dir))}[/]")
    ledger = results.summary["ledger"]
    console.print(
        f"ledger {ledger['file']} (study-finished {ledger['finished_hash'][:16]}…, sealed "
        f"at record {ledger['sealed_seq']}); "
        f"audit it with: lhs-fed audit report {results.out_dir}"
    )
    if (results.out_dir / REPORT_NAME).is_file():
        console.print(f"report: [bold]{escape(str(results.out_dir / REPORT_NAME))}[/]")
