"""Extracting a study table from OMOP CDM databases: the query builder, SQL by hand, pandas.

The synthetic cohort is written as one OMOP CDM database (lhs_federated.data.omop_writer) of
10k, 30k and 100k persons (quarters of 10k persons from 2020Q1), in DuckDB and in PostgreSQL (a
throwaway cluster this script starts on a free port and stops). The study table has 20 features
(age, sex, the latest and the mean of four measurements, triglycerides, smoking, three
diagnoses and five antihypertensive concept sets) and a ten-year outcome. Three ways build it:

- builder: ``lhs_federated.data.omop.extract.extract`` (every check, then the one SQLAlchemy
  Core query); ``query`` is that query alone, the same statement and fetch as the hand SQL;
- hand SQL: the same table written by hand as one SQL statement (the same text for both
  databases), fetched the same way;
- pandas: the tables the extraction reads, fetched whole, then filtered, joined and aggregated
  in pandas (what a site without an in-database extraction would do).

Time: the full cohort of the 100k-person database, in one process, the SQL methods taking turns
(best of ``--repeat`` turns, so a busy moment of a shared machine falls on each; pandas once).
Memory: the cohort of 2020Q1 only (about 10k rows whatever the database's size), so a method
whose memory grows with the database shows it; each measurement runs in a fresh process and
reports the peak of Python's allocations during the extraction (tracemalloc) and the process's
peak resident memory (VmHWM, which counts DuckDB's own memory too; the process's imports alone
hold about 550 MiB). The tables every method returns are checked equal. Target: the builder's
query within 1.5x of the hand SQL; memory flat as the database grows.
Writes benchmarks/results/omop_extraction.json.

    python benchmarks/omop_extraction.py [--sizes 10000 30000 100000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from lhs_federated import load_study
from lhs_federated.data.omop.connection import Database
from lhs_federated.data.omop.definition import OmopSpec
from lhs_federated.data.omop.extract import extract
from lhs_federated.data.omop.query import Schemas, cdm_tables, extraction_query
from lhs_federated.data.omop_writer import ANTIHYPERTENSIVES, write_omop_sites
from lhs_federated.data.synthetic import SyntheticCohort

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "simulations" / "omop_cardio.toml"
RESULTS = ROOT / "benchmarks" / "results" / "omop_extraction.json"
PERSONS_PER_QUARTER = 10_000
PG_BIN = Path("/usr/lib/postgresql/15/bin")
METHODS = ("builder", "query", "hand-sql", "pandas")


def _measurement(name: str, concept: int, unit: int, statistic: str = "latest") -> dict:
    return {"name": name, "kind": "measurement", "concepts": [concept], "units": [unit],
            "statistic": statistic, "start_day": -365, "end_day": 0}  # fmt: skip


def _presence(name: str, kind: str, concepts: list[int], start_day: int = -365) -> dict:
    return {"name": name, "kind": kind, "concepts": concepts, "start_day": start_day, "end_day": 0}


#: The 20 features: omop_cardio's nine, means of its measurements and more concept sets.
FEATURES = [
    {"name": "age", "kind": "age"},
    {"name": "sex", "kind": "sex"},
    *(
        _measurement(f"{name}{suffix}", concept, unit, statistic)
        for name, concept, unit in (
            ("systolic_bp", 3004249, 8876),
            ("total_cholesterol", 3027114, 8840),
            ("hdl_cholesterol", 3007070, 8840),
            ("bmi", 3038553, 9531),
        )
        for suffix, statistic in (("", "latest"), ("_mean", "mean"))
    ),
    _measurement("triglycerides", 3022192, 8840),
    _presence("smoker", "observation", [42709996]),
    _presence("diabetes", "condition", [201826], -3650),
    _presence("hypertension", "condition", [320128], -3650),
    _presence("hyperlipidemia", "condition", [432867], -3650),
    _presence("bp_treated", "drug", list(ANTIHYPERTENSIVES)),
    *(
        _presence(name, "drug", [ingredient])
        for name, ingredient in zip(
            ("lisinopril", "amlodipine", "hydrochlorothiazide", "losartan"),
            ANTIHYPERTENSIVES,
            strict=True,
        )
    ),
]
FIRST_QUARTER_END = "2020-03-31"


def spec(*, first_quarter: bool) -> OmopSpec:
    """omop_cardio's cohort and outcome with the 20 features (2020Q1 only if asked)."""
    overrides: dict = {"data.omop.features": FEATURES, "data.omop.databases": {}}
    if first_quarter:
        overrides["data.omop.cohort.index_to"] = FIRST_QUARTER_END
    omop = load_study(STUDY).with_overrides(overrides).data.omop
    if omop is None or len(omop.features) != 20:
        raise RuntimeError(f"{STUDY} did not give the 20-feature OMOP definition")
    return omop


