"""Releases and the registry: signed, immutable, verified; monitoring a release."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from lhs_federated import load_study, simulate
from lhs_federated.cli import main
from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.keys import write_key_pair
from lhs_federated.loop.release import release_run
from lhs_federated.registry.store import Registry, ReleaseRef, ReleaseVerificationError
from lhs_federated.registry.warm_start import load_warm_start


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    """A small dated run (one site small enough to withhold), released as cvd@v1."""
    root = tmp_path_factory.mktemp("registry")
    study = load_study(None).with_overrides(
        {
            "name": "dated",
            "rounds": 3,
            "baselines.enabled": False,
            "training.epochs": 3,
            "data": {
                "synthetic": {
                    "sites": 3,
                    "rows_per_site": 150,
                    "size_imbalance": 1.2,
                    "periods": 3,
                },
                "train_periods": ["2020Q1..2020Q2"],
            },
        }
    )
    simulate(study, out_dir=root / "run", report=False)
    key = root / "coordinator.key"
    write_key_pair(key)
    found = release_run(root / "run", "cvd", key_path=key, registry_root=root / "registry")
    return {"root": root, "key": key, "registry": root / "registry", "found": found, "study": study}


def _cli(*args: str) -> int:
    return main(list(args))


def test_release_is_signed_carded_and_current(released: dict) -> None:
    registry = Registry(released["registry"])
    ref = ReleaseRef("cvd", "v1")
    assert registry.status("cvd") == {"v1": {"status": "current", "reason": "first release of cvd"}}
    card = json.loads((registry.folder(ref) / "card.json").read_text())
    assert card["study_hash"] == released["study"].hash and card["parent"] is None
    assert len(card["run_ledger_hash"]) == 64 and card["code_hash"]
    per_site = card["performance"]["per_site"]
    big = max(per_site, key=lambda s: per_site[s]["n"])
    assert per_site[big]["auroc_low"] < per_site[big]["auroc"] < per_site[big]["auroc_high"]
    pooled = card["performance"]["pooled"]["auroc"]
    assert pooled["low"] < pooled["estimate"] < pooled["high"]
    names = {
        p.relative_to(registry.folder(ref)).as_posix() for p in registry.folder(ref).rglob("*")
    }
    assert {
        "model/model.npz",
        "model/model.pkl",
        "card.md",
        "manifest.json",
        "reference.json",
    } <= names
    mode = (registry.folder(ref) / "model" / "model.npz").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only once written
    assert registry.verify(ref)["files"] == len(
        json.loads((registry.folder(ref) / "manifest.json").read_text())["files"]
    )


def test_an_existing_version_and_an_incomplete_run_are_refused(
    released: dict, tmp_path: Path, capsys
) -> None:
    registry = str(released["registry"])
    code = _cli("release", str(released["root"] / "run"), "--name", "cvd", "--version", "v1",
                "--registry", registry, "--key", str(released["key"]))  # fmt: skip
    assert code == 2 and "exists already" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "failure.json").write_text(json.dumps({"error": "site-02 left"}))
    with pytest.raises(LhsError, match=r"did not complete.*site-02 left"):
        release_run(tmp_path / "broken", "cvd", key_path=released["key"], registry_root=registry)
    assert Registry(registry).versions("cvd") == ["v1"]


def test_a_wrong_key_leaves_nothing_half_written(released: dict, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    write_key_pair(other)
    with pytest.raises(LhsError, match="signed with key"):
        release_run(
            released["root"] / "run", "cvd", key_path=other, registry_root=released["registry"]
        )
    folder = released["registry"] / "cvd"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".runs")) == ["v1"]


@pytest.mark.parametrize("tamper", ["model/model.npz", "card.json", "extra.txt", "manifest.json"])
def test_verify_names_the_tampered_file(
    released: dict, tmp_path: Path, tamper: str, capsys
) -> None:
    import shutil

    copy = tmp_path / "registry"
    shutil.copytree(released["registry"], copy)
    target = copy / "cvd" / "v1" / tamper
    if target.exists():
        target.chmod(stat.S_IRUSR | stat.S_IWUSR)
        target.write_bytes(target.read_bytes() + b" ")
    else:
        target.parent.chmod(stat.S_IRWXU)
        target.write_text("hello")
    assert _cli("registry", "verify", "cvd@v1", "--registry", str(copy)) == 1
    assert tamper in capsys.readouterr().err
    with pytest.raises(ReleaseVerificationError, match=tamper.replace(".", r"\.")):
        Registry(copy).verify(ReleaseRef("cvd", "v1"))


def test_monitoring_a_release_prints_alerts_and_withholds_small_sites(
    released: dict, capsys
) -> None:
    out = released["root"] / "monitoring"
    code = _cli("monitor", "cvd@v1", "--period", "2020Q3", "--registry", str(released["registry"]),
                "--key", str(released["key"]), "--out", str(out))  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "withheld" in printed  # the small site: too few cases to report
    timeline = (out / "timeline.csv").read_text().splitlines()
    assert len(timeline) == 1 + 3 and timeline[0].startswith("release,period,site")
    kinds = [r["kind"] for r in Registry(released["registry"]).records()]
    assert kinds[-1] == "monitoring"
    ledger = json.loads((out / "runs" / "v1-2020Q3" / "loop-task.json").read_text())
    small = min(ledger["result"], key=lambda s: ledger["result"][s]["values"]["n"])
    counts = [c for col in ledger["result"][small]["current"] for c in col["counts"]]
    assert all(c is None or c == 0 or c >= 10 for c in counts)  # no count of 1-9 left the site
    code = _cli("monitor", "cvd@v1", "--period", "2024Q1", "--registry", str(released["registry"]),
                "--key", str(released["key"]), "--out", str(out))  # fmt: skip
    assert code == 2 and "outside the data's range (2020Q1..2020Q3)" in capsys.readouterr().err


def test_warm_start_needs_the_release_inputs(released: dict) -> None:
    study = released["study"].with_overrides(
        {"model.warm_start": "registry:cvd@v1", "model.registry": str(released["registry"])}
    )
    warm = load_warm_start(study)
    assert warm is not None and warm.standardizer is not None
    with np.load(released["registry"] / "cvd" / "v1" / "model" / "model.npz") as npz:
        np.testing.assert_array_equal(warm.arrays["linear.weight"], npz["linear.weight"])
    other = study.with_overrides({"preprocessing.one_hot": "drop-first"})
    with pytest.raises(
        ConfigError, match=r"the release's inputs differ.*release only: \['activity=low'\]"
    ):
        load_warm_start(other)
    with pytest.raises(ConfigError, match=r"no release cvd@v7.*versions of 'cvd': v1"):
        load_warm_start(study.with_overrides({"model.warm_start": "registry:cvd@v7"}))


def test_a_release_logged_to_an_mlflow_sqlite_store(released: dict, tmp_path: Path, capsys) -> None:
    """Model, card, metrics and signature hash in MLflow; a tampered release is never logged."""
    import shutil

    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = released["registry"]
    code = _cli("registry", "log", "cvd@v1", "--registry", str(registry), "--mlflow", uri)
    printed = capsys.readouterr().out
    assert code == 0, printed
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cvd").experiment_id])
    card = json.loads((registry / "cvd" / "v1" / "card.json").read_text())
    pooled = card["performance"]["pooled"]["auroc"]
    assert run.data.metrics["pooled.auroc"] == pytest.approx(pooled["estimate"])
    assert run.data.params["study_hash"] == card["study_hash"]
    manifest = (registry / "cvd" / "v1" / "manifest.json").read_bytes()
    assert run.data.tags["lhs.manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert run.data.tags["lhs.status"] == "current" and run.info.run_id in printed
    small = min(
        card["performance"]["per_site"], key=lambda s: card["performance"]["per_site"][s]["n"]
    )
    assert f"{small}.auroc" not in run.data.metrics  # withheld on the card, absent here
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "release")}
    assert {"release/card.md", "release/manifest.sig", "release/model"} <= logged
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working folder
    mlflow.set_tracking_uri(uri)
    estimator = mlflow.sklearn.load_model("models:/cvd/1")
    with np.load(registry / "cvd" / "v1" / "model" / "model.npz") as npz:
        np.testing.assert_allclose(estimator.coef_.ravel(), npz["linear.weight"].ravel())
    # logging again adds nothing; a tampered copy is refused before anything is logged
    assert _cli("registry", "log", "cvd@v1", "--registry", str(registry), "--mlflow", uri) == 0
    assert "already logged" in capsys.readouterr().out
    copy = tmp_path / "tampered"
    shutil.copytree(registry, copy)
    target = copy / "cvd" / "v1" / "card.json"
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    target.write_text(target.read_text().replace('"cvd@v1"', '"cvd@v1 "'))
    assert _cli("registry", "log", "cvd@v1", "--registry", str(copy), "--mlflow", uri) == 1
    assert len(client.search_runs([run.info.experiment_id])) == 1
