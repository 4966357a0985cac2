"""The synthetic cohort as OMOP CDM databases: valid CDM tables that extract back to the cohort.

The real path: the writer makes each site's database, the study's extraction
(lhs_federated.data.omop) builds the table inside it, and the table must be the
generator's, value for value. The CDM's shape and the concept ids are checked
against the OHDSI community's Synthea27Nj export (../shared/data), which nobody
here wrote.
"""

from __future__ import annotations

import subprocess
import tomllib
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import sqlalchemy as sa
import tomli_w
from conftest import SHARED_DATA
from omop_support import throwaway_cluster

from lhs_federated import load_study, simulate
from lhs_federated.cli import main
from lhs_federated.data.omop.connection import Database
from lhs_federated.data.omop.extract import extract
from lhs_federated.data.omop.query import CDM_COLUMNS, VOCABULARY_COLUMNS, Schemas
from lhs_federated.data.omop_cdm import cdm_metadata
from lhs_federated.data.omop_writer import concept_rows, write_omop_sites
from lhs_federated.data.synthetic import OUTCOME, SyntheticCohort, generate_cohort
from lhs_federated.deploy.loopback import build_loopback
from lhs_federated.errors import ConfigError
from lhs_federated.site_config import load_site_config

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "simulations" / "omop_cardio.toml"
SYNTHEA = SHARED_DATA / "omop-synthea27nj" / "Synthea27Nj_5.4.zip"
FEATURES = [
    "age", "sex", "systolic_bp", "total_cholesterol", "hdl_cholesterol", "bmi", "smoker",
    "diabetes", "bp_treated",
]  # fmt: skip
COHORT = SyntheticCohort(sites=2, rows_per_site=300)


def omop_study(written, **overrides):
    return load_study(STUDY).with_overrides(
        {"data.omop.databases": {site.name: site.url for site in written}, **overrides}
    )


def extracted(study, site: str, url: str, schemas: Schemas | None = None) -> pd.DataFrame:
    database = Database(url, schemas or Schemas(), site, "test")
    return extract(study.data.omop, database).table


def assert_is_generators(table: pd.DataFrame, generated: pd.DataFrame) -> None:
    assert list(table.columns) == [*FEATURES, "index_date", OUTCOME]
    assert len(table) == len(generated)  # nobody censored, nobody left out
    for column in [*FEATURES, OUTCOME]:
        pd.testing.assert_series_equal(
            table[column], generated[column], check_dtype=False, check_names=False, obj=column
        )


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return write_omop_sites(COHORT, seed=42, out_dir=tmp_path_factory.mktemp("omop"))


@pytest.fixture(scope="module")
def synthea(tmp_path_factory) -> Path:
    if not SYNTHEA.is_file():
        pytest.fail(f"the Synthea27Nj OMOP export expected at {SYNTHEA} (../shared/data)")
    folder = tmp_path_factory.mktemp("synthea")
    with zipfile.ZipFile(SYNTHEA) as archive:
        for member in archive.namelist():
            if member.endswith(".csv") and not member.startswith("__MACOSX"):
                archive.extract(member, folder)
    return folder


def test_each_sites_extracted_table_is_the_generators(sites):
    study = omop_study(sites)
    generated = generate_cohort(COHORT, seed=42)
    for site in sites:
        table = extracted(study, site.name, site.url)
        assert_is_generators(table, generated[site.name])
        # One period: index dates drawn in 2020Q1, so the study's periods work.
        assert table["index_date"].between("2020-01-01", "2020-03-31").all()
        # The values the extraction must not take: earlier readings, later diagnoses.
        assert table["hdl_cholesterol"].isna().any() and table["diabetes"].sum() > 0


def test_a_dated_cohort_keeps_its_index_dates(tmp_path):
    cohort = SyntheticCohort(sites=1, rows_per_site=120, periods=3)
    written = write_omop_sites(cohort, seed=7, out_dir=tmp_path)
    (generated,) = generate_cohort(cohort, seed=7).values()
    table = extracted(omop_study(written), "site-01", written[0].url)
    assert_is_generators(table, generated)
    assert table["index_date"].tolist() == generated["index_date"].tolist()


def test_tables_have_the_columns_of_a_real_cdm_v54_export(sites, synthea):
    with duckdb.connect(sites[0].url.removeprefix("duckdb:///"), read_only=True) as db:
        for table in cdm_metadata().tables.values():
            header = (synthea / f"{table.name.upper()}.csv").read_text().splitlines()[0]
            written = [row[0] for row in db.execute(f"DESCRIBE {table.name}").fetchall()]
            assert written == header.split(","), table.name
    # The extraction reads no column the writer does not define.
    defined = {t.name: set(t.columns.keys()) for t in cdm_metadata().tables.values()}
    for name, columns in {**CDM_COLUMNS, **VOCABULARY_COLUMNS}.items():
        assert set(columns) <= defined[name], name