def _in_set(column: str, concepts: list[int]) -> str:
    ids = ", ".join(map(str, concepts))
    return (
        f"({column} IN ({ids}) OR {column} IN "
        "(SELECT descendant_concept_id FROM concept_ancestor "
        f"WHERE ancestor_concept_id IN ({ids})))"
    )


_EVENTS = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
}


def hand_sql(omop: OmopSpec) -> str:
    """The study table as one SQL statement written by hand (DuckDB and PostgreSQL alike)."""
    cohort, outcome = omop.cohort, omop.outcome
    index_to = f"AND v.visit_start_date <= DATE '{cohort.index_to}'" if cohort.index_to else ""
    ctes = [
        f"""entry AS (
  SELECT v.person_id, v.visit_start_date AS index_date,
         op.observation_period_end_date AS observation_end,
         ROW_NUMBER() OVER (PARTITION BY v.person_id ORDER BY v.visit_start_date) AS entry_rank
  FROM visit_occurrence v JOIN observation_period op ON op.person_id = v.person_id
  WHERE {_in_set("v.visit_concept_id", list(cohort.entry_concepts))}
    AND op.observation_period_start_date + {cohort.prior_observation_days} <= v.visit_start_date
    AND v.visit_start_date <= op.observation_period_end_date {index_to})""",
        f"""cohort AS (
  SELECT e.person_id, e.index_date, e.observation_end, p.gender_concept_id,
         CAST(EXTRACT(YEAR FROM e.index_date) - p.year_of_birth AS INTEGER) AS age
  FROM entry e JOIN person p ON p.person_id = e.person_id
  WHERE e.entry_rank = 1
    AND EXTRACT(YEAR FROM e.index_date) - p.year_of_birth >= {cohort.min_age})""",
        f"""outcome AS (
  SELECT DISTINCT c.person_id FROM condition_occurrence o JOIN cohort c ON o.person_id = c.person_id
  WHERE {_in_set("o.condition_concept_id", list(outcome.concepts))}
    AND o.condition_start_date BETWEEN c.index_date + {outcome.start_day}
                                   AND c.index_date + {outcome.end_day})""",
    ]
    selected, joins = ["c.age", "CASE c.gender_concept_id WHEN 8532 THEN 'female' "
                       "WHEN 8507 THEN 'male' END AS sex"], []  # fmt: skip
    for k, feature in enumerate(omop.features[2:]):
        table, concept, date = _EVENTS[feature.kind]
        where = (
            f"{_in_set(f'e.{concept}', list(feature.concepts))} AND e.{date} "
            f"BETWEEN c.index_date + {feature.start_day} AND c.index_date + {feature.end_day}"
        )
        source = f"FROM {table} e JOIN cohort c ON e.person_id = c.person_id WHERE {where}"
        if feature.kind != "measurement":
            ctes.append(f"f{k} AS (SELECT DISTINCT c.person_id {source})")
            selected.append(f"CASE WHEN f{k}.person_id IS NULL THEN 0 ELSE 1 END AS {feature.name}")
        else:
            units = ", ".join(map(str, feature.units))
            source += f" AND e.value_as_number IS NOT NULL AND e.unit_concept_id IN ({units})"
            value = "CAST(e.value_as_number AS DOUBLE PRECISION)"
            if feature.statistic == "mean":
                ctes.append(
                    f"f{k} AS (SELECT c.person_id, AVG({value}) AS value {source} "
                    "GROUP BY c.person_id)"
                )
            else:
                ctes.append(
                    f"f{k} AS (SELECT person_id, value FROM (SELECT c.person_id, {value} AS value, "
                    "ROW_NUMBER() OVER (PARTITION BY c.person_id ORDER BY e.measurement_date DESC, "
                    f"e.measurement_id DESC) AS value_rank {source}) ranked WHERE value_rank = 1)"
                )
            selected.append(f"f{k}.value AS {feature.name}")
        joins.append(f"LEFT JOIN f{k} ON f{k}.person_id = c.person_id")
    selected += [
        f"c.index_date AS {omop.index_date}",
        f"CASE WHEN o.person_id IS NULL THEN 0 ELSE 1 END AS {outcome.name}",
    ]
    return (
        "WITH " + ",\n".join(ctes) + "\nSELECT " + ",\n  ".join(selected)
        + "\nFROM cohort c LEFT JOIN outcome o ON o.person_id = c.person_id\n"
        + "\n".join(joins)
        + f"\nWHERE o.person_id IS NOT NULL OR c.observation_end >= c.index_date + "
        f"{outcome.end_day}\nORDER BY c.person_id"
    )  # fmt: skip


