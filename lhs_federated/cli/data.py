"""``lhs-fed data``: check tables against a contract, draft a contract, make example data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lhs_federated.data.contract import DataContract, builtin_contract_text, contract_from
from lhs_federated.data.encoding import prepare_table
from lhs_federated.data.infer import contract_toml, infer_contract
from lhs_federated.data.io import CsvDialect, read_table, write_table
from lhs_federated.data.synthetic import SyntheticCohort, generate_cohort
from lhs_federated.data.uci_heart import UCI_BASE_URL, download_uci_heart
from lhs_federated.data.validation import (
    Finding,
    ValidationReport,
    training_size_findings,
    validate_table,
)
from lhs_federated.errors import EXIT_BAD_INPUT, ConfigError, DataError
from lhs_federated.privacy.spec import PrivacySpec
from lhs_federated.study import DataSpec, SitesSpec

app = typer.Typer(
    help="Data contracts, example data and the UCI Heart Disease files.", no_args_is_help=True
)
console = Console(highlight=False)

SeparatorOption = Annotated[
    str | None,
    typer.Option(help="CSV field separator: auto (detected), ',', ';', tab or '|'."),
]
DecimalOption = Annotated[
    str | None, typer.Option(help="CSV decimal mark: auto (detected), '.' or ','.")
]


def _dialect(separator: str | None, decimal: str | None) -> tuple[str, str]:
    """The separator and decimal mark named on the command line, checked."""
    separator = {"tab": "\t", "\\t": "\t"}.get(separator or "auto", separator or "auto")
    decimal = decimal or "auto"
    if separator not in ("auto", ",", ";", "\t", "|"):
        raise ConfigError(f"--separator must be auto, ',', ';', tab or '|'; got {separator!r}.")
    if decimal not in ("auto", ".", ","):
        raise ConfigError(f"--decimal must be auto, '.' or ','; got {decimal!r}.")
    return separator, decimal


@app.command("validate")
def validate_command(
    files: Annotated[list[Path], typer.Argument(help="Site tables (CSV, TSV or Parquet).")],
    contract: Annotated[
        str | None,
        typer.Option("--contract", "-c", help="Contract TOML file or built-in contract name."),
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option(
            "--study",
            help="A study TOML: its contract, test_fraction, privacy.min_train_rows, "
            "sites.min_cell_size and CSV settings.",
        ),
    ] = None,
    separator: SeparatorOption = None,
    decimal: DecimalOption = None,
) -> None:
    """Check site tables against a data contract and list every problem found.

    Beside the contract's rules, a table is flagged (as a warning) when its
    rows are too few for a site to train on, or hold few cases of one outcome.
    """
    resolved, privacy, min_cell_size, test_fraction, csv = _validation_settings(contract, study)
    separator, decimal = _dialect(separator or csv[0], decimal or csv[1])
    failed = False
    for file in files:
        table = read_table(
            file,
            na_values=resolved.na_values,
            separator=separator,  # type: ignore[arg-type]
            decimal=decimal,  # type: ignore[arg-type]
        )
        report = validate_table(table, resolved, file=str(file))
        if report.ok:
            report.findings += _site_findings(
                table,
                resolved,
                report,
                rows_to_train=privacy.rows_to_train(min_cell_size),
                min_cell_size=min_cell_size,
                test_fraction=test_fraction,
            )
        _print_report(file, report, table.attrs.get("dialect"))
        failed |= not report.ok
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _validation_settings(
    contract: str | None, study_path: Path | None
) -> tuple[DataContract, PrivacySpec, int, float, tuple[str, str]]:
    """The contract and site thresholds: the study's if named, else the defaults."""
    if study_path is not None:
        from lhs_federated.cli.study_input import load_with_overrides

        study = load_with_overrides(study_path, [])
        resolved = contract_from(contract, base_dir=None) if contract else study.contract
        csv = (study.data.csv_separator, study.data.csv_decimal)
        return resolved, study.privacy, study.sites.min_cell_size, study.data.test_fraction, csv
    if contract is None:
        raise ConfigError(
            "name the contract with --contract (a TOML file or a built-in name), or a study "
            "with --study."
        )
    resolved = contract_from(contract, base_dir=None)
    defaults = DataSpec()
    return (
        resolved,
        PrivacySpec(),
        SitesSpec().min_cell_size,
        defaults.test_fraction,
        (defaults.csv_separator, defaults.csv_decimal),
    )


def _site_findings(
    table: pd.DataFrame,
    contract: DataContract,
    report: ValidationReport,
    *,
    rows_to_train: int,
    min_cell_size: int,
    test_fraction: float,
) -> list[Finding]:
    """Warnings about the rows a site would train on, once the contract's policy applied."""
    try:
        site = prepare_table(
            table, contract, site=report.file, source=report.file, one_hot="all-levels"
        )
    except DataError as error:  # nothing, or one class, left after dropping rows
        return [Finding(report.file, "(rows)", error.message, "error")]
    return training_size_findings(
        report.file,
        len(site.outcome),
        int(site.outcome.sum()),
        rows_to_train=rows_to_train,
        min_cell_size=min_cell_size,
        test_fraction=test_fraction,
        outcome=contract.outcome.column,
    )


