"""Updates of a release: the standard clinical model-updating methods, federated.

- ``in-the-large``: recalibration of the intercept only;
- ``logistic``: recalibration of intercept and slope;
- ``refit``: every weight refitted by the federation, warm-started from the
  release (``[model] warm_start``) and keeping its preprocessing;
- ``per-site``: each site's own logistic recalibration, fitted on its rows
  alone by the same federated Newton steps without the sum (a personalised
  option; the shared model is unchanged, each site applies its own ``(a, b)``).

Recalibrations run as ``train.recalibrate`` studies (the pooled fit, exact,
:mod:`lhs_federated.learning.recalibration`); the result is folded into the
release's output layer and written as an *update run*: a run folder like any
other (``study.resolved.toml``, ``model/``, ``summary.json`` naming the
recalibration study's ledger), which :func:`lhs_federated.loop.release.release_run`
publishes with its parent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lhs_federated.governance.verify import load_entries
from lhs_federated.learning.export import ReleasedModel, save_model
from lhs_federated.learning.recalibration import (
    SITE_RECALIBRATION_FILE,
    compose,
    fold_recalibration,
    read_site_recalibration,
)
from lhs_federated.loop.engine import InProcessEngine, LoopEngine
from lhs_federated.results.writer import utc_now, versions, write_json
from lhs_federated.study import Study, write_study

UpdateMethod = Literal["in-the-large", "logistic", "refit", "per-site"]
UPDATE_METHODS = ("in-the-large", "logistic", "refit", "per-site")


RECALIBRATION_ROUNDS = 8  # Newton steps: the pooled fit converges in 4 to 6


def update_study(base: Study, periods: list[str], *, name: str, rounds: int | None = None) -> Study:
    """The study of an update on ``periods``: their rows split into train and test."""
    data = dataclasses.replace(base.data, train_periods=tuple(periods), evaluate_periods=None)
    return dataclasses.replace(base, name=name, data=data, rounds=rounds or base.rounds)


def recalibrated_run(
    out_dir: Path,
    study: Study,
    parent_folder: Path,
    method: Literal["in-the-large", "logistic", "per-site"],
    *,
    key_path: Path,
    simulated_sites: Path | None = None,
    per_site_method: Literal["in-the-large", "logistic"] = "in-the-large",
    only_sites: set[str] | None = None,
    engine: LoopEngine | None = None,
) -> dict[str, Any]:
    """Recalibrate a release on ``study``'s training rows; write the update run.

    ``per-site``: each site's own recalibration (``per_site_method``),
    composed with the one the release already held for it; the shared arrays
    stay the parent's. ``only_sites`` (the sites that alerted) are the ones
    whose recalibration changes; the others keep theirs, so the update
    touches no site that did not need it.
    """
    task_dir = out_dir / "recalibration"
    per_site = method == "per-site"
    engine = engine or InProcessEngine(Path(key_path), simulated_sites)
    found = engine.task(
        study,
        task_dir,
        {"kind": "recalibrate", "model": str(parent_folder), "per_site": per_site,
         "method": per_site_method if per_site else method},
    )  # fmt: skip
    parent = ReleasedModel.load(parent_folder)
    inherited = read_site_recalibration(parent_folder / "model")
    if per_site:
        arrays = parent.arrays
        fitted = {
            site: params if len(params) == 2 else [params[0], 1.0]
            for site, params in found["result"]["params"].items()
            if only_sites is None or site in only_sites
        }
        site_params = {
            site: compose(fitted[site], inherited.get(site)) if site in fitted else old
            for site, old in {**dict.fromkeys(fitted), **inherited}.items()
        }
        params = fitted
    else:
        params = found["result"]["params"]["pooled"]
        arrays = fold_recalibration(parent.arrays, np.asarray(params, float), method)
        site_params = inherited
    files = save_model(out_dir / "model", study, arrays, parent.standardizer)
    if site_params:
        (out_dir / "model" / SITE_RECALIBRATION_FILE).write_text(
            json.dumps(site_params, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    write_study(study, out_dir / "study.resolved.toml")
    write_json(out_dir / "versions.json", {**versions(), "engine": engine.name})
    summary = {
        "study": study.name,
        "study_hash": study.hash,
        "status": "completed",
        "finished_at": utc_now(),
        "update": {"method": method, "params": params, "failed": found["failed"]},
        "model": {"files": files},
        "ledger": _ledger_close(task_dir),
    }
    write_json(out_dir / "summary.json", summary)
    return summary["update"]


def refitted_run(
    out_dir: Path, study: Study, *, parent: str, registry: Path, engine: LoopEngine
) -> dict[str, Any]:
    """Refit every weight, warm-started from ``parent`` (``NAME@VERSION``)."""
    warm = dataclasses.replace(
        study,
        model=dataclasses.replace(
            study.model, warm_start=f"registry:{parent}", registry=str(registry.resolve())
        ),
    )
    engine.train(warm, out_dir)
    return {"method": "refit", "warm_start": parent, "rounds": warm.rounds}


def _ledger_close(task_dir: Path) -> dict[str, Any] | None:
    path = task_dir / "governance" / "coordinator.jsonl"
    if not path.is_file():
        return None
    entries = load_entries(path)
    finished = [e for e in entries if e.kind == "study-finished"]
    return {
        "file": str(path),
        "final_seq": entries[-1].seq,
        "final_hash": entries[-1].hash,
        "finished_hash": finished[-1].hash if finished else None,
    }
