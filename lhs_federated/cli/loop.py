"""``lhs-fed release``, ``registry``, ``monitor`` and ``loop``: the learning loop's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from lhs_federated.loop.engine import LoopEngine
    from lhs_federated.registry.store import ReleaseRef

console = Console(highlight=False)

RegistryOption = Annotated[
    Path, typer.Option("--registry", help="The registry folder.", file_okay=False)
]
MlflowOption = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        help="Also log the release to this MLflow tracking store (sqlite:///mlflow.db or a "
        "server URL; needs `pip install lhs-federated[mlflow]`).",
    ),
]
ServerOption = Annotated[
    Path | None,
    typer.Option(
        "--server",
        help="A running coordinator's server.toml: run the studies at its sites (deployment; "
        "the registry is signed with its [ledger] signing_key).",
    ),
]
KeyOption = Annotated[
    Path, typer.Option("--key", help="The coordinator's ledger key (`lhs-fed keys init`).")
]


def release_command(
    run: Annotated[Path, typer.Argument(help="A completed run folder.")],
    name: Annotated[str, typer.Option("--name", help="The release's name.")],
    registry: RegistryOption = Path("registry"),
    key: KeyOption = Path("coordinator.key"),
    version: Annotated[
        str | None, typer.Option("--version", help="vN (default: the next one).")
    ] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="NAME@VERSION it updates.")] = None,
    mlflow: MlflowOption = None,
    server: ServerOption = None,
) -> None:
    """Publish a completed run as a signed, immutable release in the registry."""
    from lhs_federated.loop.release import release_run
    from lhs_federated.registry.store import ReleaseRef

    engine = _deployed(server)
    found = release_run(
        run, name, key_path=engine.key_path if engine else key, registry_root=registry,
        version=version, parent=parent, engine=engine,
    )  # fmt: skip
    console.print(f"released {found['release']} -> {found['folder']}")
    pooled = found["card"]["performance"]["pooled"]["auroc"]
    if pooled["estimate"] is not None:
        console.print(
            f"pooled AUROC {pooled['estimate']:.3f} ({pooled['low']:.3f}-{pooled['high']:.3f})"
        )
    if mlflow is not None:
        _log_to_mlflow(registry, ReleaseRef.parse(found["release"]), mlflow)


def _deployed(server: Path | None) -> LoopEngine | None:
    """The deployed engine of a running coordinator's ``server.toml``, if one is named."""
    if server is None:
        return None
    from lhs_federated.deploy.loop_engine import DeployedEngine
    from lhs_federated.deploy.server_config import load_server_config

    return DeployedEngine(load_server_config(server))


def _log_to_mlflow(registry: Path, ref: ReleaseRef, uri: str) -> None:
    """Log a release to MLflow and say which run holds it."""
    from lhs_federated.registry.mlflow_log import log_release

    logged = log_release(registry, ref, uri)
    said = "logged" if logged["new"] else "already logged"
    console.print(f"{ref} {said} to MLflow {uri}: run {logged['run_id']}")


registry_app = typer.Typer(no_args_is_help=True, help="List, show, verify and log model releases.")


@registry_app.command("list")
def registry_list(registry: RegistryOption = Path("registry")) -> None:
    """Every release with its status (current, superseded, rejected) and parent."""
    from lhs_federated.registry.store import Registry, ReleaseRef

    store = Registry(registry)
    table = Table("release", "status", "parent", "created", "reason")
    for name in store.names():
        status = store.status(name)
        for version in store.versions(name):
            manifest = store.manifest(ReleaseRef(name, version))
            state = status.get(version, {"status": "unrecorded", "reason": ""})
            table.add_row(
                f"{name}@{version}", state["status"], manifest.get("parent") or "-",
                manifest.get("created_at", ""), state["reason"],
            )  # fmt: skip
    console.print(table)


@registry_app.command("show")
def registry_show(
    release: Annotated[str, typer.Argument(help="NAME@VERSION")],
    registry: RegistryOption = Path("registry"),
) -> None:
    """A release's model card."""
    from lhs_federated.registry.store import Registry, ReleaseRef

    folder = Registry(registry).require(ReleaseRef.parse(release))
    typer.echo((folder / "card.md").read_text(encoding="utf-8"))


