"""A study's cohort, outcome and features in OMOP CDM terms (``[data.omop]``).

A study with ``[data] source = "omop"`` does not ask sites for a table: it
says which rows and columns each site derives from its OMOP CDM v5.4
database, and every site builds that table inside its database
(:mod:`lhs_federated.data.omop.query`). The format::

    [data]
    source = "omop"            # contract: derived from the features below unless given

    [data.omop]
    index_date = "index_date"  # the output's date column (the row's period)
    period = "quarter"         # how index dates are grouped (quarter, month, year)
    missing = "impute"         # the derived contract's missing-value policy
    # Simulation only (deployed sites name their own database in site.toml):
    databases = { site-a = "duckdb:///site-a.duckdb" }   # site -> SQLAlchemy URL, no password
    cdm_schema = "main"        # optional; vocabulary_schema likewise (default: the CDM's)

    [data.omop.cohort]         # the target cohort: one row per person, at the first entry event
    entry_domain = "condition" # visit, condition, drug, procedure, measurement or observation
    entry_concepts = [320128]  # concept set (descendants through CONCEPT_ANCESTOR included)
    min_age = 40               # age at index = year of index - year of birth (optional)
    max_age = 79
    prior_observation_days = 365   # observed this long before the index date
    index_from = "2010-01-01"  # optional: first index dates allowed (index_to likewise)

    [data.omop.outcome]        # 1 if an event of the set lies in the time at risk, else 0
    name = "cvd_event"
    domain = "condition"       # or "death" (no concepts)
    concepts = [4329847]
    start_day = 1              # time at risk: index + start_day .. index + end_day
    end_day = 3650
    censoring = "exclude"      # persons observed for less than the time at risk, without
                               # the outcome: left out ("exclude") or negative ("negative")

    [[data.omop.features]]     # in model order; name is the column
    name = "age"
    kind = "age"               # age at index, in years (numeric)
    [[data.omop.features]]
    name = "sex"
    kind = "sex"               # binary, levels "female" (8532), "male" (8507)
    [[data.omop.features]]
    name = "diabetes"
    kind = "condition"         # presence (1/0) of condition, drug, procedure, observation
    concepts = [201820]        # or visit events
    start_day = -3650          # look-back window, days relative to the index date
    end_day = 0
    [[data.omop.features]]
    name = "systolic_bp"
    kind = "measurement"       # value_as_number of a concept in the window
    concepts = [3004249]
    statistic = "latest"       # latest (ties: the highest measurement_id) or mean
    units = [8876]             # accepted unit_concept_id values: any other is an error
    unit = "mmHg"              # for the contract; min / max bound its values
    min = 60
    max = 260

Windows are inclusive at both ends and counted in days from the index date.
Every concept set includes its concepts' descendants (``descendants = false``
to turn that off). The table holds the features in this order, the index
date (ISO text) and the outcome (1/0), one row per person ordered by
person_id; the person_id itself never leaves the database.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from lhs_federated.config import setting
from lhs_federated.data.contract import DataContract, Feature, Outcome, contract_from
from lhs_federated.errors import ConfigError

EventDomain = Literal["visit", "condition", "drug", "procedure", "measurement", "observation"]
PRESENCE_KINDS = ("visit", "condition", "drug", "procedure", "observation")
#: OMOP gender concepts and the sex feature's levels (negative, positive).
SEX_LEVELS = {8532: "female", 8507: "male"}
MAX_DAYS = 365 * 150


def _check_date(value: str | None, key: str) -> None:
    if value is None:
        return
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{key} must be an ISO date (yyyy-mm-dd); got {value!r}") from None


def check_url(url: str, key: str) -> None:
    """A SQLAlchemy URL that names no password (passwords never sit in a study or config).

    Raises
    ------
    ValueError
        If ``url`` is not a SQLAlchemy URL or holds a password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"{key} must be a SQLAlchemy URL (duckdb:///site.duckdb, "
            f"postgresql+psycopg2://user@host:5432/cdm); got {masked_url(url)!r}"
        ) from None
    if parsed.password is not None:
        raise ValueError(
            f"{key} holds a password: a URL names the user only; the site's password comes "
            "from its site config's data.password_file (mode 0600) or data.password_env"
        )


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def _check_concepts(concepts: tuple[int, ...], key: str) -> None:
    if not concepts:
        raise ValueError(f"{key} needs at least one concept id")
    bad = [c for c in concepts if c <= 0]
    if bad:
        raise ValueError(f"{key}: concept ids are positive integers; got {bad!r}")