def test_concepts_are_the_vocabularys(synthea):
    vocabulary = pd.read_csv(synthea / "CONCEPT.csv", keep_default_na=False).set_index("concept_id")
    ours = concept_rows().set_index("concept_id")
    known = ours.index.intersection(vocabulary.index)
    assert (
        len(known) >= 20
    )  # the rest (gender, EHR, three ingredients, two descendants) are not in it
    columns = ["concept_name", "domain_id", "vocabulary_id", "concept_class_id", "concept_code"]
    pd.testing.assert_frame_equal(
        ours.loc[known, columns], vocabulary.loc[known, columns], check_dtype=False
    )
    relations = pd.read_csv(synthea / "CONCEPT_RELATIONSHIP.csv")
    pairs = set(
        zip(
            relations["concept_id_1"],
            relations["concept_id_2"],
            relations["relationship_id"],
            strict=True,
        )
    )
    assert (201826, 4193704, "Subsumes") in pairs  # T2DM > T2DM without complication
    assert (4329847, 312327, "Subsumes") in pairs  # myocardial infarction > acute MI
    # lisinopril 10 MG Oral Tablet consists of a component whose ingredient is lisinopril
    assert {(19080128, 1308304, "Consists of"), (1308304, 1308216, "RxNorm has ing")} <= pairs


def test_records_keep_the_cdms_rules(sites):
    with duckdb.connect(sites[0].url.removeprefix("duckdb:///"), read_only=True) as db:
        concepts = {row[0] for row in db.execute("SELECT concept_id FROM concept").fetchall()}
        for table, concept, date in [
            ("visit_occurrence", "visit_concept_id", "visit_start_date"),
            ("condition_occurrence", "condition_concept_id", "condition_start_date"),
            ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
            ("measurement", "measurement_concept_id", "measurement_date"),
            ("observation", "observation_concept_id", "observation_date"),
        ]:
            outside = db.execute(
                f"SELECT count(*) FROM {table} e LEFT JOIN observation_period op "
                f"ON op.person_id = e.person_id AND e.{date} BETWEEN "
                "op.observation_period_start_date AND op.observation_period_end_date "
                "WHERE op.person_id IS NULL"
            ).fetchone()
            assert outside == (0,), f"{table}: events outside any observation period"
            used = {
                row[0] for row in db.execute(f"SELECT DISTINCT {concept} FROM {table}").fetchall()
            }
            assert used <= concepts, table
        units = {
            row[0]
            for row in db.execute("SELECT DISTINCT unit_concept_id FROM measurement").fetchall()
        }
        assert units <= concepts


def test_the_same_seed_writes_the_same_database_and_nothing_is_overwritten(sites, tmp_path):
    again = write_omop_sites(COHORT, seed=42, out_dir=tmp_path)
    for first, second in zip(sites, again, strict=True):
        query = "SELECT * FROM measurement ORDER BY measurement_id"
        tables = []
        for site in (first, second):
            with duckdb.connect(site.url.removeprefix("duckdb:///"), read_only=True) as db:
                tables.append(db.execute(query).df())
        pd.testing.assert_frame_equal(*tables)
    before = (tmp_path / "site-01.duckdb").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"site-01.duckdb exists already; .* new databases only"):
        write_omop_sites(COHORT, seed=42, out_dir=tmp_path)
    assert (tmp_path / "site-01.duckdb").stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-01.duckdb", "site-02.duckdb"]


def test_any_sqlalchemy_database_and_a_database_already_holding_a_cdm(tmp_path):
    cohort = SyntheticCohort(sites=1, rows_per_site=40)
    url = f"sqlite:///{tmp_path / 'site.db'}"  # the generic (executemany) path
    (site,) = write_omop_sites(cohort, seed=1, urls={"site-01": url})
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        persons = connection.execute(sa.text("SELECT count(*) FROM person")).scalar_one()
        measured = connection.execute(sa.text("SELECT count(*) FROM measurement")).scalar_one()
    assert persons == site.persons and measured == site.rows["measurement"]
    with pytest.raises(ConfigError, match=r"already holds CDM table\(s\) person, .*set cdm_schema"):
        write_omop_sites(cohort, seed=1, urls={"site-01": url})
    with pytest.raises(ConfigError, match=r"no database URL for site\(s\) site-01"):
        write_omop_sites(cohort, seed=1, urls={"elsewhere": url})
    engine.dispose()


