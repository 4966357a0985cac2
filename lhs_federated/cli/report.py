"""``lhs-fed report``: (re)write the HTML report of a run or sweep folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lhs_federated.cli.simulate import console
from lhs_federated.research.report import write_report


def report_command(
    folder: Annotated[Path, typer.Argument(help="A run folder (simulate) or sweep folder.")],
) -> None:
    """Write report.html (self-contained: tables, plots, versions, seeds) into the folder."""
    console.print(f"report: [bold]{write_report(folder)}[/]")
