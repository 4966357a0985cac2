"""``lhs-fed site start|stop|check``: a hospital's node, next to its own data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lhs_federated.cli.progress_display import mode_of, print_result, progress_display
from lhs_federated.deploy import site_node
from lhs_federated.site_config import load_site_config

console = Console(highlight=False)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The site's site.toml.")]


def start_command(
    config: ConfigOption,
    detach: Annotated[bool, typer.Option(help="Start in the background and return.")] = False,
    quiet: Annotated[bool, typer.Option(help="Warnings only.")] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print progress events as JSON lines on stdout.")
    ] = False,
) -> None:
    """Check everything, then run the site's SuperNode and gated launcher."""
    site = load_site_config(config)
    if detach:
        pid = site_node.start_detached(site)
        logs = site.state_dir / "logs"
        if json_lines:
            print_result(
                f"site {site.site.name!r} started (pid {pid})",
                {"site": site.site.name, "pid": pid, "logs": str(logs)},
            )
        else:
            console.print(f"site {site.site.name!r} started (pid {pid}); logs in {logs}")
        return
    mode = mode_of(quiet=quiet, json_lines=json_lines, bar=False)
    with progress_display(f"site {site.site.name}", None, mode=mode, console=console):
        site_node.start_site(site)


def stop_command(config: ConfigOption) -> None:
    """Stop the site's node."""
    site = load_site_config(config)
    stopped = site_node.stop_site(site)
    console.print(f"site {site.site.name!r} " + ("stopped" if stopped else "was not running"))


def check_command(
    config: ConfigOption,
    connect: Annotated[
        bool, typer.Option(help="Also test the connection to the coordinator.")
    ] = True,
) -> None:
    """Validate the site's data, certificate and key, and test the connection."""
    for line in site_node.check_site(load_site_config(config), connect=connect):
        console.print(f"[green]ok[/] {escape(line)}")


def register(app: typer.Typer) -> None:
    """Add the node commands to the ``site`` command group."""
    app.command("start")(start_command)
    app.command("stop")(stop_command)
    app.command("check")(check_command)
