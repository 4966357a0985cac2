"""Time in the data: each row's period from its index date, and rows chosen by period.

A learning health system's data keep coming: a model is trained on some
quarters and monitored on the next. The contract names the index-date column
and the kind of period (``quarter``, ``month``, ``year``); a study names the
periods it trains and evaluates on (``[data] train_periods``,
``evaluate_periods``), each a period (``"2021Q3"``) or an inclusive range
(``"2020Q1..2020Q4"``). Period labels sort as time does, so ranges and "the
newest period" are plain string comparisons. Data without an index date are
one period: a study that names periods on them is refused at load.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lhs_federated.data.contract import DataContract
from lhs_federated.errors import DataError

RANGE = ".."


def period_labels(dates: pd.Series, period: str, *, site: str, source: str) -> np.ndarray:
    """Each row's period label from its index date.

    Raises
    ------
    DataError
        If an index date is missing or not a date, naming the site, file and rows.
    """
    parsed = pd.to_datetime(dates.astype("string"), errors="coerce", format="ISO8601")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        shown = ", ".join(str(i + 1) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise DataError(
            f"site {site!r} ({source}): index date column {dates.name!r}: {len(bad)} values "
            f"missing or not ISO 8601 dates (yyyy-mm-dd) at rows {shown}."
        )
    year = parsed.dt.year.astype(int).astype(str)
    if period == "year":
        return year.to_numpy()
    if period == "month":
        return (year + "-" + parsed.dt.month.map("{:02d}".format)).to_numpy()
    return (year + "Q" + parsed.dt.quarter.astype(str)).to_numpy()


def expand_periods(wanted: tuple[str, ...], available: list[str], *, what: str) -> list[str]:
    """The periods ``wanted`` names (ranges expanded), checked against the data's.

    Raises
    ------
    DataError
        If a named period or range end lies outside the periods in the data.
    """
    chosen: set[str] = set()
    first, last = (available[0], available[-1]) if available else ("", "")
    for item in wanted:
        start, _, end = item.partition(RANGE)
        end = end or start
        for bound in (start, end):
            if not available or not first <= bound <= last:
                span = f"{first}..{last}" if available else "no dated rows"
                raise DataError(f"{what}: period {bound!r} is outside the data's range ({span}).")
        chosen.update(p for p in available if start <= p <= end)
    return sorted(chosen)


def rows_in_periods(
    table: pd.DataFrame,
    contract: DataContract,
    periods: tuple[str, ...],
    *,
    site: str,
    source: str,
    data_range: list[str],
) -> pd.DataFrame:
    """The rows of ``table`` whose index date falls in ``periods``.

    ``data_range`` is the sorted list of periods the whole data set holds (all
    sites together): a period outside it is an error, and so is a period
    inside it in which this site has no rows (a monitoring period must have
    rows to score).

    Raises
    ------
    DataError
        Naming the site, the file and the period.
    """
    if contract.index_date is None:
        raise DataError(f"contract {contract.name!r} names no index_date column.")
    labels = period_labels(table[contract.index_date], contract.period, site=site, source=source)
    chosen = expand_periods(periods, data_range, what=f"site {site!r}")
    empty = [p for p in chosen if not (labels == p).any()]
    if len(empty) == len(chosen):
        own = sorted(set(labels))
        span = f"{own[0]}..{own[-1]}" if own else "none"
        raise DataError(
            f"site {site!r} ({source}) has no rows in period(s) {', '.join(chosen)} "
            f"(its rows cover {span})."
        )
    return table.loc[np.isin(labels, chosen)].reset_index(drop=True)


def periods_of(tables: list[tuple[pd.DataFrame, str, str]], contract: DataContract) -> list[str]:
    """Sorted periods present in any of the (table, site, source) triples."""
    found: set[str] = set()
    if contract.index_date is None:
        return []
    for table, site, source in tables:
        found.update(
            period_labels(table[contract.index_date], contract.period, site=site, source=source)
        )
    return sorted(found)
