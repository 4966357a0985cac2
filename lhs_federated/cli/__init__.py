"""The ``lhs-fed`` command: one group per audience, a thin layer over the API.

Exit codes: 0 done, 2 bad input (a one-paragraph message, no traceback),
1 internal error (with the traceback, since it is a bug to report).
"""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer
from rich.console import Console

from lhs_federated.cli import (
    audit,
    certs,
    dashboard,
    data,
    keys,
    report,
    server,
    simulate,
    site,
    site_runtime,
    study,
    sweep,
)
from lhs_federated.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, LhsError

app = typer.Typer(
    name="lhs-fed",
    help="Federated clinical prediction models for learning health systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("simulate")(simulate.simulate_command)
app.add_typer(data.app, name="data")
app.add_typer(study.app, name="study")
app.command("strategies")(study.strategies_command)
app.add_typer(server.app, name="server")
site_runtime.register(site.app)  # a site's node (start/stop/check) beside its approvals
app.add_typer(site.app, name="site")
app.add_typer(certs.app, name="certs")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.command("sweep")(sweep.sweep_command)
app.command("report")(report.report_command)
app.command("dashboard")(dashboard.dashboard_command)

_errors = Console(stderr=True, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script's entry point)."""
    # A clinical tool does not phone home unless its operator asks it to.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="lhs-fed", standalone_mode=False)
    except LhsError as error:
        _errors.print(f"[bold red]error:[/] {error.message}")
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
        _errors.print("[bold red]internal error[/] (please report it with this traceback):")
        _errors.print(traceback.format_exc(), markup=False)
        return EXIT_INTERNAL
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
