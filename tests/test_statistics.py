from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from lhs_federated.data.encoding import SiteTable
from lhs_federated.data.split import split_site
from lhs_federated.data.statistics import ColumnSums, Standardizer


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
