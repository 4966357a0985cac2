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

With ``periods > 1`` the cohort gains a time axis: every site has
``rows_per_site`` patients in each of ``periods`` quarters (from 2020Q1), an
``index_date`` column, and the study can switch on named drift events
(:class:`DriftEvent`): a prevalence trend, a lab assay change at one site
(recorded cholesterol reads high from a period on; the risk does not change),
a case-mix shift, a site that joins late and a sudden shock. Each site's
outcome model is its baseline risk (``prevalence`` and its
``prevalence_spread``) in one standard population, so a site's older or
sicker patients (``covariate_shift``, a case-mix event) have more events
under the same model, while a trend or shock changes the risk itself; with
``prevalence_spread = 0`` every site shares one outcome model. With one period the cohort is
exactly what it was before periods existed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from lhs_federated.config import setting

OUTCOME = "cvd_event_10y"
SYNTHETIC_INDEX_DATE = "index_date"
FIRST_YEAR = 2020
DRIFT_KINDS = ("prevalence-trend", "assay-change", "case-mix", "late-join", "shock")
#: What ``size`` means for each kind, and its default.
DRIFT_SIZES = {
    "prevalence-trend": 0.15,  # logit of the risk, added per period from from_period on
    "assay-change": 1.5,  # recorded total cholesterol offset, in SDs (38 mg/dL)
    "case-mix": 1.0,  # population shift (older, higher BP and cholesterol), in SDs
    "late-join": 0.0,  # unused: the site has no rows before from_period
    "shock": 0.8,  # logit of the risk, added for `duration` periods
}


@dataclass(frozen=True)
class DriftEvent:
    """One named change in the synthetic cohort over time (``[[data.synthetic.drift]]``)."""

    kind: Literal["prevalence-trend", "assay-change", "case-mix", "late-join", "shock"] = setting(
        doc="prevalence-trend, assay-change, case-mix, late-join or shock"
    )
    from_period: int = setting(doc="first period the event acts in (1 = the first)", ge=1)
    site: str | None = setting(
        None,
        doc="the site it happens at (default: every site; assay-change and late-join need one)",
    )
    size: float | None = setting(
        None, doc="strength (see DRIFT_SIZES for its unit; default per kind)"
    )
    duration: int | None = setting(
        None, doc="periods the event lasts (default: to the end; shock: 1)", ge=1
    )
    name: str | None = setting(None, doc="label in reports (default: kind and site)")

    def __post_init__(self) -> None:
        if self.kind in ("assay-change", "late-join") and self.site is None:
            raise ValueError(f"a {self.kind} event happens at one site: set its `site`")

    @property
    def label(self) -> str:
        """The event's name, or its kind and site."""
        return self.name or (self.kind if self.site is None else f"{self.kind}@{self.site}")

    @property
    def strength(self) -> float:
        """``size``, or the kind's default."""
        return DRIFT_SIZES[self.kind] if self.size is None else self.size

    def active(self, site: str, period: int) -> bool:
        """Whether the event acts at ``site`` in ``period`` (1-based)."""
        if self.site is not None and self.site != site:
            return False
        duration = self.duration or (1 if self.kind == "shock" else None)
        end = None if duration is None else self.from_period + duration - 1
        if self.kind == "late-join":
            return period < self.from_period  # the site is absent until it joins
        return period >= self.from_period and (end is None or period <= end)


