"""A site's frozen cohort: the extracted table, hashed, recorded and bound into its approval.

Re-deriving a cohort from a live warehouse at every stage means nobody can
say later which patients a study saw: the warehouse keeps changing. A
deployed site therefore extracts a study's table once (``lhs-fed site extract
STUDY.toml``) into its state folder::

    <state_dir>/omop/<study hash>/snapshot.json      the manifest (below)
    <state_dir>/omop/<study hash>/table-<hash>.parquet  the table

and records the snapshot in its signed site ledger (kind ``snapshot``: study,
SHA-256 of the Parquet file, rows, first and last index date, SHA-256 of the
SQL that ran, and the snapshot it replaces). The site's approval of the study
names the snapshot's hash; every run reads the same file and refuses it when
its bytes no longer have that hash. Re-extracting writes a new file, a new
ledger record and a new manifest (in that order, the manifest last, so a
failure leaves the previous snapshot in force), after which the study needs
approving again. Nothing of the table leaves the site.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lhs_federated.data.omop.connection import Database, read_password
from lhs_federated.data.omop.definition import OmopSpec
from lhs_federated.data.omop.extract import extract
from lhs_federated.data.omop.query import Schemas
from lhs_federated.errors import ConfigError, DataError
from lhs_federated.site_config import SiteConfig
from lhs_federated.study import Study

MANIFEST = "snapshot.json"
SNAPSHOT = "snapshot"  # the site ledger's record kind


@dataclass(frozen=True)
class Snapshot:
    """What the manifest and the site ledger record of one extraction.

    Attributes
    ----------
    study_name, study_hash : str
        The study extracted for.
    site : str
        The site.
    file : str
        The Parquet file's name, in the manifest's folder.
    snapshot_hash : str
        SHA-256 of the Parquet file's bytes (hex): what an approval binds.
    rows : int
        The table's rows.
    first_index_date, last_index_date : str
        The range of its index dates (yyyy-mm-dd).
    sql_hash : str
        SHA-256 of the statement that built it.
    database : str
        The database, in words (no password).
    extracted_at : str
        When (UTC, ISO 8601).
    replaces : str or None
        The snapshot hash this extraction replaced, if any.
    """

    study_name: str
    study_hash: str
    site: str
    file: str
    snapshot_hash: str
    rows: int
    first_index_date: str
    last_index_date: str
    sql_hash: str
    database: str
    extracted_at: str
    replaces: str | None = None

    def record(self) -> dict[str, Any]:
        """The site ledger record's data."""
        return asdict(self)


def snapshot_folder(config: SiteConfig, study_hash: str) -> Path:
    """Where a study's snapshot lives in the site's state folder."""
    return config.state_dir / "omop" / study_hash


