"""``lhs-fed server``: the coordinating centre's SuperLink and the studies it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lhs_federated.cli.progress_display import Mode, mode_of, print_result, progress_display
from lhs_federated.cli.study_input import load_with_overrides
from lhs_federated.deploy import coordinator
from lhs_federated.deploy.server_config import ServerConfig, load_server_config
from lhs_federated.results.progress import EVENTS_FILE, ProgressEvent, read_events

app = typer.Typer(help="Run the coordinating centre (a Flower SuperLink).", no_args_is_help=True)
console = Console(highlight=False)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The server's server.toml.")]
QuietOption = Annotated[bool, typer.Option(help="No progress bar (warnings only).")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print progress events as JSON lines on stdout.")
]


@app.command("start")
def start_command(
    config: ConfigOption,
    detach: Annotated[bool, typer.Option(help="Start in the background and return.")] = False,
    quiet: QuietOption = False,
    json_lines: JsonOption = False,
) -> None:
    """Start the SuperLink (TLS and SuperNode authentication on) and register the sites.

    Shows what it waits for: the SuperLink, the sites registered, then the
    sites online (counts) until all are; then it serves until stopped.
    """
    server = load_server_config(config)
    if detach:
        pid = coordinator.start_detached(server)
        logs = server.state_dir / "logs"
        if json_lines:
            print_result(
                f"coordinator started (pid {pid}) on {server.address}",
                {"pid": pid, "address": server.address, "logs": str(logs)},
            )
        else:
            console.print(f"coordinator started (pid {pid}) on {server.address}; logs in {logs}")
        return
    mode = mode_of(quiet=quiet, json_lines=json_lines, bar=False)
    with progress_display(f"coordinator {server.address}", None, mode=mode, console=console):
        coordinator.start_server(server)


@app.command("check")
def check_command(config: ConfigOption) -> None:
    """Check server.toml, the TLS files and the port, without starting anything."""
    server = load_server_config(config)
    coordinator.check_server(server)
    console.print(
        f"ok {server.path}: {len(server.sites)} sites listed; "
        f"{'TLS off (insecure)' if server.tls.insecure else 'certificate valid'}; "
        f"port {server.server.port} on {server.server.host} is free"
    )


@app.command("stop")
def stop_command(config: ConfigOption) -> None:
    """Stop a running coordinator."""
    stopped = coordinator.stop_server(load_server_config(config))
    console.print("coordinator stopped" if stopped else "the coordinator was not running")


@app.command("register-site")
def register_command(
    config: ConfigOption,
    name: Annotated[str, typer.Argument(help="The site's name.")],
    public_key: Annotated[Path, typer.Argument(help="The site's SuperNode public key (.pub).")],
) -> None:
    """Register a site's SuperNode key at the running SuperLink."""
    node = coordinator.register_site(load_server_config(config), name, public_key)
    console.print(f"site {name!r}: node {node}")


@app.command("run")
def run_command(
    study: Annotated[Path, typer.Argument(help="The study TOML.")],
    config: ConfigOption,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a study key.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Results folder.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3600.0,
    quiet: QuietOption = False,
    json_lines: JsonOption = False,
) -> None:
    """Submit a study to the sites; print the run id and, once done, the results folder."""
    server = load_server_config(config)
    resolved = load_with_overrides(study, set_ or [])
    submitted = coordinator.submit_study(server, resolved, out_dir=out)
    if not json_lines:
        console.print(f"run {submitted.run_id}: study {resolved.name!r} ({resolved.hash[:12]}…)")
    mode = mode_of(quiet=quiet, json_lines=json_lines)
    _finish(server, submitted, wait=wait, timeout=timeout, mode=mode)


@app.command("resume")
def resume_command(
    run_dir: Annotated[Path, typer.Argument(help="The stopped run's results folder.")],
    config: ConfigOption,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3600.0,
    quiet: QuietOption = False,
    json_lines: JsonOption = False,
) -> None:
    """Continue a stopped run from its last completed round."""
    server = load_server_config(config)
    submitted = coordinator.resume_study(server, run_dir.resolve())
    if not json_lines:
        console.print(f"run {submitted.run_id}: resuming {run_dir}")
    mode = mode_of(quiet=quiet, json_lines=json_lines)
    _finish(server, submitted, wait=wait, timeout=timeout, mode=mode)


def _finish(
    server: ServerConfig,
    submitted: coordinator.SubmittedRun,
    *,
    wait: bool,
    timeout: float,
    mode: Mode,
) -> None:
    """Wait for a submitted run (unless told not to), showing its progress; print how it ended.

    The ServerApp runs in the SuperLink's processes; it appends its progress
    events to the run folder's ``events.jsonl``, which this follows.
    """
    if not wait:
        console.print(f"results will be in {submitted.out_dir}")
        return
    events_file, offset = submitted.out_dir / EVENTS_FILE, 0
    study = submitted.study

    def follow() -> None:
        nonlocal offset
        events, offset = read_events(events_file, offset=offset)
        for event in events:
            display.show(event)

    with progress_display(study.name, study.rounds, mode=mode, console=console) as display:
        # Until its first round the ServerApp writes nothing: say what the wait is for.
        display.show(
            ProgressEvent(
                "waiting",
                f"run {submitted.run_id}: waiting for the ServerApp to start and the "
                f"{len(server.sites)} registered sites to join (round 1 follows)",
                {"step": "joining", "run_id": submitted.run_id},
            )
        )
        summary = coordinator.wait_for_run(server, submitted, timeout=timeout, on_poll=follow)
    if mode == "json":
        print_result(
            f"run {submitted.run_id} completed; results in {submitted.out_dir}",
            {
                "run_id": submitted.run_id,
                "out_dir": str(submitted.out_dir),
                "summary": str(submitted.out_dir / "summary.json"),
            },
        )
        return
    mean = summary["final"]["mean"]
    console.print(
        f"completed: {len(summary['sites'])} sites, {summary['rounds']} rounds, mean AUROC "
        f"{mean['auroc']:.3f}, accuracy {mean['accuracy']:.3f}"
    )
    console.print(f"results in [bold]{escape(str(submitted.out_dir))}[/]")


@app.command("status")
def status_command(config: ConfigOption) -> None:
    """List runs and sites known to the SuperLink."""
    status = coordinator.server_status(load_server_config(config))
    runs = Table(title="runs")
    for column in ("run id", "status", "elapsed (s)", "bundle"):
        runs.add_column(column)
    for run in status["runs"]:
        runs.add_row(
            str(run["run-id"]),
            str(run["status"]),
            f"{float(run['elapsed']):.0f}",
            run["fab-hash"][:12],
        )
    console.print(runs)
    nodes = Table(title="sites")
    for column in ("site", "node id", "status", "online since"):
        nodes.add_column(column)
    for node in status["nodes"]:
        nodes.add_row(
            node["site"], str(node["node-id"]), str(node["status"]), str(node["online-at"])
        )
    console.print(nodes)
