"""Pooled and local-only baselines beside every simulated study."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest

from lhs_federated import load_study, simulate
from lhs_federated.cli import main
from lhs_federated.data.sources import load_sites
from lhs_federated.learning.metrics import METRIC_NAMES
from lhs_federated.learning.training import planned_steps
from lhs_federated.research.baselines import baseline_training


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, small_study):
    return simulate(small_study, out_dir=tmp_path_factory.mktemp("baselines") / "run", report=False)


def test_summary_compares_federated_pooled_and_local_per_site(baseline_run, small_study):
    comparison = baseline_run.summary["comparison"]
    sites = ["site-01", "site-02", "site-03"]
    assert list(comparison["per_site"]) == sites
    for site in sites:
        row = comparison["per_site"][site]
        assert set(row) == {"federated", "pooled", "local", "gain"}
        # The analysis scores the final model exactly as the sites did in the last round.
        assert row["federated"]["auroc"] == pytest.approx(
            baseline_run.summary["final"]["per_site"][site]["auroc"], abs=1e-12
        )
        assert row["gain"]["accuracy"] == pytest.approx(
            row["federated"]["accuracy"] - row["local"]["accuracy"]
        )
        # A site's local model at its own site is the diagonal of the cross-site matrix.
        assert comparison["cross_site"]["auroc"][site][site] == row["local"]["auroc"]
    # One definition of the mean: the sites the run's summary counts (site-02 has too
    # few test cases of a class to count).
    counted = baseline_run.summary["final"]["counted_sites"]
    assert comparison["counted_sites"] == counted == ["site-01", "site-03"]
    mean_pooled = sum(comparison["per_site"][s]["pooled"]["auroc"] for s in counted) / 2
    assert comparison["mean"]["pooled"]["auroc"] == pytest.approx(mean_pooled)
    mean_federated = sum(comparison["per_site"][s]["federated"]["auroc"] for s in counted) / 2
    assert comparison["mean"]["federated"]["auroc"] == pytest.approx(mean_federated)
    assert baseline_run.summary["final"]["mean"]["auroc"] == pytest.approx(mean_federated)
    assert set(comparison["all-sites"]) == {"federated", "pooled", *(f"local:{s}" for s in sites)}


def test_baselines_get_the_steps_the_federation_spent_on_their_rows(baseline_run, small_study):
    models = baseline_run.summary["baselines"]["models"]
    sites = load_sites(small_study)
    per_round = {s.name: planned_steps(len(s.train.outcome), small_study.training) for s in sites}
    rounds = small_study.rounds
    assert models["pooled"]["steps"] == rounds * sum(per_round.values())
    assert models["pooled"]["rows"] == sum(len(s.train.outcome) for s in sites)
    for site, steps in per_round.items():
        assert models[f"local:{site}"]["steps"] == rounds * steps
        assert models[f"local:{site}"]["optimizer"] == small_study.training.optimizer


def test_fixed_baseline_protocol_replaces_the_budget(small_study):
    study = small_study.with_overrides(
        {"baselines.epochs": 50, "baselines.optimizer": "adam", "baselines.learning_rate": 0.001}
    )
    training = baseline_training(study, n_rows=486, federation_steps=7)
    assert training.steps == 50 * math.ceil(486 / 32)
    assert (training.optimizer, training.learning_rate, training.epochs) == ("adam", 0.001, None)
    default = baseline_training(small_study, n_rows=486, federation_steps=7)
    assert dataclasses.replace(default, steps=None, epochs=1) == small_study.training
    assert default.steps == 7


def test_comparison_csv_scores_every_model_everywhere(baseline_run):
    table = pd.read_csv(baseline_run.out_dir / "comparison.csv", keep_default_na=False)
    models = {"federated", "pooled", "local:site-01", "local:site-02", "local:site-03"}
    assert set(table["model"]) == models
    assert set(table["evaluated_at"]) == {"site-01", "site-02", "site-03", "all-sites"}
    # federated and pooled: 4 places x every metric; local models: at home and all sites
    assert len(table) == 2 * 4 * len(METRIC_NAMES) + 3 * 2 * len(METRIC_NAMES)
    local = table[table["model"] == "local:site-02"]
    assert set(local["evaluated_at"]) == {"site-02", "all-sites"}
    cross = pd.read_csv(baseline_run.out_dir / "cross_site.csv")
    sites = ["site-01", "site-02", "site-03"]
    assert list(cross.columns) == ["metric", "trained_at", *sites, "all-sites"]
    matrix = baseline_run.summary["comparison"]["cross_site"]
    auroc = cross[cross["metric"] == "auroc"].set_index("trained_at")
    for site in ("site-01", "site-02", "site-03"):
        for at in ("site-01", "site-02", "site-03"):
            assert auroc.loc[site, at] == pytest.approx(matrix["auroc"][site][at], abs=1e-5)
    calibration = pd.read_csv(baseline_run.out_dir / "calibration.csv")
    assert (calibration["n"] >= 10).all()  # bins below the minimum cell size left out
    assert set(calibration["site"]) <= {"site-01", "site-02", "site-03"}


def test_baselines_can_be_switched_off(tmp_path, small_study):
    study = small_study.with_overrides({"baselines.enabled": False, "rounds": 1})
    results = simulate(study, out_dir=tmp_path / "run", report=False)
    assert "baselines" not in results.summary
    assert set(results.summary["comparison"]["mean"]) == {"federated"}


def test_cli_prints_federated_vs_pooled_vs_local(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            "rounds=1",
            "--set",
            "data.synthetic.sites=2",
            "--set",
            "data.synthetic.rows_per_site=100",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "federated vs pooled" in out and "gain" in out
    assert "site-02" in out and "report:" in out
    assert (tmp_path / "run" / "report.html").is_file()
    assert load_study(tmp_path / "run" / "study.resolved.toml").baselines.enabled


def test_cli_table_renders_ties_and_undefined_values(baseline_run):
    from rich.console import Console

    from lhs_federated.cli.simulate import comparison_table
    from lhs_federated.results.reader import RunResults

    summary = json.loads(json.dumps(baseline_run.summary))
    row = summary["comparison"]["per_site"]["site-01"]
    row["gain"]["accuracy"] = 0.0  # federated and local tie
    row["pooled"]["auroc"] = None  # undefined (single-class test split)
    results = RunResults(baseline_run.out_dir, baseline_run.metrics, summary)
    console = Console(width=150, record=True)
    console.print(comparison_table(results))
    text = console.export_text()
    assert "+0.000" in text and "—" in text
