"""A deployed site's own configuration: its data, identity, policy and state.

Nothing in a site config leaves the site. It names the site's table (the rows
never leave), the key the site's SuperNode authenticates with, the CA that
vouches for the coordinator, and the site's own policy (minimum cell size,
whether studies need approval). The coordinator cannot override any of it:
the site's launcher and ClientApp read it from the site's disk.

Relative paths are taken from the config file's folder (a DuckDB URL's file
too). A database's password never sits in the config: it names a 0600 file or
an environment variable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lhs_federated.config import build, read_toml, setting
from lhs_federated.data.omop.definition import check_url, masked_url, resolve_url
from lhs_federated.errors import ConfigError


@dataclass(frozen=True)
class SiteSection:
    """Who the site is and where it keeps its state."""

    name: str = setting(doc="the site's name, as it appears in results and ledgers")
    state_dir: str = setting("state", doc="folder for the site's privacy ledger, Flower home, logs")
    governance_dir: str = setting(
        "governance",
        doc="the site's governance folder (`lhs-fed site init`): key, approvals, ledger",
    )

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(
                f"site name must be letters, digits, '-', '_' or '.'; got {self.name!r}"
            )


@dataclass(frozen=True)
class CoordinatorSection:
    """How to reach the coordinator's SuperLink."""

    address: str = setting(doc="host:port of the coordinator's SuperLink")
    ca_certificate: str | None = setting(
        None, doc="CA certificate that signed the coordinator's TLS certificate"
    )
    insecure: bool = setting(False, doc="connect without TLS (development only)")

    def __post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"coordinator.address must be host:port; got {self.address!r}")
        if not self.insecure and self.ca_certificate is None:
            raise ValueError("coordinator.ca_certificate is required unless insecure = true")


@dataclass(frozen=True)
class IdentitySection:
    """The key the site's SuperNode authenticates with."""

    private_key: str = setting(doc="OpenSSH EC P-384 private key (its .pub is registered)")


@dataclass(frozen=True)
class DataSection:
    """The site's table, or the OMOP CDM database studies extract theirs from."""

    file: str | None = setting(None, doc="the site's table (CSV, TSV or Parquet)")
    database: str | None = setting(
        None,
        doc="instead of a file: the site's OMOP CDM database, a SQLAlchemy URL without "
        "password (duckdb:///site.duckdb, postgresql+psycopg2://user@host:5432/cdm)",
    )
    password_file: str | None = setting(
        None, doc="database: a file (mode 0600) holding the database user's password"
    )
    password_env: str | None = setting(
        None, doc="database: the environment variable holding the password"
    )
    cdm_schema: str | None = setting(
        None, doc="database: the CDM tables' schema (default: the connection's)"
    )
    vocabulary_schema: str | None = setting(
        None, doc="database: the vocabulary tables' schema (default: cdm_schema)"
    )
    contract: str | None = setting(
        None, doc="contract `lhs-fed site check` validates against (a study brings its own)"
    )
    csv_separator: Literal["auto", ",", ";", "\t", "|"] = setting(
        "auto", doc="a CSV table's field separator (auto: detected from the file)"
    )
    csv_decimal: Literal["auto", ".", ","] = setting(
        "auto", doc="a CSV table's decimal mark (auto: a decimal comma is detected)"
    )

    def __post_init__(self) -> None:
        if (self.file is None) == (self.database is None):
            raise ValueError(
                "[data] names the site's table (file) or its OMOP database (database), "
                f"exactly one; got file = {self.file!r}, database = "
                f"{None if self.database is None else masked_url(self.database)!r}"
            )
        if self.database is None:
            extra = [
                key
                for key in ("password_file", "password_env", "cdm_schema", "vocabulary_schema")
                if getattr(self, key) is not None
            ]
            if extra:
                raise ValueError(f"data.{extra[0]} applies only with data.database")
            return
        check_url(self.database, "data.database")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set data.password_file or data.password_env, not both")


