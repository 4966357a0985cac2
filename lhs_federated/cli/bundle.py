"""``lhs-fed bundle``: the lhs-federated app bundle every deployed run ships to the sites."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(help="The app bundle deployed runs ship to the sites.", no_args_is_help=True)
console = Console(highlight=False)


@app.command("hash")
def hash_command() -> None:
    """Print the bundle's code hash: what a site approves beside the study hash."""
    from lhs_federated.deploy.app_bundle import bundle_hash

    console.print(bundle_hash())
