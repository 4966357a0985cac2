"""Time in the data: periods from index dates, rows chosen by period, drift events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lhs_federated import load_study
from lhs_federated.data.periods import period_labels
from lhs_federated.data.sources import load_sites
from lhs_federated.data.synthetic import DriftEvent, SyntheticCohort, generate_cohort
from lhs_federated.errors import ConfigError, DataError


def _dated(periods: int = 6, **extra) -> dict:
    synthetic = {"sites": 3, "rows_per_site": 200, "size_imbalance": 0, "periods": periods, **extra}
    return {"synthetic": synthetic}


def test_one_period_cohort_is_unchanged_by_the_time_axis() -> None:
    plain = generate_cohort(SyntheticCohort(sites=2, rows_per_site=80), seed=3)
    assert "index_date" not in plain["site-01"].columns
    again = generate_cohort(SyntheticCohort(sites=2, rows_per_site=80, periods=1), seed=3)
    pd.testing.assert_frame_equal(plain["site-02"], again["site-02"])


def test_periods_label_quarters_and_each_site_has_rows_in_each() -> None:
    cohort = SyntheticCohort(sites=2, rows_per_site=50, periods=6)
    table = generate_cohort(cohort, seed=1)["site-01"]
    labels = period_labels(table["index_date"], "quarter", site="site-01", source="t")
    assert sorted(set(labels)) == ["2020Q1", "2020Q2", "2020Q3", "2020Q4", "2021Q1", "2021Q2"]
    assert pd.Series(labels).value_counts().nunique() == 1  # the same size every quarter


def test_assay_change_moves_recorded_cholesterol_at_one_site_from_its_period() -> None:
    event = DriftEvent(kind="assay-change", site="site-02", from_period=4, size=2.0)
    drifted = generate_cohort(
        SyntheticCohort(sites=2, rows_per_site=400, periods=6, drift=(event,)), seed=5
    )
    plain = generate_cohort(SyntheticCohort(sites=2, rows_per_site=400, periods=6), seed=5)
    for site, moved in (("site-01", 0.0), ("site-02", 76.0)):
        before = drifted[site]["total_cholesterol"] - plain[site]["total_cholesterol"]
        late = drifted[site]["index_date"] >= "2020-10-01"
        assert before[~late].abs().max() == 0  # same patients, same readings before
        assert before[late].mean() == pytest.approx(moved, abs=3)
        # risk did not change: same outcomes
        assert (drifted[site]["cvd_event_10y"] == plain[site]["cvd_event_10y"]).all()


def test_late_joining_site_has_no_rows_before_it_joins() -> None:
    event = DriftEvent(kind="late-join", site="site-03", from_period=3)
    tables = generate_cohort(
        SyntheticCohort(sites=3, rows_per_site=60, periods=5, drift=(event,)), seed=2
    )
    assert tables["site-03"]["index_date"].min() >= "2020-07-01"
    assert tables["site-03"]["index_date"].str[:7].nunique() == 9  # 3 quarters x 3 months


def test_prevalence_trend_raises_the_event_rate_over_time() -> None:
    event = DriftEvent(kind="prevalence-trend", from_period=2, size=0.4)
    table = generate_cohort(
        SyntheticCohort(sites=1, rows_per_site=3000, periods=5, drift=(event,)), seed=4
    )["site-01"]
    rate = table.groupby(table["index_date"].str[:7])["cvd_event_10y"].mean()
    assert rate.iloc[-1] > rate.iloc[0] + 0.1


def test_study_selects_rows_by_period_and_evaluates_on_later_ones() -> None:
    study = load_study(None).with_overrides(
        {"data": {**_dated(), "train_periods": ["2020Q1..2020Q3"], "evaluate_periods": ["2021Q2"]}}
    )
    site = load_sites(study)[0]
    assert len(site.train.outcome) == 3 * len(site.test.outcome)
    monitor = study.with_overrides({"data.train_periods": None})
    assert len(load_sites(monitor)[0].train.outcome) == 0


def test_train_periods_alone_are_split_into_train_and_test() -> None:
    study = load_study(None).with_overrides({"data": {**_dated(), "train_periods": ["2020Q2"]}})
    site = load_sites(study)[1]
    assert len(site.train.outcome) + len(site.test.outcome) == 200


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train_periods": ["2020Q1"]}, "names no index_date column: its data are one period"),
        ({**_dated(), "train_periods": ["2020-01"]}, "'2020-01' is not a quarter"),
        ({**_dated(), "evaluate_periods": []}, "data.evaluate_periods is empty"),
    ],
)
def test_bad_periods_are_refused_at_load(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_study(None).with_overrides({"data": data})


def test_period_outside_the_data_is_a_clear_error() -> None:
    study = load_study(None).with_overrides({"data": {**_dated(), "evaluate_periods": ["2023Q1"]}})
    with pytest.raises(
        DataError, match=r"period '2023Q1' is outside the data's range \(2020Q1..2021Q2\)"
    ):
        load_sites(study)


def test_uci_heart_is_one_period(uci_folder) -> None:
    study = load_study(None).with_overrides(
        {"data": {"source": "uci-heart", "path": str(uci_folder)}}
    )
    assert study.contract.index_date is None
    with pytest.raises(ConfigError, match="its data are one period"):
        study.with_overrides({"data.train_periods": ["2020Q1"]})


def test_bad_index_dates_name_the_site_and_rows() -> None:
    dates = pd.Series(["2021-01-03", "not a date", None], name="index_date")
    with pytest.raises(DataError, match=r"'north' \(north.csv\).*2 values missing.*rows 2, 3"):
        period_labels(dates, "quarter", site="north", source="north.csv")
    good = period_labels(pd.Series(["2021-11-30"]), "month", site="s", source="f")
    assert list(good) == ["2021-11"] and np.asarray(good).dtype == object
