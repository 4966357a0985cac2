"""Per-site tables of a report that stay readable, and small, with hundreds of sites.

Up to :data:`SITE_ROWS_MAX` sites a report shows one row per site. Above, a
table of a thousand rows is neither read nor cheap to write, so it becomes the
distribution over sites (minimum, 10th percentile, median, 90th percentile,
maximum) and the :data:`WORST_SHOWN` sites that fare worst on the column a
reader would sort by; the results folder's CSV files keep every site. Every
value shown is one a per-site table would show (already under the sites'
disclosure control) or a quantile of them, so nothing reaches the page that was
withheld.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SITE_ROWS_MAX = 50
WORST_SHOWN = 10
QUANTILES = (("min", 0.0), ("10%", 0.1), ("median", 0.5), ("90%", 0.9), ("max", 1.0))
#: How many sites a heat map without labels names beside it, at each end.
ENDS_SHOWN = 5


def many_sites(count: int) -> bool:
    """Whether per-site rows are summarised (more than :data:`SITE_ROWS_MAX` sites)."""
    return count > SITE_ROWS_MAX


def summarised_rows(
    rows: Sequence[Sequence[Any]],
    *,
    sort_column: int,
    lower_is_worse: bool = True,
) -> tuple[list[list[Any]], list[list[Any]]]:
    """The quantile rows and the worst sites' rows of a per-site table.

    Parameters
    ----------
    rows : sequence of rows
        ``[site, value, value, ...]``; values are numbers or None (undefined
        or withheld), left out of the quantiles.
    sort_column : int
        The column that decides which sites are worst.
    lower_is_worse : bool
        Whether a low value in ``sort_column`` is worse (AUROC) or a high one
        (Brier score).

    Returns
    -------
    (list, list)
        ``[label, quantile, ...]`` rows and the :data:`WORST_SHOWN` worst rows.
    """
    width = len(rows[0]) if rows else 1
    columns = [_numbers([row[c] for row in rows]) for c in range(1, width)]
    quantiles = [
        [label, *(float(np.quantile(v, q)) if len(v) else None for v in columns)]
        for label, q in QUANTILES
    ]
    ranked = [row for row in rows if _is_number(row[sort_column])]
    ranked.sort(key=lambda row: row[sort_column], reverse=not lower_is_worse)
    return quantiles, [list(row) for row in ranked[:WORST_SHOWN]]


def matrix_ends(sites: Sequence[str], values: np.ndarray) -> list[list[Any]]:
    """Rows ``[rank, site, mean elsewhere, sites scored]`` of the best and worst local models.

    A local model's mean is over the other sites where its score is defined
    (the diagonal, its home, left out): how far a single hospital's model
    travels. The :data:`ENDS_SHOWN` best come first, then the worst.
    """
    away = values.astype(float).copy()
    np.fill_diagonal(away, np.nan)
    counts = np.isfinite(away).sum(axis=1)
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, np.nansum(away, axis=1) / np.maximum(counts, 1), np.nan)
    order = [i for i in np.argsort(-np.nan_to_num(means, nan=-np.inf)) if np.isfinite(means[i])]
    if len(order) <= 2 * ENDS_SHOWN:
        chosen = [("", i) for i in order]
    else:
        chosen = [("best", i) for i in order[:ENDS_SHOWN]]
        chosen += [("worst", i) for i in order[-ENDS_SHOWN:]]
    return [[rank, sites[i], float(means[i]), int(counts[i])] for rank, i in chosen]


def format_rows(rows: list[list[Any]], formatter: Callable[[Any, int], Any]) -> list[list[Any]]:
    """Each value after the first column passed through ``formatter(value, column)``."""
    return [[row[0], *(formatter(v, c) for c, v in enumerate(row[1:], start=1))] for row in rows]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def _numbers(values: Sequence[Any]) -> np.ndarray:
    return np.array([float(v) for v in values if _is_number(v)], dtype=float)
