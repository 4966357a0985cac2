"""A site's processes: checks, the SuperNode, and the gated launcher.

``lhs-fed site start`` checks everything it can before starting anything
(config, CA certificate, key, the table against its contract, the connection
to the coordinator, the local port), then runs a Flower SuperNode in
process-isolation mode with a task-claim secret, and the site's launcher, which
alone can claim the SuperNode's tasks. It supervises both: if one stops, it
stops the other; on SIGTERM it stops both. Nothing is left running after a
failed start.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lhs_federated.data.contract import contract_from
from lhs_federated.data.io import read_table
from lhs_federated.data.validation import validate_table
from lhs_federated.deploy import processes
from lhs_federated.deploy.certs import check_certificate, check_site_key
from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.results.progress import ProgressEvent, report_progress
from lhs_federated.site_config import SiteConfig

LOGGER = logging.getLogger("lhs_federated.site")

SUPERNODE_EXIT_REASONS = {
    302: "the site's private key could not be read by Flower",
    303: "node authentication needs TLS",
    305: (
        "the coordinator refused or could not be reached: is the address right, is the "
        "SuperLink running, and is this site's public key registered there "
        "(server.toml [sites], or `lhs-fed server register-site`)?"
    ),
}


class NodeRefusedError(LhsError):
    """The coordinator refused or could not be reached when the SuperNode connected."""


@dataclass(frozen=True)
class SitePaths:
    """Files a running site keeps in its state folder."""

    state: Path

    @property
    def flwr_home(self) -> Path:  # noqa: D102
        return self.state / "flwr"

    @property
    def secret(self) -> Path:  # noqa: D102
        return self.state / "task-claim.secret"

    @property
    def pid(self) -> Path:  # noqa: D102
        return self.state / "site.pid"

    @property
    def ready(self) -> Path:  # noqa: D102
        return self.state / "site.ready"

    @property
    def alive(self) -> Path:
        """Touched while the site runs; left behind, with its time, by a crash."""
        return self.state / "site.alive"

    def log(self, name: str) -> Path:
        """Log file of one of the site's processes."""
        return self.state / "logs" / f"{name}.log"


def open_site_folder(config: SiteConfig) -> SiteFolder:
    """The site's governance folder, checked to belong to this site.

    Raises
    ------
    ConfigError
        If the folder is missing (make it with ``lhs-fed site init``) or
        belongs to another site.
    """
    folder = config.governance_dir
    if not folder.is_dir():
        raise ConfigError(
            f"{config.path}: the governance folder {str(folder)!r} does not exist; make it "
            f"with `lhs-fed site init {folder} --name {config.site.name}`."
        )
    site_folder = SiteFolder.open(folder)
    if site_folder.site != config.site.name:
        raise ConfigError(
            f"{config.path}: the governance folder {str(folder)!r} belongs to site "
            f"{site_folder.site!r}, not {config.site.name!r}."
        )
    return site_folder


def check_site(config: SiteConfig, *, connect: bool = True) -> list[str]:
    """Check a site's certificate, key, table and connection; return what passed.

    Raises
    ------
    ConfigError, DataError
        At the first failed check, naming the file or address.
    """
    passed = [f"site config {config.path}: valid"]
    folder = open_site_folder(config)
    approvals = folder.registry.approvals() if folder.registry.path.is_file() else []
    passed.append(f"governance folder {config.governance_dir}: {len(approvals)} approvals in force")
    ca = config.resolve(config.coordinator.ca_certificate)
    if ca is not None:
        check_certificate(ca, what="CA certificate")
        passed.append(f"CA certificate {ca}: valid")
    key = config.resolve(config.identity.private_key)
    check_site_key(key)  # type: ignore[arg-type]
    passed.append(f"site key {key}: an EC key Flower can use")
    if config.data.database is not None:
        from lhs_federated.data.omop.snapshot import site_database

        database = site_database(config)
        database.open().dispose()
        passed.append(f"database {database.where}: reachable")
        if connect:
            passed.append(check_connection(config))
        return passed
    table_path = config.resolve(config.data.file)
    table = read_table(
        table_path,  # type: ignore[arg-type]
        separator=config.data.csv_separator,
        decimal=config.data.csv_decimal,
    )
    if config.data.contract is not None:
        contract = contract_from(str(config.resolve(config.data.contract)), base_dir=None)
        validate_table(table, contract, file=str(table_path)).raise_for_errors()
        passed.append(f"data {table_path}: {len(table)} rows meet contract {contract.name!r}")
    else:
        passed.append(f"data {table_path}: {len(table)} rows read (no contract named to check)")
    if connect:
        passed.append(check_connection(config))
    return passed


