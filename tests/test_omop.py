"""OMOP extraction on the Synthea27Nj CDM (OHDSI's ETL): DuckDB and PostgreSQL, checked by hand.

The expected values below were read off the CSV files by hand (PERSON,
OBSERVATION_PERIOD, VISIT_OCCURRENCE, CONDITION_OCCURRENCE, MEASUREMENT):

- person 1 (male, born 1998): first outpatient visit from 2015 on is 2015-05-29,
  at 17, so the cohort (min_age 18) leaves him out (no fallback to a later visit);
- person 7 (male, 1938): index 2015-04-14, age 77; stress 2013-07-16 (in the
  1095-day look-back: 1); latest diastolic BP in the year before: 81 on
  2014-07-22; BMI mean of 2012-07-10 (28.3), 2013-07-16 (29.0), 2014-07-22
  (29.7) = 29.0; sinusitis 2007 and 2011 only (none in 730 days: 0);
- person 9 (male, 1978): index 2015-08-20, age 37; stress on the index day (1);
  diastolic BP 70 on the index day; BMI mean of 2014-09-11 (25.7) and
  2015-08-20 (26.0) = 25.85 (2012-08-16 lies 4 days before the window);
  sinusitis 2016-01-05, within 730 days (1).
"""

from __future__ import annotations

import json
import shutil
import stat
import textwrap

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from omop_support import (
    free_port,
    load_cdm,
    throwaway_cluster,
    unzip_synthea,
)

from lhs_federated import load_study, simulate
from lhs_federated.apps.client_site import deployed_site
from lhs_federated.cli import main
from lhs_federated.data.omop.connection import Database
from lhs_federated.data.omop.extract import extract
from lhs_federated.data.omop.query import Schemas
from lhs_federated.data.sources import raw_sites
from lhs_federated.deploy.certs import init_certificates
from lhs_federated.deploy.site_node import check_site
from lhs_federated.errors import ConfigError, DataError, SiteRefusal
from lhs_federated.site_config import load_site_config

PASSWORD = "s3cret-omop-pw"
CHANGE_VALUES = "update measurement set value_as_number = value_as_number + 1"

STUDY = """\
name = "omop-nj"
[data]
source = "omop"
[data.omop]
databases = {{ nj = "{url}" }}
[data.omop.cohort]
entry_domain = "visit"
entry_concepts = [9202]       # outpatient visit
min_age = 18
prior_observation_days = 365
index_from = "2015-01-01"
[data.omop.outcome]
name = "sinusitis"
domain = "condition"
concepts = [40481087]         # viral sinusitis
end_day = 730
[[data.omop.features]]
name = "age"
kind = "age"
[[data.omop.features]]
name = "sex"
kind = "sex"
[[data.omop.features]]
name = "stress"
kind = "condition"
concepts = [4251306]
start_day = -1095
[[data.omop.features]]
name = "diastolic_bp"
kind = "measurement"
concepts = [3012888]
units = [8876]                # mmHg
[[data.omop.features]]
name = "bmi"
kind = "measurement"
concepts = [3038553]
units = [9531]                # kg/m2
statistic = "mean"
start_day = -1095
"""


@pytest.fixture(scope="session")
def synthea_csvs(tmp_path_factory):
    return unzip_synthea(tmp_path_factory.mktemp("synthea27nj"))


@pytest.fixture(scope="session")
def synthea_duckdb(synthea_csvs, tmp_path_factory):
    path = tmp_path_factory.mktemp("duckdb") / "synthea.duckdb"
    engine = sa.create_engine(f"duckdb:///{path}")
    load_cdm(engine, synthea_csvs)
    engine.dispose()
    return path


@pytest.fixture
def duckdb_copy(synthea_duckdb, tmp_path):
    """A copy of the Synthea DuckDB file a test may change."""
    path = tmp_path / "site.duckdb"
    shutil.copy(synthea_duckdb, path)
    return path


@pytest.fixture(scope="session")
def postgres(synthea_csvs):
    """A throwaway PostgreSQL server with the Synthea CDM in schemas cdm and vocab.

    Role ``lhs`` (password PASSWORD, over TCP on loopback) may read them.
    Skipped only where the server is not installed and CI does not require it.
    """
    with throwaway_cluster() as cluster:
        cluster.execute("create database synthea", f"create role lhs login password '{PASSWORD}'")
        engine = sa.create_engine(cluster.admin_url("synthea"))
        load_cdm(engine, synthea_csvs, Schemas("cdm", "vocab"))
        engine.dispose()
        cluster.execute(
            "grant usage on schema cdm, vocab to lhs",
            "grant select on all tables in schema cdm, vocab to lhs",
            database="synthea",
        )
        yield cluster


