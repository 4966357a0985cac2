"""The model card of a release: what a clinician and a governance board read first.

Per-site discrimination and calibration come from the release's reference
evaluation (each site scored the released model on its own held-out rows and
sent each metric with its 95% interval). The pooled figure is a fixed-effect
inverse-variance meta-analysis of the sites' estimates (on the logit scale
for AUROC, the log scale for O/E), the standard way to pool validation results
across centres that cannot pool rows; sites whose metric was withheld (below
their minimum cell size) are left out of it and named.
"""

from __future__ import annotations

import math
from typing import Any

from lhs_federated.learning.monitoring import MONITOR_METRICS
from lhs_federated.learning.uncertainty import Z
from lhs_federated.study import Study

_SCALES = {"auroc": "logit", "oe": "log"}


def _to(scale: str, value: float) -> float:
    if scale == "logit":
        return math.log(value / (1 - value))
    return math.log(value) if scale == "log" else value


def _back(scale: str, value: float) -> float:
    if scale == "logit":
        return 1 / (1 + math.exp(-value))
    return math.exp(value) if scale == "log" else value


def pooled_estimate(per_site: dict[str, dict[str, float | None]], metric: str) -> dict[str, Any]:
    """Fixed-effect inverse-variance pooling of one metric over sites, with its 95% CI."""
    scale = _SCALES.get(metric, "identity")
    weights, total, used = 0.0, 0.0, []
    for site, values in per_site.items():
        estimate, low, high = (values.get(metric + s) for s in ("", "_low", "_high"))
        if None in (estimate, low, high) or not low < high:
            continue
        try:
            se = (_to(scale, high) - _to(scale, low)) / (2 * Z)
            point = _to(scale, estimate)
        except (ValueError, ZeroDivisionError):
            continue
        if se <= 0:
            continue
        weights += 1 / se**2
        total += point / se**2
        used.append(site)
    if not used:
        return {"estimate": None, "low": None, "high": None, "sites": []}
    mean, se = total / weights, 1 / math.sqrt(weights)
    return {
        "estimate": _back(scale, mean),
        "low": _back(scale, mean - Z * se),
        "high": _back(scale, mean + Z * se),
        "sites": used,
    }


def build_card(
    *,
    name: str,
    version: str,
    study: Study,
    run_summary: dict[str, Any],
    reference: dict[str, Any],
    parent: str | None,
    code_hash: str,
    update: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card's content (``card.json``); :func:`card_markdown` renders it."""
    per_site = {s: r["values"] for s, r in reference["per_site"].items()}
    contract = study.contract
    limitations = [
        "Pooled figures are a fixed-effect meta-analysis of the sites' estimates, not "
        "metrics of pooled rows.",
        f"Trained on periods {', '.join(study.data.train_periods or ('all',))}; performance "
        "outside them is what monitoring is for.",
    ]
    withheld = sorted(s for s, r in reference["per_site"].items() if r.get("undefined"))
    if withheld:
        limitations.append(
            f"Some metrics withheld or undefined at {', '.join(withheld)} "
            "(fewer rows than the site's minimum cell size, or one outcome class)."
        )
    if reference.get("failed"):
        limitations.append(f"Not evaluated at: {', '.join(sorted(reference['failed']))}.")
    privacy = run_summary.get("privacy") or {}
    return {
        "release": f"{name}@{version}",
        "intended_use": study.description or study.name,
        "outcome": {"column": contract.outcome.column, "description": contract.outcome.description},
        "population": contract.description,
        "model": {"family": study.model.name, "inputs": len(contract.features)},
        "data": {
            "sites": sorted(per_site),
            "train_periods": list(study.data.train_periods or []),
            "source": study.data.source,
        },
        "performance": {
            "per_site": per_site,
            "pooled": {m: pooled_estimate(per_site, m) for m in MONITOR_METRICS},
            "evaluated_on": "each site's held-out test rows of the training periods",
        },
        "privacy_spent": privacy.get("per_site") or privacy or "none (no differential privacy)",
        "study_hash": study.hash,
        "code_hash": code_hash,
        # summary.json names the study-finished record (the seal after it hashes summary.json)
        "run_ledger_hash": (run_summary.get("ledger") or {}).get("finished_hash"),
        "reference_ledger_hash": reference.get("ledger_hash"),
        "parent": parent,
        "update": update,
        "limitations": limitations,
    }


def _fmt(values: dict[str, Any], metric: str) -> str:
    estimate = values.get(metric) if metric in values else values.get("estimate")
    low = values.get(f"{metric}_low", values.get("low"))
    high = values.get(f"{metric}_high", values.get("high"))
    if estimate is None:
        return "withheld"
    if low is None or high is None:
        return f"{estimate:.3f}"
    return f"{estimate:.3f} ({low:.3f}-{high:.3f})"


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown, for people."""
    perf = card["performance"]
    header = "| site | " + " | ".join(MONITOR_METRICS) + " |"
    rows = [header, "|" + "---|" * (len(MONITOR_METRICS) + 1)]
    for site, values in perf["per_site"].items():
        rows.append(f"| {site} | " + " | ".join(_fmt(values, m) for m in MONITOR_METRICS) + " |")
    pooled = perf["pooled"]
    rows.append("| pooled | " + " | ".join(_fmt(pooled[m], m) for m in MONITOR_METRICS) + " |")
    lines = [
        f"# Model card: {card['release']}",
        "",
        f"**Intended use:** {card['intended_use']}",
        f"**Outcome:** {card['outcome']['column']} ({card['outcome']['description']})",
        f"**Population:** {card['population']}",
        f"**Model:** {card['model']['family']} on {card['model']['inputs']} inputs",
        f"**Sites:** {', '.join(card['data']['sites'])}; training periods: "
        f"{', '.join(card['data']['train_periods']) or 'all rows'}",
        f"**Parent release:** {card['parent'] or 'none'}",
        f"**Update:** {card['update'] or 'none (trained from scratch)'}",
        "",
        "## Discrimination and calibration (95% CI)",
        "",
        *rows,
        "",
        f"Privacy spent: {card['privacy_spent']}",
        "",
        f"Study hash `{card['study_hash']}`, code hash `{card['code_hash']}`, "
        f"run ledger study-finished hash `{card['run_ledger_hash']}`.",
        "",
        "## Known limitations",
        "",
        *(f"- {item}" for item in card["limitations"]),
        "",
    ]
    return "\n".join(lines)
