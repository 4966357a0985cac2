"""What a reader must know to read a run's figures, as sentences from ``summary.json``.

The CLI prints these notes and the report shows them, both from the summary
alone, so the two always say the same: where the federated preprocessing
statistics depart from the pooled rows' (and what was used instead), how the
federation's means are defined and which sites they leave out, whether the
model was still improving when the rounds ran out, and sites where the model
predicts the same for every patient.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lhs_federated.study import Study

SHOWN_DEPARTURES = 5  # columns named in the one-line summary; the rest are counted
# Over the last fifth of the rounds, a model whose mean AUROC moves less than this
# and whose training loss falls by less than this share has stopped improving.
SETTLED_AUROC = 0.005
SETTLED_LOSS = 0.02


def preprocessing_summary(
    study: Study, departures: Sequence[dict[str, Any]], n_columns: int
) -> dict[str, Any]:
    """The ``preprocessing`` entry of ``summary.json``.

    ``departures`` lists every encoded column whose federated statistics are
    not the pooled rows' (see :func:`lhs_federated.data.statistics.federate`);
    empty means they are exactly the pooled statistics.
    """
    spec = study.preprocessing
    return {
        "scaling": spec.scaling,
        "indicators": spec.indicators,
        "columns": n_columns,
        "departures": list(departures),
    }


def departures_line(departures: Sequence[dict[str, Any]], n_columns: int) -> str:
    """One sentence: how many columns depart, the first few, and where the rest are."""
    named = []
    for departure in departures[:SHOWN_DEPARTURES]:
        named.append(
            f"{departure['column']} (without {', '.join(departure['withheld_at'])}: "
            f"{departure['used']})"
        )
    rest = len(departures) - len(named)
    more = f"; {rest} more in summary.json (preprocessing) and the report" if rest > 0 else ""
    return (
        f"federated statistics depart from the pooled rows' in {len(departures)} of "
        f"{n_columns} columns, withheld below sites' minimum cell size: " + "; ".join(named) + more
    )


def convergence(out_dir: Path) -> dict[str, Any]:
    """Whether the model was still improving when the rounds ran out.

    Read from ``rounds.csv`` (the federation's mean AUROC per round, the one
    definition of the mean) and ``metrics.csv`` (the mean training loss over
    the sites that trained): the change over the last fifth of the rounds (at
    least one round). A default study of ten rounds on small data often ends
    while both still improve; this says so instead of under-training silently.
    """
    with (out_dir / "rounds.csv").open(encoding="utf-8", newline="") as handle:
        auroc = {int(r["round"]): _number(r["mean_auroc"]) for r in csv.DictReader(handle)}
    losses: dict[int, list[float]] = {}
    with (out_dir / "metrics.csv").open(encoding="utf-8", newline="") as handle:
        for r in csv.DictReader(handle):
            if r["split"] == "train" and r["metric"] == "loss" and r["value"]:
                losses.setdefault(int(r["round"]), []).append(float(r["value"]))
    rounds = sorted(auroc)
    if len(rounds) < 3:
        return {"status": "unknown", "line": "convergence: too few rounds to tell"}
    window = max(1, len(rounds) // 5)
    last, before = rounds[-1], rounds[-1 - window]
    change = auroc[last] - auroc[before]
    loss = {r: sum(v) / len(v) for r, v in losses.items()}
    fall = (loss[before] - loss[last]) / loss[before] if before in loss and last in loss else None
    if math.isnan(change) and fall is None:
        return {"status": "unknown", "line": "convergence: no mean AUROC or loss to tell by"}
    improving = (not math.isnan(change) and change >= SETTLED_AUROC) or (
        fall is not None and fall >= SETTLED_LOSS
    )
    declining = not improving and not math.isnan(change) and change <= -SETTLED_AUROC
    status = "improving" if improving else "declining" if declining else "settled"
    loss_text = "" if fall is None else f" and the mean training loss {-fall:+.1%}"
    verdict = {
        "improving": "still improving, so under-trained: run more rounds "
        f"(--set rounds={2 * last})",
        "declining": "the mean AUROC is falling: more rounds will not help (fewer rounds or a "
        "lower learning rate may)",
        "settled": "the model has settled",
    }[status]
    line = (
        f"convergence: over the last {window} of {len(rounds)} rounds the mean AUROC changed "
        f"{change:+.3f}{loss_text}; {verdict}"
    )
    return {
        "status": status,
        "auroc_change": None if math.isnan(change) else change,
        "loss_change": None if fall is None else -fall,
        "window": window,
        "line": line,
    }


def _number(text: str) -> float:
    return float(text) if text else float("nan")


def constant_sites(final: dict[str, Any]) -> dict[str, str]:
    """Sites where the final model calls every patient the same (balanced accuracy 0.5)."""
    found = {}
    for site, values in final.get("per_site", {}).items():
        balanced, accuracy = values.get("balanced_accuracy"), values.get("accuracy")
        prevalence = values.get("prevalence")
        if balanced is None or accuracy is None or not math.isclose(balanced, 0.5):
            continue
        if prevalence is not None and math.isclose(accuracy, 1 - prevalence):
            found[site] = "calls every patient negative"
        elif prevalence is not None and math.isclose(accuracy, prevalence):
            found[site] = "calls every patient positive"
        else:
            found[site] = "tells no case from a non-case (balanced accuracy 0.5)"
    return found


def run_notes(summary: dict[str, Any]) -> list[str]:
    """Every note a reader of this run's figures needs, in reading order."""
    final = summary.get("final", {})
    notes = []
    if "mean_definition" in final:
        notes.append(final["mean_definition"])
    left_out = final.get("left_out", {})
    if left_out:
        notes.append(
            "left out of the means (shown, marked *): "
            + "; ".join(f"{site}: {why}" for site, why in left_out.items())
        )
    departures = summary.get("preprocessing", {}).get("departures", [])
    if departures:
        columns = summary.get("preprocessing", {}).get("columns", 0) or len(departures)
        notes.append(departures_line(departures, columns))
    if "convergence" in summary:
        notes.append(summary["convergence"]["line"])
    constant = constant_sites(final)
    if constant:
        notes.append(
            "the model is constant at "
            + "; ".join(f"{site} ({what})" for site, what in constant.items())
            + ": it has not learned there (more rounds or local epochs, or a higher learning rate)"
        )
    return notes
