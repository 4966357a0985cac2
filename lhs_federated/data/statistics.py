"""Federated statistics for preprocessing: global means and scales without rows.

Each site sends, per encoded column, the count of observed values, their sum
and their sum of squares. Adding these over sites gives exactly the pooled mean
and (population) standard deviation, so standardisation and mean imputation
match what pooling the rows would give, without any row leaving a site.

Disclosure control makes a site withhold a column whose count, or whose number
of ones or zeros, is below its minimum cell size. The statistics then depart
from the pooled ones, and :func:`federate` says so, column by column
(:class:`Departure`: which sites were left out and what was used instead),
rather than averaging silently over whatever is left. Two rules keep the
departures harmless:

- binary and one-hot columns are centred and divided by :data:`INDICATOR_SCALE`
  (0.5, the largest SD a 0/1 column can have), not by their own SD (unless a
  study asks): a rare level's SD is tiny and would blow its ones up, and its
  share of ones is the small count sites withhold; so the withheld cells
  touch only the value a missing indicator is imputed with (and centred by,
  which the model's intercept absorbs);
- a column withheld at every site falls back explicitly: a numeric column to
  the centre and a quarter of the width of the contract's valid range (public
  knowledge), anything else to 0 and 1; the fallback is a departure too.

Secure aggregation of the sums (sites mask their sums so the coordinator sees
only the total, and the rule can apply to the total instead) is the route to
no departures at all; it is not done here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The largest SD a 0/1 column can have (half ones): indicator columns are divided by it,
# a fixed scale no site's withheld count can bias.
INDICATOR_SCALE = 0.5


@dataclass(frozen=True)
class ColumnSums:
    """Per-column count, sum and sum of squares of the observed (non-NaN) values."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> ColumnSums:
        """Sums of one site's encoded feature matrix (NaN ignored)."""
        observed = ~np.isnan(features)
        values = np.where(observed, features, 0.0)
        return cls(observed.sum(axis=0).astype(float), values.sum(axis=0), (values**2).sum(axis=0))

    def suppress_small_cells(self, min_cell_size: int) -> ColumnSums:
        """Withhold columns describing fewer than ``min_cell_size`` people.

        A column is withheld (count, sum and sum of squares sent as 0) when its
        observed count is below the minimum, or when it is an indicator column
        (values 0/1 only) whose number of ones or zeros is below the minimum,
        since that number is itself a small count of people.
        """
        indicator = np.isclose(self.total, self.total_sq)
        ones = np.where(indicator, self.total, np.inf)
        zeros = np.where(indicator, self.count - self.total, np.inf)
        small = (self.count < min_cell_size) | ((ones > 0) & (ones < min_cell_size))
        small |= (zeros > 0) & (zeros < min_cell_size)
        keep = ~small
        return ColumnSums(self.count * keep, self.total * keep, self.total_sq * keep)

    @classmethod
    def combine(cls, parts: Iterable[ColumnSums]) -> ColumnSums:
        """Add sites' sums column by column."""
        parts = list(parts)
        return cls(
            np.sum([p.count for p in parts], axis=0),
            np.sum([p.total for p in parts], axis=0),
            np.sum([p.total_sq for p in parts], axis=0),
        )


