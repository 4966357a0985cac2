"""Test support for OMOP: the Synthea CDM loaded into DuckDB or PostgreSQL, a throwaway server.

The Synthea27Nj data (../shared/data/omop-synthea27nj) are CSV files written by
the OHDSI community's ETL; :func:`load_cdm` loads the columns the extraction
reads into any SQLAlchemy database. :class:`PostgresCluster` is a PostgreSQL
server of Debian's package in a temporary folder on a free port, run as the
``postgres`` user when the tests run as root (PostgreSQL refuses root), as
/work/shared/notes/postgresql-and-browser-on-these-machines.md describes.
Host connections need a password (scram-sha-256); the superuser connects
through the cluster's Unix socket.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from lhs_federated.data.omop.query import Schemas, cdm_tables

SYNTHEA_ZIP = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "omop-synthea27nj"
    / "Synthea27Nj_5.4.zip"
)
if not SYNTHEA_ZIP.is_file():  # a worktree beside /work/main
    SYNTHEA_ZIP = Path("/work/shared/data/omop-synthea27nj/Synthea27Nj_5.4.zip")
REQUIRE_POSTGRES = "LHS_REQUIRE_POSTGRES"


def unzip_synthea(folder: Path) -> Path:
    """The Synthea CSV files, unzipped into ``folder``."""
    with zipfile.ZipFile(SYNTHEA_ZIP) as archive:
        for member in archive.namelist():
            if member.endswith(".csv") and not member.startswith("__MACOSX"):
                archive.extract(member, folder)
    return folder


def read_cdm_csv(folder: Path, table: sa.Table) -> pd.DataFrame:
    """One CDM table's CSV, the extraction's columns only, dates as dates."""
    dates = [c.name for c in table.columns if isinstance(c.type, sa.Date)]
    frame = pd.read_csv(
        folder / f"{table.name.upper()}.csv",
        usecols=[c.name for c in table.columns],
        parse_dates=dates,
    )
    for name in dates:
        frame[name] = frame[name].dt.date
    return frame


def load_cdm(engine: sa.Engine, folder: Path, schemas: Schemas | None = None) -> None:
    """Create the CDM tables the extraction reads in ``engine`` and load the CSVs into them."""
    schemas = schemas or Schemas()
    tables = cdm_tables(schemas)
    with engine.begin() as connection:
        for schema in {schemas.cdm, schemas.vocabulary_schema} - {None}:
            connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        next(iter(tables.values())).metadata.create_all(connection)
        for table in tables.values():
            frame = read_cdm_csv(folder, table)
            if len(frame):
                connection.execute(table.insert(), frame.to_dict("records"))


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """A throwaway PostgreSQL server: initdb, start, stop (see the module docstring)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="lhs-postgres-"))
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", subprocess.list2cmdline(command)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresCluster:
        data = str(self.folder / "data")
        self._run(
            "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", data, "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def admin_url(self, database: str = "postgres") -> str:
        """The superuser's URL, through the cluster's Unix socket (no password)."""
        return f"postgresql+psycopg2://postgres@/{database}?host={self.folder}&port={self.port}"

    def url(self, user: str, database: str) -> str:
        """A role's URL over TCP on loopback (its password comes from elsewhere)."""
        return f"postgresql+psycopg2://{user}@127.0.0.1:{self.port}/{database}"

    def execute(self, *statements: str, database: str = "postgres") -> None:
        engine = sa.create_engine(self.admin_url(database), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                for statement in statements:
                    connection.execute(sa.text(statement))
        finally:
            engine.dispose()


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PostgresCluster]:
    """A started PostgreSQL cluster, stopped on exit.

    Skipped only where the server is not installed and CI does not require it
    (``LHS_REQUIRE_POSTGRES``): a CI run without PostgreSQL fails instead.
    """
    import pytest

    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get(REQUIRE_POSTGRES):
            pytest.fail(f"{REQUIRE_POSTGRES} is set but PostgreSQL's server is not installed")
        pytest.skip("PostgreSQL server binaries (Debian package postgresql) not installed")
    cluster = PostgresCluster(bin_dir).start()
    try:
        yield cluster
    finally:
        cluster.stop()
