"""The learning loop's sums under SecAgg+: drift histograms, recalibration terms.

With ``privacy.secure_aggregation = "secaggplus"`` a monitoring study's sites
send their evaluation metrics in the clear as before (they stay per site and
pass the egress guard), but no histogram: each site's bin counts and column
moments of the monitored rows (and of its training rows, for a release's
reference) go through :func:`~lhs_federated.apps.secagg_round.secure_sum` as
a ``drift`` sum, so the coordinator learns only the federation's histograms.
The minimum cell size then applies to the totals (a bin of 1 to k - 1 rows
across all sites is withheld; a column on fewer than k rows is withheld
whole), with k the largest of the study's and every contributing site's own.
Drift against the reference, and its alerts, are the federation's: a site's
own drift needs its own histogram, which secure aggregation hides.

A site's vector, per summarised row set (``current``, ``reference``): each
column's bin counts (one int64 array per column, named by its index) and the
columns' counts, sums and sums of squares in the federated statistics'
fixed point (:func:`~lhs_federated.apps.secagg_payloads.encode_statistics`).

A pooled recalibration (``train.recalibrate`` without ``per_site``) sums the
sites' score and information into each Newton step; under SecAgg+ each step
is one ``recalibration`` sum of them (fixed point, ``2**24`` steps per unit)
and of the rows, so the fit is still the pooled rows' and no site's terms are
seen. A per-site recalibration needs each site's own terms: it is refused.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Context, Message

from lhs_federated.apps import records
from lhs_federated.apps.client_site import resolve_site
from lhs_federated.apps.loop_messages import (
    WITH_REFERENCE,
    edges_from_config,
    site_recalibration_terms,
)
from lhs_federated.apps.secagg import HALF, SecAggError, Vector
from lhs_federated.apps.secagg_payloads import (
    decode_statistics,
    encode_statistics,
    statistics_shapes,
)
from lhs_federated.data.encoding import encoded_columns
from lhs_federated.data.statistics import ColumnSums
from lhs_federated.learning.drift import NUMERIC_BINS, ColumnSummary, summarise_columns
from lhs_federated.learning.monitoring import withhold_small_cells
from lhs_federated.study import Study

DRIFT = "drift"  # the secure sums' kinds (the site's state and the ledger name them)
RECALIBRATION = "recalibration"
ROW_SETS = ("current", "reference")
_PREFIX = "drift-"
GRADIENT, INFORMATION, ROWS = (
    "recalibration-gradient",
    "recalibration-information",
    "recalibration-rows",
)
#: Fixed-point steps per unit of a score or information term.
RECALIBRATION_SCALE = 2**24


def _row_sets(with_reference: bool) -> tuple[str, ...]:
    return ROW_SETS if with_reference else ROW_SETS[:1]


def drift_shapes(edge_counts: list[int], *, with_reference: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a site's drift vector over bins of ``edge_counts`` interior edges."""
    shapes: dict[str, tuple[int, ...]] = {}
    for rows in _row_sets(with_reference):
        for j, edges in enumerate(edge_counts):
            shapes[f"{_PREFIX}{rows}-counts:{j}"] = (edges + 1,)
        width = len(edge_counts)
        shapes.update({f"{_PREFIX}{rows}-{n}": s for n, s in statistics_shapes(width).items()})
    return shapes


def encode_drift(summaries: dict[str, list[ColumnSummary]]) -> Vector:
    """A site's summaries (by row set) as one integer vector of :func:`drift_shapes`."""
    vector: Vector = {}
    for rows, columns in summaries.items():
        for j, column in enumerate(columns):
            vector[f"{_PREFIX}{rows}-counts:{j}"] = np.rint(column.counts).astype(np.int64)
        sums = ColumnSums(
            np.array([c.n for c in columns], float),
            np.array([c.total for c in columns], float),
            np.array([c.total_squares for c in columns], float),
        )
        vector.update({f"{_PREFIX}{rows}-{n}": v for n, v in encode_statistics(sums).items()})
    return vector