def check_connection(config: SiteConfig, *, timeout: float = 5.0) -> str:
    """Open a TLS connection to the coordinator, verifying its certificate.

    Raises
    ------
    ConfigError
        If the address cannot be reached, or the certificate does not verify
        against the site's CA (expired, another CA, wrong host name).
    """
    address = config.coordinator.address
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw:
            if config.coordinator.insecure:
                return f"coordinator {address}: reachable (without TLS)"
            context = ssl.create_default_context(
                cafile=str(config.resolve(config.coordinator.ca_certificate))
            )
            with context.wrap_socket(raw, server_hostname=host):
                pass
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"coordinator {address}: its TLS certificate does not verify against "
            f"{config.coordinator.ca_certificate}: {exc.verify_message}."
        ) from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"coordinator {address}: TLS handshake failed ({exc.reason}).") from exc
    except OSError as exc:
        raise ConfigError(
            f"coordinator {address} cannot be reached ({exc.strerror or exc}); "
            "check coordinator.address and that the SuperLink is running."
        ) from exc
    return f"coordinator {address}: reachable, TLS certificate verified"


def _task_claim_secret(paths: SitePaths) -> Path:
    if not paths.secret.exists():
        paths.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(paths.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return paths.secret


def supernode_args(config: SiteConfig, secret: Path) -> list[str]:
    """The SuperNode command line for a site: Flower's, with a shorter idle poll."""
    args = [
        sys.executable,
        "-m",
        "lhs_federated.deploy.supernode",
        "--poll-interval",
        str(config.runtime.poll_interval),
        "--superlink",
        config.coordinator.address,
        "--isolation",
        "process",
        "--host",
        "127.0.0.1",
        "--port",
        str(config.runtime.runtime_port),
        "--superexec-auth-secret-file",
        str(secret),
        "--auth-supernode-private-key",
        str(config.resolve(config.identity.private_key)),
        "--max-wait-time",
        str(config.runtime.connect_timeout),
        "--node-config",
        f"site-config='{config.path}'",
    ]
    if config.coordinator.insecure:
        args.append("--insecure")
    else:
        args += ["--root-certificates", str(config.resolve(config.coordinator.ca_certificate))]
    return args


def start_site(config: SiteConfig, *, timeout: float = 90.0) -> None:
    """Check, start and supervise the site's SuperNode and launcher (foreground).

    The first start fails fast with the reason (nothing is left running). Once
    the site has joined, it stays joined (:func:`supervise`) until SIGTERM or
    SIGINT, however long the coordinator or its own SuperNode is away.

    Raises
    ------
    ConfigError, DataError, LhsError
        If a check fails or the processes do not start the first time.
    """
    paths = SitePaths(config.state_dir)
    running = processes.read_pid_file(paths.pid)
    if running is not None:
        raise ConfigError(f"site {config.site.name!r} is already running (pid {running}).")
    check_site(config)
    processes.check_port_free(
        "127.0.0.1", config.runtime.runtime_port, what="the SuperNode's Runtime API"
    )
    stop = _StopFlag()
    children: list[subprocess.Popen] = []
    # Ledgers, the privacy ledger, logs and Flower's state: the site's own, 0600.
    umask = os.umask(0o077)
    try:
        children = _first_launch(config, paths, stop, timeout=timeout)
        processes.write_pid_file(paths.pid, os.getpid())
        paths.ready.write_text(f"{time.time()}\n")
        report_progress(
            ProgressEvent(
                "started",
                f"site {config.site.name} joined the coordinator at "
                f"{config.coordinator.address}; serving until stopped",
                {"site": config.site.name, "address": config.coordinator.address},
            )
        )
        relaunch = functools.partial(_launch, config, paths, timeout=timeout)
        supervise(children, relaunch, stop, paths, config.site.name)
    finally:
        os.umask(umask)
        stop.restore()
        _stop_all(children)
        for marker in (paths.ready, paths.pid, paths.alive):
            marker.unlink(missing_ok=True)


def supervise(
    children: list[subprocess.Popen],
    launch: Callable[[], list[subprocess.Popen]],
    stop: _StopFlag,
    paths: SitePaths,
    site: str,
    *,
    first_pause: float = 5.0,
) -> None:
    """Keep the site's processes running until a stop is requested, then stop them.

    Whenever one stops (the coordinator restarted, the network dropped, the
    SuperNode gave up reconnecting and exited), both are stopped and started
    again after a pause that grows from ``first_pause`` (5 s) to 60 s. A failed start (the
    coordinator still down, or still counting the old node online) is retried
    the same way, for as long as it takes: a site never stays offline for want
    of a retry.
    """
    pause = first_pause
    try:
        while True:
            while not stop.requested and children and all(c.poll() is None for c in children):
                _mark_alive(paths)
                time.sleep(0.2)
            if stop.requested:
                return
            if children:
                code = next(c.returncode for c in children if c.poll() is not None)
                LOGGER.warning(
                    "a site process stopped (exit code %s); restarting in %.0f s", code, pause
                )
                _stop_all(children)
                children = []
            if stop.wait(pause):
                return
            try:
                children = launch()
                pause = first_pause
            except LhsError as error:
                pause = min(2 * pause, 60.0)
                LOGGER.warning(
                    "site %s could not rejoin: %s; retrying in %.0f s", site, error.message, pause
                )
    finally:
        _stop_all(children)


_ALIVE_EVERY = 5.0


def _online_after_last_heartbeat() -> float:
    """How long Flower's SuperLink counts a node online after its last heartbeat.

    It refuses to activate the node again before. Imported here, not at the
    top: ``site check`` loads this module and must not wait for Flower.
    """
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

    return HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL


def _mark_alive(paths: SitePaths) -> None:
    alive = paths.alive
    if not alive.exists() or time.time() - alive.stat().st_mtime >= _ALIVE_EVERY:
        alive.touch()


def _first_launch(
    config: SiteConfig, paths: SitePaths, stop: _StopFlag, *, timeout: float
) -> list[subprocess.Popen]:
    """Launch; after a crash, wait out the coordinator's memory of the old node once.

    A site that lost power comes back within seconds, but the coordinator
    still counts its node online for up to a minute and refuses it. The
    time the crashed instance was last alive says how long that lasts, so
    the site waits exactly that long (once) instead of failing.
    """
    try:
        return _launch(config, paths, timeout=timeout)
    except NodeRefusedError:
        if not paths.alive.exists():
            raise
        last_alive = paths.alive.stat().st_mtime
        wait = last_alive + _ALIVE_EVERY + _online_after_last_heartbeat() + 1 - time.time()
        if wait <= 0:
            raise
        LOGGER.warning(
            "the coordinator refused this site's node; its previous instance stopped without "
            "signing off %.0f s ago and may still count as online there: retrying in %.0f s",
            time.time() - last_alive,
            wait,
        )
        if stop.wait(wait):
            raise
        return _launch(config, paths, timeout=timeout)


def _launch(config: SiteConfig, paths: SitePaths, *, timeout: float) -> list[subprocess.Popen]:
    """Start the SuperNode, wait until it has joined, then start the launcher."""
    secret = _task_claim_secret(paths)
    env = processes.flower_environment(paths.flwr_home)
    supernode_log = paths.log("supernode")
    supernode = processes.start_process(supernode_args(config, secret), log=supernode_log, env=env)
    joined = _log_size(supernode_log)
    try:
        processes.wait_until(
            lambda: "SuperNode ID" in _log_since(supernode_log, joined),
            process=supernode,
            timeout=timeout,
            what=f"site {config.site.name!r} SuperNode",
            log=supernode_log,
            explain=lambda code: _supernode_exit_reason(supernode_log, joined, code),
        )
    except LhsError as error:
        processes.stop_process(supernode)
        if _flower_exit_code(supernode_log, joined) == 305:
            raise NodeRefusedError(error.message) from error
        raise
    launcher_args = [
        sys.executable, "-m", "lhs_federated.deploy.site_launcher",
        "--config", config.path, "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    return [supernode, processes.start_process(launcher_args, log=paths.log("launcher"), env=env)]


def _flower_exit_code(log: Path, offset: int) -> int | None:
    """Flower's exit code as the SuperNode logged it (its process exits with 1)."""
    logged = re.findall(r"Exit Code: (\d+)", _log_since(log, offset))
    return int(logged[-1]) if logged else None


def _supernode_exit_reason(log: Path, offset: int, code: int) -> str:
    """Explain a SuperNode's exit by Flower's exit code."""
    return SUPERNODE_EXIT_REASONS.get(_flower_exit_code(log, offset) or code, "")


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        processes.stop_process(child)


def _log_size(log: Path) -> int:
    return log.stat().st_size if log.is_file() else 0


def _log_since(log: Path, offset: int) -> str:
    """What a log gained since ``offset`` (a restarted SuperNode appends to it)."""
    with log.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


class _StopFlag:
    """Set by SIGTERM or SIGINT; restores the previous handlers when done."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return whether a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.requested

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def start_detached(config: SiteConfig, *, timeout: float = 120.0) -> int:
    """Start ``lhs-fed site start`` in the background; return its pid once ready.

    Raises
    ------
    LhsError
        If it fails to become ready, with the end of its output.
    """
    paths = SitePaths(config.state_dir)
    paths.state.mkdir(parents=True, exist_ok=True)
    log = paths.log("site")
    paths.ready.unlink(missing_ok=True)  # left by an instance that was killed
    process = processes.start_process(
        [sys.executable, "-m", "lhs_federated", "site", "start", "--config", config.path],
        log=log,
        env=dict(os.environ),
        detach=True,
    )
    processes.wait_until(
        paths.ready.exists,
        process=process,
        timeout=timeout,
        what=f"site {config.site.name!r}",
        log=log,
    )
    return process.pid


def stop_site(config: SiteConfig) -> bool:
    """Stop a running site (its supervisor stops both processes); return if one ran."""
    pid = processes.read_pid_file(SitePaths(config.state_dir).pid)
    if pid is None:
        return False
    processes.terminate_pid(pid, what=f"site {config.site.name!r}")
    return True
