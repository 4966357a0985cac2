"""The synthetic cohort written as OMOP CDM v5.4 databases, one per site.

A study that reads OMOP (``[data] source = "omop"``) needs training-sized
OMOP databases to run on, and the one real-format database here (Synthea,
28 patients) is far too small. This writer turns each site's table of
:func:`lhs_federated.data.synthetic.generate_cohort` (same knobs, same seed,
so the same values) into a site's clinical records: PERSON,
OBSERVATION_PERIOD, VISIT_OCCURRENCE, CONDITION_OCCURRENCE, DRUG_EXPOSURE,
MEASUREMENT and OBSERVATION with standard concept ids (LOINC measurements,
SNOMED conditions, RxNorm drugs), and the vocabulary rows (CONCEPT,
CONCEPT_ANCESTOR) those ids need.

Each patient has one outpatient visit, the index date (the table's
``index_date``; a cohort of one period gets dates in 2020Q1 from the seed);
the values of the generator's row are the latest ones recorded by then, so an
extraction of the cohort at its first outpatient visit gives back the
generator's table (simulations/omop_cardio.toml is that extraction). Around them
sit the records a warehouse also holds and an extraction must not count:
earlier measurements (in and before the look-back window), diagnoses,
prescriptions and smoking status recorded after the index date or long
before it, and descendant concepts (acute myocardial infarction under
myocardial infarction, a clinical drug under its ingredient) that only
CONCEPT_ANCESTOR connects to the concept set. Self-reported activity has no
routine OMOP record and is not written.

Rows are built as arrays and loaded in bulk into a new database
(:func:`lhs_federated.data.omop_cdm.write_cdm`); a failed write leaves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lhs_federated.data.omop_cdm import write_cdm
from lhs_federated.data.synthetic import (
    OUTCOME,
    SYNTHETIC_INDEX_DATE,
    SyntheticCohort,
    generate_cohort,
)
from lhs_federated.errors import ConfigError

#: Concept ids the writer uses: OMOP standard concepts (verified against the
#: Synthea27Nj vocabulary where it holds them; ``*``: not in it).
MALE, FEMALE = 8507, 8532  # Gender *
OUTPATIENT_VISIT, INPATIENT_VISIT = 9202, 9201
EHR = 32817  # Type Concept "EHR" *
SYSTOLIC_BP, TOTAL_CHOLESTEROL, HDL_CHOLESTEROL, BMI = 3004249, 3027114, 3007070, 3038553
TRIGLYCERIDES = 3022192
MMHG, MG_DL, KG_M2 = 8876, 8840, 9531
TYPE_2_DIABETES, T2DM_WITHOUT_COMPLICATION = 201826, 4193704  # the second a descendant *
ESSENTIAL_HYPERTENSION, HYPERLIPIDEMIA = 320128, 432867
MYOCARDIAL_INFARCTION, ACUTE_MI, STROKE = 4329847, 312327, 381316  # 312327 a descendant *
SMOKES_DAILY = 42709996  # SNOMED "Smokes tobacco daily" (Observation domain)
#: Antihypertensive ingredients and the clinical drug of each that patients receive.
ANTIHYPERTENSIVES = {
    1308216: 19080128,  # lisinopril -> lisinopril 10 MG Oral Tablet
    1332418: 1332419,  # amlodipine * -> amlodipine 5 MG Oral Tablet
    974166: 19078106,  # hydrochlorothiazide * -> hydrochlorothiazide 25 MG Oral Tablet
    1367500: 40185304,  # losartan * -> losartan potassium 50 MG Oral Tablet
}

# concept_id, name, domain, vocabulary, class, code
_CONCEPTS = (
    (MALE, "MALE", "Gender", "Gender", "Gender", "M"),
    (FEMALE, "FEMALE", "Gender", "Gender", "Gender", "F"),
    (OUTPATIENT_VISIT, "Outpatient Visit", "Visit", "Visit", "Visit", "OP"),
    (INPATIENT_VISIT, "Inpatient Visit", "Visit", "Visit", "Visit", "IP"),
    (EHR, "EHR", "Type Concept", "Type Concept", "Type Concept", "OMOP4976890"),
    (SYSTOLIC_BP, "Systolic blood pressure", "Measurement", "LOINC", "Clinical Observation",
     "8480-6"),
    (TOTAL_CHOLESTEROL, "Cholesterol [Mass/volume] in Serum or Plasma", "Measurement", "LOINC",
     "Lab Test", "2093-3"),
    (HDL_CHOLESTEROL, "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "Measurement",
     "LOINC", "Lab Test", "2085-9"),
    (BMI, "Body mass index (BMI) [Ratio]", "Measurement", "LOINC", "Clinical Observation",
     "39156-5"),
    (TRIGLYCERIDES, "Triglyceride [Mass/volume] in Serum or Plasma", "Measurement", "LOINC",
     "Lab Test", "2571-8"),
    (MMHG, "millimeter mercury column", "Unit", "UCUM", "Unit", "mm[Hg]"),
    (MG_DL, "milligram per deciliter", "Unit", "UCUM", "Unit", "mg/dL"),
    (KG_M2, "kilogram per square meter", "Unit", "UCUM", "Unit", "kg/m2"),
    (TYPE_2_DIABETES, "Type 2 diabetes mellitus", "Condition", "SNOMED", "Clinical Finding",
     "44054006"),
    (T2DM_WITHOUT_COMPLICATION, "Type 2 diabetes mellitus without complication", "Condition",
     "SNOMED", "Clinical Finding", "313436004"),
    (ESSENTIAL_HYPERTENSION, "Essential hypertension", "Condition", "SNOMED", "Clinical Finding",
     "59621000"),
    (HYPERLIPIDEMIA, "Hyperlipidemia", "Condition", "SNOMED", "Clinical Finding", "55822004"),
    (MYOCARDIAL_INFARCTION, "Myocardial infarction", "Condition", "SNOMED", "Clinical Finding",
     "22298006"),
    (ACUTE_MI, "Acute myocardial infarction", "Condition", "SNOMED", "Clinical Finding",
     "57054005"),
    (STROKE, "Cerebrovascular accident", "Condition", "SNOMED", "Clinical Finding", "230690007"),
    (SMOKES_DAILY, "Smokes tobacco daily", "Observation", "SNOMED", "Clinical Finding",
     "449868002"),
    (1308216, "lisinopril", "Drug", "RxNorm", "Ingredient", "29046"),
    (1332418, "amlodipine", "Drug", "RxNorm", "Ingredient", "17767"),
    (974166, "hydrochlorothiazide", "Drug", "RxNorm", "Ingredient", "5487"),
    (1367500, "losartan", "Drug", "RxNorm", "Ingredient", "52175"),
    (19080128, "lisinopril 10 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "314076"),
    (1332419, "amlodipine 5 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "197361"),
    (19078106, "hydrochlorothiazide 25 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug",
     "310798"),
    (40185304, "losartan potassium 50 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug",
     "979492"),
)  # fmt: skip
# ancestor, descendant, levels of separation (besides every standard concept's own row)
_HIERARCHY = (
    (TYPE_2_DIABETES, T2DM_WITHOUT_COMPLICATION, 1),
    (MYOCARDIAL_INFARCTION, ACUTE_MI, 1),
    *((ingredient, drug, 2) for ingredient, drug in ANTIHYPERTENSIVES.items()),
)
#: Per measured column: concept, unit, unit as written at the source, decimals.
_MEASURED = {
    "systolic_bp": (SYSTOLIC_BP, MMHG, "mm[Hg]", 0),
    "total_cholesterol": (TOTAL_CHOLESTEROL, MG_DL, "mg/dL", 1),
    "hdl_cholesterol": (HDL_CHOLESTEROL, MG_DL, "mg/dL", 1),
    "bmi": (BMI, KG_M2, "kg/m2", 1),
}
#: The look-back (days before the index date) the records are laid out for: the
#: generator's measurement is the latest in it, a treatment starts in it, smoking is
#: recorded at the index visit and readings or smoking before it are older than it.
#: Diagnoses lie anywhere in the observation before the index date (at most 5 years).
LOOK_BACK_DAYS = 365
#: Follow-up after the index date: observation ends, and outcomes fall, within it.
FOLLOW_UP_DAYS = 3650
_PRIOR_DAYS = (400, 5 * 365)  # observation before the index date: from, to


@dataclass(frozen=True)
class WrittenSite:
    """One site's database as written: where, and how many rows in each table."""

    name: str
    url: str
    persons: int
    rows: dict[str, int]


