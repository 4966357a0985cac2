"""A site's OMOP database: its SQLAlchemy URL, credentials and schemas, opened once.

A URL names the database and the user, never a password: a site's password
comes from a file only its owner can read (``data.password_file``, mode 0600)
or from an environment variable (``data.password_env``), and a study never
carries one. Every error names the host, the setting it came from and the
database's own reason, with the password blanked out of it. DuckDB files are
opened read-only: an extraction reads a warehouse, it never writes to it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, column, create_engine, func, make_url, select, table
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from lhs_federated.data.omop.definition import masked_url
from lhs_federated.data.omop.query import Schemas
from lhs_federated.errors import ConfigError, DataError

#: Seconds a PostgreSQL connection attempt may take before the site is told why.
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class Database:
    """One site's OMOP database, as its configuration names it.

    Attributes
    ----------
    url : str
        The SQLAlchemy URL, without a password.
    schemas : Schemas
        The CDM and vocabulary schemas.
    site : str
        The site, for messages.
    setting : str
        Where the URL was set (``site.toml: data.database``), for messages.
    password : str or None
        The password (never shown, never in a message).
    """

    url: str
    schemas: Schemas
    site: str
    setting: str
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The database in words: backend, host, port, database and user (no password)."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "duckdb":
            return f"DuckDB file {parsed.database or ':memory:'!r}"
        port = f":{parsed.port}" if parsed.port else ""
        return (
            f"{parsed.get_backend_name()} server at host {parsed.host or 'localhost'!r}"
            f"{port}, database {parsed.database!r}, user {parsed.username!r}"
        )

    def open(self) -> Engine:
        """An engine whose first connection has succeeded.

        Raises
        ------
        ConfigError
            If the URL's driver is not installed.
        DataError
            If the database cannot be reached or refuses the credentials; the
            message names the host and the setting, never the password.
        """
        url = make_url(self.url)
        backend = url.get_backend_name()
        connect_args: dict[str, object] = {}
        if backend == "duckdb":
            if url.database and url.database != ":memory:" and not Path(url.database).is_file():
                raise DataError(
                    f"site {self.site!r}: {self.setting} names {self.where}, which does not "
                    "exist; check the path (relative paths are taken from the config file's "
                    "folder)."
                )
            connect_args["read_only"] = True
        elif backend == "postgresql":
            connect_args["connect_timeout"] = CONNECT_TIMEOUT
        if self.password is not None:
            url = url.set(password=self.password)
        try:
            engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        except (NoSuchModuleError, ModuleNotFoundError) as error:
            raise ConfigError(
                f"site {self.site!r}: {self.setting}: no SQLAlchemy driver for "
                f"{masked_url(self.url)!r} ({error}); for PostgreSQL install "
                "lhs-federated[postgres]."
            ) from None
        try:
            with engine.connect():
                pass
        except SQLAlchemyError as error:
            engine.dispose()
            raise DataError(
                f"site {self.site!r}: cannot connect to the {self.where} that {self.setting} "
                f"names: {self.reason(error)}. Check the host, the user and the password "
                "setting (data.password_file or data.password_env)."
            ) from None
        return engine

    def reason(self, error: BaseException) -> str:
        """The database's own reason for ``error``, on one line, the password blanked."""
        origin = getattr(error, "orig", None) or error
        text = " ".join(str(origin).split())
        if self.password:
            text = text.replace(self.password, "***")
        return text[:500]


def check_tables(engine: Engine, database: Database, needed: dict[str, tuple[str, ...]]) -> None:
    """Every table and column the extraction reads exists in the site's schemas.

    Read from ``information_schema.columns`` (SQL standard; DuckDB and
    PostgreSQL alike), a schema left unnamed being the connection's
    ``current_schema()``.

    Raises
    ------
    DataError
        Naming every missing table and column, the schema and the site.
    """
    vocabulary = {"concept", "concept_ancestor"}
    columns_view = table(
        "columns",
        column("table_schema"),
        column("table_name"),
        column("column_name"),
        schema="information_schema",
    )
    problems = []
    try:
        with engine.connect() as connection:
            default = connection.execute(select(func.current_schema())).scalar_one()
            for name, columns in needed.items():
                named = (
                    database.schemas.vocabulary_schema
                    if name in vocabulary
                    else database.schemas.cdm
                )
                schema = named if named is not None else default
                rows = connection.execute(
                    select(columns_view.c.column_name).where(
                        func.lower(columns_view.c.table_schema) == schema.lower(),
                        func.lower(columns_view.c.table_name) == name,
                    )
                ).scalars()
                found = {str(c).lower() for c in rows}
                if not found:
                    problems.append(f"table {name!r} is missing from schema {schema!r}")
                    continue
                missing = [c for c in columns if c not in found]
                if missing:
                    problems.append(
                        f"table {name!r} in schema {schema!r} lacks column(s) {', '.join(missing)}"
                    )
    except SQLAlchemyError as error:
        raise DataError(
            f"site {database.site!r}: cannot read the tables of the {database.where}: "
            f"{database.reason(error)}"
        ) from None
    if problems:
        raise DataError(
            f"site {database.site!r}: the {database.where} is not the OMOP CDM v5.4 the study "
            f"reads: {'; '.join(problems)}. Set data.cdm_schema / data.vocabulary_schema if "
            "the tables live in another schema."
        )


def read_password(*, password_file: Path | None, password_env: str | None, source: str) -> str:
    """A site's database password, from its 0600 file or its environment variable.

    Raises
    ------
    ConfigError
        If the file is readable by others than its owner, or the variable is
        unset; naming the setting, never the value.
    """
    if password_file is not None:
        mode = stat.S_IMODE(password_file.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{source}: data.password_file {str(password_file)!r} is readable by others "
                f"(mode {mode:04o}); a password file must be the owner's only: "
                f"chmod 600 {password_file}"
            )
        return password_file.read_text(encoding="utf-8").rstrip("\r\n")
    if password_env is None:
        raise ValueError("read_password needs password_file or password_env")
    value = os.environ.get(password_env)
    if value is None:
        raise ConfigError(
            f"{source}: data.password_env names the environment variable {password_env!r}, "
            "which is not set in the site's environment."
        )
    return value