def _fetch(connection: sa.Connection, statement: sa.Executable) -> pd.DataFrame:
    result = connection.execute(statement)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


def pandas_table(omop: OmopSpec, connection: sa.Connection) -> pd.DataFrame:
    """The study table built in pandas from the CDM tables, fetched whole."""
    read = {
        "person": "person_id, gender_concept_id, year_of_birth",
        "observation_period": "person_id, observation_period_start_date, "
        "observation_period_end_date",
        "visit_occurrence": "person_id, visit_concept_id, visit_start_date",
        "condition_occurrence": "person_id, condition_concept_id, condition_start_date",
        "drug_exposure": "person_id, drug_concept_id, drug_exposure_start_date",
        "observation": "person_id, observation_concept_id, observation_date",
        "measurement": "measurement_id, person_id, measurement_concept_id, measurement_date, "
        "value_as_number, unit_concept_id",
        "concept_ancestor": "ancestor_concept_id, descendant_concept_id",
    }
    tables = {
        name: _fetch(connection, sa.text(f"SELECT {columns} FROM {name}"))
        for name, columns in read.items()
    }
    for frame in tables.values():
        for column in frame.columns:
            if column.endswith("_date"):
                frame[column] = pd.to_datetime(frame[column])
    ancestry = tables["concept_ancestor"]

    def members(concepts: tuple[int, ...]) -> list[int]:
        below = ancestry.loc[
            ancestry["ancestor_concept_id"].isin(concepts), "descendant_concept_id"
        ]
        return sorted(set(concepts) | set(below))

    cohort_spec, outcome = omop.cohort, omop.outcome
    visits, periods = tables["visit_occurrence"], tables["observation_period"]
    entry = visits[visits["visit_concept_id"].isin(members(cohort_spec.entry_concepts))].merge(
        periods, on="person_id"
    )
    days = pd.to_timedelta
    entry = entry[
        (entry["observation_period_start_date"] + days(cohort_spec.prior_observation_days, "D")
         <= entry["visit_start_date"])
        & (entry["visit_start_date"] <= entry["observation_period_end_date"])
    ]  # fmt: skip
    if cohort_spec.index_to:
        entry = entry[entry["visit_start_date"] <= pd.Timestamp(cohort_spec.index_to)]
    entry = entry.sort_values(["person_id", "visit_start_date"]).drop_duplicates("person_id")
    cohort = entry.merge(tables["person"], on="person_id").rename(
        columns={"visit_start_date": "index_date"}
    )
    cohort["age"] = cohort["index_date"].dt.year - cohort["year_of_birth"]
    cohort = cohort[cohort["age"] >= cohort_spec.min_age].set_index("person_id").sort_index()

    def in_window(kind: str, concepts: tuple[int, ...], start: int, end: int) -> pd.DataFrame:
        table, concept, date = _EVENTS[kind]
        events = tables[table]
        events = events[events[concept].isin(members(concepts))].merge(
            cohort[["index_date"]], left_on="person_id", right_index=True
        )
        offset = (events[date] - events["index_date"]).dt.days
        return events[(offset >= start) & (offset <= end)]

    out = pd.DataFrame(index=cohort.index)
    out["age"] = cohort["age"]
    out["sex"] = cohort["gender_concept_id"].map({8532: "female", 8507: "male"})
    for feature in omop.features[2:]:
        events = in_window(feature.kind, feature.concepts, feature.start_day, feature.end_day)
        if feature.kind != "measurement":
            out[feature.name] = out.index.isin(events["person_id"]).astype(int)
            continue
        events = events[events["value_as_number"].notna()
                        & events["unit_concept_id"].isin(feature.units)]  # fmt: skip
        values = events["value_as_number"].astype(float)
        if feature.statistic == "mean":
            out[feature.name] = values.groupby(events["person_id"]).mean()
        else:
            ordered = events.assign(value=values).sort_values(
                ["person_id", "measurement_date", "measurement_id"]
            )
            out[feature.name] = ordered.groupby("person_id")["value"].last()
    cases = in_window("condition", outcome.concepts, outcome.start_day, outcome.end_day)
    out[omop.index_date] = cohort["index_date"]
    out[outcome.name] = out.index.isin(cases["person_id"]).astype(int)
    followed = cohort["observation_period_end_date"] >= cohort["index_date"] + days(
        outcome.end_day, "D"
    )
    return out[(out[outcome.name] == 1) | followed].reset_index(drop=True)