@dataclass(frozen=True)
class Standardizer:
    """Mean imputation then standardisation with fixed statistics.

    Attributes
    ----------
    mean : ndarray
        Value imputed for a missing entry, and subtracted.
    scale : ndarray
        Divisor; 1 for columns with no spread, so they pass through centred.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_sums(
        cls, sums: ColumnSums, *, ddof: int = 0, unscaled: np.ndarray | None = None
    ) -> Standardizer:
        """Global (or one site's) statistics from summed counts.

        A column no site could report (all withheld or all missing) gets mean
        0 and scale 1 rather than a NaN that would poison every prediction.

        Parameters
        ----------
        sums : ColumnSums
            Summed counts, sums and sums of squares.
        ddof : int
            0 divides the sum of squared deviations by n (population variance);
            1 by n - 1 (sample variance, torch's and FLamby's convention).
        unscaled : ndarray of bool, optional
            Columns centred but divided by :data:`INDICATOR_SCALE` instead of
            their SD: binary and one-hot columns by default (see :func:`federate`).
        """
        count = np.maximum(sums.count, 1.0)
        mean = np.where(sums.count > 0, sums.total / count, 0.0)
        squares = np.maximum(sums.total_sq - count * mean**2, 0.0)
        variance = squares / np.maximum(sums.count - ddof, 1.0)
        scale = np.sqrt(variance)
        scale = np.where((sums.count > 0) & (scale > 1e-12), scale, 1.0)
        if unscaled is not None:
            scale = np.where(unscaled, INDICATOR_SCALE, scale)
        return cls(mean, scale)

    @classmethod
    def identity(cls, n_features: int) -> Standardizer:
        """No scaling; missing values are imputed with 0."""
        return cls(np.zeros(n_features), np.ones(n_features))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Impute NaN with the mean, then centre and scale (float32 for torch)."""
        filled = np.where(np.isnan(features), self.mean, features)
        return ((filled - self.mean) / self.scale).astype(np.float32)


@dataclass(frozen=True)
class EncodedColumn:
    """What the coordinator knows of an encoded column before any site answers.

    Attributes
    ----------
    name : str
        The encoded column's name (``feature`` or ``feature=level``).
    indicator : bool
        A binary feature or one level of a categorical feature (0/1).
    low, high : float or None
        A numeric feature's valid range from the contract.
    """

    name: str
    indicator: bool
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Departure:
    """One column whose global statistics differ from the pooled rows' statistics.

    Attributes
    ----------
    column : str
        The encoded column.
    withheld_at : tuple of str
        Sites whose values the statistics leave out (the site withheld the
        column's sums below its minimum cell size, or had no values in it).
    used : str
        What the statistics were computed from instead.
    """

    column: str
    withheld_at: tuple[str, ...]
    used: str

    def to_json(self) -> dict[str, Any]:
        """The departure as ``summary.json`` records it."""
        return {"column": self.column, "withheld_at": list(self.withheld_at), "used": self.used}


@dataclass(frozen=True)
class FederatedStatistics:
    """The global preprocessing statistics and every departure from the pooled ones."""

    standardizer: Standardizer
    departures: tuple[Departure, ...]


def federate(
    sums: Mapping[str, ColumnSums | None],
    columns: Sequence[EncodedColumn],
    *,
    ddof: int = 0,
    scale_indicators: bool = False,
) -> FederatedStatistics:
    """Global means and scales from the sites' sums, with every departure stated.

    Parameters
    ----------
    sums : mapping of site name to ColumnSums or None
        What each site sent (``None``: no sums, e.g. fewer rows than its
        minimum cell size), with withheld columns as zero counts.
    columns : sequence of EncodedColumn
        The encoded columns, in model input order.
    ddof : int
        Delta degrees of freedom of the scales (see :meth:`Standardizer.from_sums`).
    scale_indicators : bool
        Also divide binary and one-hot columns by their SD.

    Returns
    -------
    FederatedStatistics
        The statistics; with nothing withheld they equal the pooled rows'
        statistics and ``departures`` is empty.
    """
    width = len(columns)
    sent = {site: part for site, part in sums.items() if part is not None}
    zero = ColumnSums(np.zeros(width), np.zeros(width), np.zeros(width))
    total = ColumnSums.combine([zero, *sent.values()])
    indicator = np.array([c.indicator for c in columns], dtype=bool)
    standardizer = Standardizer.from_sums(
        total, ddof=ddof, unscaled=None if scale_indicators else indicator
    )
    mean, scale = standardizer.mean.copy(), standardizer.scale.copy()
    departures = []
    for j, column in enumerate(columns):
        missing = tuple(site for site, part in sums.items() if part is None or part.count[j] <= 0)
        if not missing:
            continue
        contributing = [site for site in sums if site not in missing]
        if contributing:
            what = "share of ones" if column.indicator else "mean and SD"
            used = f"{what} of {', '.join(contributing)} only"
        elif not column.indicator and column.low is not None and column.high is not None:
            mean[j] = (column.low + column.high) / 2
            scale[j] = (column.high - column.low) / 4 or 1.0
            used = (
                f"withheld at every site: centre {mean[j]:g} and scale {scale[j]:g} from the "
                f"contract's range [{column.low:g}, {column.high:g}]"
            )
        elif column.indicator:
            mean[j], scale[j] = 0.0, INDICATOR_SCALE
            used = (
                f"withheld at every site: not centred, divided by {INDICATOR_SCALE:g}, "
                "missing values imputed with 0"
            )
        else:
            mean[j], scale[j] = 0.0, 1.0
            used = "withheld at every site: used unscaled, missing values imputed with 0"
        departures.append(Departure(column.name, missing, used))
    return FederatedStatistics(Standardizer(mean, scale), tuple(departures))