@registry_app.command("verify")
def registry_verify(
    release: Annotated[str, typer.Argument(help="NAME@VERSION")],
    registry: RegistryOption = Path("registry"),
) -> None:
    """Check a release's files, signature and ledger record (exit 1 naming a changed file)."""
    from lhs_federated.registry.store import Registry, ReleaseRef

    found = Registry(registry).verify(ReleaseRef.parse(release))
    console.print(f"{found['release']}: {found['files']} files match the signed manifest")


@registry_app.command("log")
def registry_log(
    release: Annotated[str, typer.Argument(help="NAME@VERSION")],
    mlflow: Annotated[
        str, typer.Option("--mlflow", help="The MLflow tracking store (sqlite:///mlflow.db).")
    ],
    registry: RegistryOption = Path("registry"),
) -> None:
    """Log a verified release (model, card, metrics, signature hash) to an MLflow store."""
    from lhs_federated.registry.store import ReleaseRef

    _log_to_mlflow(registry, ReleaseRef.parse(release), mlflow)


def monitor_command(
    release: Annotated[str, typer.Argument(help="NAME@VERSION")],
    periods: Annotated[
        list[str], typer.Option("--period", help="A period to monitor (repeat for several).")
    ],
    registry: RegistryOption = Path("registry"),
    key: KeyOption = Path("coordinator.key"),
    out: Annotated[
        Path | None, typer.Option("--out", help="Timeline folder (default monitoring/NAME).")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Monitor a release at every site on its newest period(s); print and record alerts."""
    from lhs_federated.governance.keys import load_private_key
    from lhs_federated.loop.monitor import monitor_release
    from lhs_federated.registry.store import Registry, ReleaseRef

    ref = ReleaseRef.parse(release)
    out_root = out or Path("monitoring") / ref.name
    engine = _deployed(server)
    key = engine.key_path if engine else key
    result = monitor_release(
        Registry(registry), ref, periods, key=load_private_key(key), key_path=key,
        out_root=out_root, engine=engine,
    )  # fmt: skip
    table = Table("site", "n", "AUROC (95% CI)", "intercept", "slope", "O/E", "PSI max", "alerts")
    for row in result.rows:

        def f(key: str, row: dict = row) -> str:
            value = row.get(key)
            return "withheld" if value is None else f"{value:.3f}"

        auroc = f("auroc")
        if row.get("auroc_low") is not None:
            auroc += f" ({row['auroc_low']:.3f}-{row['auroc_high']:.3f})"
        table.add_row(
            row["site"], f"{row['n']:.0f}", auroc, f("calibration_intercept"),
            f("calibration_slope"), f("oe"), f"{f('psi_max')} {row['psi_feature']}",
            str(row["alerts"]),
        )  # fmt: skip
    console.print(table)
    for alert in result.alerts:
        console.print(f"ALERT {alert}")
    for site, why in result.failed.items():
        console.print(f"{site}: not monitored: {why}")
    console.print(f"timeline: {out_root / 'timeline.csv'}; alerts: {out_root / 'alerts.csv'}")


def loop_command(
    loop_file: Annotated[Path, typer.Argument(help="A loop TOML (simulations/lhs_loop.toml).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Results folder (default runs/loop-<name>).")
    ] = None,
    server: ServerOption = None,
) -> None:
    """The learning loop over the periods: monitor, alert, update, gate, promote.

    Simulated on the study's own sites by default; with ``--server`` each step
    is a study submitted to the coordinator's SuperLink, which the sites
    answer if they approved it (or, for monitoring, by their standing rule).
    """
    from lhs_federated.loop.simulation import load_loop, run_loop

    engine = _deployed(server)
    spec = load_loop(loop_file, deployed=engine is not None)
    folder = out or Path("runs") / f"loop-{spec.study.name}"

    def progress(period: str, done: int, total: int, note: str) -> None:
        width = 24
        bar = "#" * round(width * done / total) + "." * (width - round(width * done / total))
        console.print(f"[{bar}] period {done}/{total} {period}: {note}")

    result = run_loop(spec, folder, progress=progress, engine=engine)
    console.print(json.dumps(result["summary"], indent=2))
    console.print(f"report: {folder / 'loop-report.html'}")