def write_omop_sites(
    cohort: SyntheticCohort,
    *,
    seed: int,
    out_dir: Path | None = None,
    urls: dict[str, str] | None = None,
    cdm_schema: str | None = None,
    vocabulary_schema: str | None = None,
) -> list[WrittenSite]:
    """Write every site of the synthetic cohort into its own OMOP CDM database.

    Parameters
    ----------
    cohort : SyntheticCohort
        The cohort's knobs, as a study's ``[data.synthetic]`` gives them.
    seed : int
        The cohort's seed (the study's): the same seed gives the same values.
    out_dir : Path, optional
        Folder for one DuckDB file per site (``site-01.duckdb``, ...).
    urls : dict of str to str, optional
        Instead of ``out_dir``: each site's SQLAlchemy URL (every site named).
    cdm_schema, vocabulary_schema : str, optional
        Schemas of the CDM and vocabulary tables (default: the database's own;
        the vocabulary's defaults to the CDM's). Created if missing.

    Returns
    -------
    list of WrittenSite
        The sites in order.

    Raises
    ------
    ConfigError
        If not exactly one of ``out_dir`` and ``urls`` is given, a site has no
        URL, a DuckDB file exists already or a database already holds a CDM
        table (nothing is overwritten; sites written before stay).
    """
    if (out_dir is None) == (urls is None):
        raise ConfigError("write_omop_sites needs out_dir (DuckDB files) or urls, not both.")
    tables = generate_cohort(cohort, seed=seed)
    if urls is None:
        folder = Path(out_dir or ".").resolve()
        urls = {name: f"duckdb:///{folder / f'{name}.duckdb'}" for name in tables}
    missing = [name for name in tables if name not in urls]
    if missing:
        raise ConfigError(
            f"no database URL for site(s) {', '.join(missing)} (sites: {', '.join(tables)})."
        )
    written = []
    for position, (name, table) in enumerate(tables.items()):
        records = site_records(table, seed=seed, site=position)
        rows = write_cdm(
            urls[name], records, cdm_schema=cdm_schema, vocabulary_schema=vocabulary_schema
        )
        written.append(WrittenSite(name, urls[name], len(table), rows))
    return written


