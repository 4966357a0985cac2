"""Data drift of each model input against a release's training reference.

A site never sends its rows; for each encoded column it sends a histogram
over bins the coordinator chose (from the release's training statistics) and
the column's count, sum and sum of squares. Summed over sites these are the
pooled histogram and moments exactly, so the two drift statistics computed
from them equal those of the pooled rows:

- standardised mean difference, ``(mean - mean_ref) / sqrt((var + var_ref) / 2)``;
- population stability index, ``sum (q - p) * ln(q / p)`` over bins, with each
  share floored at :data:`PSI_FLOOR` so an empty bin gives a large finite value.

Bins: ten for a numeric column, cut at the reference's deciles under a normal
fit (mean + SD times the normal quantiles of 0.1, ..., 0.9), two (0 and 1) for
an indicator column. Missing values are counted in no bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

PSI_FLOOR = 1e-4
NUMERIC_BINS = 10
_DECILES = norm.ppf(np.arange(1, NUMERIC_BINS) / NUMERIC_BINS)


def bin_edges(mean: float, sd: float, *, indicator: bool) -> np.ndarray:
    """Interior edges of one column's bins (an indicator: 0 | 1)."""
    if indicator:
        return np.array([0.5])
    return mean + max(sd, 1e-12) * _DECILES


@dataclass(frozen=True)
class ColumnSummary:
    """What one site discloses about one column: bin counts and moments."""

    counts: np.ndarray
    n: float
    total: float
    total_squares: float

    @classmethod
    def of(cls, values: np.ndarray, edges: np.ndarray) -> ColumnSummary:
        """Summary of one column's values (NaN left out)."""
        present = values[~np.isnan(values)]
        counts = np.bincount(
            np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1
        )
        return cls(
            counts.astype(float),
            float(len(present)),
            float(present.sum()),
            float((present**2).sum()),
        )

    def __add__(self, other: ColumnSummary) -> ColumnSummary:
        return ColumnSummary(
            self.counts + other.counts,
            self.n + other.n,
            self.total + other.total,
            self.total_squares + other.total_squares,
        )

    @property
    def mean(self) -> float:
        """Mean of the values."""
        return self.total / self.n if self.n else float("nan")

    @property
    def variance(self) -> float:
        """Population variance of the values."""
        if not self.n:
            return float("nan")
        return max(0.0, self.total_squares / self.n - self.mean**2)


def summarise_columns(features: np.ndarray, edges: list[np.ndarray]) -> list[ColumnSummary]:
    """Each column's summary over the given bins."""
    return [ColumnSummary.of(features[:, j], edges[j]) for j in range(features.shape[1])]


def standardised_mean_difference(current: ColumnSummary, reference: ColumnSummary) -> float:
    """SMD of the current values against the reference (NaN if both are constant)."""
    pooled = np.sqrt((current.variance + reference.variance) / 2)
    if not pooled > 0:
        return float("nan")
    return float((current.mean - reference.mean) / pooled)


def population_stability_index(current: np.ndarray, reference: np.ndarray) -> float:
    """PSI of current bin counts against reference bin counts."""
    q = np.maximum(current / max(current.sum(), 1e-12), PSI_FLOOR)
    p = np.maximum(reference / max(reference.sum(), 1e-12), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def reference_edges(
    indicator: list[bool], mean: np.ndarray | None, scale: np.ndarray | None, ranges: list
) -> list[np.ndarray]:
    """Bins of every encoded column, from a model's training statistics.

    ``mean`` and ``scale`` are the release's preprocessing statistics (the
    pooled training means and SDs under federated scaling); without them
    (``scaling = "none"`` or per-site) a numeric column's bins follow its
    contract range, read as mean +- 3 SD.
    """
    edges = []
    for j, is_indicator in enumerate(indicator):
        if mean is not None and scale is not None and not is_indicator:
            edges.append(bin_edges(float(mean[j]), float(scale[j]), indicator=False))
            continue
        low, high = ranges[j]
        if is_indicator or low is None or high is None:
            edges.append(bin_edges(0.0, 1.0, indicator=True))
        else:
            edges.append(bin_edges((low + high) / 2, (high - low) / 6, indicator=False))
    return edges


def summary_to_json(summary: ColumnSummary) -> dict:
    """A column summary as JSON (withheld values as null)."""

    def clean(value: float) -> float | None:
        return None if np.isnan(value) else float(value)

    return {
        "counts": [clean(c) for c in summary.counts],
        "n": clean(summary.n),
        "sum": clean(summary.total),
        "sum_of_squares": clean(summary.total_squares),
    }


def summary_from_json(data: dict) -> ColumnSummary:
    """A column summary read back from JSON."""

    def value(v: float | None) -> float:
        return np.nan if v is None else float(v)

    return ColumnSummary(
        np.array([value(c) for c in data["counts"]]),
        value(data["n"]),
        value(data["sum"]),
        value(data["sum_of_squares"]),
    )