def test_omop_demo_command_and_the_study_end_to_end(tmp_path):
    out = tmp_path / "omop-demo"
    assert main(["data", "omop-demo", str(out), "--sites", "2", "--rows-per-site", "150"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["site-01.duckdb", "site-02.duckdb"]
    assert main(["data", "omop-demo", str(out)]) == 2  # not empty: refused
    databases = {p.stem: f"duckdb:///{p}" for p in sorted(out.glob("*.duckdb"))}
    study = load_study(STUDY).with_overrides({"data.omop.databases": databases, "rounds": 2})
    omop = simulate(study, out_dir=tmp_path / "omop", report=False).summary
    # The same study on the generator's own tables, as a folder of site files.
    tables = tmp_path / "tables"
    tables.mkdir()
    cohort = SyntheticCohort(sites=2, rows_per_site=150)
    for site, table in generate_cohort(cohort, seed=42).items():
        table.drop(columns="activity").assign(
            index_date=extracted(study, site, databases[site])["index_date"]
        ).to_parquet(tables / f"{site}.parquet")
    folder_study = load_study(None).with_overrides(
        {
            "rounds": 2,
            "data.source": "folder",
            "data.path": str(tables),
            "data.contract": study.to_plain()["data"]["contract"],
        }
    )
    folder = simulate(folder_study, out_dir=tmp_path / "folder", report=False).summary
    assert omop["model"]["arrays_sha256"] == folder["model"]["arrays_sha256"]
    assert set(omop["final"]["per_site"]) == {"site-01", "site-02"}


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server (skipped only where it is not installed and CI allows)."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.mark.postgres
def test_postgresql_databases_in_their_own_schemas_give_the_same_tables(postgres, sites):
    postgres.execute("create database cardio_1", "create database cardio_2")
    urls = {"site-01": postgres.admin_url("cardio_1"), "site-02": postgres.admin_url("cardio_2")}
    written = write_omop_sites(
        COHORT, seed=42, urls=urls, cdm_schema="cdm", vocabulary_schema="vocab"
    )
    study = omop_study(sites)
    for duck, server in zip(sites, written, strict=True):
        pd.testing.assert_frame_equal(
            extracted(study, server.name, server.url, Schemas("cdm", "vocab")),
            extracted(study, duck.name, duck.url),
        )
    # A second write finds the CDM and adds nothing (one transaction, refused before it writes).
    with pytest.raises(ConfigError, match=r"already holds CDM table\(s\) cdm.person, "):
        write_omop_sites(COHORT, seed=42, urls=urls, cdm_schema="cdm", vocabulary_schema="other")
    engine = sa.create_engine(urls["site-01"])
    with engine.connect() as connection:
        assert not sa.inspect(connection).has_schema("other")
    engine.dispose()


@pytest.mark.slow
def test_deployed_sites_each_read_their_own_database(tmp_path):
    """A loopback consortium whose sites hold OMOP databases: extract, approve, run."""
    written = write_omop_sites(COHORT, seed=42, out_dir=tmp_path / "databases")
    study = omop_study(
        written,
        rounds=2,
        **{"federation.round_timeout": 60.0, "federation.connect_timeout": 60.0},
    )
    study_file = tmp_path / "study.toml"
    study_file.write_text(study.to_toml(), encoding="utf-8")
    consortium = build_loopback(
        tmp_path / "deploy", {s.name: Path(s.url.removeprefix("duckdb:///")) for s in written}
    )
    for site in written:  # each site's config names its own database instead of a table
        path = Path(consortium.sites[site.name].path)
        config = tomllib.loads(path.read_text(encoding="utf-8"))
        config["data"] = {"database": site.url}
        path.write_text(tomli_w.dumps(config), encoding="utf-8")
        consortium.sites[site.name] = load_site_config(path)
        config_args = ["--config", str(path)]
        assert main(["site", "extract", str(study_file), *config_args]) == 0
        governance = str(consortium.sites[site.name].governance_dir)
        approve = ["site", "approve", str(study_file), "--site-folder", governance]
        assert main([*approve, "--reason", "test", "--deployment", *config_args]) == 0
    consortium.start()
    try:
        deployed = consortium.run(study, timeout=300)
    finally:
        consortium.stop()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"
    simulated = simulate(study, out_dir=tmp_path / "simulated", report=False).summary
    assert deployed["model"]["arrays_sha256"] == simulated["model"]["arrays_sha256"]
