"""A seeded synthetic multi-site cardiovascular-risk cohort.

Patients get Framingham-like risk factors and a 10-year cardiovascular event
drawn from a logistic risk model. Sites differ in the ways real hospitals do,
each controlled by one knob so studies can ask how federation copes with it:

- ``size_imbalance``: site sizes drawn log-normally around ``rows_per_site``;
- ``prevalence_spread``: each site's baseline risk shifted on the logit scale
  (case mix and referral patterns);
- ``covariate_shift``: each site's population older or younger, with higher or
  lower blood pressure and cholesterol (in standard deviations);
- ``measurement_offset``: each site's laboratory and blood-pressure devices
  reading high or low, which changes the recorded values but not the risk;
- ``missingness``: a share of HDL cholesterol and BMI values not recorded.

The tables use the columns of the built-in ``cardio-risk`` contract, with text
levels as a site's export would have them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lhs_federated.config import setting

OUTCOME = "cvd_event_10y"


@dataclass(frozen=True)
class SyntheticCohort:
    """Knobs of the synthetic cohort (the ``[data.synthetic]`` study table)."""

    sites: int = setting(4, doc="number of sites", ge=1, le=200)
    rows_per_site: int = setting(
        500, doc="average number of patients per site", ge=20, le=1_000_000
    )
    size_imbalance: float = setting(
        0.5, doc="log-normal spread of site sizes (0 = equal sizes)", ge=0, le=3
    )
    prevalence: float = setting(0.2, doc="average 10-year event rate", gt=0, lt=1)
    prevalence_spread: float = setting(
        0.3, doc="spread of site baseline risk on the logit scale", ge=0, le=3
    )
    covariate_shift: float = setting(
        0.3, doc="spread of site population means, in standard deviations", ge=0, le=3
    )
    measurement_offset: float = setting(
        0.2, doc="spread of site measurement bias, in standard deviations", ge=0, le=3
    )
    missingness: float = setting(
        0.05, doc="average share of HDL and BMI values not recorded", ge=0, le=0.5
    )


# Log-odds per unit of each risk factor (Framingham-like magnitudes).
_COEFFICIENTS = {
    "age": 0.085,
    "male": 0.55,
    "systolic_bp": 0.022,
    "total_cholesterol": 0.007,
    "hdl_cholesterol": -0.03,
    "bmi": 0.035,
    "smoker": 0.75,
    "diabetes": 0.8,
    "bp_treated": 0.35,
    "activity_moderate": -0.2,
    "activity_high": -0.45,
}
_CENTRES = {
    "age": 55,
    "systolic_bp": 128,
    "total_cholesterol": 205,
    "hdl_cholesterol": 52,
    "bmi": 27,
}


def site_names(n_sites: int) -> list[str]:
    """Names of the synthetic sites: ``site-01``, ``site-02``, ..."""
    width = max(2, len(str(n_sites)))
    return [f"site-{k + 1:0{width}d}" for k in range(n_sites)]


def generate_cohort(cohort: SyntheticCohort, *, seed: int) -> dict[str, pd.DataFrame]:
    """Generate every site's table.

    Parameters
    ----------
    cohort : SyntheticCohort
        The heterogeneity knobs.
    seed : int
        Seed of the whole cohort; the same seed gives the same tables.

    Returns
    -------
    dict of str to DataFrame
        One raw table per site, keyed by site name, in site order.
    """
    rng = np.random.default_rng(seed)
    names = site_names(cohort.sites)
    sizes = np.exp(cohort.size_imbalance * rng.standard_normal(cohort.sites))
    sizes = np.maximum(40, np.round(cohort.rows_per_site * sizes / sizes.mean())).astype(int)
    base_logit = np.log(cohort.prevalence / (1 - cohort.prevalence))
    tables = {}
    for name, size in zip(names, sizes, strict=True):
        site_rng = np.random.default_rng(rng.integers(2**63))
        shift = cohort.covariate_shift * site_rng.standard_normal()
        offset = cohort.measurement_offset * site_rng.standard_normal(2)
        site_logit = base_logit + cohort.prevalence_spread * site_rng.standard_normal()
        missing_rate = min(0.9, cohort.missingness * site_rng.uniform(0.5, 1.5))
        tables[name] = _site_table(site_rng, int(size), shift, offset, site_logit, missing_rate)
    return tables


def _site_table(
    rng: np.random.Generator,
    n: int,
    shift: float,
    offset: np.ndarray,
    target_logit: float,
    missing_rate: float,
) -> pd.DataFrame:
    age = np.clip(rng.normal(55 + 8 * shift, 11, n), 25, 95)
    male = rng.random(n) < 0.48
    sbp = np.clip(rng.normal(122 + 0.45 * (age - 55) + 8 * shift, 16, n), 85, 240)
    chol = np.clip(rng.normal(205 + 20 * shift, 38, n), 100, 420)
    hdl = np.clip(rng.normal(55 - 9 * male, 13, n), 15, 140)
    bmi = np.clip(rng.normal(27 + shift, 4.8, n), 15, 60)
    smoker = rng.random(n) < 0.2
    diabetes = rng.random(n) < np.clip(0.07 + 0.004 * (age - 55) + 0.01 * (bmi - 27), 0.01, 0.6)
    bp_treated = rng.random(n) < np.clip(0.1 + 0.012 * (sbp - 125), 0.02, 0.9)
    activity = rng.choice(np.array(["low", "moderate", "high"]), size=n, p=[0.35, 0.45, 0.2])
    risk = (
        _COEFFICIENTS["age"] * (age - _CENTRES["age"])
        + _COEFFICIENTS["male"] * male
        + _COEFFICIENTS["systolic_bp"] * (sbp - _CENTRES["systolic_bp"])
        + _COEFFICIENTS["total_cholesterol"] * (chol - _CENTRES["total_cholesterol"])
        + _COEFFICIENTS["hdl_cholesterol"] * (hdl - _CENTRES["hdl_cholesterol"])
        + _COEFFICIENTS["bmi"] * (bmi - _CENTRES["bmi"])
        + _COEFFICIENTS["smoker"] * smoker
        + _COEFFICIENTS["diabetes"] * diabetes
        + _COEFFICIENTS["bp_treated"] * bp_treated
        + _COEFFICIENTS["activity_moderate"] * (activity == "moderate")
        + _COEFFICIENTS["activity_high"] * (activity == "high")
    )
    intercept = _intercept_for(risk, target_logit)
    event = rng.random(n) < 1 / (1 + np.exp(-(intercept + risk)))
    # Site devices read high or low: recorded values carry the bias, risk does not.
    recorded_sbp = np.clip(sbp + 10 * offset[0], 70, 260)
    recorded_chol = np.clip(chol + 25 * offset[1], 80, 450)
    table = pd.DataFrame(
        {
            "age": np.round(age).astype(int),
            "sex": np.where(male, "male", "female"),
            "systolic_bp": np.round(recorded_sbp).astype(int),
            "total_cholesterol": np.round(recorded_chol, 1),
            "hdl_cholesterol": np.round(hdl, 1),
            "bmi": np.round(bmi, 1),
            "smoker": smoker.astype(int),
            "diabetes": diabetes.astype(int),
            "bp_treated": bp_treated.astype(int),
            "activity": activity,
            OUTCOME: event.astype(int),
        }
    )
    for column in ("hdl_cholesterol", "bmi"):
        table[column] = table[column].mask(rng.random(n) < missing_rate)
    return table


def _intercept_for(risk: np.ndarray, target_logit: float) -> float:
    """Intercept giving the site the expected event rate ``sigmoid(target_logit)``."""
    target = 1 / (1 + np.exp(-target_logit))
    low, high = -15.0, 15.0
    for _ in range(60):
        middle = (low + high) / 2
        if np.mean(1 / (1 + np.exp(-(middle + risk)))) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2
