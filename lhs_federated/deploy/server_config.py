"""The coordinating centre's configuration (``server.toml``).

Relative paths are taken from the config file's folder. The SuperLink serves
Flower's Fleet, Control and Runtime APIs on one HTTPS port; Flower's open-source
Control API has no user authentication, so the port listens on loopback
unless the operator sets ``host`` (see server/README.md for exposing only the
Fleet API to sites through a reverse proxy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from lhs_federated.config import build, is_host, is_plain_name, read_toml, setting
from lhs_federated.errors import ConfigError


@dataclass(frozen=True)
class ServerSection:
    """Where the SuperLink listens and keeps its state."""

    name: str = setting("coordinator", doc="name of the coordinating centre")
    state_dir: str = setting("state", doc="folder for the SuperLink database, logs and runs")
    host: str = setting("127.0.0.1", doc="address the SuperLink listens on")
    port: int = setting(
        9092, doc="port of the SuperLink (Fleet, Control, Runtime APIs)", ge=1, le=65535
    )
    start_timeout: float = setting(60.0, doc="seconds to wait for the SuperLink to start", gt=0)
    database: str | None = setting(
        None,
        doc="file for Flower's own state (runs, registered nodes) to survive restarts; "
        "default: in memory, which is faster (studies keep their own durable records, and "
        "sites listed in [sites] are registered again at every start)",
    )


@dataclass(frozen=True)
class TlsSection:
    """The SuperLink's TLS certificate."""

    ca_certificate: str | None = setting(None, doc="CA certificate that signed the server's")
    certificate: str | None = setting(None, doc="the server's certificate (PEM)")
    private_key: str | None = setting(None, doc="the server's private key (PEM)")
    insecure: bool = setting(False, doc="run without TLS (development only; disables node auth)")

    def __post_init__(self) -> None:
        given = [self.ca_certificate, self.certificate, self.private_key]
        if not self.insecure and None in given:
            raise ValueError(
                "ca_certificate, certificate and private_key are all required "
                "unless insecure = true"
            )


@dataclass(frozen=True)
class LedgerSection:
    """The key the coordinator signs every run's ledger with."""

    signing_key: str | None = setting(
        None,
        doc="Ed25519 private key from `lhs-fed keys init` (default: a new key per run, "
        "its public key written into the run's results)",
    )


@dataclass(frozen=True)
class ServerConfig:
    """A coordinating centre's configuration."""

    server: ServerSection = setting(default_factory=ServerSection, doc="the SuperLink")
    tls: TlsSection = setting(default_factory=TlsSection, doc="TLS")
    ledger: LedgerSection = setting(default_factory=LedgerSection, doc="the run ledgers")
    sites: dict[str, str] = setting(
        default_factory=dict, doc="site name -> path of its SuperNode public key (.pub)"
    )
    path: str = setting("", doc="(set when loaded) the config file")

    def __post_init__(self) -> None:
        if not is_host(self.server.host):
            raise ValueError(
                f"server.host must be an IP address or a DNS name; got {self.server.host!r}"
            )
        bad = [name for name in self.sites if not is_plain_name(name)]
        if bad:
            raise ValueError(
                f"site name {bad[0]!r} in [sites] must be 1-64 letters, digits, '-', '_' or '.'"
            )

    def resolve(self, value: str | None) -> Path | None:
        """A path from the config, taken from the config file's folder if relative."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (Path(self.path).parent / path).resolve()

    @property
    def state_dir(self) -> Path:
        """The coordinator's state folder (absolute)."""
        return self.resolve(self.server.state_dir)  # type: ignore[return-value]

    @property
    def address(self) -> str:
        """host:port of the SuperLink."""
        return f"{self.server.host}:{self.server.port}"


def load_server_config(path: str | Path) -> ServerConfig:
    """Read and check ``server.toml``; every named file must exist.

    Raises
    ------
    ConfigError
        For a missing or invalid file, or one naming a file that does not exist.
    """
    path = Path(path).resolve()
    table = read_toml(path, what="server config")
    if "path" in table:
        raise ConfigError(f"{path}: unknown key 'path' in the top level.")
    config = dataclasses.replace(build(ServerConfig, table, source=str(path)), path=str(path))
    files = {
        "tls.ca_certificate": config.tls.ca_certificate,
        "tls.certificate": config.tls.certificate,
        "tls.private_key": config.tls.private_key,
        "ledger.signing_key": config.ledger.signing_key,
        **{f"sites.{name}": key for name, key in config.sites.items()},
    }
    for key, value in files.items():
        resolved = config.resolve(value)
        if resolved is not None and not resolved.is_file():
            raise ConfigError(f"{path}: {key} names {str(resolved)!r}, which does not exist.")
    _check_distinct_keys(config)
    return config


def _check_distinct_keys(config: ServerConfig) -> None:
    """Each site key once: a key shared by two sites would let one answer for both."""
    owners: dict[str, str] = {}
    for name, key in config.sites.items():
        fields = config.resolve(key).read_text(encoding="utf-8", errors="replace").split()  # type: ignore[union-attr]
        public_key = " ".join(fields[:2])
        if public_key in owners:
            raise ConfigError(
                f"{config.path}: sites.{name} and sites.{owners[public_key]} name the same "
                "public key; each site has its own key pair (`lhs-fed certs init --site NAME` "
                "or `ssh-keygen -t ecdsa -b 384`)."
            )
        owners[public_key] = name