def write_study(folder, url, text=STUDY):
    path = folder / "study.toml"
    path.write_text(text.format(url=url))
    return path


def nj_study(folder, url, **overrides):
    study = load_study(write_study(folder, url))
    return study.with_overrides(overrides) if overrides else study


def duck(path, site="nj"):
    return Database(f"duckdb:///{path}", Schemas(), site, "data.omop.databases.nj")


PG_SCHEMAS = Schemas("cdm", "vocab")


def pg(cluster, password=PASSWORD, schemas=PG_SCHEMAS):
    return Database(
        cluster.url("lhs", "synthea"), schemas, "pg", "site.toml: data.database", password=password
    )


def test_extraction_gives_the_values_read_off_the_csv_files(synthea_duckdb, tmp_path):
    study = nj_study(tmp_path, f"duckdb:///{synthea_duckdb}")
    table = extract(study.data.omop, duck(synthea_duckdb)).table
    assert list(table.columns) == [
        *(f.name for f in study.contract.features),
        "index_date",
        "sinusitis",
    ]
    assert len(table) == 18 and table["age"].min() >= 18
    assert not ((table["index_date"] == "2015-05-29") & (table["age"] == 17)).any()  # person 1
    person_7 = table.iloc[1].to_dict()
    assert person_7 == {
        "age": 77,
        "sex": "male",
        "stress": 1,
        "diastolic_bp": 81.0,
        "bmi": pytest.approx(29.0),
        "index_date": "2015-04-14",
        "sinusitis": 0,
    }
    person_9 = table.iloc[3].to_dict()
    assert person_9 == {
        "age": 37,
        "sex": "male",
        "stress": 1,
        "diastolic_bp": 70.0,
        "bmi": pytest.approx(25.85),
        "index_date": "2015-08-20",
        "sinusitis": 1,
    }
    # The table is what the contract describes: the site's path validates, encodes, splits it.
    (site,) = raw_sites(study)
    pd.testing.assert_frame_equal(site.table, table)


@pytest.mark.postgres
@pytest.mark.parametrize("events", [False, True], ids=["measurements", "events-and-death"])
def test_duckdb_and_postgresql_give_identical_tables(synthea_duckdb, postgres, tmp_path, events):
    study = nj_study(tmp_path, f"duckdb:///{synthea_duckdb}")
    study = events_study(study) if events else study
    from_duckdb = extract(study.data.omop, duck(synthea_duckdb))
    from_postgres = extract(study.data.omop, pg(postgres))
    pd.testing.assert_frame_equal(from_duckdb.table, from_postgres.table, check_exact=True)
    assert "cdm.person" in from_postgres.sql and "vocab.concept_ancestor" in from_postgres.sql


#: Presence of a drug, a procedure, an observation and an emergency visit in five years
#: before the index date; the outcome death within 5000 days (person 7 died 2019-05-28).
EVENT_FEATURES = {
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date", 1127433),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date", 762506),
    "observation": ("observation", "observation_concept_id", "observation_date", 40759918),
    "visit": ("visit_occurrence", "visit_concept_id", "visit_start_date", 9203),
}


def events_study(study):
    features = [{"name": "age", "kind": "age"}] + [
        {"name": f"any_{kind}", "kind": kind, "concepts": [concept], "start_day": -1825}
        for kind, (*_, concept) in EVENT_FEATURES.items()
    ]
    outcome = {"name": "death", "domain": "death", "end_day": 5000, "censoring": "negative"}
    return study.with_overrides({"data.omop.features": features, "data.omop.outcome": outcome})