@dataclass(frozen=True)
class PolicySection:
    """What the site allows, whatever the coordinator asks."""

    min_cell_size: int = setting(10, doc="smallest count of people the site reports", ge=1, le=1000)
    epsilon_budget: float = setting(
        10.0, doc="the site's total epsilon over all studies (sample-level DP)", gt=0, le=1000
    )
    budget_delta: float = setting(
        1e-5, doc="delta at which the site's total epsilon is stated", gt=0, lt=1
    )
    metric_noise: float = setting(
        0.0,
        doc="Laplace noise on each released evaluation metric, in patients (scale "
        "metric_noise / n_test); 0: none",
        ge=0,
        le=100,
    )
    metric_decimals: int | None = setting(
        None, doc="decimal places of released evaluation metrics (default: all)", ge=0, le=6
    )
    require_secure_aggregation: bool = setting(
        False,
        doc="refuse studies without secure aggregation (privacy.secure_aggregation), so "
        "that no update or column sum of the site's own reaches the coordinator",
    )


@dataclass(frozen=True)
class ApprovalSection:
    """Standing approval rules the site sets once (each still checked per message)."""

    monitoring_of_approved_releases: bool = setting(
        False,
        doc="answer monitoring studies of a release whose model this site evaluated in a "
        "study it approved, without approving each (lhs_federated.deploy.standing_approval)",
    )


@dataclass(frozen=True)
class RuntimeSection:
    """The site's local processes."""

    runtime_port: int = setting(
        9094, doc="loopback port of the SuperNode's Runtime API", ge=1, le=65535
    )
    threads: int = setting(1, doc="torch threads per task", ge=1, le=256)
    workers: int = setting(2, doc="tasks the launcher runs at once", ge=1, le=64)
    connect_timeout: float = setting(
        60.0,
        doc="seconds the SuperNode keeps trying to reach the coordinator before it exits "
        "and the site's supervisor starts it again",
        gt=0,
        le=86400,
    )
    poll_interval: float = setting(
        0.5,
        doc="seconds the idle SuperNode waits between polls of the coordinator (Flower's: 3)",
        gt=0,
        le=60,
    )


@dataclass(frozen=True)
class SiteConfig:
    """A deployed site's configuration (``site.toml``)."""

    site: SiteSection = setting(doc="who the site is")
    coordinator: CoordinatorSection = setting(doc="the coordinator")
    identity: IdentitySection = setting(doc="the SuperNode's key")
    data: DataSection = setting(doc="the site's table")
    policy: PolicySection = setting(default_factory=PolicySection, doc="the site's policy")
    approval: ApprovalSection = setting(
        default_factory=ApprovalSection, doc="standing approval rules"
    )
    runtime: RuntimeSection = setting(default_factory=RuntimeSection, doc="local processes")
    path: str = setting("", doc="(set when loaded) the config file")

    def resolve(self, value: str | None) -> Path | None:
        """A path from the config, taken from the config file's folder if relative."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (Path(self.path).parent / path).resolve()

    @property
    def governance_dir(self) -> Path:
        """The site's governance folder (absolute)."""
        return self.resolve(self.site.governance_dir)  # type: ignore[return-value]

    @property
    def state_dir(self) -> Path:
        """The site's state folder (absolute)."""
        return self.resolve(self.site.state_dir)  # type: ignore[return-value]


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and check a site config; every named file must exist.

    Raises
    ------
    ConfigError
        If the file is missing or invalid, or names a file that does not exist
        (the message names the key and the path).
    """
    path = Path(path).resolve()
    table = read_toml(path, what="site config")
    if "path" in table:
        raise ConfigError(f"{path}: unknown key 'path' in the top level.")
    config = dataclasses.replace(build(SiteConfig, table, source=str(path)), path=str(path))
    if config.data.database is not None:
        config = dataclasses.replace(
            config,
            data=dataclasses.replace(
                config.data, database=resolve_url(config.data.database, path.parent)
            ),
        )
    files = {
        "identity.private_key": config.identity.private_key,
        "data.file": config.data.file,
        "data.password_file": config.data.password_file,
        "coordinator.ca_certificate": config.coordinator.ca_certificate,
        "data.contract": config.data.contract,
    }
    for key, value in files.items():
        resolved = config.resolve(value)
        if resolved is not None and not resolved.is_file():
            raise ConfigError(f"{path}: {key} names {str(resolved)!r}, which does not exist.")
    return config
