"""Serving the dashboard with uvicorn: loopback by default, a token otherwise.

The dashboard shows who took part in which study and how models performed:
not patient rows, but not for everyone either. It listens on 127.0.0.1
unless told otherwise; on any other address every request needs a token,
which is generated when none is given and printed with the address.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhs_federated.errors import ConfigError


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DashboardSettings:
    """Where the dashboard listens and what it shows."""

    runs: Path
    host: str = "127.0.0.1"
    port: int = 8765
    server_config: Path | None = None
    token: str | None = None
    site_configs: tuple[Path, ...] = ()

    @property
    def url(self) -> str:
        """The address to open (with the token, when one is required)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"


def prepare(
    runs: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    server_config: Path | None = None,
    token: str | None = None,
    site_configs: list[Path] | None = None,
) -> DashboardSettings:
    """Check the settings before anything listens; make a token where one is needed.

    Raises
    ------
    ConfigError
        For a runs folder that does not exist, an empty token, or a port in use.
    """
    from lhs_federated.dashboard.runs import RunsFolder
    from lhs_federated.deploy.processes import check_port_free

    RunsFolder(runs)  # the folder must exist
    if token is not None and len(token) < 16:
        raise ConfigError(
            f"--token must be at least 16 characters; got {len(token)}. Leave it out to have "
            "one generated."
        )
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    check_port_free(host, port, what="the dashboard (choose another with --port)")
    return DashboardSettings(
        Path(runs), host, port, server_config, token, tuple(site_configs or ())
    )


def build(settings: DashboardSettings) -> Any:
    """The ASGI app for ``settings`` (see :func:`~lhs_federated.dashboard.app.create_app`)."""
    from lhs_federated.dashboard.app import create_app

    return create_app(
        settings.runs,
        server_config=settings.server_config,
        site_configs=list(settings.site_configs),
        token=settings.token,
    )


def server(settings: DashboardSettings, app: Any) -> Any:
    """A uvicorn server for ``app``; ``.run()`` serves until interrupted.

    Open live streams are cut after two seconds at shutdown, so Ctrl-C ends it promptly.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="off",
    )
    return uvicorn.Server(config)
