"""The ``[data.omop]`` definition compiled to one SQLAlchemy Core query.

The table a study's contract describes is built inside the site's database:
one ``SELECT`` (common table expressions for the cohort, the outcome and each
feature, left-joined on the cohort) that SQLAlchemy compiles for the site's
dialect. Only operations both DuckDB and PostgreSQL (and the SQL standard)
define are used: date plus integer days, ``EXTRACT(YEAR ...)``, window
functions, ``EXISTS``, ``CAST``. Nothing is computed row by row in Python; the
rows come back once, as the finished table.

Queries are built against :func:`cdm_tables`, the CDM v5.4 columns the
extraction reads (also the DDL tests and the synthetic OMOP writer create).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Date,
    Double,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    case,
    cast,
    exists,
    extract,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.selectable import CTE

from lhs_federated.data.omop.definition import SEX_LEVELS, FeatureSpec, OmopSpec

#: The CDM tables and columns the extraction reads, with their CDM v5.4 types.
CDM_COLUMNS: dict[str, dict[str, Any]] = {
    "person": {"person_id": BigInteger, "gender_concept_id": Integer, "year_of_birth": Integer},
    "observation_period": {
        "observation_period_id": BigInteger,
        "person_id": BigInteger,
        "observation_period_start_date": Date,
        "observation_period_end_date": Date,
    },
    "visit_occurrence": {
        "visit_occurrence_id": BigInteger,
        "person_id": BigInteger,
        "visit_concept_id": Integer,
        "visit_start_date": Date,
    },
    "condition_occurrence": {
        "condition_occurrence_id": BigInteger,
        "person_id": BigInteger,
        "condition_concept_id": Integer,
        "condition_start_date": Date,
    },
    "drug_exposure": {
        "drug_exposure_id": BigInteger,
        "person_id": BigInteger,
        "drug_concept_id": Integer,
        "drug_exposure_start_date": Date,
    },
    "procedure_occurrence": {
        "procedure_occurrence_id": BigInteger,
        "person_id": BigInteger,
        "procedure_concept_id": Integer,
        "procedure_date": Date,
    },
    "measurement": {
        "measurement_id": BigInteger,
        "person_id": BigInteger,
        "measurement_concept_id": Integer,
        "measurement_date": Date,
        "value_as_number": Double,
        "unit_concept_id": Integer,
    },
    "observation": {
        "observation_id": BigInteger,
        "person_id": BigInteger,
        "observation_concept_id": Integer,
        "observation_date": Date,
    },
    "death": {"person_id": BigInteger, "death_date": Date},
}
#: The vocabulary tables and columns the extraction reads.
VOCABULARY_COLUMNS: dict[str, dict[str, Any]] = {
    "concept": {"concept_id": Integer, "concept_name": String(255)},
    "concept_ancestor": {"ancestor_concept_id": Integer, "descendant_concept_id": Integer},
}
#: Each event domain's table, concept column and date column.
EVENTS: dict[str, tuple[str, str | None, str]] = {
    "visit": ("visit_occurrence", "visit_concept_id", "visit_start_date"),
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
    "death": ("death", None, "death_date"),
}


@dataclass(frozen=True)
class Schemas:
    """Where a site keeps its CDM and vocabulary tables (None: the connection's default)."""

    cdm: str | None = None
    vocabulary: str | None = None

    @property
    def vocabulary_schema(self) -> str | None:
        """The vocabulary's schema (the CDM's unless named)."""
        return self.vocabulary if self.vocabulary is not None else self.cdm


def cdm_tables(schemas: Schemas) -> dict[str, Table]:
    """The CDM and vocabulary tables the extraction reads, in a fresh ``MetaData``.

    ``next(iter(tables.values())).metadata.create_all(engine)`` creates them
    (tests, the synthetic OMOP writer); a site's own warehouse has more columns.
    """
    metadata = MetaData()
    tables = {}
    for columns, schema in (
        (CDM_COLUMNS, schemas.cdm),
        (VOCABULARY_COLUMNS, schemas.vocabulary_schema),
    ):
        for name, types in columns.items():
            tables[name] = Table(
                name, metadata, *(Column(c, t) for c, t in types.items()), schema=schema
            )
    return tables


@dataclass(frozen=True)
class ConceptSet:
    """One concept set of a definition, and where its events are."""

    what: str
    domain: str
    concepts: tuple[int, ...]
    descendants: bool


def concept_sets(spec: OmopSpec) -> list[ConceptSet]:
    """Every concept set the definition names: the entry event, the outcome, each feature."""
    sets = [
        ConceptSet(
            "cohort.entry_concepts",
            spec.cohort.entry_domain,
            spec.cohort.entry_concepts,
            spec.cohort.descendants,
        )
    ]
    if spec.outcome.domain != "death":
        sets.append(
            ConceptSet(
                "outcome.concepts",
                spec.outcome.domain,
                spec.outcome.concepts,
                spec.outcome.descendants,
            )
        )
    sets += [
        ConceptSet(f"feature {f.name!r}", f.kind, f.concepts, f.descendants)
        for f in spec.features
        if f.concepts
    ]
    return sets


def needed_columns(spec: OmopSpec) -> dict[str, tuple[str, ...]]:
    """The tables and columns ``spec``'s extraction reads (checked before it runs)."""
    domains = {spec.cohort.entry_domain, spec.outcome.domain} | {
        f.kind for f in spec.features if f.concepts
    }
    names = ["person", "observation_period", "concept", "concept_ancestor"]
    names += [EVENTS[d][0] for d in sorted(domains)]
    return {
        name: tuple({**CDM_COLUMNS, **VOCABULARY_COLUMNS}[name]) for name in dict.fromkeys(names)
    }


def in_set(column: ColumnElement, concepts: Sequence[int], descendants: bool, tables: dict) -> Any:
    """``column`` is one of ``concepts`` or (with ``descendants``) a descendant of one."""
    direct = column.in_(list(concepts))
    if not descendants:
        return direct
    ancestor = tables["concept_ancestor"]
    below = select(ancestor.c.descendant_concept_id).where(
        ancestor.c.ancestor_concept_id.in_(list(concepts))
    )
    return or_(direct, column.in_(below))


def _days(date: ColumnElement, days: int) -> Any:
    """``date`` plus ``days`` days (date + integer: standard, DuckDB and PostgreSQL alike)."""
    return date + literal(days, Integer)


def cohort_cte(spec: OmopSpec, tables: dict[str, Table]) -> CTE:
    """Each person's first qualifying entry event: person_id, index_date, observation_end, age.

    An entry event qualifies if it lies in an observation period that began at
    least ``prior_observation_days`` earlier, and between ``index_from`` and
    ``index_to``; the age criteria then apply to the first one.
    """
    cohort = spec.cohort
    table, concept, date = EVENTS[cohort.entry_domain]
    events, period, person = tables[table], tables["observation_period"], tables["person"]
    event_date = events.c[date]
    conditions = [
        in_set(events.c[concept], cohort.entry_concepts, cohort.descendants, tables),
        _days(period.c.observation_period_start_date, cohort.prior_observation_days) <= event_date,
        event_date <= period.c.observation_period_end_date,
    ]
    if cohort.index_from is not None:
        conditions.append(event_date >= cast(literal(cohort.index_from), Date))
    if cohort.index_to is not None:
        conditions.append(event_date <= cast(literal(cohort.index_to), Date))
    ranked = (
        select(
            events.c.person_id,
            event_date.label("index_date"),
            period.c.observation_period_end_date.label("observation_end"),
            func.row_number()
            .over(partition_by=events.c.person_id, order_by=event_date)
            .label("entry_rank"),
        )
        .join(period, period.c.person_id == events.c.person_id)
        .where(*conditions)
        .cte("entry_events")
    )
    age = cast(extract("year", ranked.c.index_date) - person.c.year_of_birth, Integer)
    criteria = [ranked.c.entry_rank == 1]
    if cohort.min_age is not None:
        criteria.append(age >= cohort.min_age)
    if cohort.max_age is not None:
        criteria.append(age <= cohort.max_age)
    return (
        select(
            ranked.c.person_id,
            ranked.c.index_date,
            ranked.c.observation_end,
            age.label("age"),
            person.c.gender_concept_id,
        )
        .join(person, person.c.person_id == ranked.c.person_id)
        .where(*criteria)
        .cte("cohort")
    )


def _events_in_window(
    domain: str,
    concepts: Sequence[int],
    descendants: bool,
    window: tuple[int, int],
    cohort: CTE,
    tables: dict[str, Table],
) -> tuple[Table, list[Any]]:
    """The events table of ``domain`` and the conditions tying its rows to the window."""
    table, concept, date = EVENTS[domain]
    events = tables[table]
    conditions = [
        events.c.person_id == cohort.c.person_id,
        events.c[date] >= _days(cohort.c.index_date, window[0]),
        events.c[date] <= _days(cohort.c.index_date, window[1]),
    ]
    if concept is not None:
        conditions.append(in_set(events.c[concept], concepts, descendants, tables))
    return events, conditions


def _feature_cte(feature: FeatureSpec, index: int, cohort: CTE, tables: dict) -> CTE:
    """One event feature per cohort person who has it: person_id, value."""
    window = (feature.start_day, feature.end_day)
    events, conditions = _events_in_window(
        feature.kind, feature.concepts, feature.descendants, window, cohort, tables
    )
    name = f"feature_{index}"
    if feature.kind != "measurement":
        return (
            select(events.c.person_id, literal(1, Integer).label("value"))
            .select_from(events.join(cohort, conditions[0]))
            .where(*conditions[1:])
            .distinct()
            .cte(name)
        )
    value = cast(events.c.value_as_number, Double)
    conditions += [
        events.c.value_as_number.is_not(None),
        events.c.unit_concept_id.in_(list(feature.units)),
    ]
    source = events.join(cohort, conditions[0])
    if feature.statistic == "mean":
        return (
            select(events.c.person_id, func.avg(value).label("value"))
            .select_from(source)
            .where(*conditions[1:])
            .group_by(events.c.person_id)
            .cte(name)
        )
    ranked = (
        select(
            events.c.person_id,
            value.label("value"),
            func.row_number()
            .over(
                partition_by=events.c.person_id,
                order_by=(events.c.measurement_date.desc(), events.c.measurement_id.desc()),
            )
            .label("value_rank"),
        )
        .select_from(source)
        .where(*conditions[1:])
        .cte(f"{name}_ranked")
    )
    return select(ranked.c.person_id, ranked.c.value).where(ranked.c.value_rank == 1).cte(name)


def extraction_query(spec: OmopSpec, tables: dict[str, Table]) -> Select:
    """The query whose rows are the study's table, one per person ordered by person_id.

    Columns: the features in order, the index date, the outcome (1/0). With
    ``outcome.censoring = "exclude"``, a person without the outcome whose
    observation ends before the time at risk does is left out.
    """
    cohort = cohort_cte(spec, tables)
    outcome = spec.outcome
    events, conditions = _events_in_window(
        outcome.domain,
        outcome.concepts,
        outcome.descendants,
        (outcome.start_day, outcome.end_day),
        cohort,
        tables,
    )
    outcomes = (
        select(events.c.person_id)
        .select_from(events.join(cohort, conditions[0]))
        .where(*conditions[1:])
        .distinct()
        .cte("outcome_events")
    )
    joined = cohort.outerjoin(outcomes, outcomes.c.person_id == cohort.c.person_id)
    columns: list[Any] = []
    for index, feature in enumerate(spec.features):
        if feature.kind == "age":
            columns.append(cohort.c.age.label(feature.name))
        elif feature.kind == "sex":
            levels = [(cohort.c.gender_concept_id == c, literal(v)) for c, v in SEX_LEVELS.items()]
            columns.append(case(*levels, else_=null()).label(feature.name))
        else:
            values = _feature_cte(feature, index, cohort, tables)
            joined = joined.outerjoin(values, values.c.person_id == cohort.c.person_id)
            if feature.kind == "measurement":
                columns.append(values.c.value.label(feature.name))
            else:
                present = case((values.c.person_id.is_not(None), 1), else_=0)
                columns.append(cast(present, Integer).label(feature.name))
    had_outcome = outcomes.c.person_id.is_not(None)
    columns.append(cohort.c.index_date.label(spec.index_date))
    columns.append(cast(case((had_outcome, 1), else_=0), Integer).label(outcome.name))
    query = select(*columns).select_from(joined)
    if outcome.censoring == "exclude":
        followed = cohort.c.observation_end >= _days(cohort.c.index_date, outcome.end_day)
        query = query.where(or_(had_outcome, followed))
    return query.order_by(cohort.c.person_id)


def unit_query(spec: OmopSpec, tables: dict[str, Table]) -> Select | None:
    """Measurements a feature would use but whose unit it does not accept.

    Rows: feature index, unit_concept_id (None: no unit), count; None when the
    definition has no measurement feature.
    """
    cohort = cohort_cte(spec, tables)
    parts = []
    for index, feature in enumerate(spec.features):
        if feature.kind != "measurement":
            continue
        events, conditions = _events_in_window(
            "measurement",
            feature.concepts,
            feature.descendants,
            (feature.start_day, feature.end_day),
            cohort,
            tables,
        )
        unit = events.c.unit_concept_id
        parts.append(
            select(literal(index, Integer).label("feature"), unit, func.count().label("rows"))
            .select_from(events.join(cohort, conditions[0]))
            .where(
                *conditions[1:],
                events.c.value_as_number.is_not(None),
                or_(unit.is_(None), unit.not_in(list(feature.units))),
            )
            .group_by(unit)
        )
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else union_all(*parts)  # type: ignore[return-value]


def concept_set_rows_query(spec: OmopSpec, tables: dict[str, Table]) -> Select:
    """One row: for each concept set, whether any event of it exists at the site."""
    checks = []
    for index, concept_set in enumerate(concept_sets(spec)):
        table, concept, _ = EVENTS[concept_set.domain]
        events = tables[table]
        condition = in_set(events.c[concept], concept_set.concepts, concept_set.descendants, tables)
        checks.append(exists().where(condition).label(f"set_{index}"))
    return select(*checks)


def known_concepts_query(concepts: Sequence[int], tables: dict[str, Table]) -> Select:
    """The ids among ``concepts`` that the vocabulary's CONCEPT table holds."""
    concept = tables["concept"]
    return select(concept.c.concept_id, concept.c.concept_name).where(
        concept.c.concept_id.in_(list(concepts))
    )


def entry_persons_query(spec: OmopSpec, tables: dict[str, Table]) -> Select:
    """How many persons have an entry event at all (to explain an empty cohort)."""
    table, concept, _ = EVENTS[spec.cohort.entry_domain]
    events = tables[table]
    condition = in_set(
        events.c[concept], spec.cohort.entry_concepts, spec.cohort.descendants, tables
    )
    return select(func.count(func.distinct(events.c.person_id))).where(condition)


def compiled_sql(query: Select, dialect: Any) -> str:
    """The query's SQL text for ``dialect``, its concept ids and windows written in.

    What the site ledger's SQL hash covers: the exact statement the site's
    database ran.
    """
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
