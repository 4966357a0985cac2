"""``lhs-fed study``: show a resolved study and its hash; list strategies."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lhs_federated.cli.study_input import load_with_overrides

app = typer.Typer(help="Inspect studies.", no_args_is_help=True)
console = Console(highlight=False)

StudyArgument = Annotated[
    Path | None, typer.Argument(help="Study TOML (default: the built-in study).")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a study key (repeatable).")
]


@app.command("show")
def show_command(study: StudyArgument = None, set_: SetOption = None) -> None:
    """Print the resolved study (every default explicit) as TOML."""
    print(load_with_overrides(study, set_ or []).to_toml(), end="")


@app.command("hash")
def hash_command(study: StudyArgument = None, set_: SetOption = None) -> None:
    """Print the study hash that sites approve."""
    print(load_with_overrides(study, set_ or []).hash)


def strategies_command() -> None:
    """List the strategies a study can name, with their parameters."""
    from lhs_federated.apps.strategies import STRATEGIES, accepted_params  # imports PyTorch

    table = Table(title=Text("strategies ([strategy] name, and [strategy.params])"))
    for column in ("name", "Flower class", "parameters (default)"):
        table.add_column(column)
    for name, cls in STRATEGIES.items():
        params = ", ".join(
            f"{key}={p.default!r}"
            if p.default is not inspect.Parameter.empty
            else f"{key} (required)"
            for key, p in accepted_params(cls).items()
        )
        table.add_row(name, f"{cls.__module__}.{cls.__name__}", params or "-")
    console.print(table)
