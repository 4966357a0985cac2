"""``lhs-fed dashboard``: serve the live, read-only web dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False)


def dashboard_command(
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            help="Folder of run folders to show (default: the server's state/runs with "
            "--server, else runs/).",
        ),
    ] = None,
    server: Annotated[
        Path | None,
        typer.Option("--server", help="The coordinator's server.toml: adds its sites."),
    ] = None,
    site: Annotated[
        list[Path] | None,
        typer.Option(
            "--site",
            help="A site's site.toml (repeatable): adds its approvals in force and its "
            "privacy budget spent and left.",
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; anything but loopback requires a token."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            help="Token every request must carry (generated when listening beyond loopback).",
            envvar="LHS_DASHBOARD_TOKEN",
        ),
    ] = None,
) -> None:
    """Serve the consortium's runs, sites and audits as live web pages (read-only)."""
    from lhs_federated.dashboard import serve

    if runs is None and server is not None:
        from lhs_federated.deploy.coordinator import ServerPaths
        from lhs_federated.deploy.server_config import load_server_config

        runs = ServerPaths(load_server_config(server).state_dir).runs
        runs.mkdir(parents=True, exist_ok=True)  # a coordinator that has run nothing yet
    settings = serve.prepare(
        runs or Path("runs"),
        host=host,
        port=port,
        server_config=server,
        token=token,
        site_configs=site,
    )
    uvicorn_server = serve.server(settings, serve.build(settings))
    console.print(f"dashboard of [bold]{settings.runs.resolve()}[/] at [bold]{settings.url}[/]")
    if settings.token:
        console.print("every request needs the token above (the address carries it)")
    console.print("read-only; Ctrl-C stops it")
    uvicorn_server.run()