def index_dates(table: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Each row's index date: the table's own, or a day of 2020Q1 drawn from ``rng``."""
    if SYNTHETIC_INDEX_DATE in table.columns:
        return table[SYNTHETIC_INDEX_DATE].to_numpy().astype("datetime64[D]")
    return np.datetime64("2020-01-01", "D") + rng.integers(0, 90, len(table))


def site_records(table: pd.DataFrame, *, seed: int, site: int) -> dict[str, pd.DataFrame]:
    """One site's CDM tables (name to rows) for a table of the synthetic generator.

    Person ``i + 1`` is row ``i``. The dates and the records the generator's
    table does not hold (earlier readings, other diagnoses) are drawn from a
    generator seeded by ``seed`` and the site's position, so a site's
    database is the same at every call.
    """
    rng = np.random.default_rng([seed, site, 0x0A0F])
    n = len(table)
    person = np.arange(1, n + 1)
    index = index_dates(table, rng)
    prior = rng.integers(*_PRIOR_DAYS, n)
    records = _Records(table, person, index, prior, rng)
    return {
        "person": records.persons(),
        "observation_period": pd.DataFrame(
            {
                "observation_period_id": person,
                "person_id": person,
                "observation_period_start_date": index - prior,
                "observation_period_end_date": index + FOLLOW_UP_DAYS,
                "period_type_concept_id": EHR,
            }
        ),
        **records.visits_and_conditions(),
        "drug_exposure": records.drugs(),
        "measurement": records.measurements(),
        "observation": records.smoking(),
        "concept": concept_rows(),
        "concept_ancestor": ancestor_rows(),
    }


@dataclass
class _Records:
    """One site's patients (row ``i`` is person ``i + 1``) and the draws for their records."""

    table: pd.DataFrame
    person: np.ndarray
    index: np.ndarray
    prior: np.ndarray  # days observed before the index date
    rng: np.random.Generator

    def flag(self, column: str) -> np.ndarray:
        return self.table[column].to_numpy() == 1

    def some(self, mask: np.ndarray, share: float) -> np.ndarray:
        """Rows of ``mask``, each kept with probability ``share``."""
        return np.flatnonzero(mask & (self.rng.random(len(mask)) < share))

    def before(self, rows: np.ndarray, *, at_least: int = 1) -> np.ndarray:
        """A day in each row's observation before its index date, ``at_least`` days before."""
        span = self.prior[rows] - at_least + 1
        return self.index[rows] - at_least - (self.rng.random(len(rows)) * span).astype(int)

    def after(self, rows: np.ndarray, days: int) -> np.ndarray:
        """A day in the ``days`` after each row's index date."""
        return self.index[rows] + self.rng.integers(1, days + 1, len(rows))

    def persons(self) -> pd.DataFrame:
        """PERSON rows, born so that year of index minus year of birth is the table's age.

        The birthday falls on or before the index date's day of the year, so
        the exact age at index equals the CDM's usual year difference.
        """
        year, month, day = _ymd(self.index)
        birth_year = year - self.table["age"].to_numpy()
        leap = (birth_year % 4 == 0) & ((birth_year % 100 != 0) | (birth_year % 400 == 0))
        anniversary = _date(
            birth_year, month, np.where((month == 2) & (day == 29) & ~leap, 28, day)
        )
        into_year = (anniversary - _date(birth_year, 1, 1)).astype(int)
        birth = anniversary - (self.rng.random(len(birth_year)) * (into_year + 1)).astype(int)
        b_year, b_month, b_day = _ymd(birth)
        male = self.table["sex"].to_numpy() == "male"
        return pd.DataFrame(
            {
                "person_id": self.person,
                "gender_concept_id": np.where(male, MALE, FEMALE),
                "year_of_birth": b_year,
                "month_of_birth": b_month,
                "day_of_birth": b_day,
                "birth_datetime": birth.astype("datetime64[s]"),
                "race_concept_id": 0,
                "ethnicity_concept_id": 0,
                "person_source_value": np.char.add("synthetic-", self.person.astype(str)),
                "gender_source_value": np.where(male, "M", "F"),
            }
        )

    def visits_and_conditions(self) -> dict[str, pd.DataFrame]:
        """VISIT_OCCURRENCE and CONDITION_OCCURRENCE rows.

        Everyone has an outpatient visit on the index date; a patient with the
        outcome has an inpatient stay for a myocardial infarction (or its
        descendant acute MI) or a stroke in the follow-up. Diabetes (three in
        ten as its descendant "without complication") is diagnosed before the
        index date, and in one in twenty others only after it. Essential
        hypertension and hyperlipidaemia are recorded for the treated or
        high blood pressures and high cholesterol (the benchmark's features).
        """
        n = len(self.person)
        cases = np.flatnonzero(self.flag(OUTCOME))
        event_day = self.after(cases, FOLLOW_UP_DAYS)
        stay = np.arange(n + 1, n + 1 + len(cases))
        visits = pd.DataFrame(
            {
                "visit_occurrence_id": np.concatenate([self.person, stay]),
                "person_id": np.concatenate([self.person, self.person[cases]]),
                "visit_concept_id": np.repeat([OUTPATIENT_VISIT, INPATIENT_VISIT], [n, len(cases)]),
                "visit_start_date": np.concatenate([self.index, event_day]),
                "visit_end_date": np.concatenate(
                    [self.index, event_day + self.rng.integers(1, 8, len(cases))]
                ),
                "visit_type_concept_id": EHR,
            }
        )
        diabetic = np.flatnonzero(self.flag("diabetes"))
        incident = self.some(~self.flag("diabetes"), 0.05)
        hypertensive = np.flatnonzero(
            self.flag("bp_treated") | (self.table["systolic_bp"].to_numpy() >= 140)
        )
        dyslipidaemic = np.flatnonzero(self.table["total_cholesterol"].to_numpy() >= 240)
        diagnoses = [
            (diabetic, self.rng.choice([TYPE_2_DIABETES, T2DM_WITHOUT_COMPLICATION],
                                       len(diabetic), p=[0.7, 0.3]), self.before(diabetic)),
            (incident, TYPE_2_DIABETES, self.after(incident, FOLLOW_UP_DAYS)),
            (hypertensive, ESSENTIAL_HYPERTENSION, self.before(hypertensive)),
            (dyslipidaemic, HYPERLIPIDEMIA, self.before(dyslipidaemic)),
            (cases, self.rng.choice([MYOCARDIAL_INFARCTION, ACUTE_MI, STROKE], len(cases),
                                    p=[0.35, 0.35, 0.3]), event_day),
        ]  # fmt: skip
        conditions = pd.concat(
            [
                pd.DataFrame(
                    {
                        "person_id": self.person[rows],
                        "condition_concept_id": concept,
                        "condition_start_date": day,
                    }
                )
                for rows, concept, day in diagnoses
            ],
            ignore_index=True,
        )
        conditions.insert(0, "condition_occurrence_id", np.arange(1, len(conditions) + 1))
        start = conditions["condition_start_date"]
        conditions["condition_start_datetime"] = start.astype("datetime64[s]")
        conditions["condition_type_concept_id"] = EHR
        stays = pd.array(np.zeros(len(conditions), dtype=np.int64), dtype="Int64")
        stays[:] = pd.NA
        stays[len(conditions) - len(cases) :] = stay
        conditions["visit_occurrence_id"] = stays
        return {"visit_occurrence": visits, "condition_occurrence": conditions}

    def drugs(self) -> pd.DataFrame:
        """DRUG_EXPOSURE rows: 90-day prescriptions of an antihypertensive clinical drug.

        A treated patient's starts in the year before the index date; one in
        twenty untreated patients starts one in the year after it.
        """
        treated = np.flatnonzero(self.flag("bp_treated"))
        later = self.some(~self.flag("bp_treated"), 0.05)
        start = np.concatenate(
            [
                self.index[treated] - self.rng.integers(1, LOOK_BACK_DAYS + 1, len(treated)),
                self.after(later, LOOK_BACK_DAYS),
            ]
        )
        rows = np.concatenate([treated, later])
        return pd.DataFrame(
            {
                "drug_exposure_id": np.arange(1, len(rows) + 1),
                "person_id": self.person[rows],
                "drug_concept_id": self.rng.choice(list(ANTIHYPERTENSIVES.values()), len(rows)),
                "drug_exposure_start_date": start,
                "drug_exposure_start_datetime": start.astype("datetime64[s]"),
                "drug_exposure_end_date": start + 89,
                "drug_type_concept_id": EHR,
                "quantity": 90,
                "days_supply": 90,
            }
        )

    def smoking(self) -> pd.DataFrame:
        """OBSERVATION rows: smoking at the index visit, or (since quit) over a year before it."""
        smokers = np.flatnonzero(self.flag("smoker"))
        quit_ = self.some(~self.flag("smoker"), 0.03)
        day = np.concatenate([self.index[smokers], self.before(quit_, at_least=LOOK_BACK_DAYS + 1)])
        visit = pd.array(np.concatenate([self.person[smokers], np.zeros(len(quit_), np.int64)]),
                         dtype="Int64")  # fmt: skip
        visit[len(smokers) :] = pd.NA
        return pd.DataFrame(
            {
                "observation_id": np.arange(1, len(day) + 1),
                "person_id": self.person[np.concatenate([smokers, quit_])],
                "observation_concept_id": SMOKES_DAILY,
                "observation_date": day,
                "observation_datetime": day.astype("datetime64[s]"),
                "observation_type_concept_id": EHR,
                "visit_occurrence_id": visit,
                "observation_source_value": "449868002",
            }
        )

    def measurements(self) -> pd.DataFrame:
        """MEASUREMENT rows: the table's value at the index visit, with earlier readings.

        Six in ten recorded values have an earlier reading in the look-back
        window, and half of all values an older one before it; a value the
        table lacks has, half the time, only such an old reading. Earlier
        readings scatter 6% around the value. Everyone also has a triglyceride
        value at the index visit.
        """
        n = len(self.person)
        everyone = np.ones(n, dtype=bool)
        parts = []
        for column, (concept, unit, unit_source, decimals) in _MEASURED.items():
            value = self.table[column].to_numpy(dtype=float)
            present = ~np.isnan(value)
            typical = np.where(present, value, np.nanmean(value))
            latest = np.flatnonzero(present)
            earlier = self.some(present, 0.6)
            earlier_day = self.index - self.rng.integers(30, LOOK_BACK_DAYS - 29, n)
            older = self.some(everyone, 0.5)
            earlier_value = typical * (1 + 0.06 * self.rng.standard_normal(n))
            older_value = typical * (1 + 0.06 * self.rng.standard_normal(n))
            older_day = self.before(older, at_least=LOOK_BACK_DAYS + 1)
            for rows, day, reading, at_index in (
                (latest, self.index[latest], value[latest], True),
                (earlier, earlier_day[earlier], earlier_value[earlier], False),
                (older, older_day, older_value[older], False),
            ):
                parts.append(
                    self._readings(rows, concept, day, np.round(reading, decimals), unit,
                                   unit_source, at_index=at_index)
                )  # fmt: skip
        triglycerides = np.round(np.exp(self.rng.normal(np.log(130), 0.4, n)))
        parts.append(
            self._readings(np.arange(n), TRIGLYCERIDES, self.index, triglycerides, MG_DL,
                           "mg/dL", at_index=True)
        )  # fmt: skip
        frame = pd.concat(parts, ignore_index=True)
        frame.insert(0, "measurement_id", np.arange(1, len(frame) + 1))
        return frame

    def _readings(
        self,
        rows: np.ndarray,
        concept: int,
        day: np.ndarray,
        value: np.ndarray,
        unit: int,
        unit_source: str,
        *,
        at_index: bool,
    ) -> pd.DataFrame:
        visit = pd.array(self.person[rows], dtype="Int64")
        if not at_index:
            visit[:] = pd.NA
        return pd.DataFrame(
            {
                "person_id": self.person[rows],
                "measurement_concept_id": concept,
                "measurement_date": day,
                "measurement_datetime": day.astype("datetime64[s]"),
                "measurement_type_concept_id": EHR,
                "value_as_number": value,
                "unit_concept_id": unit,
                "visit_occurrence_id": visit,
                "measurement_source_concept_id": concept,
                "unit_source_value": unit_source,
            }
        )


def concept_rows() -> pd.DataFrame:
    """The CONCEPT rows of every concept the writer uses (all standard)."""
    frame = pd.DataFrame(
        _CONCEPTS,
        columns=[
            "concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
            "concept_code",
        ],
    )  # fmt: skip
    frame["standard_concept"] = "S"
    frame["valid_start_date"] = np.datetime64("1970-01-01", "D")
    frame["valid_end_date"] = np.datetime64("2099-12-31", "D")
    return frame


def ancestor_rows() -> pd.DataFrame:
    """CONCEPT_ANCESTOR rows: each concept its own ancestor, and the hierarchy the writer uses."""
    own = [(concept[0], concept[0], 0) for concept in _CONCEPTS]
    frame = pd.DataFrame(
        [*own, *_HIERARCHY], columns=["ancestor_concept_id", "descendant_concept_id", "levels"]
    )
    frame["min_levels_of_separation"] = frame["levels"]
    frame["max_levels_of_separation"] = frame.pop("levels")
    return frame


def _ymd(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month and day of each date."""
    year = days.astype("datetime64[Y]")
    month = days.astype("datetime64[M]")
    return (
        year.astype(int) + 1970,
        (month - year).astype(int) + 1,
        (days - month).astype(int) + 1,
    )


def _date(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """The dates of ``year``-``month``-``day`` (valid days only)."""
    months = (np.asarray(year) - 1970) * 12 + np.asarray(month) - 1
    return months.astype("datetime64[M]").astype("datetime64[D]") + (np.asarray(day) - 1)
