"""``lhs-fed demo consortium``: a whole consortium on this machine, to try a deployment first.

One command writes what a real consortium's members make by hand (a
development CA and TLS certificate, one SuperNode key per site, each site's
folder, config and synthetic table, a study reading those tables), starts the
coordinator and the sites as the real separate processes on 127.0.0.1, and
prints the commands each role runs next. ``--stop`` ends everything it
started; run again on the same folder, it starts that consortium again.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lhs_federated.cli.progress_display import mode_of, print_result, progress_display
from lhs_federated.errors import ConfigError
from lhs_federated.results.progress import ProgressEvent

app = typer.Typer(
    help="A whole consortium on this machine, to try a deployment first.",
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)


def next_commands(root: Path, sites: list[str]) -> list[str]:
    """What to run next, in order: each site approves, the coordinator runs, anyone watches."""
    study = shlex.quote(str(root / "study.toml"))
    server = shlex.quote(str(root / "server" / "server.toml"))
    approve = [
        f"lhs-fed site approve {study} --deployment "
        f"--site-folder {shlex.quote(str(root / 'sites' / name / 'governance'))} "
        '--reason "demo"'
        for name in sites
    ]
    return [
        *approve,
        f"lhs-fed server run {study} --config {server}",
        f"lhs-fed server status --config {server}",
        f"lhs-fed dashboard --server {server} "
        + " ".join(
            f"--site {shlex.quote(str(root / 'sites' / name / 'site.toml'))}" for name in sites
        ),
        f"lhs-fed simulate {study}",
        f"lhs-fed demo consortium --dir {shlex.quote(str(root))} --stop",
    ]


@app.command("consortium")
def consortium_command(
    sites: Annotated[int, typer.Option(help="Number of sites.", min=1, max=10)] = 3,
    folder: Annotated[
        Path, typer.Option("--dir", help="Folder for the consortium's files (made here).")
    ] = Path("lhs-demo"),
    rows_per_site: Annotated[
        int, typer.Option(help="Average synthetic patients per site.", min=50)
    ] = 200,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop every process this consortium started.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="Warnings and the next commands only.")] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print progress events as JSON lines on stdout.")
    ] = False,
) -> None:
    """Set up a coordinator and sites on 127.0.0.1, start them, print the next commands."""
    from lhs_federated.deploy.loopback import build_demo, open_loopback

    root = folder.resolve()
    mode = mode_of(quiet=quiet, json_lines=json_lines, bar=False)
    if stop:
        ended = open_loopback(root).stop()
        what = ", ".join(ended) if ended else "nothing was running"
        if json_lines:
            print_result(f"stopped: {what}", {"dir": str(root), "stopped": ended})
        else:
            console.print(f"stopped: {escape(what)}")
        return
    with progress_display("demo consortium", None, mode=mode, console=console) as display:
        if (root / "server" / "server.toml").is_file():
            consortium = open_loopback(root)
            display.show(
                ProgressEvent(
                    "step",
                    f"{root} holds a consortium of {len(consortium.sites)} sites "
                    "(--sites and --rows-per-site apply to a new folder): starting it again",
                    {"step": "reopen"},
                )
            )
        else:
            consortium = build_demo(root, sites=sites, rows_per_site=rows_per_site)
        if consortium.is_running():
            raise ConfigError(
                f"the consortium in {root} is already running; stop it with "
                f"`lhs-fed demo consortium --dir {root} --stop`."
            )
        try:
            consortium.start()
        except BaseException:
            consortium.stop()  # nothing half started is left running
            raise
    commands = next_commands(root, list(consortium.sites))
    if json_lines:
        print_result(
            f"consortium of {len(consortium.sites)} sites running on 127.0.0.1",
            {
                "dir": str(root),
                "server_config": str(consortium.server.path),
                "address": consortium.server.address,
                "sites": {name: str(site.path) for name, site in consortium.sites.items()},
                "study": str(root / "study.toml"),
                "next": commands,
            },
        )
        return
    console.print(
        f"[bold]consortium of {len(consortium.sites)} sites running[/] on "
        f"{consortium.server.address}; files in {escape(str(root))}, logs in each "
        "state/logs folder"
    )
    console.print("next, each site approves the study, then the coordinator runs it:")
    for command in commands[: len(consortium.sites)]:
        console.print(f"  {escape(command)}")
    labels = ("run it", "sites and runs", "watch it live", "its simulated twin", "stop it all")
    for label, command in zip(labels, commands[len(consortium.sites) :], strict=True):
        console.print(f"  {escape(command)}   [dim]# {label}[/]")
