"""A verified release, logged to an MLflow tracking store (``pip install lhs-federated[mlflow]``).

Many hospital data-science teams keep their models in MLflow; the registry
folder stays the signed record, and this copies a release into a tracking
store as one run of the experiment named after the release:

- params: study hash, code hash, parent, run ledger hash, periods, sites,
  model family and update method;
- metrics: the card's pooled and per-site discrimination and calibration
  with their 95% limits (what the card shows; withheld figures stay absent);
- tags: ``lhs.release``, the registry status, the manifest's SHA-256, the
  signature's SHA-256 and the signer's key fingerprint, so a reader can tie
  the MLflow run back to the signed release;
- artifacts: every file of the release (model files, card, reference,
  manifest and signature) under ``release/``, and the scikit-learn
  estimator as an MLflow model under ``model/``;
- a version of the registered model of the same name, pointing at it.

The release is verified first (a tampered release is never logged), and a
release already logged with the same manifest is not logged again: its run
is returned. Only the client API is used, so the process's global MLflow
state (tracking URI, active run) is left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

from lhs_federated.errors import ConfigError
from lhs_federated.registry.store import MANIFEST, SIGNATURE, Registry, ReleaseRef

RELEASE_TAG = "lhs.release"
MANIFEST_TAG = "lhs.manifest_sha256"


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as error:
        raise ConfigError(
            "logging a release to MLflow needs MLflow: pip install 'lhs-federated[mlflow]'."
        ) from error
    return mlflow


def artifact_location(tracking_uri: str) -> str | None:
    """Beside a SQLite store's database (MLflow's default is ``./mlruns`` of the working folder).

    Other stores (a tracking server) keep artifacts where they are configured to.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix) :]).resolve().parent / "mlartifacts").as_uri()


def release_metrics(card: dict[str, Any]) -> dict[str, float]:
    """The card's figures as MLflow metric keys (``pooled.auroc``, ``site-01.auroc_low``, ...)."""
    performance = card["performance"]
    found: dict[str, float] = {}
    for metric, value in performance["pooled"].items():
        for part in ("estimate", "low", "high"):
            number = value.get(part) if isinstance(value, dict) else None
            if isinstance(number, int | float) and math.isfinite(number):
                suffix = "" if part == "estimate" else f"_{part}"
                found[f"pooled.{metric}{suffix}"] = float(number)
    for site, values in performance["per_site"].items():
        for metric, number in values.items():
            if isinstance(number, int | float) and math.isfinite(number):
                found[f"{site}.{metric}"] = float(number)
    return found


def log_release(registry_root: str | Path, ref: ReleaseRef, tracking_uri: str) -> dict[str, Any]:
    """Log release ``ref`` to the tracking store at ``tracking_uri``; return its run.

    Raises
    ------
    ReleaseVerificationError
        If the release does not verify (nothing is logged).
    ConfigError
        If MLflow is not installed or the store cannot be opened.
    """
    mlflow = _mlflow()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    registry = Registry(registry_root)
    registry.verify(ref)
    folder = registry.folder(ref)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    manifest_sha = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    manifest = registry.manifest(ref)
    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        experiment = client.get_experiment_by_name(ref.name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(
                ref.name,
                artifact_location=artifact_location(tracking_uri),
                tags={"lhs.registry": str(registry.root)},
            )
        )
    except Exception as error:  # MLflow raises its own and its stores' errors
        raise ConfigError(
            f"cannot open the MLflow tracking store {tracking_uri!r}: {error}"
        ) from error
    logged = client.search_runs(
        [experiment_id], filter_string=f"tags.`{MANIFEST_TAG}` = '{manifest_sha}'"
    )
    if logged:
        return {"run_id": logged[0].info.run_id, "experiment_id": experiment_id, "new": False}
    status = registry.status(ref.name).get(ref.version, {}).get("status", "published")
    tags = {
        RELEASE_TAG: str(ref),
        MANIFEST_TAG: manifest_sha,
        "lhs.signature_sha256": hashlib.sha256((folder / SIGNATURE).read_bytes()).hexdigest(),
        "lhs.signer": str(manifest.get("signer", "")),
        "lhs.status": status,
        "mlflow.runName": str(ref),
    }
    run = client.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    update = card.get("update") or {}
    data = card.get("data") or {}
    params = {
        "study_hash": card["study_hash"],
        "code_hash": card["code_hash"],
        "parent": card.get("parent") or "",
        "run_ledger_hash": card.get("run_ledger_hash") or "",
        "model_family": card["model"]["family"],
        "inputs": card["model"]["inputs"],
        "sites": ",".join(data.get("sites") or []),
        "train_periods": ",".join(data.get("train_periods") or []) or "all",
        "update_method": update.get("method") or "",
    }
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in sorted(release_metrics(card).items())],
        params=[Param(k, str(v)[:500]) for k, v in params.items()],
        tags=[RunTag("lhs.intended_use", str(card.get("intended_use", ""))[:5000])],
    )
    client.log_artifacts(run_id, str(folder), artifact_path="release")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "model"
        _save_sklearn(mlflow, folder / "model" / "model.pkl", model_dir)
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run_id)
    version = _register(client, ref, run_id, tags)
    return {"run_id": run_id, "experiment_id": experiment_id, "new": True, "model_version": version}


def _save_sklearn(mlflow: Any, estimator_file: Path, target: Path) -> None:
    """The release's scikit-learn estimator as an MLflow model folder (no environment probing)."""
    import sklearn

    with estimator_file.open("rb") as handle:
        estimator = pickle.load(handle)  # the release's own file, verified above
    mlflow.sklearn.save_model(
        estimator,
        str(target),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        serialization_format="pickle",
    )


def _register(client: Any, ref: ReleaseRef, run_id: str, tags: dict[str, str]) -> str | None:
    """A version of the registered model ``ref.name`` for the run's model (None if unsupported)."""
    try:
        try:
            client.get_registered_model(ref.name)
        except Exception:  # not registered yet
            client.create_registered_model(ref.name)
        version = client.create_model_version(
            ref.name,
            f"runs:/{run_id}/model",
            run_id=run_id,
            tags={k: v for k, v in tags.items() if k.startswith("lhs.")},
        )
    except Exception:  # a store without a model registry: the run holds everything
        return None
    return str(version.version)
