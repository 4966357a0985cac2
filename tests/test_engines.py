"""The Ray simulation engine gives exactly the in-process engine's results."""

from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest
from readme import RAY_COMMANDS, lhs_fed_commands

from lhs_federated.cli import main


@pytest.mark.slow
def test_readmes_ray_command_runs_and_agrees_with_the_inprocess_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (command,) = [c for c in lhs_fed_commands() if any(s in c for s in RAY_COMMANDS)]
    args = shlex.split(command)[1:]
    assert main([*args, "--out", "ray"]) == 0, command
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
