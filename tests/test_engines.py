"""The Ray engine: the in-process engine's results exactly, on this machine or a named cluster."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from readme import RAY_COMMANDS, lhs_fed_commands

from lhs_federated import load_study, simulate
from lhs_federated.cli import main
from lhs_federated.errors import ConfigError


@pytest.fixture(scope="module")
def ray_head():
    """A Ray cluster's head node on loopback, started as a user would (``ray start --head``).

    Its own temp folder keeps it out of every other Ray's way (``ray.init()``
    without an address joins the cluster last started in the default one), and
    it runs in its own session, so stopping it ends exactly its processes.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths must stay short
    command = [
        str(Path(sys.executable).with_name("ray")),
        *("start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1"),
        *("--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"),
        f"--temp-dir={temp_dir}",
    ]
    with open(Path(temp_dir) / "head.log", "w") as log:
        head = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        address_file = Path(temp_dir) / "ray_current_cluster"  # written once the head is up
        deadline = time.monotonic() + 60
        while not address_file.exists():
            assert head.poll() is None, (Path(temp_dir) / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start within 60 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_readmes_ray_command_runs_on_ray_address_and_agrees_with_the_inprocess_engine(
    tmp_path, monkeypatch, ray_head, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", ray_head)  # as a user names a cluster for the CLI
    (command,) = [c for c in lhs_fed_commands() if any(s in c for s in RAY_COMMANDS)]
    args = shlex.split(command)[1:]
    assert main([*args, "--out", "ray"]) == 0, command
    assert_ran_on(ray_head, capsys.readouterr().out)  # the CLI shows the engine's log lines
    inprocess = [a for a in args if a not in ("--backend", "ray")]
    assert main([*inprocess, "--backend", "inprocess", "--out", "inprocess"]) == 0
    key = ["round", "site", "split", "metric"]
    metrics = {
        engine: pd.read_csv(tmp_path / engine / "metrics.csv").sort_values(key)
        for engine in ("ray", "inprocess")
    }
    pd.testing.assert_frame_equal(
        metrics["ray"].reset_index(drop=True), metrics["inprocess"].reset_index(drop=True)
    )
    summaries = {e: json.loads((tmp_path / e / "summary.json").read_text()) for e in metrics}
    assert (
        summaries["ray"]["model"]["arrays_sha256"]
        == summaries["inprocess"]["model"]["arrays_sha256"]
    )


def assert_ran_on(head: str, log: str) -> None:
    """The Ray engine logged that it ran on the cluster of ``head``, with its 2 CPUs."""
    # Ray names a loopback head by the machine's address: the port is the head's own.
    port = head.rsplit(":", 1)[1]
    text = " ".join(log.split())  # a console wraps long lines
    assert re.search(rf"Ray cluster at \S+:{port}: 2 CPUs, 2 site actors", text), log


@pytest.mark.slow
def test_ray_engine_runs_on_the_named_cluster_and_agrees_with_the_inprocess_engine(
    tmp_path, ray_head, caplog
):
    # Uneven sites on 2 actors (3 and 2 sites each), SCAFFOLD's control variates kept
    # in each node's Context across rounds: a node served by another actor would differ.
    study = load_study(None).with_overrides(
        {
            "data.synthetic.sites": 5,
            "data.synthetic.rows_per_site": 120,
            "data.synthetic.size_imbalance": 1.2,
            "data.synthetic.missingness": 0.2,
            "strategy.name": "scaffold",
            "rounds": 3,
            "baselines.enabled": False,
        }
    )
    with caplog.at_level(logging.INFO, logger="lhs_federated.apps.engines"):
        on_ray = simulate(
            study, backend="ray", out_dir=tmp_path / "ray", report=False, ray_address=ray_head
        )
    assert_ran_on(ray_head, caplog.text)
    inprocess = simulate(study, out_dir=tmp_path / "inprocess", report=False)
    key = ["round", "site", "split", "metric"]
    metrics = [
        pd.read_csv(r.out_dir / "metrics.csv").sort_values(key).reset_index(drop=True)
        for r in (on_ray, inprocess)
    ]
    pd.testing.assert_frame_equal(*metrics)
    assert metrics[0]["site"].nunique() == 5
    assert on_ray.summary["model"] == inprocess.summary["model"]


def test_a_ray_address_needs_the_ray_backend(tmp_path):
    with pytest.raises(ConfigError, match=r"ray_address='127.0.0.1:6379' names a Ray cluster"):
        simulate(None, out_dir=tmp_path / "run", ray_address="127.0.0.1:6379")
    assert not (tmp_path / "run").exists()
