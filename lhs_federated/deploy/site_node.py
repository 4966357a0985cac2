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

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lhs_federated.data.contract import contract_from
from lhs_federated.data.io import read_table
from lhs_federated.data.validation import validate_table
from lhs_federated.deploy import processes
from lhs_federated.deploy.certs import check_certificate, check_site_key
from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.site_config import SiteConfig

SUPERNODE_EXIT_REASONS = {
    302: "the site's private key could not be read by Flower",
    303: "node authentication needs TLS",
    305: (
        "the coordinator refused or could not be reached: is the address right, is the "
        "SuperLink running, and is this site's public key registered there "
        "(server.toml [sites], or `lhs-fed server register-site`)?"
    ),
}


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

    def log(self, name: str) -> Path:
        """Log file of one of the site's processes."""
        return self.state / "logs" / f"{name}.log"


def check_site(config: SiteConfig, *, connect: bool = True) -> list[str]:
    """Check a site's certificate, key, table and connection; return what passed.

    Raises
    ------
    ConfigError, DataError
        At the first failed check, naming the file or address.
    """
    passed = [f"site config {config.path}: valid"]
    ca = config.resolve(config.coordinator.ca_certificate)
    if ca is not None:
        check_certificate(ca, what="CA certificate")
        passed.append(f"CA certificate {ca}: valid")
    key = config.resolve(config.identity.private_key)
    check_site_key(key)  # type: ignore[arg-type]
    passed.append(f"site key {key}: an EC key Flower can use")
    table_path = config.resolve(config.data.file)
    table = read_table(table_path)  # type: ignore[arg-type]
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
    """The ``flower-supernode`` command line for a site."""
    args = [
        processes.flower_command("flower-supernode"),
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
        "60",
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

    Returns when either process stops or on SIGTERM/SIGINT, having stopped
    both.

    Raises
    ------
    ConfigError, DataError, LhsError
        If a check fails or a process does not start; nothing is left running.
    """
    paths = SitePaths(config.state_dir)
    running = processes.read_pid_file(paths.pid)
    if running is not None:
        raise ConfigError(f"site {config.site.name!r} is already running (pid {running}).")
    check_site(config)
    processes.check_port_free(
        "127.0.0.1", config.runtime.runtime_port, what="the SuperNode's Runtime API"
    )
    secret = _task_claim_secret(paths)
    env = processes.flower_environment(paths.flwr_home)
    supernode_log = paths.log("supernode")
    supernode = processes.start_process(supernode_args(config, secret), log=supernode_log, env=env)
    started: list[subprocess.Popen] = [supernode]
    try:
        processes.wait_until(
            lambda: "SuperNode ID" in processes.tail(supernode_log, 200),
            process=supernode,
            timeout=timeout,
            what=f"site {config.site.name!r} SuperNode",
            log=supernode_log,
            explain=lambda code: SUPERNODE_EXIT_REASONS.get(code, ""),
        )
        launcher_args = [
            sys.executable, "-m", "lhs_federated.deploy.site_launcher",
            "--config", config.path, "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        started.append(processes.start_process(launcher_args, log=paths.log("launcher"), env=env))
        processes.write_pid_file(paths.pid, os.getpid())
        paths.ready.write_text(f"{time.time()}\n")
        _supervise(started)
    finally:
        for process in reversed(started):
            processes.stop_process(process)
        for marker in (paths.ready, paths.pid):
            marker.unlink(missing_ok=True)


def _supervise(children: list[subprocess.Popen]) -> None:
    """Wait until a child exits or this process is asked to stop."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    exited = [c for c in children if c.poll() is not None]
    if exited and not stopping:
        raise LhsError(f"a site process stopped (exit code {exited[0].returncode}); see the logs.")


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
    process = processes.start_process(
        [sys.executable, "-m", "lhs_federated", "site", "start", "--config", config.path],
        log=log,
        env=dict(os.environ),
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
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while processes.read_pid_file(SitePaths(config.state_dir).pid) is not None:
        if time.monotonic() > deadline:
            raise LhsError(f"site {config.site.name!r} (pid {pid}) did not stop within 30 s")
        time.sleep(0.2)
    return True