def site_database(config: SiteConfig) -> Database:
    """The site config's OMOP database, with its password read from where the config says.

    Raises
    ------
    ConfigError
        If the site config names no database, or its password cannot be read.
    """
    data = config.data
    if data.database is None:
        raise ConfigError(
            f"{config.path}: [data] names a table file, not an OMOP database: a study with "
            "data.source = 'omop' needs data.database (a SQLAlchemy URL)."
        )
    password = None
    if data.password_file is not None or data.password_env is not None:
        password = read_password(
            password_file=config.resolve(data.password_file),
            password_env=data.password_env,
            source=config.path,
        )
    return Database(
        data.database,
        Schemas(data.cdm_schema, data.vocabulary_schema),
        config.site.name,
        f"{config.path}: data.database",
        password=password,
    )


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_snapshot(
    study: Study, config: SiteConfig, *, record: Any, min_cell_size: int | None = None
) -> Snapshot:
    """Extract ``study``'s table at this site and freeze it (see the module docstring).

    Parameters
    ----------
    study : Study
        A resolved study with ``data.source = "omop"``.
    config : SiteConfig
        The site's config: its database and state folder.
    record : callable
        ``record(kind, data)`` appends to the site's ledger (raising leaves
        the previous snapshot in force and nothing new in the state folder).
    min_cell_size : int, optional
        Fewest rows a table may have (default: the site's policy).

    Raises
    ------
    DataError
        If the extraction fails or yields fewer rows than the minimum cell size.
    """
    spec = _omop_spec(study)
    database = site_database(config)
    table = extract(spec, database)
    smallest = config.policy.min_cell_size if min_cell_size is None else min_cell_size
    frame = table.table
    if len(frame) < smallest:
        raise DataError(
            f"site {config.site.name!r}: study {study.name!r} selects fewer persons than the "
            f"site's minimum cell size ({smallest}); the site cannot take part as the cohort "
            "stands."
        )
    folder = snapshot_folder(config, study.hash)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(folder)
    staged = folder / f".table-{os.getpid()}.parquet.tmp"
    final = None
    try:
        frame.to_parquet(staged, index=False)
        digest = file_hash(staged)
        final = folder / f"table-{digest[:16]}.parquet"
        dates = frame[spec.index_date]
        snapshot = Snapshot(
            study_name=study.name,
            study_hash=study.hash,
            site=config.site.name,
            file=final.name,
            snapshot_hash=digest,
            rows=len(frame),
            first_index_date=str(dates.min()),
            last_index_date=str(dates.max()),
            sql_hash=table.sql_hash,
            database=database.where,
            extracted_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            replaces=None if previous is None else previous.snapshot_hash,
        )
        staged.replace(final)
        record(SNAPSHOT, snapshot.record())
    except BaseException:
        staged.unlink(missing_ok=True)
        if final is not None and (previous is None or previous.file != final.name):
            final.unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    manifest_tmp = folder / f".{MANIFEST}.tmp"
    manifest_tmp.write_text(json.dumps(snapshot.record(), indent=2) + "\n", encoding="utf-8")
    manifest_tmp.replace(folder / MANIFEST)
    if previous is not None and previous.file != final.name:
        (folder / previous.file).unlink(missing_ok=True)
    return snapshot


def current_snapshot(config: SiteConfig, study: Study) -> Snapshot:
    """The snapshot in force for ``study`` at this site, its file checked against its hash.

    Raises
    ------
    DataError
        If the site has not extracted the study, or the file's bytes no longer
        have the hash recorded at extraction (naming both hashes).
    """
    folder = snapshot_folder(config, study.hash)
    snapshot = _read_manifest(folder)
    if snapshot is None:
        raise DataError(
            f"site {config.site.name!r} has no snapshot of study {study.name!r} "
            f"({study.hash[:12]}…) in {str(folder)!r}: its data steward extracts it with "
            "`lhs-fed site extract STUDY.toml --config site.toml` (and then approves it)."
        )
    path = folder / snapshot.file
    found = file_hash(path) if path.is_file() else "missing"
    if found != snapshot.snapshot_hash:
        raise DataError(
            f"site {config.site.name!r}: the snapshot {str(path)!r} of study {study.name!r} "
            f"changed after extraction: extracted as {snapshot.snapshot_hash}, its file now "
            f"hashes to {found}. The site refuses it; re-extract with `lhs-fed site extract` "
            "(recorded in the site ledger) and approve the study again."
        )
    return snapshot


def read_snapshot(config: SiteConfig, study: Study) -> tuple[Snapshot, pd.DataFrame]:
    """The checked snapshot in force and its table (see :func:`current_snapshot`)."""
    snapshot = current_snapshot(config, study)
    path = snapshot_folder(config, study.hash) / snapshot.file
    return snapshot, pd.read_parquet(path)


def _read_manifest(folder: Path) -> Snapshot | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return Snapshot(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise DataError(
            f"the snapshot manifest {str(path)!r} is damaged ({error}); re-extract the study "
            "with `lhs-fed site extract`."
        ) from None


def _omop_spec(study: Study) -> OmopSpec:
    if study.data.source != "omop" or study.data.omop is None:
        raise ConfigError(
            f"study {study.name!r} reads data.source = {study.data.source!r}: only a study "
            "with data.source = 'omop' is extracted from a site's database."
        )
    return study.data.omop
