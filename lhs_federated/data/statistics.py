"""Federated statistics for preprocessing: global means and scales without rows.

Each site sends, per encoded column, the count of observed values, their sum
and their sum of squares. Adding these over sites gives exactly the pooled mean
and (population) standard deviation, so standardisation and mean imputation
match what pooling the rows would give, without any row leaving a site.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


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
    def from_sums(cls, sums: ColumnSums, *, ddof: int = 0) -> Standardizer:
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
        """
        count = np.maximum(sums.count, 1.0)
        mean = np.where(sums.count > 0, sums.total / count, 0.0)
        squares = np.maximum(sums.total_sq - count * mean**2, 0.0)
        variance = squares / np.maximum(sums.count - ddof, 1.0)
        scale = np.sqrt(variance)
        scale = np.where((sums.count > 0) & (scale > 1e-12), scale, 1.0)
        return cls(mean, scale)

    @classmethod
    def identity(cls, n_features: int) -> Standardizer:
        """No scaling; missing values are imputed with 0."""
        return cls(np.zeros(n_features), np.ones(n_features))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Impute NaN with the mean, then centre and scale (float32 for torch)."""
        filled = np.where(np.isnan(features), self.mean, features)
        return ((filled - self.mean) / self.scale).astype(np.float32)