@dataclass(frozen=True)
class CohortSpec:
    """The target cohort: each person's first entry event is their index date."""

    entry_domain: EventDomain = setting(
        doc="the CDM table of the entry event: visit, condition, drug, procedure, "
        "measurement or observation"
    )
    entry_concepts: tuple[int, ...] = setting(
        doc="concept ids of the entry event (with their descendants)"
    )
    descendants: bool = setting(True, doc="include the concepts' descendants (CONCEPT_ANCESTOR)")
    min_age: int | None = setting(None, doc="youngest age at index (years)", ge=0, le=150)
    max_age: int | None = setting(None, doc="oldest age at index (years)", ge=0, le=150)
    prior_observation_days: int = setting(
        0, doc="days of observation the index date needs before it", ge=0, le=MAX_DAYS
    )
    index_from: str | None = setting(None, doc="earliest index date allowed (yyyy-mm-dd)")
    index_to: str | None = setting(None, doc="latest index date allowed (yyyy-mm-dd)")

    def __post_init__(self) -> None:
        _check_concepts(self.entry_concepts, "cohort.entry_concepts")
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise ValueError(f"cohort.min_age {self.min_age} is above max_age {self.max_age}")
        _check_date(self.index_from, "cohort.index_from")
        _check_date(self.index_to, "cohort.index_to")
        if self.index_from and self.index_to and self.index_from > self.index_to:
            raise ValueError(
                f"cohort.index_from {self.index_from} is after index_to {self.index_to}"
            )


@dataclass(frozen=True)
class OutcomeSpec:
    """The outcome: an event of a concept set within the time at risk."""

    name: str = setting(doc="the outcome column")
    domain: EventDomain | Literal["death"] = setting(
        doc="the CDM table of the outcome event (death: the DEATH table, no concepts)"
    )
    concepts: tuple[int, ...] = setting((), doc="concept ids of the outcome (with descendants)")
    descendants: bool = setting(True, doc="include the concepts' descendants (CONCEPT_ANCESTOR)")
    start_day: int = setting(
        1, doc="time at risk starts this many days after the index date", ge=0, le=MAX_DAYS
    )
    end_day: int = setting(
        365, doc="time at risk ends this many days after the index date", ge=0, le=MAX_DAYS
    )
    censoring: Literal["exclude", "negative"] = setting(
        "exclude",
        doc="persons observed for less than the time at risk without the outcome: left out "
        "(exclude) or counted negative",
    )
    description: str = setting("", doc="what the outcome is")

    def __post_init__(self) -> None:
        if self.domain == "death":
            if self.concepts:
                raise ValueError("outcome.domain = 'death' takes no concepts")
        else:
            _check_concepts(self.concepts, "outcome.concepts")
        if self.start_day > self.end_day:
            raise ValueError(f"outcome.start_day {self.start_day} is after end_day {self.end_day}")


