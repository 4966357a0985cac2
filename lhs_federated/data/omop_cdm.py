"""OMOP CDM v5.4 tables (SQLAlchemy Core): their definitions, and a bulk load into a new database.

The columns, types and NOT NULL constraints are those of the OHDSI v5.4 DDL
(``value_as_number`` is NUMERIC, as in a real warehouse), so a database
written from them is a CDM database an OHDSI tool would accept, not a
simplified look-alike. Primary keys are declared; the OHDSI index script's
indexes on person and concept columns are created after a bulk load
(:func:`create_indexes`), as a warehouse's ETL does.

:func:`write_cdm` creates the tables and loads rows built as arrays in bulk
(DuckDB from a registered frame, PostgreSQL by ``COPY``, any other database by
one ``executemany``): a DuckDB file is written beside its name and moved into
place, a server database in one transaction, so a failed write leaves nothing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from lhs_federated.errors import ConfigError

#: The clinical tables, with each column as ``name type`` (``!``: NOT NULL, ``*``: key).
_CLINICAL = {
    "person": """person_id int*! gender_concept_id int! year_of_birth int! month_of_birth int
        day_of_birth int birth_datetime ts race_concept_id int! ethnicity_concept_id int!
        location_id int provider_id int care_site_id int person_source_value str
        gender_source_value str gender_source_concept_id int race_source_value str
        race_source_concept_id int ethnicity_source_value str ethnicity_source_concept_id int""",
    "observation_period": """observation_period_id int*! person_id int!
        observation_period_start_date date! observation_period_end_date date!
        period_type_concept_id int!""",
    "visit_occurrence": """visit_occurrence_id int*! person_id int! visit_concept_id int!
        visit_start_date date! visit_start_datetime ts visit_end_date date!
        visit_end_datetime ts visit_type_concept_id int! provider_id int care_site_id int
        visit_source_value str visit_source_concept_id int admitted_from_concept_id int
        admitted_from_source_value str discharged_to_concept_id int
        discharged_to_source_value str preceding_visit_occurrence_id int""",
    "condition_occurrence": """condition_occurrence_id int*! person_id int!
        condition_concept_id int! condition_start_date date! condition_start_datetime ts
        condition_end_date date condition_end_datetime ts condition_type_concept_id int!
        condition_status_concept_id int stop_reason str provider_id int
        visit_occurrence_id int visit_detail_id int condition_source_value str
        condition_source_concept_id int condition_status_source_value str""",
    "drug_exposure": """drug_exposure_id int*! person_id int! drug_concept_id int!
        drug_exposure_start_date date! drug_exposure_start_datetime ts
        drug_exposure_end_date date! drug_exposure_end_datetime ts verbatim_end_date date
        drug_type_concept_id int! stop_reason str refills int quantity num days_supply int
        sig text route_concept_id int lot_number str provider_id int visit_occurrence_id int
        visit_detail_id int drug_source_value str drug_source_concept_id int
        route_source_value str dose_unit_source_value str""",
    "procedure_occurrence": """procedure_occurrence_id int*! person_id int!
        procedure_concept_id int! procedure_date date! procedure_datetime ts
        procedure_end_date date procedure_end_datetime ts procedure_type_concept_id int!
        modifier_concept_id int quantity int provider_id int visit_occurrence_id int
        visit_detail_id int procedure_source_value str procedure_source_concept_id int
        modifier_source_value str""",
    "measurement": """measurement_id int*! person_id int! measurement_concept_id int!
        measurement_date date! measurement_datetime ts measurement_time str
        measurement_type_concept_id int! operator_concept_id int value_as_number num
        value_as_concept_id int unit_concept_id int range_low num range_high num
        provider_id int visit_occurrence_id int visit_detail_id int
        measurement_source_value str measurement_source_concept_id int unit_source_value str
        unit_source_concept_id int value_source_value str measurement_event_id bigint
        meas_event_field_concept_id int""",
    "observation": """observation_id int*! person_id int! observation_concept_id int!
        observation_date date! observation_datetime ts observation_type_concept_id int!
        value_as_number num value_as_string str value_as_concept_id int
        qualifier_concept_id int unit_concept_id int provider_id int visit_occurrence_id int
        visit_detail_id int observation_source_value str observation_source_concept_id int
        unit_source_value str qualifier_source_value str value_source_value str
        observation_event_id bigint obs_event_field_concept_id int""",
    "death": """person_id int*! death_date date! death_datetime ts death_type_concept_id int
        cause_concept_id int cause_source_value str cause_source_concept_id int""",
}
_VOCABULARY = {
    "concept": """concept_id int*! concept_name longstr! domain_id str! vocabulary_id str!
        concept_class_id str! standard_concept str concept_code str! valid_start_date date!
        valid_end_date date! invalid_reason str""",
    "concept_ancestor": """ancestor_concept_id int*! descendant_concept_id int*!
        min_levels_of_separation int! max_levels_of_separation int!""",
}
CDM_TABLES = tuple(_CLINICAL)
VOCABULARY_TABLES = tuple(_VOCABULARY)
_TYPES = {
    "int": sa.Integer,
    "bigint": sa.BigInteger,
    "num": sa.Numeric,
    "date": sa.Date,
    "ts": sa.DateTime,
    "str": lambda: sa.String(50),
    "longstr": lambda: sa.String(255),
    "text": sa.Text,
}
#: Indexed columns per table (the OHDSI v5.4 index script's person and concept indexes).
_INDEXED = {
    "person": ("gender_concept_id",),
    "observation_period": ("person_id",),
    "visit_occurrence": ("person_id", "visit_concept_id"),
    "condition_occurrence": ("person_id", "condition_concept_id"),
    "drug_exposure": ("person_id", "drug_concept_id"),
    "procedure_occurrence": ("person_id", "procedure_concept_id"),
    "measurement": ("person_id", "measurement_concept_id"),
    "observation": ("person_id", "observation_concept_id"),
    "death": (),
    "concept": (),
    "concept_ancestor": ("descendant_concept_id",),
}


def _columns(spec: str) -> list[sa.Column]:
    words = spec.split()
    columns = []
    for name, kind in zip(words[::2], words[1::2], strict=True):
        base = kind.rstrip("*!")
        columns.append(
            sa.Column(
                name,
                _TYPES[base](),
                nullable="!" not in kind,
                primary_key="*" in kind,
                autoincrement=False,  # ids come from the source records, as in an ETL
            )
        )
    return columns


def cdm_metadata(
    cdm_schema: str | None = None, vocabulary_schema: str | None = None
) -> sa.MetaData:
    """The CDM and vocabulary tables in their schemas (the vocabulary's defaults to the CDM's)."""
    metadata = sa.MetaData()
    vocabulary_schema = vocabulary_schema or cdm_schema
    for tables, schema in ((_CLINICAL, cdm_schema), (_VOCABULARY, vocabulary_schema)):
        for name, spec in tables.items():
            sa.Table(name, metadata, *_columns(spec), schema=schema)
    return metadata


def create_indexes(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """Create the person and concept indexes of every table (after its rows are loaded).

    DuckDB gets none: it scans columns and discourages indexes for analytic
    queries, and each slows its bulk loads.
    """
    if connection.dialect.name == "duckdb":
        return
    for table in metadata.tables.values():
        for column in _INDEXED[table.name]:
            sa.Index(f"idx_{table.name}_{column}", table.c[column]).create(connection)


def write_cdm(
    url: str,
    records: dict[str, pd.DataFrame],
    *,
    cdm_schema: str | None = None,
    vocabulary_schema: str | None = None,
) -> dict[str, int]:
    """Create the CDM and vocabulary tables at ``url`` and load ``records`` into them.

    A DuckDB file is written under a temporary name and moved into place; any
    other database is written in one transaction. Either way a failure
    leaves nothing behind.

    Returns
    -------
    dict of str to int
        Rows loaded per table.

    Raises
    ------
    ConfigError
        If the DuckDB file exists or the database already holds a CDM table.
    """
    parsed = sa.make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "duckdb" or database in ("", ":memory:"):
        return _load(parsed, records, cdm_schema, vocabulary_schema)
    target = Path(database)
    if target.exists():
        raise ConfigError(
            f"{target} exists already; the OMOP writer makes new databases only (remove it or "
            "choose another folder)."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        rows = _load(parsed.set(database=str(partial)), records, cdm_schema, vocabulary_schema)
        os.replace(partial, target)
    finally:
        for leftover in (partial, partial.with_name(partial.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return rows


def _load(
    url: sa.URL,
    records: dict[str, pd.DataFrame],
    cdm_schema: str | None,
    vocabulary_schema: str | None,
) -> dict[str, int]:
    metadata = cdm_metadata(cdm_schema, vocabulary_schema)
    engine = sa.create_engine(url)
    where = url.render_as_string(hide_password=True)
    try:
        with engine.begin() as connection:
            inspector = sa.inspect(connection)
            for schema in {t.schema for t in metadata.tables.values()} - {None}:
                connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
            taken = [
                t.fullname
                for t in metadata.tables.values()
                if inspector.has_table(t.name, t.schema)
            ]
            if taken:
                raise ConfigError(
                    f"{where} already holds CDM table(s) {', '.join(taken)}; the OMOP writer "
                    "fills an empty database (or schema: set cdm_schema) only."
                )
            metadata.create_all(connection)
            rows = {}
            for table in metadata.tables.values():
                frame = records.get(table.name)
                if frame is not None and len(frame):
                    _bulk_insert(connection, table, frame)
                rows[table.name] = 0 if frame is None else len(frame)
            create_indexes(connection, metadata)
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()
    return rows


def _bulk_insert(connection: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> None:
    """Load ``frame`` into ``table`` in one statement: DuckDB reads the frame, PostgreSQL a COPY.

    Other databases get one multi-row ``executemany`` (their drivers' bulk
    path).
    """
    quote = connection.dialect.identifier_preparer
    target = quote.format_table(table)
    columns = ", ".join(quote.quote(name) for name in frame.columns)
    driver = connection.connection.driver_connection
    if connection.dialect.name == "duckdb":
        driver.register("omop_writer_rows", frame)
        try:
            driver.execute(
                f"INSERT INTO {target} ({columns}) SELECT {columns} FROM omop_writer_rows"
            )
        finally:
            driver.unregister("omop_writer_rows")
        return
    if connection.dialect.name == "postgresql":
        text = io.StringIO()
        frame.to_csv(text, index=False, header=False)
        copy = f"COPY {target} ({columns}) FROM STDIN WITH (FORMAT csv)"
        cursor = driver.cursor()
        if hasattr(cursor, "copy_expert"):  # psycopg2
            text.seek(0)
            cursor.copy_expert(copy, text)
        else:  # psycopg 3
            with cursor.copy(copy) as stream:
                stream.write(text.getvalue())
        return
    native = frame.astype(object).where(frame.notna(), None)
    connection.execute(table.insert(), native.to_dict("records"))
