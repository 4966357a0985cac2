"""Every command the README shows runs, as written (only the network address is swapped)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from readme import RAY_COMMANDS, README, code_blocks, lhs_fed_commands, shell_commands

from lhs_federated.cli import main

REPO = README.parent


def test_readme_has_the_three_setup_commands():
    setup = shell_commands(code_blocks("bash")[0])
    assert setup == ['pip install "torch==2.13.0" -e ".[dev]"', "lhs-fed simulate", "pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install "torch==2.13.0" -e ".[dev]"' in ci
    assert "\npytest\n" in ci  # exactly the README's test command


@pytest.fixture
def in_copy_of_repo(tmp_path, monkeypatch):
    shutil.copytree(REPO / "simulations", tmp_path / "simulations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "command",
    # Ray commands run in test_engines.py, which also checks them against the in-process engine.
    [c for c in lhs_fed_commands() if not any(s in c for s in RAY_COMMANDS)],
)
def test_readme_lhs_fed_command_runs(command, in_copy_of_repo, uci_folder, http_folder):
    args = shlex.split(command)[1:]
    if args[:2] == ["data", "download-uci"]:
        base_url, state = http_folder
        state["dir"] = str(uci_folder.parent)
        args += ["--base-url", base_url.replace("/heart/", "/uci-heart-disease/")]
    uses_site_data = args[:2] in (["data", "validate"], ["data", "infer-contract"])
    if uses_site_data and not Path("site-data").exists():
        assert main(["data", "synth", "--sites", "3", "--out", "site-data"]) == 0
    assert main(args) == 0, command


def test_readme_python_example_runs(in_copy_of_repo):
    (block,) = code_blocks("python")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    results = namespace["results"]
    assert results.summary["rounds"] == 5 and (in_copy_of_repo / results.out_dir).is_dir()
    # The example's model learned: it tells cases from non-cases at every site.
    per_site = results.summary["final"]["per_site"]
    assert all(site["balanced_accuracy"] > 0.55 for site in per_site.values()), per_site


@pytest.mark.slow
def test_readme_flwr_run_block_runs(tmp_path):
    (block,) = [b for b in code_blocks("bash") if "flwr run" in b]
    shutil.copytree(
        REPO, tmp_path / "app", ignore=shutil.ignore_patterns(".git", "runs", ".flwr", "*.venv*")
    )
    script = "set -euo pipefail\n" + "\n".join(shell_commands(block)) + "\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path / "app",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "app" / "runs" / "flwr" / "summary.json").is_file()
