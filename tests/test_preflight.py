"""Fail before the work: a study its sites cannot run stops in seconds, with the fix named."""

from __future__ import annotations

import logging
import time

import pytest
from exports import CONTRACT, clinical_table, european, plain_csv

from lhs_federated import load_study, simulate
from lhs_federated.apps import server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.cli import main
from lhs_federated.deploy.coordinator import submit_study
from lhs_federated.deploy.server_config import ServerConfig, TlsSection
from lhs_federated.errors import ConfigError, StudyRunError

SIZES = {"site-a": 120, "site-b": 90, "site-c": 80, "site-d": 70, "site-e": 12, "site-f": 9}


@pytest.fixture(scope="module")
def six_sites(tmp_path_factory):
    """Six sites' CSV exports (two too small to train: 12 and 9 patients) and a contract."""
    folder = tmp_path_factory.mktemp("six")
    (folder / "contract.toml").write_text(CONTRACT)
    for k, (name, n) in enumerate(SIZES.items()):
        (european if k % 2 else plain_csv)(clinical_table(n, seed=k), folder / f"{name}.csv")
    return folder


def study_of(folder, **overrides):
    return load_study(None).with_overrides(
        {"name": "six", "data.source": "folder", "data.path": str(folder), **overrides}
    )


def test_too_few_trainable_sites_fail_before_the_results_folder(six_sites, tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(StudyRunError) as caught:
        simulate(study_of(six_sites), out_dir=out)
    assert time.monotonic() - started < 30  # before any round (the engine never starts)
    message = caught.value.message
    assert (
        "2 of 6 sites cannot train: site-e (training rows fewer than its minimum cell size)"
        in message
    )
    assert (
        "set federation.min_sites = 4" in message and "privacy.min_train_rows (now 20)" in message
    )
    assert "9" not in message.split("site-f")[1][:40]  # a withheld count is never named
    assert not out.exists()


def test_enough_sites_run_and_the_small_ones_are_named(six_sites, tmp_path, caplog):
    study = study_of(six_sites, rounds=1, **{"federation.min_sites": 4, "baselines.enabled": False})
    with caplog.at_level(logging.WARNING, logger="lhs_federated.federation"):
        results = simulate(study, out_dir=tmp_path / "run", report=False)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "2 of 6 sites will refuse to train every round" in warned
    assert "site-e" in warned and "site-f" in warned and "they are still scored" in warned
    assert "test splits with fewer rows or positive cases than the minimum cell size" in warned
    assert results.summary["rounds"] == 1
    rounds = (tmp_path / "run" / "rounds.csv").read_text()
    assert "site-e" in rounds  # the refusal itself is still recorded by the round


def test_more_min_sites_than_sites_fails_at_once(six_sites, tmp_path):
    with pytest.raises(StudyRunError, match=r"federation.min_sites = 8, but the study has 6 sites"):
        simulate(study_of(six_sites, **{"federation.min_sites": 8}), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_existing_results_folder_is_refused_before_any_work(six_sites, tmp_path):
    study = study_of(six_sites, rounds=1, **{"data.sites": ["site-a", "site-b"]})
    done = tmp_path / "done"
    simulate(study, out_dir=done, report=False)
    before = {p: p.stat().st_mtime_ns for p in done.rglob("*")}
    with pytest.raises(
        ConfigError,
        match=r"results folder .*done' already exists and is not empty \(it holds a run\)",
    ):
        simulate(study, out_dir=done)
    run_config = {
        server_app.STUDY_KEY: study.to_json(),
        server_app.OUT_DIR_KEY: str(done),
        server_app.ENGINE_KEY: "inprocess",
    }
    with pytest.raises(ConfigError, match=r"already exists and is not empty"):
        run_inprocess(run_config, 2)  # the coordinator's ServerApp: before discovery
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*")} == before  # nothing touched
    server = ServerConfig(tls=TlsSection(insecure=True), path=str(tmp_path / "server.toml"))
    with pytest.raises(ConfigError, match=r"already exists and is not empty"):
        submit_study(server, study, out_dir=done)  # deployed: before submitting the run


def test_data_validate_warns_about_sites_too_small_or_one_sided(six_sites, capsys):
    files = [str(six_sites / f"{name}.csv") for name in ("site-a", "site-f")]
    assert main(["data", "validate", "--contract", str(six_sites / "contract.toml"), *files]) == 0
    words = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "9 usable rows leave 6 training rows (test_fraction 0.3), fewer than 20" in words
    assert "this site will refuse to train" in words
    assert "positive rows, fewer than the minimum cell size 10" in words
    assert words.count("refuse to train") == 1  # site-a is big enough