def test_event_features_and_death_match_a_pandas_reading_of_the_csv_files(
    synthea_duckdb, synthea_csvs, tmp_path
):
    study = events_study(nj_study(tmp_path, "duckdb:///x"))
    table = extract(study.data.omop, duck(synthea_duckdb)).table

    def csv(name, dates):
        return pd.read_csv(synthea_csvs / f"{name.upper()}.csv", parse_dates=dates)

    # The cohort, independently: first outpatient visit from 2015 on, 365 days observed, 18+.
    visits = csv("visit_occurrence", ["visit_start_date"])
    periods = csv(
        "observation_period", ["observation_period_start_date", "observation_period_end_date"]
    )
    entry = visits[visits.visit_concept_id == 9202].merge(periods, on="person_id")
    entry = entry[
        (entry.visit_start_date >= "2015-01-01")
        & (entry.visit_start_date >= entry.observation_period_start_date + pd.Timedelta(days=365))
        & (entry.visit_start_date <= entry.observation_period_end_date)
    ]
    cohort = entry.groupby("person_id").visit_start_date.min().rename("index").reset_index()
    cohort = cohort.merge(csv("person", []), on="person_id")
    cohort["age"] = cohort["index"].dt.year - cohort.year_of_birth
    cohort = cohort[cohort.age >= 18].sort_values("person_id").reset_index(drop=True)
    expected = pd.DataFrame({"age": cohort.age})
    for kind, (name, concept_column, date, concept) in EVENT_FEATURES.items():
        events = csv(name, [date])
        events = events[events[concept_column] == concept].merge(cohort, on="person_id")
        days = (events[date] - events["index"]).dt.days
        present = set(events.person_id[(days >= -1825) & (days <= 0)])
        expected[f"any_{kind}"] = cohort.person_id.isin(present).astype("int64")
    deaths = csv("death", ["death_date"]).merge(cohort, on="person_id")
    days = (deaths.death_date - deaths["index"]).dt.days
    died = set(deaths.person_id[(days >= 1) & (days <= 5000)])
    expected["index_date"] = cohort["index"].dt.strftime("%Y-%m-%d")
    expected["death"] = cohort.person_id.isin(died).astype("int64")
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert expected["death"].sum() == 1 and all(expected[f"any_{k}"].sum() for k in EVENT_FEATURES)


def test_concept_sets_include_descendants_through_concept_ancestor(duckdb_copy, tmp_path):
    # Here 4172829 (limited social contact) is made an ancestor of 4251306 (stress).
    engine = sa.create_engine(f"duckdb:///{duckdb_copy}")
    with engine.begin() as connection:
        connection.execute(sa.text("insert into concept_ancestor values (4172829, 4251306)"))
    engine.dispose()
    stress = nj_study(tmp_path, "duckdb:///x")
    text = STUDY.replace("concepts = [4251306]", "concepts = [4172829]")
    social = load_study(write_study(tmp_path, "duckdb:///x", text))
    alone = social.with_overrides({"data.omop.features": _features(social, descendants=False)})
    stress, social, alone = (
        extract(s.data.omop, duck(duckdb_copy)).table["stress"] for s in (stress, social, alone)
    )
    assert social.tolist() == (alone | stress).tolist() and social.sum() > alone.sum()


def _features(study, **change):
    plain = study.to_plain()["data"]["omop"]["features"]
    return [{**f, **change} if f["kind"] == "condition" else f for f in plain]


def test_censoring_negative_keeps_the_persons_exclude_leaves_out(synthea_duckdb, tmp_path):
    study = nj_study(tmp_path, f"duckdb:///{synthea_duckdb}", **{"data.omop.outcome.end_day": 3650})
    excluded = extract(study.data.omop, duck(synthea_duckdb)).table
    negative = study.with_overrides({"data.omop.outcome.censoring": "negative"})
    kept = extract(negative.data.omop, duck(synthea_duckdb)).table
    assert len(kept) > len(excluded)
    assert kept["sinusitis"].sum() == excluded["sinusitis"].sum()


def test_resolved_omop_study_round_trips_with_its_hash(tmp_path):
    study = nj_study(tmp_path, "duckdb:///site.duckdb")
    assert study.data.omop.databases == {"nj": f"duckdb:///{(tmp_path / 'site.duckdb').resolve()}"}
    (tmp_path / "resolved.toml").write_text(study.to_toml())
    assert load_study(tmp_path / "resolved.toml").hash == study.hash


# Bad input: each a clear error naming the site and the setting.


def test_unreachable_database_names_host_and_setting_never_the_password():
    port = free_port()
    database = Database(
        f"postgresql+psycopg2://lhs@127.0.0.1:{port}/cdm",
        Schemas(),
        "pg",
        "site.toml: data.database",
        password=PASSWORD,
    )
    with pytest.raises(DataError, match=rf"'127.0.0.1':{port}.*site.toml: data.database") as info:
        database.open()
    assert PASSWORD not in info.value.message


