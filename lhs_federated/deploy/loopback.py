"""A whole consortium on one machine: a coordinator and sites on 127.0.0.1.

For trying a deployment before a real one (``lhs-fed demo consortium``), for
the end-to-end tests and for the round-latency benchmark. Everything is real:
a development CA and TLS certificate, one SuperNode key per site registered at
the SuperLink, each site with its own config, governance folder, data file and
gated launcher, all as separate processes. Only the network is loopback.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lhs_federated.data.contract import builtin_contract_text
from lhs_federated.data.io import write_table
from lhs_federated.data.synthetic import SyntheticCohort, generate_cohort
from lhs_federated.deploy import coordinator, processes, site_node
from lhs_federated.deploy.app_bundle import bundle_hash
from lhs_federated.deploy.certs import init_certificates
from lhs_federated.deploy.server_config import ServerConfig, load_server_config
from lhs_federated.errors import ConfigError
from lhs_federated.governance.keys import write_key_pair
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.results.progress import ProgressEvent, report_progress
from lhs_federated.site_config import SiteConfig, load_site_config
from lhs_federated.study import Study, load_study

SERVER_FILE = Path("server") / "server.toml"
SITES_DIR = "sites"
DATA_DIR = "data"
#: The study ``lhs-fed demo consortium`` writes for its sites' tables.
DEMO_STUDY = "study.toml"


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
        """Start the coordinator, then every site at once (each checks itself first).

        Each step is reported as a progress event (``waiting``, then ``started``
        with the count of sites up), so a command can show what it waits for.
        """
        report_progress(
            ProgressEvent(
                "waiting",
                f"starting the coordinator on {self.server.address}",
                {"step": "coordinator"},
            )
        )
        pid = coordinator.start_detached(self.server)
        self.running.append("server")
        report_progress(
            ProgressEvent(
                "started",
                f"coordinator up on {self.server.address} (pid {pid}), "
                f"{len(self.server.sites)} sites registered",
                {"process": "coordinator", "pid": pid, "address": self.server.address},
            )
        )
        report_progress(
            ProgressEvent(
                "waiting",
                f"starting {len(self.sites)} sites (each checks its data, certificate and key)",
                {"step": "sites", "sites_total": len(self.sites)},
            )
        )
        with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
            starts = {
                pool.submit(site_node.start_detached, site): n for n, site in self.sites.items()
            }
            for up, started in enumerate(as_completed(starts), start=1):
                self._started(starts[started], started.result(), up=up)

    def start_site(self, name: str) -> None:
        """Start (or restart) one site."""
        pid = site_node.start_detached(self.sites[name])
        self._started(name, pid, up=sum(1 for s in self.running if s in self.sites) + 1)

    def _started(self, name: str, pid: int, *, up: int) -> None:
        self.running.append(name)
        report_progress(
            ProgressEvent(
                "started",
                f"site {name} online ({up}/{len(self.sites)}, pid {pid})",
                {"process": name, "pid": pid, "sites_up": up, "sites_total": len(self.sites)},
            )
        )

    def is_running(self) -> bool:
        """Whether this consortium's coordinator runs (its pid file names a live process)."""
        pid_file = coordinator.ServerPaths(self.server.state_dir).pid
        return processes.read_pid_file(pid_file) is not None

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

    def stop(self) -> list[str]:
        """Stop every site (at once), then the coordinator; return what was running."""
        with ThreadPoolExecutor(max_workers=len(self.sites)) as pool:
            was_running = pool.map(site_node.stop_site, self.sites.values())
            stopped = dict(zip(self.sites, was_running, strict=True))
        ended = [name for name, was in stopped.items() if was]
        if coordinator.stop_server(self.server):
            ended.append("coordinator")
        self.running.clear()
        return ended


def build_loopback(
    root: Path,
    data: dict[str, Path],
    *,
    site_settings: dict[str, dict[str, Any]] | None = None,
    signing_key: bool = False,
) -> LoopbackConsortium:
    """Write certificates, keys and configs for a coordinator and one site per table.

    Parameters
    ----------
    root : Path
        Empty folder for the consortium.
    data : dict of str to Path
        Site name to the site's table.
    site_settings : dict, optional
        More tables of every site's ``site.toml`` (``{"approval": {...}}``).
    signing_key : bool
        Give the coordinator a ledger key of its own (``[ledger] signing_key``),
        as the learning loop in deployment needs to sign its releases.
    """
    certs = init_certificates(root / "certs", hosts=["127.0.0.1", "localhost"], sites=list(data))
    server_file = root / SERVER_FILE
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
                **({"ledger": {"signing_key": "ledger.key"}} if signing_key else {}),
            }
        )
    )
    if signing_key:
        write_key_pair(server_file.parent / "ledger.key")
    server = load_server_config(server_file)
    sites = {}
    for name, table in data.items():
        folder = root / SITES_DIR / name
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
                    **(site_settings or {}),
                }
            )
        )
        sites[name] = load_site_config(folder / "site.toml")
    return LoopbackConsortium(root, server, sites)


def open_loopback(root: Path) -> LoopbackConsortium:
    """The consortium :func:`build_loopback` wrote into ``root``, read back from its files.

    Raises
    ------
    ConfigError
        If ``root`` holds no such consortium.
    """
    server_file = root / SERVER_FILE
    if not server_file.is_file():
        raise ConfigError(
            f"{root} holds no consortium on this machine (no {SERVER_FILE}); "
            "make one with `lhs-fed demo consortium`."
        )
    server = load_server_config(server_file)
    sites = {name: load_site_config(root / SITES_DIR / name / "site.toml") for name in server.sites}
    return LoopbackConsortium(root, server, sites)


def build_demo(
    root: Path, *, sites: int, rows_per_site: int = 200, seed: int = 42
) -> LoopbackConsortium:
    """A loopback consortium with a synthetic table per site and a study for them.

    Writes ``data/`` (one table per site and the contract they meet), the
    consortium (:func:`build_loopback`) and ``study.toml``: the default study
    reading the same tables as a folder, so that ``lhs-fed simulate study.toml``
    runs the deployed study's simulated twin.

    Raises
    ------
    ConfigError
        If ``root`` exists and is not empty (nothing is overwritten).
    """
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"{root} already exists and is not empty; give another --dir, or start the "
            f"consortium it holds with `lhs-fed demo consortium --dir {root}`."
        )
    data = root / DATA_DIR
    data.mkdir(parents=True)
    report_progress(
        ProgressEvent(
            "step",
            f"writing {sites} site tables of about {rows_per_site} synthetic patients to {data}",
            {"step": "data"},
        )
    )
    tables = {}
    cohort = SyntheticCohort(sites=sites, rows_per_site=rows_per_site)
    for name, table in generate_cohort(cohort, seed=seed).items():
        write_table(table, data / f"{name}.csv")
        tables[name] = data / f"{name}.csv"
    (data / "contract.toml").write_text(builtin_contract_text("cardio-risk"), encoding="utf-8")
    report_progress(
        ProgressEvent(
            "step",
            "writing a development CA, TLS certificate, SuperNode keys and site folders",
            {"step": "certificates"},
        )
    )
    consortium = build_loopback(root, tables)
    study = load_study(None).with_overrides(
        {
            "name": "demo",
            "description": f"Ten-year cardiovascular risk, logistic regression, FedAvg over "
            f"{sites} sites on this machine (lhs-fed demo consortium)",
            "rounds": 2,
            "data.source": "folder",
            "data.path": str(data.resolve()),
        }
    )
    (root / DEMO_STUDY).write_text(study.to_toml(), encoding="utf-8")
    return consortium
