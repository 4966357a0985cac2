"""The ``lhs-fed`` command: one group per audience, a thin layer over the API.

Exit codes: 0 done, 2 bad input (a one-paragraph message, no traceback),
1 internal error (with the traceback, since it is a bug to report).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from lhs_federated.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, LhsError

#: Every command: name -> (module in lhs_federated.cli, attribute, one-line help).
#: A command's module is imported only when that command runs (or its own --help is
#: asked for): ``lhs-fed --help`` must not pay for PyTorch, Flower or scikit-learn.
#: The attribute is a Typer app (a group) or a command function. The one-line help
#: must match the command's own (tests/test_cli_startup.py checks).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": (
        "simulate",
        "simulate_command",
        "Run a study on its simulated sites and print the per-site results.",
    ),
    "data": ("data", "app", "Data contracts, example data and the UCI Heart Disease files."),
    "study": ("study", "app", "Inspect studies."),
    "strategies": (
        "study",
        "strategies_command",
        "List the strategies a study can name, with their parameters.",
    ),
    "server": ("server", "app", "Run the coordinating centre (a Flower SuperLink)."),
    "site": ("site", "app", "A site's node, approvals and policy."),
    "certs": ("certs", "app", "Development TLS certificates and SuperNode keys."),
    "bundle": ("bundle", "app", "The app bundle deployed runs ship to the sites."),
    "keys": ("keys", "app", "Signing keys of ledgers."),
    "audit": ("audit", "app", "Verify, show and cross-check ledgers."),
    "sweep": (
        "sweep",
        "sweep_command",
        "Run a grid of simulated studies (resuming finished runs) and aggregate over seeds.",
    ),
    "report": (
        "report",
        "report_command",
        "Write report.html (self-contained: tables, plots, versions, seeds) into the folder.",
    ),
    "demo": ("demo", "app", "A whole consortium on this machine, to try a deployment first."),
    "release": (
        "loop",
        "release_command",
        "Publish a completed run as a signed, immutable release in the registry.",
    ),
    "registry": ("loop", "registry_app", "List, show, verify and log model releases."),
    "monitor": (
        "loop",
        "monitor_command",
        "Monitor a release at every site on its newest period(s); print and record alerts.",
    ),
    "loop": (
        "loop",
        "loop_command",
        "The learning loop over the periods: monitor, alert, update, gate, promote.",
    ),
    "dashboard": (
        "dashboard",
        "dashboard_command",
        "Serve the consortium's runs, sites and audits as live web pages (read-only).",
    ),
}


def load_command(name: str) -> click.Command:
    """Import command ``name``'s module and build its click command."""
    module_name, attribute, _ = COMMANDS[name]
    module = importlib.import_module(f"lhs_federated.cli.{module_name}")
    if name == "site":  # a site's node (start/stop/check) beside its approvals
        importlib.import_module("lhs_federated.cli.site_runtime").register(module.app)
    target = getattr(module, attribute)
    if isinstance(target, typer.Typer):  # a group, even with one command (`keys init`)
        command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """The top-level group: lists every command, imports one only to run it.

    Help listings get a stand-in carrying the one-line help; resolving a
    command to invoke it (or to show its own help) loads the real one.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: D102
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: D102
        if cmd_name not in COMMANDS:
            return None
        if getattr(ctx, "lhs_resolving", False):
            return load_command(cmd_name)
        summary = COMMANDS[cmd_name][2]
        return click.Command(cmd_name, help=summary, short_help=summary)

    def resolve_command(self, ctx: click.Context, args: list[str]):  # noqa: D102
        ctx.lhs_resolving = True  # type: ignore[attr-defined]
        try:
            return super().resolve_command(ctx, args)
        finally:
            ctx.lhs_resolving = False  # type: ignore[attr-defined]


app = typer.Typer(
    name="lhs-fed",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Federated clinical prediction models for learning health systems."""


# Messages carry user text ("unknown key 'x' in [data]"): never read as Rich markup.
_errors = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script's entry point)."""
    # A clinical tool does not phone home unless its operator asks it to.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="lhs-fed", standalone_mode=False)
    except LhsError as error:
        _errors.print(Text.assemble(("error: ", "bold red"), error.message))
        return error.exit_code
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return EXIT_BAD_INPUT
    except click.exceptions.Abort:
        _errors.print("aborted")
        return EXIT_INTERNAL
    except Exception:
        _errors.print(
            Text.assemble(
                ("internal error", "bold red"), " (please report it with this traceback):"
            )
        )
        _errors.print(traceback.format_exc())
        return EXIT_INTERNAL
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