@pytest.mark.postgres
def test_wrong_password_names_the_user_and_setting_never_the_password(postgres):
    with pytest.raises(DataError, match=r"user 'lhs'.*password authentication failed") as info:
        pg(postgres, password="not-" + PASSWORD).open()
    assert PASSWORD not in info.value.message and "site.toml: data.database" in info.value.message


@pytest.mark.postgres
def test_wrong_schema_names_the_missing_tables(postgres, tmp_path):
    study = nj_study(tmp_path, "duckdb:///x")
    with pytest.raises(DataError, match=r"table 'concept' is missing from schema 'cdm'"):
        extract(study.data.omop, pg(postgres, schemas=Schemas("cdm")))


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("drop table person", r"table 'person' is missing from schema 'main'"),
        (
            "alter table measurement drop column unit_concept_id",
            r"table 'measurement' in schema 'main' lacks column\(s\) unit_concept_id",
        ),
    ],
)
def test_missing_cdm_table_or_column(duckdb_copy, tmp_path, statement, message):
    engine = sa.create_engine(f"duckdb:///{duckdb_copy}")
    with engine.begin() as connection:
        connection.execute(sa.text(statement))
    engine.dispose()
    with pytest.raises(DataError, match=rf"site 'nj'.*{message}"):
        extract(nj_study(tmp_path, "duckdb:///x").data.omop, duck(duckdb_copy))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.omop.cohort.entry_concepts": [9202, 999999999]},
            r"concept ids not in the vocabulary's CONCEPT table.*cohort.entry_concepts: 999999999",
        ),
        (  # Prediabetes is in the vocabulary, but no condition of it at this site
            {"data.omop.outcome.concepts": [40316773]},
            r"no event of outcome.concepts \(condition: 40316773 and descendants\)",
        ),
        (
            {"data.omop.cohort.min_age": 110},
            r"the cohort is empty: 28 person\(s\) have an entry event",
        ),
    ],
)
def test_concepts_and_cohorts_a_site_cannot_serve(synthea_duckdb, tmp_path, overrides, message):
    study = nj_study(tmp_path, "duckdb:///x", **overrides)
    with pytest.raises(DataError, match=rf"site 'nj': {message}"):
        extract(study.data.omop, duck(synthea_duckdb))


def test_measurement_in_an_unexpected_unit(synthea_duckdb, tmp_path):
    features = _features(nj_study(tmp_path, "duckdb:///x"))
    features[3] = {**features[3], "units": [9529]}  # kg, not mmHg
    study = nj_study(tmp_path, "duckdb:///x", **{"data.omop.features": features})
    with pytest.raises(
        DataError,
        match=r"feature 'diastolic_bp' has \d+ measurement\(s\) in unit 8876 \(millimeter "
        r"mercury column\), not in units \[9529\]",
    ):
        extract(study.data.omop, duck(synthea_duckdb))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('"duckdb:///{url}"', '"postgresql://lhs:hunter2@db/cdm"'),
            r"data.omop.databases.nj holds a password",
        ),
        (("units = [8876]", "units = []"), r"name its accepted unit concept ids"),
        (("end_day = 730", "end_day = -1"), r"outcome.end_day must be >= 0"),
        (('kind = "sex"', 'kind = "sex"\nconcepts = [8507]'), r"takes no concepts"),
        (('source = "omop"', 'source = "synthetic"'), r"\[data.omop\] applies only with"),
        (
            ('source = "omop"', 'source = "omop"\ncontract = "cardio-risk"'),
            r"data.contract 'cardio-risk' does not describe the table \[data.omop\] extracts",
        ),
        (('name = "sinusitis"', 'name = "age"'), r"column name\(s\) 'age' used twice"),
    ],
)
def test_study_errors_name_the_key(tmp_path, change, message):
    text = STUDY.replace('"{url}"', '"duckdb:///{url}"').replace(*change)
    with pytest.raises(ConfigError, match=message) as info:
        load_study(write_study(tmp_path, "site.duckdb", text))
    assert "hunter2" not in info.value.message


def test_study_without_its_omop_table_or_site_databases(tmp_path):
    (tmp_path / "bare.toml").write_text('[data]\nsource = "omop"\n')
    with pytest.raises(ConfigError, match=r"needs a \[data.omop\] table"):
        load_study(tmp_path / "bare.toml")
    study = nj_study(tmp_path, "duckdb:///x", **{"data.omop.databases": {}})
    with pytest.raises(DataError, match=r"data.omop.databases names no site database"):
        raw_sites(study)
    study = nj_study(tmp_path, "duckdb:///missing.duckdb")
    with pytest.raises(DataError, match=r"names DuckDB file '.*missing.duckdb', which does not"):
        raw_sites(study)