def _print_report(file: Path, report: ValidationReport, dialect: CsvDialect | None) -> None:
    verdict = "[green]meets the contract[/]" if report.ok else "[red]does not meet the contract[/]"
    read_as = ""
    if dialect is not None and dialect != CsvDialect("utf-8", ",", "."):
        read_as = f" (read as {escape(dialect.describe())})"
    console.print(f"[bold]{escape(str(file))}[/]: {report.n_rows} rows{read_as}, {verdict}")
    if report.findings:
        findings = Table(show_header=True)
        for column in ("severity", "column", "problem"):
            findings.add_column(column)
        for finding in report.findings:
            text = finding.problem.removeprefix(f"{finding.column}: ")
            findings.add_row(finding.severity, escape(finding.column), escape(text))
        console.print(findings)


@app.command("infer-contract")
def infer_contract_command(
    files: Annotated[
        list[Path], typer.Argument(help="Site tables (CSV, TSV or Parquet), one per site.")
    ],
    outcome: Annotated[str, typer.Option("--outcome", help="The outcome column.")],
    positive: Annotated[
        str | None,
        typer.Option(
            "--positive",
            help="Outcome values meaning the event, comma-separated (needed unless the "
            "outcome is 0/1 or yes/no).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Contract TOML to write (default: print it)."),
    ] = None,
    name: Annotated[str, typer.Option(help="The contract's name.")] = "inferred",
    separator: SeparatorOption = None,
    decimal: DecimalOption = None,
) -> None:
    """Draft a commented data contract from site tables, for you to review.

    Types, ranges (rounded outward), levels and missing codes come from the
    data; the draft is checked to validate every file it came from.
    """
    separator, decimal = _dialect(separator, decimal)
    if out is not None and out.exists():
        raise ConfigError(f"--out {str(out)!r} already exists; choose another file.")
    tables = {
        str(file): read_table(file, separator=separator, decimal=decimal)  # type: ignore[arg-type]
        for file in files
    }
    chosen = tuple(v.strip() for v in positive.split(",") if v.strip()) if positive else ()
    draft = infer_contract(tables, outcome=outcome, positive=chosen, name=name)
    text = contract_toml(draft)
    contract = draft.contract()
    failing = [
        report.error_summary()
        for report in (validate_table(table, contract, file=file) for file, table in tables.items())
        if not report.ok
    ]
    if failing:  # a draft that rejects its own data would be a bug here
        raise DataError("the drafted contract does not validate its files: " + " ".join(failing))
    if out is None:
        print(text, end="")
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    kept = sum(c.feature is not None for c in draft.columns)
    left_out = [c.name for c in draft.columns if c.feature is None]
    console.print(
        f"{out}: {kept} features and outcome {outcome!r}, drafted from "
        f"{len(files)} files (each meets it); review it before a study uses it",
        markup=False,
    )
    if left_out:
        console.print(f"left out (see the comments): {', '.join(left_out)}", markup=False)


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
        console.print(f"{out / f'{name}.{file_format}'}: {len(table)} rows", markup=False)
    (out / "contract.toml").write_text(builtin_contract_text("cardio-risk"), encoding="utf-8")
    console.print(f"{out / 'contract.toml'}: the data contract these tables meet", markup=False)


@app.command("omop-demo")
def omop_demo_command(
    out: Annotated[Path, typer.Argument(help="Folder for one OMOP CDM DuckDB file per site.")],
    sites: Annotated[int, typer.Option(help="Number of sites.", min=1, max=200)] = 4,
    rows_per_site: Annotated[int, typer.Option(help="Average patients per site.", min=20)] = 500,
    periods: Annotated[int, typer.Option(help="Quarters from 2020Q1.", min=1, max=80)] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the cohort.")] = 42,
) -> None:
    """Write the synthetic cohort as OMOP CDM v5.4 databases, one DuckDB file per site.

    The same cohort `data synth` writes as tables, as a warehouse holds it
    (persons, visits, diagnoses, prescriptions, measurements, vocabulary);
    simulations/omop_cardio.toml reads the default `lhs-fed data omop-demo omop-demo`.
    """
    from lhs_federated.data.omop_writer import write_omop_sites

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"folder {str(out)!r} already exists and is not empty.")
    cohort = SyntheticCohort(sites=sites, rows_per_site=rows_per_site, periods=periods)
    for site in write_omop_sites(cohort, seed=seed, out_dir=out):
        rows = sum(site.rows.values())
        console.print(f"{site.url}: {site.persons} persons, {rows} CDM rows", markup=False)


@app.command("download-uci")
def download_uci_command(
    folder: Annotated[Path, typer.Argument(help="Folder for the four processed.*.data files.")],
    base_url: Annotated[str, typer.Option(help="Address of the files' folder.")] = UCI_BASE_URL,
) -> None:
    """Download the UCI Heart Disease files (four hospitals), checking their MD5."""
    for path in download_uci_heart(folder, base_url=base_url):
        console.print(f"{path}: MD5 verified", markup=False)
