"""``lhs-fed data``: check tables against a contract, make example data, fetch UCI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lhs_federated.data.contract import builtin_contract_text, contract_from
from lhs_federated.data.io import read_table, write_table
from lhs_federated.data.synthetic import SyntheticCohort, generate_cohort
from lhs_federated.data.uci_heart import UCI_BASE_URL, download_uci_heart
from lhs_federated.data.validation import validate_table
from lhs_federated.errors import EXIT_BAD_INPUT, ConfigError

app = typer.Typer(
    help="Data contracts, example data and the UCI Heart Disease files.", no_args_is_help=True
)
console = Console(highlight=False)


@app.command("validate")
def validate_command(
    files: Annotated[list[Path], typer.Argument(help="Site tables (CSV, TSV or Parquet).")],
    contract: Annotated[
        str, typer.Option("--contract", "-c", help="Contract TOML file or built-in contract name.")
    ],
) -> None:
    """Check site tables against a data contract and list every problem found."""
    resolved = contract_from(contract, base_dir=None)
    failed = False
    for file in files:
        table = read_table(file, na_values=resolved.na_values)
        report = validate_table(table, resolved, file=str(file))
        verdict = (
            "[green]meets the contract[/]" if report.ok else "[red]does not meet the contract[/]"
        )
        console.print(f"[bold]{file}[/]: {report.n_rows} rows, {verdict}")
        if report.findings:
            findings = Table(show_header=True)
            for column in ("severity", "column", "problem"):
                findings.add_column(column)
            for finding in report.findings:
                text = str(finding).removeprefix(f"{finding.file}: {finding.column}: ")
                findings.add_row(finding.severity, finding.column, text)
            console.print(findings)
        failed |= not report.ok
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the site tables and contract.")],
    sites: Annotated[int, typer.Option(help="Number of sites.", min=1, max=200)] = 4,
    rows_per_site: Annotated[int, typer.Option(help="Average patients per site.", min=20)] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the cohort.")] = 42,
    file_format: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Write a synthetic multi-site cohort: one table per site plus contract.toml.

    A site's data team can open these to see what its own export must look like.
    """
    if file_format not in ("csv", "parquet"):
        raise ConfigError(f"--format must be csv or parquet; got {file_format!r}.")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out folder {str(out)!r} already exists and is not empty.")
    out.mkdir(parents=True, exist_ok=True)
    cohort = SyntheticCohort(sites=sites, rows_per_site=rows_per_site)
    for name, table in generate_cohort(cohort, seed=seed).items():
        write_table(table, out / f"{name}.{file_format}")
        console.print(f"{out / f'{name}.{file_format}'}: {len(table)} rows")
    (out / "contract.toml").write_text(builtin_contract_text("cardio-risk"), encoding="utf-8")
    console.print(f"{out / 'contract.toml'}: the data contract these tables meet")


@app.command("download-uci")
def download_uci_command(
    folder: Annotated[Path, typer.Argument(help="Folder for the four processed.*.data files.")],
    base_url: Annotated[str, typer.Option(help="Address of the files' folder.")] = UCI_BASE_URL,
) -> None:
    """Download the UCI Heart Disease files (four hospitals), checking their MD5."""
    for path in download_uci_heart(folder, base_url=base_url):
        console.print(f"{path}: MD5 verified")