@dataclass(frozen=True)
class FeatureSpec:
    """One column of the table, derived from the person or their events."""

    name: str = setting(doc="the column's name (the contract's feature)")
    kind: Literal[
        "age", "sex", "measurement", "visit", "condition", "drug", "procedure", "observation"
    ] = setting(
        doc="age or sex at index; presence of visit, condition, drug, procedure or "
        "observation events; a measurement's value"
    )
    concepts: tuple[int, ...] = setting((), doc="concept ids (with descendants)")
    descendants: bool = setting(True, doc="include the concepts' descendants (CONCEPT_ANCESTOR)")
    start_day: int = setting(
        -365, doc="window start, days relative to the index date", ge=-MAX_DAYS, le=MAX_DAYS
    )
    end_day: int = setting(
        0, doc="window end, days relative to the index date", ge=-MAX_DAYS, le=MAX_DAYS
    )
    statistic: Literal["latest", "mean"] = setting(
        "latest", doc="measurement: the latest value in the window, or their mean"
    )
    units: tuple[int, ...] = setting(
        (), doc="measurement: the accepted unit_concept_id values (others are an error)"
    )
    unit: str = setting("", doc="measurement: the unit, for the contract")
    min: float | None = setting(None, doc="measurement: smallest valid value (the contract's)")
    max: float | None = setting(None, doc="measurement: largest valid value (the contract's)")
    description: str = setting("", doc="what the column holds")

    def __post_init__(self) -> None:
        where = f"feature {self.name!r}"
        if self.kind in ("age", "sex"):
            if self.concepts:
                raise ValueError(f"{where} is {self.kind} at index and takes no concepts")
        else:
            _check_concepts(self.concepts, f"{where}: concepts")
        if self.start_day > self.end_day:
            raise ValueError(f"{where}: start_day {self.start_day} is after end_day {self.end_day}")
        measured = self.kind == "measurement"
        if measured and not self.units:
            raise ValueError(
                f"{where} is a measurement: name its accepted unit concept ids "
                "(units = [8876] for mmHg), so that values in another unit are caught"
            )
        if not measured and (self.units or self.min is not None or self.max is not None):
            raise ValueError(f"{where}: units, min and max apply to measurements only")

    def contract_feature(self) -> Feature:
        """The contract's declaration of this column."""
        if self.kind == "age":
            return Feature(
                self.name, "numeric", min=0.0, max=150.0, unit="years", description=self.description
            )
        if self.kind == "sex":
            return Feature(
                self.name, "binary", levels=tuple(SEX_LEVELS.values()), description=self.description
            )
        if self.kind == "measurement":
            return Feature(
                self.name,
                "numeric",
                min=self.min,
                max=self.max,
                unit=self.unit,
                description=self.description,
            )
        return Feature(self.name, "binary", description=self.description)


@dataclass(frozen=True)
class OmopSpec:
    """A study's table in OMOP terms; see the module docstring."""

    cohort: CohortSpec = setting(doc="the target cohort")
    outcome: OutcomeSpec = setting(doc="the outcome in the time at risk")
    features: tuple[FeatureSpec, ...] = setting(doc="the columns, in model order")
    index_date: str = setting("index_date", doc="the output column holding the index date")
    period: Literal["quarter", "month", "year"] = setting(
        "quarter", doc="the periods index dates are grouped into"
    )
    missing: Literal["error", "drop-row", "impute"] = setting(
        "impute", doc="the derived contract's policy for a missing value (no measurement)"
    )
    databases: dict[str, str] = setting(
        default_factory=dict,
        doc="simulation: each site's SQLAlchemy URL (no password); deployed sites name "
        "their database in their site config",
    )
    cdm_schema: str | None = setting(None, doc="simulation: the CDM tables' schema")
    vocabulary_schema: str | None = setting(
        None, doc="simulation: the vocabulary tables' schema (default: cdm_schema)"
    )

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("data.omop needs at least one feature")
        names = [f.name for f in self.features]
        taken = [*names, self.outcome.name, self.index_date]
        duplicated = sorted({n for n in taken if taken.count(n) > 1})
        for site, url in self.databases.items():
            check_url(url, f"data.omop.databases.{site}")
        if duplicated:
            raise ValueError(
                f"data.omop: column name(s) {', '.join(map(repr, duplicated))} used twice "
                "(features, outcome.name and index_date name one column each)"
            )

    def contract(self, name: str) -> DataContract:
        """The data contract this definition's table meets (when the study gives none)."""
        return DataContract(
            name=name,
            outcome=Outcome(
                self.outcome.name,
                positive=(1,),
                negative=(0,),
                description=self.outcome.description,
            ),
            features=tuple(f.contract_feature() for f in self.features),
            missing=self.missing,
            index_date=self.index_date,
            period=self.period,
        )