def run_method(method: str, url: str, omop: OmopSpec) -> pd.DataFrame:
    """The study table by one method."""
    if method == "builder":
        return extract(omop, Database(url, Schemas(), "benchmark", "--url")).table
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            if method == "query":
                return _fetch(connection, extraction_query(omop, cdm_tables(Schemas())))
            if method == "hand-sql":
                return _fetch(connection, sa.text(hand_sql(omop)))
            return pandas_table(omop, connection)
    finally:
        engine.dispose()


def _normalised(table: pd.DataFrame, omop: OmopSpec) -> pd.DataFrame:
    table = table.copy()
    table[omop.index_date] = pd.to_datetime(table[omop.index_date]).dt.strftime("%Y-%m-%d")
    for feature in omop.features:
        if feature.kind == "measurement":
            table[feature.name] = table[feature.name].astype(float)
        elif feature.kind != "sex":
            table[feature.name] = table[feature.name].astype(int)
    return table.reset_index(drop=True)


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _digest(table: pd.DataFrame, omop: OmopSpec) -> int:
    return int(pd.util.hash_pandas_object(_normalised(table, omop), index=False).sum())


def time_child(url: str, repeat: int) -> dict:
    """Seconds of every method on the full cohort, the SQL ones interleaved.

    Each SQL method runs once to warm up, then the three take turns ``repeat``
    times (so a busy moment of a shared machine falls on all of them); pandas
    runs once, last.
    """
    omop = spec(first_quarter=False)
    sql_methods = [m for m in METHODS if m != "pandas"]
    for method in sql_methods:
        run_method(method, url, omop)
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    tables = {}
    for method in [*sql_methods * repeat, "pandas"]:
        start = time.perf_counter()
        tables[method] = run_method(method, url, omop)
        seconds[method].append(time.perf_counter() - start)
    return {
        m: {
            "seconds": min(seconds[m]),
            "median_seconds": float(np.median(seconds[m])),
            "rows": len(tables[m]),
            "table_digest": _digest(tables[m], omop),
        }
        for m in METHODS
    }


def memory_child(method: str, url: str) -> dict:
    """One method on the 2020Q1 cohort in this (fresh) process: its peak memory."""
    omop = spec(first_quarter=True)
    if method != "pandas":  # pandas reads whole tables: warming it up would double its peak
        run_method(method, url, omop)  # imports, the database's caches
    before = _peak_rss_mib()
    tracemalloc.start()
    table = run_method(method, url, omop)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rows": len(table),
        "python_peak_mib": peak / 2**20,
        "rss_peak_mib": _peak_rss_mib(),
        "rss_before_mib": before,
        "table_digest": _digest(table, omop),
    }


