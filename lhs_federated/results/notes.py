"""What a reader must know to read a run's figures, as sentences from ``summary.json``.

The CLI prints these notes and the report shows them, both from the summary
alone, so the two always say the same: where the federated preprocessing
statistics depart from the pooled rows' (and what was used instead), how the
federation's means are defined and which sites they leave out, whether the
model was still improving when the rounds ran out, and sites where the model
predicts the same for every patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lhs_federated.study import Study

SHOWN_DEPARTURES = 5  # columns named in the one-line summary; the rest are counted


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
    return notes
