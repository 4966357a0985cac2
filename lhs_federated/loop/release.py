"""``lhs-fed release RUN --name NAME``: a finished run becomes a signed registry version.

Before anything is written the run must have completed (``summary.json``
with status ``completed``), the version must be new and the key must load.
Then the released model is evaluated once more at every site, as its own
study through the same apps (``evaluate.monitor`` with the reference asked
for): each site scores it on its held-out rows with 95% intervals, and
summarises its training rows' columns over the drift bins; the sums are the
release's training reference for drift. The model card, the reference and
the model's files are then published atomically (see
:mod:`lhs_federated.registry.store`). The first release of a name becomes
its current version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lhs_federated.apps.loop_tasks import model_edges
from lhs_federated.errors import LhsError
from lhs_federated.governance.code import installed_code_hash
from lhs_federated.governance.keys import load_private_key
from lhs_federated.governance.verify import load_entries
from lhs_federated.learning.drift import ColumnSummary, summary_from_json, summary_to_json
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.loop.card import build_card, card_markdown
from lhs_federated.loop.engine import InProcessEngine, LoopEngine
from lhs_federated.registry.store import Registry, ReleaseRef, check_name
from lhs_federated.results.writer import utc_now
from lhs_federated.study import Study, read_resolved_study

REFERENCE = "reference.json"
RUNS = ".runs"  # each release's reference study, beside the versions


def completed_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary, if it completed.

    Raises
    ------
    LhsError
        If the folder holds no completed run, saying why if it failed.
    """
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        failure = run_dir / "failure.json"
        why = ""
        if failure.is_file():
            why = ": " + str(json.loads(failure.read_text(encoding="utf-8")).get("error", ""))
        raise LhsError(
            f"run {str(run_dir)!r} did not complete (no summary.json){why}; only a "
            "completed run can be released."
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("status") != "completed":
        raise LhsError(f"run {str(run_dir)!r} has status {summary.get('status')!r}, not completed.")
    return summary


def pooled_reference(per_site: dict[str, Any]) -> tuple[list[ColumnSummary], list[str]]:
    """Sum of the sites' training-row summaries; and the sites that withheld a part."""
    pooled: list[ColumnSummary] | None = None
    partial = []
    for site, result in per_site.items():
        summaries = [summary_from_json(s) for s in result["reference"]]
        if any(np.isnan(s.counts).any() or np.isnan(s.n) for s in summaries):
            partial.append(site)
        clean = [
            ColumnSummary(
                np.nan_to_num(s.counts),
                *(0.0 if np.isnan(v) else v for v in (s.n, s.total, s.total_squares)),
            )
            for s in summaries
        ]
        pooled = clean if pooled is None else [a + b for a, b in zip(pooled, clean, strict=True)]
    return pooled or [], partial


def release_run(
    run_dir: str | Path,
    name: str,
    *,
    key_path: str | Path,
    registry_root: str | Path = "registry",
    version: str | None = None,
    parent: str | None = None,
    update: dict[str, Any] | None = None,
    study: Study | None = None,
    simulated_sites: Path | None = None,
    engine: LoopEngine | None = None,
) -> dict[str, Any]:
    """Publish a completed run as release ``name`` (see the module docstring).

    ``study`` replaces the run's own as the study of the reference
    evaluation (the loop evaluates an update on the periods it was fitted on).
    ``engine`` runs that evaluation (default: the run's simulated sites, in
    process; a deployed run needs the deployed engine, its sites).

    Returns
    -------
    dict
        The release's folder, manifest and ledger hash, and its card.
    """
    run_dir = Path(run_dir)
    check_name(name)
    summary = completed_summary(run_dir)
    registry = Registry(registry_root)
    ref = ReleaseRef(name, version or registry.next_version(name))
    if registry.folder(ref).exists():
        raise LhsError(
            f"release {ref} exists already in {str(registry.root)!r}; releases are immutable: "
            f"publish {registry.next_version(name)} instead."
        )
    if parent is not None:
        registry.require(ReleaseRef.parse(parent))
    key = load_private_key(key_path)
    versions = json.loads((run_dir / "versions.json").read_text(encoding="utf-8"))
    if versions.get("engine") == "deployment" and engine is None:
        raise LhsError(
            f"run {str(run_dir)!r} ran in deployment; its reference evaluation must run at "
            "its sites: release it with --server SERVER.toml (the running coordinator)."
        )
    model = ReleasedModel.load(run_dir)
    edges = model_edges(model)
    reference_study = study or read_resolved_study(run_dir / "study.resolved.toml")
    out = registry.root / name / RUNS / f"{ref.version}-reference-{utc_now().replace(':', '')}"
    engine = engine or InProcessEngine(Path(key_path), simulated_sites)
    found = engine.task(
        reference_study,
        out,
        {"kind": "monitor", "model": str(run_dir.resolve()), "with_reference": True,
         "edges": [e.tolist() for e in edges]},
    )  # fmt: skip
    secure = found.get("secure_sum")
    if secure is None:
        pooled, partial = pooled_reference(found["result"])
    else:  # the federation's reference is one secure sum; no site withheld a part of it
        pooled, partial = [summary_from_json(s) for s in secure["reference"]], []
    reference = {
        "columns": json.loads((run_dir / "model" / "model.json").read_text())["features"],
        "edges": [e.tolist() for e in edges],
        "pooled": [summary_to_json(s) for s in pooled],
        "sites_withholding_cells": partial,
        "per_site": found["result"],
        "failed": found["failed"],
        "study_hash": reference_study.hash,
        "ledger_hash": _final_hash(out),
    }
    code_hash = installed_code_hash()
    card = build_card(
        name=name, version=ref.version, study=model.study, run_summary=summary,
        reference=reference, parent=parent, code_hash=code_hash, update=update,
    )  # fmt: skip
    files: dict[str, Path | bytes] = {
        f"model/{p.name}": p for p in sorted((run_dir / "model").iterdir()) if p.is_file()
    }
    files["study.resolved.toml"] = run_dir / "study.resolved.toml"
    files[REFERENCE] = _json(reference)
    files["card.json"] = _json(card)
    files["card.md"] = card_markdown(card).encode("utf-8")
    published = registry.publish(
        ref,
        files,
        metadata={
            "created_at": utc_now(),
            "parent": parent,
            "study_hash": model.study.hash,
            "code_hash": code_hash,
            "run_ledger_hash": card["run_ledger_hash"],
            "reference_ledger_hash": reference["ledger_hash"],
            "run": str(run_dir.resolve()),
        },
        key=key,
    )
    if registry.current(name) is None:
        registry.decide(ref, promoted=True, reason=f"first release of {name}", key=key)
    return {**published, "release": str(ref), "card": card}


def _final_hash(run_dir: Path) -> str | None:
    entries = load_entries(run_dir / "governance" / "coordinator.jsonl")
    return entries[-1].hash if entries else None


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
