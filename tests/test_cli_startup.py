"""The CLI answers fast: `lhs-fed --help` imports nothing heavy, and every command loads.

Start-up times themselves are figures of `benchmarks/cli_startup.py`, not of a timed test.
"""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from lhs_federated.cli import COMMANDS, load_command, main

HEAVY = ("torch", "flwr.cli", "scipy", "sklearn", "matplotlib", "opacus")


def imported_by(*args: str) -> set[str]:
    code = (
        "import sys\nfrom lhs_federated.cli import main\n"
        f"code = main({list(args)!r})\n"
        "print(' '.join(sorted(sys.modules)))\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split()[-1000000:])


def test_help_imports_nothing_heavy():
    modules = imported_by("--help")
    assert "lhs_federated.cli" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY})
    assert not any(m == h or m.startswith(h + ".") for m in loaded for h in HEAVY), loaded


def test_audit_help_imports_nothing_heavy():
    modules = imported_by("audit", "--help")
    assert not any(m == h or m.startswith(h + ".") for m in modules for h in HEAVY)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_loads_with_the_help_the_listing_shows(name):
    command = load_command(name)
    assert isinstance(command, click.Command)
    first_line = (command.help or "").strip().splitlines()[0]
    assert first_line == COMMANDS[name][2]


def test_help_lists_every_command_and_unknown_commands_exit_2(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_site_check_without_connecting_imports_no_flower_or_model_code(tmp_path):
    from lhs_federated.deploy.loopback import build_loopback

    table = tmp_path / "site-01.csv"
    table.write_text("age,outcome\n50,1\n61,0\n")
    site = build_loopback(tmp_path / "c", {"site-01": table}).sites["site-01"]
    modules = imported_by("site", "check", "--config", str(site.path), "--no-connect")
    assert not any(m == h or m.startswith(h + ".") for m in modules for h in (*HEAVY, "flwr"))