@dataclass(frozen=True)
class SyntheticCohort:
    """Knobs of the synthetic cohort (the ``[data.synthetic]`` study table)."""

    sites: int = setting(4, doc="number of sites", ge=1, le=10_000)
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
    periods: int = setting(
        1, doc="quarters of data from 2020Q1 (rows_per_site patients in each)", ge=1, le=80
    )
    drift: tuple[DriftEvent, ...] = setting((), doc="named drift events over the periods")

    def __post_init__(self) -> None:
        names = site_names(self.sites)
        for event in self.drift:
            if event.site is not None and event.site not in names:
                raise ValueError(f"drift event {event.label!r}: no site {event.site!r}")
            if event.from_period > self.periods:
                raise ValueError(
                    f"drift event {event.label!r} starts in period {event.from_period}, "
                    f"after the cohort's last ({self.periods})"
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
        if cohort.periods == 1 and not cohort.drift:
            patients = _draw_patients(site_rng, int(size), shift)
            intercept = _intercept_for(patients["risk"], site_logit)
            tables[name] = _site_table(site_rng, patients, intercept, offset, missing_rate)
        else:
            tables[name] = _dated_site_table(
                site_rng, cohort, name, int(size), shift, offset, site_logit, missing_rate
            )
    return tables


def period_label(period: int) -> str:
    """The quarter of a 1-based period: 1 is 2020Q1, 5 is 2021Q1."""
    year, quarter = divmod(period - 1, 4)
    return f"{FIRST_YEAR + year}Q{quarter + 1}"


def _dated_site_table(
    site_rng: np.random.Generator,
    cohort: SyntheticCohort,
    site: str,
    n: int,
    shift: float,
    offset: np.ndarray,
    site_logit: float,
    missing_rate: float,
) -> pd.DataFrame:
    """One site's rows over every period, each period under the events active in it."""
    frames, intercept = [], None
    for period in range(1, cohort.periods + 1):
        rng = np.random.default_rng(site_rng.integers(2**63))
        active = [e for e in cohort.drift if e.active(site, period)]

        def total(kind: str, active: list[DriftEvent] = active, period: int = period) -> float:
            sizes = [
                e.strength * ((period - e.from_period + 1) if kind == "prevalence-trend" else 1)
                for e in active
                if e.kind == kind
            ]
            return float(sum(sizes))

        patients = _draw_patients(rng, n, shift + total("case-mix"))
        if (
            intercept is None
        ):  # the site's outcome model: its baseline risk in a standard population
            intercept = _intercept_for(_standard_risk(), site_logit)
        logit_shift = total("prevalence-trend") + total("shock")
        table = _site_table(
            rng,
            patients,
            intercept + logit_shift,
            offset,
            missing_rate,
            assay=total("assay-change"),
        )
        if any(e.kind == "late-join" for e in active):
            continue
        year, quarter = divmod(period - 1, 4)
        start = np.datetime64(f"{FIRST_YEAR + year}-{3 * quarter + 1:02d}-01")
        days = rng.integers(0, 90, n)
        table.insert(len(table.columns) - 1, SYNTHETIC_INDEX_DATE, (start + days).astype(str))
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


@functools.cache
def _standard_risk() -> np.ndarray:
    """Linear risk of a fixed standard population (no site shift), seeded once."""
    risk = _draw_patients(np.random.default_rng(20200101), 20000, 0.0)["risk"]
    risk.setflags(write=False)
    return risk


def _draw_patients(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    """True risk factors of ``n`` patients and their linear risk (without intercept)."""
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
    return {
        "age": age, "male": male, "sbp": sbp, "chol": chol, "hdl": hdl, "bmi": bmi,
        "smoker": smoker, "diabetes": diabetes, "bp_treated": bp_treated,
        "activity": activity, "risk": risk,
    }  # fmt: skip


def _site_table(
    rng: np.random.Generator,
    patients: dict[str, np.ndarray],
    intercept: float,
    offset: np.ndarray,
    missing_rate: float,
    *,
    assay: float = 0.0,
) -> pd.DataFrame:
    """The site's recorded table: outcomes drawn, device bias and gaps applied."""
    p = patients
    n = len(p["risk"])
    event = rng.random(n) < 1 / (1 + np.exp(-(intercept + p["risk"])))
    # Site devices read high or low: recorded values carry the bias, risk does not.
    recorded_sbp = np.clip(p["sbp"] + 10 * offset[0], 70, 260)
    recorded_chol = np.clip(p["chol"] + 25 * offset[1] + 38 * assay, 80, 450)
    age, male, hdl, bmi = p["age"], p["male"], p["hdl"], p["bmi"]
    smoker, diabetes, bp_treated, activity = (
        p["smoker"], p["diabetes"], p["bp_treated"], p["activity"]
    )  # fmt: skip
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
