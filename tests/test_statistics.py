from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import StandardScaler

from lhs_federated.data.encoding import SiteTable
from lhs_federated.data.split import split_site
from lhs_federated.data.statistics import (
    INDICATOR_SCALE,
    ColumnSums,
    EncodedColumn,
    Standardizer,
    federate,
)


def sites(seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for k, n in enumerate((50, 120, 80)):
        x = np.column_stack([rng.normal(10 * k, 1 + k, n), rng.integers(0, 2, n).astype(float)])
        x[rng.random(n) < 0.1, 0] = np.nan
        parts.append(x)
    return parts


def test_federated_statistics_equal_pooled_statistics():
    parts = sites()
    federated = Standardizer.from_sums(ColumnSums.combine(ColumnSums.of(p) for p in parts))
    pooled = np.vstack(parts)
    np.testing.assert_allclose(federated.mean, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(federated.scale, np.nanstd(pooled, axis=0), rtol=1e-10)
    filled = np.where(np.isnan(pooled), np.nanmean(pooled, axis=0), pooled)
    expected = StandardScaler().fit(pooled).transform(filled)  # sklearn ignores NaN when fitting
    np.testing.assert_allclose(federated.transform(pooled), expected, rtol=1e-5, atol=1e-6)


def test_small_cells_are_withheld():
    x = np.zeros((30, 3))
    x[:4, 1] = 1.0  # 4 people with an indicator: a small cell
    x[:, 2] = np.linspace(0, 5, 30)
    sums = ColumnSums.of(x).suppress_small_cells(10)
    assert sums.count.tolist() == [30.0, 0.0, 30.0]
    assert sums.total[1] == 0 and sums.total[2] > 0
    few_rows = ColumnSums.of(x[:8]).suppress_small_cells(10)
    assert few_rows.count.tolist() == [0.0, 0.0, 0.0]


def test_columns_nobody_reports_pass_through():
    standardizer = Standardizer.from_sums(ColumnSums(np.zeros(2), np.zeros(2), np.zeros(2)))
    assert standardizer.mean.tolist() == [0.0, 0.0] and standardizer.scale.tolist() == [1.0, 1.0]
    constant = Standardizer.from_sums(ColumnSums.of(np.full((5, 1), 7.0)))
    assert constant.scale.tolist() == [1.0]
    assert constant.transform(np.array([[7.0], [np.nan]])).tolist() == [[0.0], [0.0]]


def table(n, positives, name="a"):
    outcome = np.zeros(n, dtype=int)
    outcome[:positives] = 1
    return SiteTable(name, "test", np.arange(n, dtype=float)[:, None], outcome)


def test_split_is_stratified_seeded_and_per_site():
    train, test = split_site(table(100, 20), test_fraction=0.3, seed=5)
    assert len(test.outcome) == 30 and test.outcome.sum() == 6
    again, _ = split_site(table(100, 20), test_fraction=0.3, seed=5)
    np.testing.assert_array_equal(train.features, again.features)
    other, _ = split_site(table(100, 20, name="b"), test_fraction=0.3, seed=5)
    assert not np.array_equal(train.features, other.features)
    disjoint = set(train.features[:, 0]) & set(test.features[:, 0])
    assert not disjoint


def test_split_without_enough_of_a_class_is_not_stratified():
    train, test = split_site(table(20, 1), test_fraction=0.3, seed=1)
    assert len(train.outcome) + len(test.outcome) == 20


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_split_sizes(fraction):
    _, test = split_site(table(60, 20), test_fraction=fraction, seed=0)
    assert len(test.outcome) == round(60 * fraction)


# Federated statistics under disclosure control (issue 10, item 1).
@st.composite
def multi_site_tables(draw):
    """Random sites (1-40 rows), numeric and 0/1 columns with gaps, and a cell size."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=6))  # True: indicator
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=5))
    gaps = draw(st.sampled_from([0.0, 0.1, 0.6]))
    tables = {}
    for k, n in enumerate(sizes):
        columns = [
            (rng.random(n) < rng.uniform(0.01, 0.6)).astype(float)
            if indicator
            else rng.normal(rng.normal(0, 5), rng.uniform(0.5, 3), n)
            for indicator in kinds
        ]
        x = np.column_stack(columns)
        x[rng.random(x.shape) < gaps] = np.nan
        tables[f"s{k}"] = x
    columns = [
        EncodedColumn(f"c{j}", indicator, None if indicator else -20.0, None if indicator else 20.0)
        for j, indicator in enumerate(kinds)
    ]
    return tables, columns, draw(st.integers(1, 8)), draw(st.sampled_from([0, 1]))


def site_sums(tables, min_cell_size):
    """What each site sends, as summarise_site computes it."""
    return {
        site: ColumnSums.of(x).suppress_small_cells(min_cell_size)
        if len(x) >= min_cell_size
        else None
        for site, x in tables.items()
    }


def pooled_statistics(tables, columns, ddof, sites_of):
    """Mean and scale of the pooled rows of the sites ``sites_of(j)`` column by column."""
    mean, scale = [], []
    for j, column in enumerate(columns):
        values = np.concatenate([tables[s][:, j] for s in sites_of(j)])
        values = values[~np.isnan(values)]
        mean.append(values.mean() if len(values) else np.nan)
        sd = values.std(ddof=ddof) if len(values) > ddof else 0.0
        scale.append(INDICATOR_SCALE if column.indicator else 1.0 if sd <= 1e-12 else sd)
    return np.array(mean), np.array(scale)


@settings(max_examples=150, deadline=None)
@given(multi_site_tables())
def test_federated_statistics_are_pooled_or_departures_say_exactly_where_not(case):
    tables, columns, min_cell_size, ddof = case
    sums = site_sums(tables, min_cell_size)
    statistics = federate(sums, columns, ddof=ddof)
    reported = {(site, d.column) for d in statistics.departures for site in d.withheld_at}
    sent_nothing = {
        (site, c.name)
        for site, part in sums.items()
        for j, c in enumerate(columns)
        if part is None or part.count[j] == 0
    }
    assert reported == sent_nothing
    withheld = {  # cells with values that disclosure control kept at the site
        (site, c.name)
        for site, x in tables.items()
        for j, c in enumerate(columns)
        if (~np.isnan(x[:, j])).any() and (site, c.name) in sent_nothing
    }
    everywhere = {d.column for d in statistics.departures if d.withheld_at == tuple(sums)}
    kept = [j for j, c in enumerate(columns) if c.name not in everywhere]

    def contributing(j):
        return [s for s in tables if (s, columns[j].name) not in sent_nothing]

    federated = statistics.standardizer
    mean, scale = pooled_statistics(tables, columns, ddof, lambda j: contributing(j) or tables)
    np.testing.assert_allclose(federated.mean[kept], mean[kept], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(federated.scale[kept], scale[kept], rtol=1e-7, atol=1e-9)
    if not withheld:  # nothing withheld: exactly the statistics of all pooled rows
        mean, scale = pooled_statistics(tables, columns, ddof, lambda j: tables)
        np.testing.assert_allclose(federated.mean[kept], mean[kept], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(federated.scale[kept], scale[kept], rtol=1e-7, atol=1e-9)
    for j, column in enumerate(columns):
        if column.name in everywhere:  # withheld at every site: the stated fallback
            expected = (0.0, INDICATOR_SCALE) if column.indicator else (0.0, 10.0)
            assert (federated.mean[j], federated.scale[j]) == expected


def test_nothing_withheld_gives_the_pooled_statistics_and_no_departures():
    tables = {f"s{k}": x for k, x in enumerate(sites())}
    columns = [EncodedColumn("age", False, 0, 100), EncodedColumn("smoker", True)]
    statistics = federate(site_sums(tables, 1), columns)
    assert statistics.departures == ()
    pooled = np.vstack(list(tables.values()))
    np.testing.assert_allclose(statistics.standardizer.mean, np.nanmean(pooled, axis=0))
    assert statistics.standardizer.scale[1] == INDICATOR_SCALE  # not the column's own SD
    scaled = federate(site_sums(tables, 1), columns, scale_indicators=True)
    np.testing.assert_allclose(scaled.standardizer.scale, np.nanstd(pooled, axis=0))


def test_a_small_site_withholding_a_rare_level_is_stated():
    rng = np.random.default_rng(3)
    big = np.column_stack([rng.normal(50, 10, 200), (rng.random(200) < 0.2).astype(float)])
    small = np.column_stack([rng.normal(70, 10, 30), np.r_[np.ones(3), np.zeros(27)]])
    columns = [EncodedColumn("age", False, 0, 100), EncodedColumn("rare", True)]
    statistics = federate(site_sums({"big": big, "small": small}, 10), columns)
    (departure,) = statistics.departures
    assert departure.column == "rare" and departure.withheld_at == ("small",)
    assert departure.used == "share of ones of big only"
    assert statistics.standardizer.mean[1] == pytest.approx(big[:, 1].mean())