def in_child(*args: str) -> dict:
    """A child mode of this script in a fresh process (its memory is its own)."""
    command = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 (run as the postgres user); its base URL."""
    folder = Path(tempfile.mkdtemp(prefix="omop-bench-pg-"))
    shutil.chown(folder, "postgres")
    port = _free_port()

    def as_postgres(command: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/bash", "-c", command], check=True,
                       capture_output=True)  # fmt: skip

    as_postgres(f"{PG_BIN}/initdb -D {folder}/data -A trust -U postgres")
    as_postgres(
        f"{PG_BIN}/pg_ctl -D {folder}/data -o '-p {port} -k {folder} "
        f"-c listen_addresses=127.0.0.1' -l {folder}/log -w start"
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        as_postgres(f"{PG_BIN}/pg_ctl -D {folder}/data -m fast stop")
        shutil.rmtree(folder, ignore_errors=True)


def write_databases(sizes: list[int], folder: Path, pg_base: str | None) -> dict[str, dict]:
    """One database per size and engine; seconds taken to write each."""
    databases = {}
    for size in sizes:
        cohort = SyntheticCohort(sites=1, rows_per_site=PERSONS_PER_QUARTER, size_imbalance=0.0,
                                 periods=size // PERSONS_PER_QUARTER)  # fmt: skip
        targets = {"duckdb": f"duckdb:///{folder / f'omop-{size}.duckdb'}"}
        if pg_base is not None:
            admin = sa.create_engine(f"{pg_base}/postgres", isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE omop_{size}"))
            admin.dispose()
            targets["postgresql"] = f"{pg_base}/omop_{size}"
        for engine, url in targets.items():
            start = time.perf_counter()
            (site,) = write_omop_sites(cohort, seed=42, urls={"site-01": url})
            databases[f"{engine}-{size}"] = {
                "engine": engine, "persons": site.persons, "url": url,
                "write_seconds": round(time.perf_counter() - start, 2),
                "cdm_rows": sum(site.rows.values()),
            }  # fmt: skip
    return databases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        figures = time_child(rest[0], int(rest[1])) if mode == "time" else memory_child(*rest)
        print(json.dumps(figures))
        return
    if any(size % PERSONS_PER_QUARTER for size in args.sizes):
        parser.error(f"sizes are multiples of {PERSONS_PER_QUARTER} (quarters of that many)")
    largest = max(args.sizes)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="omop-bench-")))
        pg_base = None if args.no_postgres else stack.enter_context(postgres_cluster())
        databases = write_databases(args.sizes, folder, pg_base)
        figures = {"databases": databases, "time": {}, "memory": {}}
        for key, database in databases.items():
            engine, url = database["engine"], database["url"]
            if database["persons"] == largest:
                figures["time"][engine] = in_child("time", url, str(args.repeat))
            figures["memory"][key] = {m: in_child("memory", m, url) for m in METHODS}
    _print(figures, largest)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def _print(figures: dict, largest: int) -> None:
    print("databases written (omop_writer):")
    for key, database in figures["databases"].items():
        print(f"  {key:18} {database['persons']:>7} persons {database['cdm_rows']:>9} CDM rows "
              f"{database['write_seconds']:>7.1f} s")  # fmt: skip
    print(f"\nextraction of the full cohort, {largest} persons x 20 features (best of runs):")
    print(f"  {'engine':11} {'builder':>8} {'query':>8} {'hand SQL':>9} {'pandas':>8} "
          f"{'query/hand':>11} {'builder/hand':>13} {'pandas/query':>13} {'rows':>7}")  # fmt: skip
    for engine, by in figures["time"].items():
        digests = {m: by[m]["table_digest"] for m in METHODS}
        same = "same table" if len(set(digests.values())) == 1 else f"TABLES DIFFER {digests}"
        print(f"  {engine:11} {by['builder']['seconds']:>8.2f} {by['query']['seconds']:>8.2f} "
              f"{by['hand-sql']['seconds']:>9.2f} {by['pandas']['seconds']:>8.2f} "
              f"{by['query']['seconds'] / by['hand-sql']['seconds']:>11.2f} "
              f"{by['builder']['seconds'] / by['hand-sql']['seconds']:>13.2f} "
              f"{by['pandas']['seconds'] / by['query']['seconds']:>13.1f} "
              f"{by['query']['rows']:>7}  {same}")  # fmt: skip
    print("\npeak memory, cohort of 2020Q1 (same rows at every size), MiB: "
          "Python allocations (tracemalloc) / process peak RSS")  # fmt: skip
    print(f"  {'database':18} {'rows':>6} " + " ".join(f"{m:>17}" for m in METHODS))
    for key, by in figures["memory"].items():
        cells = " ".join(
            f"{by[m]['python_peak_mib']:>8.1f} /{by[m]['rss_peak_mib']:>7.0f}" for m in METHODS
        )
        same = len({by[m]["table_digest"] for m in METHODS}) == 1
        print(f"  {key:18} {by['builder']['rows']:>6} {cells}{'' if same else '  TABLES DIFFER'}")


if __name__ == "__main__":
    main()