def check_contract(spec: OmopSpec, contract: DataContract) -> list[str]:
    """What stops ``contract`` from describing the table ``spec`` builds (empty: nothing).

    A study may give its own contract (for tighter ranges, say); the columns,
    their order and their kinds must still be the ones the extraction writes.
    """
    problems = []
    derived = spec.contract(contract.name)
    wanted = [(f.name, f.type) for f in derived.features]
    given = [(f.name, f.type) for f in contract.features]
    if given != wanted:
        problems.append(
            f"its features {given} are not data.omop's features {wanted} (names, order, types)"
        )
    for feature in contract.features:
        if feature.name in {f.name for f in spec.features if f.kind == "sex"} and (
            feature.binary_levels != tuple(SEX_LEVELS.values())
        ):
            problems.append(f"sex feature {feature.name!r} must have levels ['female', 'male']")
    if contract.outcome.column != spec.outcome.name or set(contract.outcome.positive) != {1}:
        problems.append(
            f"its outcome must be column {spec.outcome.name!r} with positive [1], negative [0]"
        )
    if contract.index_date != spec.index_date or contract.period != spec.period:
        problems.append(
            f"its index_date must be {spec.index_date!r} with period {spec.period!r} (data.omop's)"
        )
    return problems


def resolve_url(url: str, base_dir: Path) -> str:
    """``url`` with a relative DuckDB file taken from ``base_dir`` (other URLs unchanged)."""
    parsed = make_url(url)
    database = parsed.database
    if (
        parsed.get_backend_name() != "duckdb"
        or not database
        or database == ":memory:"
        or Path(database).is_absolute()
    ):
        return url
    return parsed.set(database=str((base_dir / database).resolve())).render_as_string()


def resolve_omop(
    data_source: str,
    omop: OmopSpec | None,
    contract: DataContract | str | None,
    *,
    study_name: str,
    base_dir: Path,
    source: str,
) -> tuple[OmopSpec, DataContract]:
    """The study's OMOP definition with absolute database paths, and its contract.

    The contract is derived from the definition (:meth:`OmopSpec.contract`)
    unless the study gives one, which must then describe the same table.

    Raises
    ------
    ConfigError
        If ``[data.omop]`` is missing with ``source = "omop"`` (or given with
        another source), or the given contract does not fit it.
    """
    if data_source != "omop":
        raise ConfigError(
            f"{source}: [data.omop] applies only with data.source = 'omop' "
            f"(got {data_source!r}); set the source or drop the table."
        )
    if omop is None:
        raise ConfigError(
            f"{source}: data.source = 'omop' needs a [data.omop] table: the cohort, outcome "
            "and features each site extracts from its OMOP CDM database."
        )
    omop = dataclasses.replace(
        omop, databases={site: resolve_url(url, base_dir) for site, url in omop.databases.items()}
    )
    if contract is None:
        return omop, omop.contract(study_name)
    try:
        resolved = contract_from(contract, base_dir=base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{source}: data.contract: {exc.message}") from exc
    problems = check_contract(omop, resolved)
    if problems:
        raise ConfigError(
            f"{source}: data.contract {resolved.name!r} does not describe the table "
            f"[data.omop] extracts: {'; '.join(problems)}. Drop data.contract to use the "
            "derived one."
        )
    return omop, resolved
