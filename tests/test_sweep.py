"""Sweeps: grids of simulated studies, aggregates with confidence intervals, resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lhs_federated import ConfigError
from lhs_federated.cli import main
from lhs_federated.research.sweep import SweepProgress, load_sweep, run_sweep
from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER

REPO = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
metrics = ["auroc", "accuracy"]
plot = ["federated_auroc", "gain_auroc"]

[fixed]
rounds = 1
"data.synthetic.sites" = 2
"data.synthetic.rows_per_site" = 120

[grid]
seed = [1, 2]
training.learning_rate = [0.1, 0.3]
"""


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.runs: list[SweepProgress] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "lhs_progress", None)
        if isinstance(event, SweepProgress):
            self.runs.append(event)


@pytest.fixture
def events():
    handler = Events()
    level = PROGRESS_LOGGER.level
    PROGRESS_LOGGER.setLevel(logging.INFO)
    PROGRESS_LOGGER.addHandler(handler)
    yield handler
    PROGRESS_LOGGER.removeHandler(handler)
    PROGRESS_LOGGER.setLevel(level)


def test_sweep_aggregates_over_seeds_and_resumes(tmp_path, events):
    sweep = load_sweep(write(tmp_path, TINY))
    assert len(sweep.runs) == 4
    rows, aggregate, out = run_sweep(sweep, tmp_path / "out", workers=1)
    assert len(rows) == 4 and (rows["status"] == "completed").all()
    assert len(events.runs) == 4
    assert list(aggregate["training.learning_rate"]) == [0.1, 0.3]
    assert list(aggregate["runs"]) == [2, 2]
    for lr, group in rows.groupby("training.learning_rate"):
        values = group["gain_auroc"].to_numpy()
        row = aggregate[aggregate["training.learning_rate"] == lr].iloc[0]
        half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / math.sqrt(2)
        assert row["gain_auroc_mean"] == pytest.approx(values.mean())
        assert row["gain_auroc_ci_high"] - row["gain_auroc_mean"] == pytest.approx(half)
        gains = group["federated_auroc"] - group["local_auroc"]
        np.testing.assert_allclose(gains, values)
    assert (out / "report.html").is_file() and (out / "aggregate.csv").is_file()
    assert len(list((out / "runs").iterdir())) == 4

    # Resume: finished runs are skipped; a run without summary.json is run again.
    kept = out / "runs" / rows["run"][0] / "summary.json"
    stamp = kept.stat().st_mtime_ns
    (out / "runs" / rows["run"][3] / "summary.json").unlink()
    events.runs.clear()
    again, _, _ = run_sweep(load_sweep(write(tmp_path, TINY)), tmp_path / "out", workers=1)
    assert [e.run_id for e in events.runs] == [rows["run"][3]]
    assert kept.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), rows.drop(columns="seconds"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            TINY.replace("training.learning_rate", "training.learning_rat"),
            r"\[grid\] training\.learning_rat: unknown key 'training\.learning_rat'.*learning_rate",
        ),
        ("name = 'x'\n[grid]\n", r"the grid is empty; a sweep needs at least one \[grid\] key"),
        ("name = 'x'\n", r"the grid is empty"),
        ("[grid]\nseed = []\n", r"grid key 'seed' has no values"),
        ("[grid]\nrounds = [1, 'two']\n", r"\[grid\] rounds: rounds must be an integer; got 'two'"),
        ("metrics = ['auc']\n[grid]\nseed = [1]\n", r"metrics \['auc'\] are not metrics"),
        (
            "plot = ['gain_auc']\n[grid]\nseed = [1]\n",
            r"plot \['gain_auc'\] are not aggregate columns",
        ),
        ("[fixed]\nroundz = 2\n[grid]\nseed = [1]\n", r"\[fixed\] roundz: unknown key 'roundz'"),
        ("[grid]\nseed = [1, 1]\n", r"two grid combinations give the same study"),
        ("grid = 3\n", r"grid must be a table; got 3"),
    ],
)
def test_bad_sweeps_fail_before_anything_is_written(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        run_sweep(load_sweep(path), tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_another_sweep_is_refused(tmp_path):
    one = load_sweep(write(tmp_path, "[fixed]\nrounds = 1\n[grid]\nseed = [1]\n", "one.toml"))
    run_sweep(one, tmp_path / "out", workers=1, report=False)
    other = load_sweep(write(tmp_path, "[fixed]\nrounds = 1\n[grid]\nseed = [2]\n", "two.toml"))
    with pytest.raises(ConfigError, match=r"holds a different sweep"):
        run_sweep(other, tmp_path / "out", workers=1)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"exists and is not a sweep folder"):
        run_sweep(one, tmp_path / "plain", workers=1)


@pytest.mark.slow
def test_cli_sweep_in_worker_processes(tmp_path, capsys):
    path = write(tmp_path, TINY.replace("seed = [1, 2]", "seed = [1]"))
    code = main(["sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "mean ± 95% CI half-width" in out and "learning_rate" in out
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 2
    # Resumed with --json: every line is JSON, the last names the sweep's files.
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["kind"] == "result" and lines[-1]["data"]["failed"] == []
    assert lines[-1]["data"]["runs"] == str(tmp_path / "out" / "runs.csv")
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2


def test_ready_heterogeneity_sweep_is_valid():
    sweep = load_sweep(REPO / "simulations" / "heterogeneity_sweep.toml")
    shifts = {r.study.data.synthetic.covariate_shift for r in sweep.runs}
    imbalance = {r.study.data.synthetic.size_imbalance for r in sweep.runs}
    assert len(sweep.runs) == 40 and shifts == {0.0, 0.5, 1.0, 2.0} and imbalance == {0.0, 1.0}
