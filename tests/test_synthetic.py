from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lhs_federated.data.contract import BUILTIN_CONTRACTS
from lhs_federated.data.synthetic import OUTCOME, SyntheticCohort, generate_cohort
from lhs_federated.data.validation import validate_table


def test_same_seed_same_cohort_other_seed_other_cohort():
    cohort = SyntheticCohort(sites=3, rows_per_site=100)
    first, again = generate_cohort(cohort, seed=1), generate_cohort(cohort, seed=1)
    assert list(first) == ["site-01", "site-02", "site-03"]
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert not first["site-01"].equals(generate_cohort(cohort, seed=2)["site-01"])


def test_tables_meet_the_cardio_risk_contract():
    contract = BUILTIN_CONTRACTS["cardio-risk"]()
    for name, table in generate_cohort(SyntheticCohort(sites=5), seed=3).items():
        report = validate_table(table, contract, file=name)
        assert report.ok, report.errors


def sizes_and_rates(**knobs):
    tables = generate_cohort(SyntheticCohort(sites=12, rows_per_site=400, **knobs), seed=7)
    sizes = np.array([len(t) for t in tables.values()])
    prevalence = np.array([t[OUTCOME].mean() for t in tables.values()])
    missing = np.mean([t["hdl_cholesterol"].isna().mean() for t in tables.values()])
    mean_age = np.array([t["age"].mean() for t in tables.values()])
    mean_chol = np.array([t["total_cholesterol"].mean() for t in tables.values()])
    return sizes, prevalence, missing, mean_age, mean_chol


def test_heterogeneity_knobs_do_what_they_say():
    flat = sizes_and_rates(
        size_imbalance=0,
        prevalence_spread=0,
        covariate_shift=0,
        measurement_offset=0,
        missingness=0,
    )
    varied = sizes_and_rates(
        size_imbalance=1.0,
        prevalence_spread=1.0,
        covariate_shift=1.0,
        measurement_offset=1.0,
        missingness=0.3,
    )
    assert np.ptp(flat[0]) == 0 and np.ptp(varied[0]) > 300
    assert np.std(varied[1]) > 2 * np.std(flat[1])
    assert flat[2] == 0 and varied[2] == pytest.approx(0.3, abs=0.06)
    assert np.std(varied[3]) > 3 * np.std(flat[3])
    assert np.std(varied[4]) > 3 * np.std(flat[4])
    assert np.mean(flat[1]) == pytest.approx(0.2, abs=0.04)
