"""``lhs-fed certs``: development certificates and site keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lhs_federated.deploy.certs import init_certificates

app = typer.Typer(help="Development TLS certificates and SuperNode keys.", no_args_is_help=True)
console = Console(highlight=False)


@app.command("init")
def init_command(
    folder: Annotated[Path, typer.Argument(help="Folder for the CA, server certificate and keys.")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Host name or IP sites connect to (repeatable)."),
    ] = None,
    site: Annotated[
        list[str] | None, typer.Option("--site", help="Site name (repeatable).")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 365,
) -> None:
    """Make a development CA, a server certificate for HOSTS and one key pair per site."""
    made = init_certificates(
        folder, hosts=host or ["127.0.0.1", "localhost"], sites=site or [], days=days
    )
    console.print(f"CA certificate   {made.ca_certificate}  (give to every site)")
    console.print(f"CA key           {made.ca_key}  (keep offline; mode 0600)")
    console.print(f"server cert/key  {made.server_certificate}, {made.server_key}")
    for name, key in made.site_keys.items():
        console.print(
            f"site {name:<11} {key} (private, to the site) and {key}.pub (to the coordinator)"
        )
