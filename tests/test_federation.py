"""End-to-end federations on the in-process engine (the real ServerApp and ClientApp)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from faulty import faulty_client, run_with

from lhs_federated import StudyRunError, load_study, simulate
from lhs_federated.apps import server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.strategies import STRATEGIES
from lhs_federated.data.io import write_table
from lhs_federated.data.synthetic import OUTCOME, SyntheticCohort, generate_cohort
from lhs_federated.errors import DataError, SiteRefusal
from lhs_federated.learning.metrics import METRIC_NAMES


def test_small_study_writes_every_result_file(tmp_path, small_study):
    results = simulate(small_study, out_dir=tmp_path / "run")
    names = {p.name for p in results.out_dir.iterdir()}
    assert {
        "study.resolved.toml",
        "versions.json",
        "metrics.csv",
        "rounds.csv",
        "sites.csv",
        "summary.json",
        "model",
    } <= names
    assert load_study(results.out_dir / "study.resolved.toml").hash == small_study.hash
    assert results.summary["study_hash"] == small_study.hash
    versions = json.loads((results.out_dir / "versions.json").read_text())
    assert versions["packages"]["flwr"] == "1.42.0" and versions["seed"] == small_study.seed
    metrics = results.metrics
    assert set(metrics.columns) == {"round", "site", "split", "metric", "value", "reason"}
    test = metrics[metrics.split == "test"]
    assert len(test) == 2 * 3 * len(METRIC_NAMES)
    assert results.per_round.shape == (6, len(METRIC_NAMES))
    assert list(results.final.index) == ["site-01", "site-02", "site-03"]
    rounds = pd.read_csv(results.out_dir / "rounds.csv")
    assert rounds["trained"].tolist() == ["site-01 site-02 site-03"] * 2


def test_default_study_golden_metrics(tmp_path):
    """The default study's federated result, pinned with a tolerance."""
    results = simulate(None, out_dir=tmp_path / "run")
    mean = results.summary["final"]["mean"]
    assert mean["auroc"] == pytest.approx(0.847, abs=0.015)
    assert mean["accuracy"] == pytest.approx(0.843, abs=0.02)
    assert 0.8 < mean["calibration_slope"] < 2.0
    first = results.per_round.xs(1, level="round")["auroc"].mean()
    assert mean["auroc"] > first  # federation improved on round 1


def test_same_seed_same_results_and_seed_matters(tmp_path, small_study):
    first = simulate(small_study, out_dir=tmp_path / "a")
    again = simulate(small_study, out_dir=tmp_path / "b")
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    other = simulate(small_study.with_overrides({"seed": 7}), out_dir=tmp_path / "c")
    assert not first.metrics["value"].equals(other.metrics["value"])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_runs_a_round(tmp_path, small_study, name):
    params = {"qfedavg": {"q": 0.1}, "fedtrimmedavg": {"beta": 0.1}}.get(name, {})
    study = small_study.with_overrides(
        {"rounds": 1, "strategy.name": name, "strategy.params": params}
    )
    results = simulate(study, out_dir=tmp_path / name)
    assert results.summary["status"] == "completed"
    assert not math.isnan(results.summary["final"]["mean"]["auroc"])


def test_refusal_below_min_sites_stops_with_the_reason(tmp_path, small_study):
    client = faulty_client(1, 2, SiteRefusal("site-02", "privacy budget spent"))
    with pytest.raises(
        StudyRunError,
        match=r"round 2: 2 of 3 sites returned a training update; "
        r"the study needs 3.*site-02: refused: site 'site-02' refused: privacy budget spent",
    ):
        run_with(client, small_study, tmp_path / "run")
    failure = json.loads((tmp_path / "run" / "failure.json").read_text())
    assert "privacy budget spent" in failure["error"]
    assert not (tmp_path / "run" / "summary.json").exists()
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["round"].max() == 1  # round 1 kept


