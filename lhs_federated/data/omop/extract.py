"""One site's study table extracted from its OMOP database, after every check.

Before the table is built, the site's database must hold every table and
column the study reads, every concept the study names, and at least one event
of each concept set (a set that matches nothing at a site is a mapping gap,
not a population without the condition); measurements in the window must be
in an accepted unit. Each failure is a :class:`~lhs_federated.errors.DataError`
naming the site and the study's key. Nothing is written here: the caller
decides where the table goes (:mod:`.snapshot`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from lhs_federated.data.omop.connection import Database, check_tables
from lhs_federated.data.omop.definition import OmopSpec
from lhs_federated.data.omop.query import (
    cdm_tables,
    compiled_sql,
    concept_set_rows_query,
    concept_sets,
    entry_persons_query,
    extraction_query,
    known_concepts_query,
    needed_columns,
    unit_query,
)
from lhs_federated.errors import DataError


@dataclass(frozen=True)
class Extraction:
    """A site's extracted table and the statement that built it.

    Attributes
    ----------
    table : pandas.DataFrame
        The features, the index date (ISO text) and the outcome, one row per person.
    sql : str
        The statement the database ran, its parameters written in.
    sql_hash : str
        SHA-256 of ``sql`` (hex).
    """

    table: pd.DataFrame
    sql: str
    sql_hash: str


def extract(spec: OmopSpec, database: Database) -> Extraction:
    """Build ``spec``'s table inside ``database`` and fetch it.

    Raises
    ------
    DataError
        If the database cannot be reached, lacks a CDM table or column, does
        not know a concept, has no event of a concept set, holds measurements
        in another unit, or the cohort is empty; naming the site and the key.
    """
    engine = database.open()
    try:
        check_tables(engine, database, needed_columns(spec))
        tables = cdm_tables(database.schemas)
        with engine.connect() as connection:
            try:
                return _extract(spec, database, connection, tables, engine)
            except SQLAlchemyError as error:
                raise DataError(
                    f"site {database.site!r}: the extraction failed in the {database.where}: "
                    f"{database.reason(error)}"
                ) from None
    finally:
        engine.dispose()


def _extract(
    spec: OmopSpec, database: Database, connection: Connection, tables: dict, engine: Engine
) -> Extraction:
    site = database.site
    sets = concept_sets(spec)
    units = sorted({u for f in spec.features for u in f.units})
    wanted = sorted({c for s in sets for c in s.concepts} | set(units))
    known = dict(connection.execute(known_concepts_query(wanted, tables)).all())
    unknown = [
        f"{s.what}: {', '.join(str(c) for c in s.concepts if c not in known)}"
        for s in sets
        if any(c not in known for c in s.concepts)
    ]
    unknown += [
        f"feature {f.name!r} units: {', '.join(str(u) for u in f.units if u not in known)}"
        for f in spec.features
        if any(u not in known for u in f.units)
    ]
    if unknown:
        raise DataError(
            f"site {site!r}: concept ids not in the vocabulary's CONCEPT table of the "
            f"{database.where}: {'; '.join(unknown)}. Check the ids (standard concepts) or load "
            "the vocabulary."
        )
    found = connection.execute(concept_set_rows_query(spec, tables)).one()
    empty = [s for s, present in zip(sets, found, strict=True) if not present]
    if empty:
        raise DataError(
            f"site {site!r}: no event of "
            + "; ".join(
                f"{s.what} ({s.domain}: {', '.join(map(str, s.concepts))}"
                f"{' and descendants' if s.descendants else ''})"
                for s in empty
            )
            + f" exists in the {database.where}: the site's ETL may map these events to other "
            "concepts; the study cannot use the site as it stands."
        )
    check = unit_query(spec, tables)
    if check is not None:
        wrong = connection.execute(check).all()
        if wrong:
            details = "; ".join(
                f"feature {spec.features[index].name!r} has {rows} measurement(s) in unit "
                f"{_unit(unit, known, connection, tables)}, not in units "
                f"{list(spec.features[index].units)}"
                for index, unit, rows in wrong
            )
            raise DataError(
                f"site {site!r}: measurements in an unexpected unit: {details}. Convert them "
                "in the site's ETL, or add the unit to the feature's units if its values are "
                "comparable."
            )
    query = extraction_query(spec, tables)
    result = connection.execute(query)
    table = pd.DataFrame(result.all(), columns=list(result.keys()))
    if table.empty:
        entered = connection.execute(entry_persons_query(spec, tables)).scalar_one()
        cohort = spec.cohort
        raise DataError(
            f"site {site!r}: the cohort is empty: {entered} person(s) have an entry event "
            f"({cohort.entry_domain} {list(cohort.entry_concepts)}), none of them with "
            f"prior_observation_days = {cohort.prior_observation_days}, age "
            f"{cohort.min_age if cohort.min_age is not None else 0}.."
            f"{cohort.max_age if cohort.max_age is not None else 'any'}, index dates "
            f"{cohort.index_from or 'any'}..{cohort.index_to or 'any'} and the outcome's "
            f"follow-up ({spec.outcome.end_day} days, censoring = "
            f"{spec.outcome.censoring!r})."
        )
    sql = compiled_sql(query, engine.dialect)
    return Extraction(_typed(table, spec), sql, hashlib.sha256(sql.encode("utf-8")).hexdigest())


def _unit(unit: int | None, known: dict, connection: Connection, tables: dict) -> str:
    if unit is None:
        return "none (NULL)"
    name = known.get(unit)
    if name is None:
        rows = connection.execute(known_concepts_query([unit], tables)).all()
        name = rows[0][1] if rows else "not in the vocabulary"
    return f"{unit} ({name})"


def _typed(table: pd.DataFrame, spec: OmopSpec) -> pd.DataFrame:
    """The fetched rows with the same dtypes whatever the database's driver returned."""
    typed = {}
    for feature in spec.features:
        column = table[feature.name]
        if feature.kind == "sex":
            typed[feature.name] = column.astype("object").where(column.notna(), None)
        elif feature.kind == "measurement":
            typed[feature.name] = pd.to_numeric(column, errors="raise").astype("float64")
        else:
            typed[feature.name] = column.astype("int64")
    dates = pd.to_datetime(table[spec.index_date])
    typed[spec.index_date] = dates.dt.strftime("%Y-%m-%d")
    typed[spec.outcome.name] = table[spec.outcome.name].astype("int64")
    return pd.DataFrame(typed)