def decode_drift(
    total: Vector, edge_counts: list[int], *, with_reference: bool, min_cell_size: int
) -> dict[str, list[ColumnSummary]]:
    """The federation's summaries from the decoded sum, small cells of the totals withheld."""
    out = {}
    for rows in _row_sets(with_reference):
        sums = decode_statistics(
            {n: total[f"{_PREFIX}{rows}-{n}"] for n in statistics_shapes(len(edge_counts))}
        )
        columns = [
            ColumnSummary(
                total[f"{_PREFIX}{rows}-counts:{j}"].astype(float),
                float(sums.count[j]),
                float(sums.total[j]),
                float(sums.total_sq[j]),
            )
            for j in range(len(edge_counts))
        ]
        out[rows] = withhold_small_cells(columns, min_cell_size)
    return out


def site_drift_vector(message: Message, context: Context) -> Vector:
    """A site's drift vector for the monitoring study's config (bins, whether with reference).

    Nothing is withheld here: the site's values are hidden in the sum, and
    the coordinator applies the minimum cell size to the totals.
    """
    config = message.content[records.CONFIG]
    site = resolve_site(records.study_from_config(config), context).data
    edges = edges_from_config(config)
    summaries = {"current": summarise_columns(site.test.features, edges)}
    if bool(config.get(WITH_REFERENCE, False)):
        summaries["reference"] = summarise_columns(site.train.features, edges)
    return encode_drift(summaries)


def recalibration_shapes(size: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a site's recalibration vector of ``size`` parameters."""
    return {GRADIENT: (size,), INFORMATION: (size * size,), ROWS: (1,)}


def site_recalibration_vector(message: Message, context: Context) -> Vector:
    """A site's score, information and rows at the step's parameters, in fixed point.

    Raises
    ------
    SecAggError
        If a term is not finite or too large to sum securely.
    """
    gradient, information, n, _ = site_recalibration_terms(message, context)
    terms = np.concatenate([gradient, information.ravel()])
    largest = float(np.abs(terms).max(initial=0.0))
    if not math.isfinite(largest) or largest * RECALIBRATION_SCALE >= HALF // 1024:
        raise SecAggError(f"the site's recalibration terms reach {largest:.3g}, too large to sum")
    fixed = np.rint(terms * RECALIBRATION_SCALE).astype(np.int64)
    size = len(gradient)
    return {GRADIENT: fixed[:size], INFORMATION: fixed[size:], ROWS: np.array([n], np.int64)}


def decode_recalibration(total: Vector, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The federation's score, information (``size`` x ``size``) and rows."""
    return (
        total[GRADIENT].astype(float) / RECALIBRATION_SCALE,
        total[INFORMATION].astype(float).reshape(size, size) / RECALIBRATION_SCALE,
        int(total[ROWS][0]),
    )


def is_loop_vector(masked: ArrayRecord) -> bool:
    """Whether a masked vector is one of the loop's sums (not the column sums)."""
    return any(name.startswith((_PREFIX, "recalibration-")) for name in masked)


def declared_loop_shapes(masked: ArrayRecord, study: Study) -> dict[str, tuple[int, ...]]:
    """The shapes the study allows that a loop vector's names claim ({} if none)."""
    if GRADIENT in masked:
        size = math.prod(masked[GRADIENT].shape)
        return recalibration_shapes(size) if size in (1, 2) else {}
    return declared_drift_shapes(masked, study)


#: What a site puts in each of the loop's sums, from the collect stage's message.
SITE_VECTORS = {DRIFT: site_drift_vector, RECALIBRATION: site_recalibration_vector}


def declared_drift_shapes(masked: ArrayRecord, study: Study) -> dict[str, tuple[int, ...]]:
    """The drift shapes the study allows that a masked vector's names claim ({} if none).

    Bins come from the release (:func:`~lhs_federated.apps.loop_tasks.model_edges`):
    two for an indicator column; for a numeric one, ``NUMERIC_BINS``, or two
    when the release has neither scaling statistics nor the contract a range.
    The egress guard compares the vector with these shapes exactly.
    """
    columns = encoded_columns(study.contract, study.preprocessing.one_hot)
    with_reference = any(n.startswith(f"{_PREFIX}reference-") for n in masked)
    edge_counts = []
    for j, column in enumerate(columns):
        array = masked.get(f"{_PREFIX}current-counts:{j}")
        bins = math.prod(array.shape) if array is not None else 0
        allowed = {2} if column.indicator else {2, NUMERIC_BINS}
        if bins not in allowed:
            return {}
        edge_counts.append(bins - 1)
    return drift_shapes(edge_counts, with_reference=with_reference)
