"""``lhs-fed monitor``: a release evaluated at every site on its newest period(s).

One evaluation-only study (``evaluate.monitor``) of the release on each
site's rows of the monitored periods: per-site AUROC, calibration intercept
and slope, O/E and Brier with 95% intervals, and each input's histogram and
moments. Drift is computed here, from those sums, against the release's
training reference (:mod:`lhs_federated.learning.drift`): per site and
pooled, the standardised mean difference and the PSI of every input, and the
prevalence shift. Each site is compared with its own training rows' summaries
(with the pooled reference where it has none). A bin below the site's
minimum cell size never leaves the site; it counts as empty in the PSI and
the timeline says so; a site below its minimum cell size has no PSI (withheld,
with the reason).

Under secure aggregation (``privacy.secure_aggregation = "secaggplus"``) the
coordinator holds only the federation's histograms (one secure sum, small
cells withheld from the totals, :mod:`lhs_federated.apps.loop_secagg`): drift
is the pooled rows' against the pooled reference, its PSI alerts are the
federation's (site ``secure-sum``), and the per-site rows keep their metrics
and metric alerts but no PSI or SMD (``withheld``: ``psi:per-site (secure
aggregation)``). Results are appended
to the release's monitoring timeline (``timeline.csv``), alerts
(:mod:`lhs_federated.loop.alerts`) to ``alerts.csv``, and both into the
registry ledger, signed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lhs_federated.apps.federation import SECURE_SUM_SITE
from lhs_federated.apps.records import hash_arrays
from lhs_federated.learning.drift import (
    ColumnSummary,
    population_stability_index,
    standardised_mean_difference,
    summary_from_json,
)
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.loop.alerts import Alert, AlertRules, append_alerts, site_alerts
from lhs_federated.loop.engine import InProcessEngine, LoopEngine
from lhs_federated.loop.release import REFERENCE
from lhs_federated.registry.store import Registry, ReleaseRef
from lhs_federated.study import Study, read_resolved_study

TIMELINE_COLUMNS = (
    "release", "period", "site", "n", "prevalence", "reference_prevalence", "mean_risk",
    "auroc", "auroc_low", "auroc_high", "calibration_intercept", "calibration_intercept_low",
    "calibration_intercept_high", "calibration_slope", "calibration_slope_low",
    "calibration_slope_high", "oe", "oe_low", "oe_high", "brier", "psi_max", "psi_feature",
    "smd_max", "smd_feature", "withheld", "alerts",
)  # fmt: skip


@dataclass
class MonitoringResult:
    """One monitoring study of one release: per-site rows, drift, alerts."""

    release: str
    period: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    ledger_hash: str | None = None


def monitoring_study(release_study: Study, periods: list[str], *, name: str) -> Study:
    """The evaluation-only study of a release on ``periods`` (no training rows)."""
    data = dataclasses.replace(
        release_study.data, train_periods=None, evaluate_periods=tuple(periods)
    )
    return dataclasses.replace(release_study, name=name, data=data)


def site_drift(
    current: list[ColumnSummary], reference: list[ColumnSummary], columns: list[str]
) -> dict[str, dict[str, float | None]]:
    """PSI and SMD of every input, and whether small cells were left out of the PSI.

    A bin a site withheld (1 to k - 1 rows) counts as empty: it holds under k
    of the site's hundreds of rows, so the PSI moves by little, and ``small``
    says it happened. A column the site withheld whole (fewer than k rows)
    has no PSI or SMD (None).
    """
    out: dict[str, dict[str, float | None]] = {}
    for name, cur, ref in zip(columns, current, reference, strict=True):
        if math.isnan(cur.n) or math.isnan(ref.n):
            out[name] = {"psi": None, "smd": None, "small": None}
            continue
        small = bool(np.isnan(cur.counts).any() or np.isnan(ref.counts).any())
        psi = population_stability_index(np.nan_to_num(cur.counts), np.nan_to_num(ref.counts))
        smd = standardised_mean_difference(cur, ref)
        out[name] = {"psi": psi, "smd": None if math.isnan(smd) else smd, "small": small}
    return out


def _reference_of(
    reference: dict[str, Any], site: str, pooled: list[ColumnSummary]
) -> list[ColumnSummary]:
    """The site's own training rows' summaries if it sent them whole; else the pooled ones.

    Sites differ from each other from the start (case mix, devices); drift is a
    change at a site, so each site is compared with its own training rows. A
    site that joined after the release, or withheld a cell of its reference,
    is compared with the pooled reference (a withheld bin of its own
    reference counts as empty, as in :func:`site_drift`).
    """
    own = reference["per_site"].get(site, {}).get("reference")
    if not own:
        return pooled
    summaries = [summary_from_json(s) for s in own]
    if any(math.isnan(s.n) for s in summaries):
        return pooled
    return summaries


def _largest(drift: dict[str, dict[str, float | None]], key: str) -> tuple[float | None, str]:
    found = [(abs(v[key]), k) for k, v in drift.items() if v[key] is not None]
    return max(found) if found else (None, "")


def monitor_release(
    registry: Registry,
    ref: ReleaseRef,
    periods: list[str],
    *,
    key: Ed25519PrivateKey,
    key_path: Path,
    out_root: Path,
    rules: AlertRules | None = None,
    study: Study | None = None,
    simulated_sites: Path | None = None,
    engine: LoopEngine | None = None,
) -> MonitoringResult:
    """Run the monitoring study of ``ref`` on ``periods``; append timeline and alerts.

    ``study`` overrides the release's own study as the source of the
    monitored rows (the loop's sites; by default the release's study).
    ``engine`` runs it (default: the simulated sites, in process). The task
    names the hash of the release's arrays: a deployed site's standing rule
    (monitoring of releases it approved) checks it against its own ledger.
    """
    rules = rules or AlertRules()
    folder = registry.require(ref)
    registry.verify(ref)
    reference = json.loads((folder / REFERENCE).read_text(encoding="utf-8"))
    base = study or read_resolved_study(folder / "study.resolved.toml")
    label = "+".join(periods)
    mon_study = monitoring_study(base, periods, name=f"{ref.name}-monitor")
    out = out_root / "runs" / f"{ref.version}-{label}"
    engine = engine or InProcessEngine(Path(key_path), simulated_sites)
    release = {"name": str(ref), "arrays_hash": hash_arrays(ReleasedModel.load(folder).arrays)}
    found = engine.task(
        mon_study,
        out,
        {"kind": "monitor", "model": str(folder), "edges": reference["edges"], "release": release},
    )
    columns = reference["columns"]
    pooled_ref = [summary_from_json(s) for s in reference["pooled"]]
    result = MonitoringResult(str(ref), label, failed=found["failed"])
    secure = found.get("secure_sum")
    pooled_current: list[ColumnSummary] | None = None
    for site, site_result in found["result"].items():
        values = site_result["values"]
        drift: dict[str, dict[str, float | None]] = {}
        if secure is None:
            current = [summary_from_json(s) for s in site_result["current"]]
            drift = site_drift(current, _reference_of(reference, site, pooled_ref), columns)
            result.drift[site] = drift
            pooled_current = _add(pooled_current, current)
        ref_values = reference["per_site"].get(site, {}).get("values", {})
        alerts = site_alerts(
            rules, release=str(ref), period=label, site=site, values=values,
            reference_auroc=ref_values.get("auroc"),
            psi={k: v["psi"] for k, v in drift.items()},
        )  # fmt: skip
        result.alerts += alerts
        psi_max, psi_feature = _largest(drift, "psi")
        smd_max, smd_feature = _largest(drift, "smd")
        withheld = sorted(
            {
                *site_result["undefined"],
                *(["psi:per-site (secure aggregation)"] if secure is not None else []),
                *(f"psi:{k}" for k, v in drift.items() if v["psi"] is None),
                *(f"psi:{k}(small cells as 0)" for k, v in drift.items() if v["small"]),
            }
        )
        result.rows.append(
            {
                "release": str(ref), "period": label, "site": site,
                **{k: values.get(k) for k in TIMELINE_COLUMNS if k in values},
                "reference_prevalence": ref_values.get("prevalence"),
                "psi_max": psi_max, "psi_feature": psi_feature,
                "smd_max": smd_max, "smd_feature": smd_feature,
                "withheld": ";".join(withheld), "alerts": len(alerts),
            }
        )  # fmt: skip
    if secure is not None:
        result.drift["pooled"] = site_drift(
            [summary_from_json(s) for s in secure["current"]], pooled_ref, columns
        )
        result.alerts += site_alerts(
            rules, release=str(ref), period=label, site=SECURE_SUM_SITE, values={},
            reference_auroc=None, psi={k: v["psi"] for k, v in result.drift["pooled"].items()},
        )  # fmt: skip
    elif pooled_current is not None:
        result.drift["pooled"] = site_drift(pooled_current, pooled_ref, columns)
    _append(out_root / "timeline.csv", result.rows)
    append_alerts(out_root / "alerts.csv", result.alerts)
    entry = registry.ledger(key).append(
        "monitoring",
        {
            "release": str(ref),
            "period": label,
            "study_hash": mon_study.hash,
            "per_site": {r["site"]: {k: r[k] for k in ("auroc", "calibration_intercept",
                         "calibration_slope", "oe", "psi_max")} for r in result.rows},
            "alerts": [a.row() for a in result.alerts],
            "failed": result.failed,
        },
    )  # fmt: skip
    result.ledger_hash = entry.hash
    return result


def _add(pooled: list[ColumnSummary] | None, site: list[ColumnSummary]) -> list[ColumnSummary]:
    """The pooled summaries with one site's added (its withheld values as 0)."""
    clean = [
        ColumnSummary(np.nan_to_num(c.counts), *(0.0 if math.isnan(v) else v
                      for v in (c.n, c.total, c.total_squares)))
        for c in site
    ]  # fmt: skip
    return clean if pooled is None else [a + b for a, b in zip(pooled, clean, strict=True)]


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TIMELINE_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