# The frozen snapshot: extracted once, recorded, bound into the approval, refused if changed.


def write_site_config(folder, database, extra=""):
    (folder / "site.key").write_text("placeholder: this site never starts a SuperNode here\n")
    path = folder / "site.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [site]
        name = "nj"
        [coordinator]
        address = "127.0.0.1:9092"
        insecure = true
        [identity]
        private_key = "site.key"
        [data]
        database = "{database}"
        {extra}
        [policy]
        min_cell_size = 5
        """)
    )
    assert main(["site", "init", str(folder / "governance"), "--name", "nj"]) == 0
    return path


def ledger_kinds(folder):
    lines = (folder / "governance" / "ledger.jsonl").read_text().splitlines()
    return [json.loads(line)["kind"] for line in lines]


def test_snapshot_is_recorded_bound_into_approval_and_refused_once_changed(
    duckdb_copy, tmp_path, capsys
):
    study_path = write_study(tmp_path, "duckdb:///site.duckdb")
    config = write_site_config(tmp_path, "duckdb:///site.duckdb")
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "18 rows, index dates 2015-01-05..2017-06-06" in out
    study = load_study(study_path)
    folder = tmp_path / "state" / "omop" / study.hash
    manifest = json.loads((folder / "snapshot.json").read_text())
    assert manifest["rows"] == 18 and manifest["snapshot_hash"] in out
    ledger = tmp_path / "governance" / "ledger.jsonl"
    record = json.loads(ledger.read_text().splitlines()[-1])
    assert record["kind"] == "snapshot" and record["data"] == manifest
    public_key = str(tmp_path / "governance" / "site.pub")
    assert main(["audit", "verify", str(ledger), "--public-key", public_key]) == 0

    # Approval binds the snapshot; the deployed site then reads it through the common path.
    approve = [
        "site",
        "approve",
        str(study_path),
        "--site-folder",
        str(tmp_path / "governance"),
        "--reason",
        "IRB-1",
        "--installed",
        "--by",
        "steward",
    ]
    assert main(approve) == 2  # an OMOP study's approval needs the snapshot
    assert "extract it with `lhs-fed site extract" in capsys.readouterr().err
    assert main([*approve, "--config", str(config)]) == 0
    assert manifest["snapshot_hash"] in capsys.readouterr().out
    site = deployed_site(str(config), study)
    assert len(site.data.train.outcome) + len(site.data.test.outcome) == 18

    # A later change in the warehouse does not reach the study: the snapshot stays.
    engine = sa.create_engine(f"duckdb:///{duckdb_copy}")
    with engine.begin() as connection:
        connection.execute(sa.text(CHANGE_VALUES))
    engine.dispose()
    later = deployed_site(str(config), study).data
    np.testing.assert_array_equal(later.train.features, site.data.train.features)

    # Re-extracting is recorded (naming the snapshot it replaces) and needs a new approval.
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 0
    capsys.readouterr()
    new = json.loads((folder / "snapshot.json").read_text())
    assert new["replaces"] == manifest["snapshot_hash"] != new["snapshot_hash"]
    assert ledger_kinds(tmp_path).count("snapshot") == 2
    assert sorted(p.name for p in folder.iterdir()) == ["snapshot.json", new["file"]]
    with pytest.raises(SiteRefusal, match=rf"binds snapshot {manifest['snapshot_hash']}"):
        deployed_site(str(config), study)
    assert main([*approve, "--config", str(config)]) == 0
    deployed_site(str(config), study)

    # A snapshot file changed after extraction is refused, naming the hash.
    table = pd.read_parquet(folder / new["file"])
    table.loc[0, "age"] = 99
    table.to_parquet(folder / new["file"], index=False)
    with pytest.raises(
        DataError, match=rf"changed after extraction: extracted as {new['snapshot_hash']}"
    ):
        deployed_site(str(config), study)
    assert main([*approve, "--config", str(config)]) == 2
    assert new["snapshot_hash"] in capsys.readouterr().err


def test_site_check_connects_to_a_database_site(duckdb_copy, tmp_path):
    path = write_site_config(tmp_path, "duckdb:///site.duckdb")
    made = init_certificates(tmp_path / "certs", hosts=["127.0.0.1"], sites=["nj"])
    shutil.copy(made.site_keys["nj"], tmp_path / "site.key")
    passed = check_site(load_site_config(path), connect=False)
    assert f"database DuckDB file {str(duckdb_copy.resolve())!r}: reachable" in passed


def test_failed_extraction_writes_nothing_and_exits_2(duckdb_copy, tmp_path, capsys):
    study_path = write_study(
        tmp_path, "duckdb:///site.duckdb", STUDY.replace("min_age = 18", "min_age = 110")
    )
    config = write_site_config(tmp_path, "duckdb:///site.duckdb")
    before = ledger_kinds(tmp_path)
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 2
    assert "the cohort is empty" in capsys.readouterr().err
    assert not (tmp_path / "state").exists() and ledger_kinds(tmp_path) == before


def test_fewer_persons_than_the_minimum_cell_size_is_refused(duckdb_copy, tmp_path, capsys):
    study_path = write_study(
        tmp_path, "duckdb:///site.duckdb", STUDY.replace("min_age = 18", "min_age = 70")
    )
    config = write_site_config(tmp_path, "duckdb:///site.duckdb")
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 2
    assert "fewer persons than the site's minimum cell size (5)" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


@pytest.mark.postgres
def test_postgres_site_reads_its_password_from_a_0600_file(postgres, tmp_path, capsys):
    study_path = write_study(tmp_path, "duckdb:///unused.duckdb")
    secret = tmp_path / "db.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    url = postgres.url("lhs", "synthea")
    config = write_site_config(
        tmp_path,
        url,
        'password_file = "db.password"\ncdm_schema = "cdm"\nvocabulary_schema = "vocab"',
    )
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "is readable by others (mode 0644)" in err and PASSWORD not in err
    secret.chmod(0o600)
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 0
    assert "18 rows" in capsys.readouterr().out
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


@pytest.mark.postgres
def test_site_config_password_env_must_be_set(postgres, tmp_path, capsys, monkeypatch):
    study_path = write_study(tmp_path, "duckdb:///unused.duckdb")
    url = postgres.url("lhs", "synthea")
    extra = 'password_env = "LHS_TEST_DB_PASSWORD"\ncdm_schema = "cdm"\nvocabulary_schema = "vocab"'
    config = write_site_config(tmp_path, url, extra)
    monkeypatch.delenv("LHS_TEST_DB_PASSWORD", raising=False)
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 2
    assert "'LHS_TEST_DB_PASSWORD', which is not set" in capsys.readouterr().err
    monkeypatch.setenv("LHS_TEST_DB_PASSWORD", PASSWORD)
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 0


def test_site_config_refuses_a_password_in_the_url(tmp_path, capsys):
    (tmp_path / "site.key").write_text("x")
    (tmp_path / "site.toml").write_text(
        '[site]\nname = "nj"\n[coordinator]\naddress = "h:1"\ninsecure = true\n'
        '[identity]\nprivate_key = "site.key"\n[data]\n'
        'database = "postgresql://lhs:hunter2@db:5432/cdm"\n'
    )
    study_path = write_study(tmp_path, "duckdb:///site.duckdb")
    config = tmp_path / "site.toml"
    assert main(["site", "extract", str(study_path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "data.database holds a password" in err and "hunter2" not in err


def test_omop_study_runs_end_to_end_in_simulation(synthea_duckdb, tmp_path):
    """Two simulated sites, each its own OMOP database, through the whole simulation."""
    second = tmp_path / "second.duckdb"
    shutil.copy(synthea_duckdb, second)
    text = STUDY.replace(
        'databases = {{ nj = "{url}" }}',
        'databases = {{ site-a = "{url}", site-b = "duckdb:///second.duckdb" }}',
    )
    study = load_study(write_study(tmp_path, f"duckdb:///{synthea_duckdb}", text))
    study = study.with_overrides(
        {
            "rounds": 2,
            "sites.min_cell_size": 3,
            "privacy.min_train_rows": 5,
            "governance.preapproved": True,
            "baselines.enabled": False,
        }
    )
    results = simulate(study, out_dir=tmp_path / "run", report=False)
    assert list(results.final.index) == ["site-a", "site-b"]
    sites = pd.read_csv(tmp_path / "run" / "sites.csv")
    assert sites["n_train"].tolist() == [12, 12] and sites["n_test"].tolist() == [6, 6]
    resolved = (tmp_path / "run" / "study.resolved.toml").read_text()
    assert 'source = "omop"' in resolved and "entry_concepts" in resolved