def test_round_completes_without_a_crashed_site_when_min_sites_allows(tmp_path, small_study):
    study = small_study.with_overrides({"federation.min_sites": 2})
    run_with(faulty_client(2, 1, RuntimeError("disk full")), study, tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv", keep_default_na=False)
    assert rounds["trained"].tolist() == ["site-01 site-02", "site-01 site-02 site-03"]
    assert "site-03: failed: RuntimeError: disk full" in rounds["failed"][0]
    assert rounds["failed"][1] == ""


def write_sites(folder, tables):
    folder.mkdir()
    for name, table in tables.items():
        write_table(table, folder / f"{name}.csv")
    from lhs_federated.data.contract import builtin_contract_text

    (folder / "contract.toml").write_text(builtin_contract_text("cardio-risk"))


def test_single_class_test_site_is_reported_not_averaged(tmp_path):
    tables = generate_cohort(SyntheticCohort(sites=3, rows_per_site=200), seed=1)
    rare = tables["site-03"].iloc[:40].copy()
    rare[OUTCOME] = 0
    rare.iloc[[3, 30], rare.columns.get_loc(OUTCOME)] = 1
    tables["site-03"] = rare
    write_sites(tmp_path / "data", tables)
    study = load_study(None).with_overrides(
        {
            "rounds": 2,
            "data.source": "folder",
            "data.path": str(tmp_path / "data"),
            "data.test_fraction": 0.2,
            "sites.min_cell_size": 5,  # site-03's 8 test rows may be reported
        }
    )
    results = simulate(study, out_dir=tmp_path / "run")
    undefined = results.summary["final"]["undefined"]
    assert undefined["site-03"]["auroc"] == "single-class test set (all 8 rows are negative)"
    assert results.summary["final"]["per_site"]["site-03"]["auroc"] is None
    sites = results.summary["final"]["per_site"]
    expected = np.mean([sites["site-01"]["auroc"], sites["site-02"]["auroc"]])
    assert results.summary["final"]["mean"]["auroc"] == pytest.approx(expected)
    reasons = results.metrics.query("site == 'site-03' and metric == 'auroc'")["reason"]
    assert reasons.str.startswith("single-class").all()


def test_bad_site_data_fails_before_any_results_folder(tmp_path):
    tables = generate_cohort(SyntheticCohort(sites=2, rows_per_site=100), seed=1)
    tables["site-02"].loc[5, "age"] = 300
    write_sites(tmp_path / "data", tables)
    study = load_study(None).with_overrides(
        {"data.source": "folder", "data.path": str(tmp_path / "data")}
    )
    with pytest.raises(
        DataError,
        match=r"site-02\.csv does not meet its data contract \(1 problem\): "
        r"age: 1 values outside \[18, 100\] years at rows 6",
    ):
        simulate(study, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_results_folder_is_never_overwritten(tmp_path, small_study):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    from lhs_federated import ConfigError

    with pytest.raises(ConfigError, match="already exists and is not empty"):
        simulate(small_study, out_dir=tmp_path / "run")


def test_resume_after_a_coordinator_crash_gives_the_uninterrupted_model(tmp_path, small_study):
    study = small_study.with_overrides({"rounds": 4, "strategy.name": "fedadam"})
    uninterrupted = simulate(study, out_dir=tmp_path / "whole")
    # The coordinator "dies" in round 3: a site crash the study cannot tolerate stops it.
    with pytest.raises(StudyRunError, match="round 3"):
        run_with(faulty_client(0, 3, RuntimeError("power cut")), study, tmp_path / "run")
    assert pd.read_csv(tmp_path / "run" / "rounds.csv")["round"].tolist() == [1, 2]
    config = {
        server_app.STUDY_KEY: study.to_json(),
        server_app.OUT_DIR_KEY: str(tmp_path / "run"),
        server_app.RESUME_KEY: True,
    }
    run_inprocess(config, 3)
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["model"]["arrays_sha256"] == uninterrupted.summary["model"]["arrays_sha256"]
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")["round"].tolist()
    assert rounds == [1, 2, 3, 4]  # no round duplicated or missing
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    pd.testing.assert_frame_equal(
        metrics.drop(columns="reason"),
        uninterrupted.metrics.drop(columns="reason"),
        check_dtype=False,
    )
    assert not (tmp_path / "run" / "failure.json").exists()
    with pytest.raises(StudyRunError, match="holds a completed run"):
        run_inprocess(config, 3)
