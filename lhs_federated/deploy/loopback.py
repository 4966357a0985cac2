"""A whole consortium on one machine: a coordinator and sites on 127.0.0.1.

For trying a deployment before a real one, for the end-to-end tests and for
the round-latency benchmark. Everything is real: a development CA and TLS
certificate, one SuperNode key per site registered at the SuperLink, each site
with its own config, governance folder, data file and gated launcher, all as
separate processes. Only the network is loopback.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lhs_federated.deploy import coordinator, site_node
from lhs_federated.deploy.app_bundle import bundle_hash
from lhs_federated.deploy.certs import init_certificates
from lhs_federated.deploy.server_config import ServerConfig, load_server_config
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.site_config import SiteConfig, load_site_config
from lhs_federated.study import Study


def free_port() -> int:
    """A TCP port nothing listens on at the moment (asked of the OS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LoopbackConsortium:
    """The files and processes of a consortium on one machine.

    Attributes
    ----------
    root : Path
        Folder holding everything (``certs/``, ``server/``, ``sites/<name>/``).
    server : ServerConfig
        The coordinator's configuration.
    sites : dict of str to SiteConfig
        Each site's configuration.
    """

    root: Path
    server: ServerConfig
    sites: dict[str, SiteConfig]
    running: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start the coordinator, then every site at once (each checks itself first)."""
        coordinator.start_detached(self.server)
        self.running.append("server")
        with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
            for started in [pool.submit(self.start_site, name) for name in self.sites]:
                started.result()

    def start_site(self, name: str) -> None:
        """Start (or restart) one site."""
        site_node.start_detached(self.sites[name])
        self.running.append(name)

    def stop_site(self, name: str) -> None:
        """Stop one site."""
        site_node.stop_site(self.sites[name])
        if name in self.running:
            self.running.remove(name)

    def approve(self, study: Study, *, sites: list[str] | None = None) -> None:
        """Each named site (default: all) approves ``study`` run by the deployment bundle."""
        for name in sites or list(self.sites):
            folder = SiteFolder.open(self.sites[name].governance_dir)
            folder.approve(
                study.hash,
                bundle_hash(),
                study_name=study.name,
                by="loopback",
                reason="local trial",
            )

    def run(self, study: Study, *, timeout: float = 600.0, **kwargs: Any) -> dict[str, Any]:
        """Submit ``study`` and wait for its summary."""
        submitted = coordinator.submit_study(self.server, study, **kwargs)
        return coordinator.wait_for_run(self.server, submitted, timeout=timeout)

    def stop(self) -> None:
        """Stop every site (at once), then the coordinator."""
        with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
            list(pool.map(site_node.stop_site, self.sites.values()))
        coordinator.stop_server(self.server)
        self.running.clear()


def build_loopback(root: Path, data: dict[str, Path]) -> LoopbackConsortium:
    """Write certificates, keys and configs for a coordinator and one site per table.

    Parameters
    ----------
    root : Path
        Empty folder for the consortium.
    data : dict of str to Path
        Site name to the site's table.
    """
    certs = init_certificates(root / "certs", hosts=["127.0.0.1", "localhost"], sites=list(data))
    server_file = root / "server" / "server.toml"
    server_file.parent.mkdir(parents=True, exist_ok=True)
    server_file.write_text(
        tomli_w.dumps(
            {
                "server": {"state_dir": "state", "port": free_port()},
                "tls": {
                    "ca_certificate": str(certs.ca_certificate),
                    "certificate": str(certs.server_certificate),
                    "private_key": str(certs.server_key),
                },
                "sites": {name: f"{key}.pub" for name, key in certs.site_keys.items()},
            }
        )
    )
    server = load_server_config(server_file)
    sites = {}
    for name, table in data.items():
        folder = root / "sites" / name
        folder.mkdir(parents=True)
        SiteFolder.init(folder / "governance", name)
        (folder / "site.toml").write_text(
            tomli_w.dumps(
                {
                    "site": {"name": name},
                    "coordinator": {
                        "address": server.address,
                        "ca_certificate": str(certs.ca_certificate),
                    },
                    "identity": {"private_key": str(certs.site_keys[name])},
                    "data": {"file": str(Path(table).resolve())},
                    "runtime": {"runtime_port": free_port()},
                }
            )
        )
        sites[name] = load_site_config(folder / "site.toml")
    return LoopbackConsortium(root, server, sites)
