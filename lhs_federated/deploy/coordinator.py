"""The coordinating centre's processes: a Flower SuperLink and the studies it runs.

``lhs-fed server start`` checks the TLS files and the port, starts a
SuperLink with TLS and SuperNode authentication on, runtime dependency
installation, telemetry and update checks off, and its database, logs and
Flower home in the server's state folder; it registers the sites' public keys
through Flower's own registration and supervises the SuperLink.
``server run`` submits a study as the lhs-federated app bundle with the study
in its run config; ``server status`` lists runs and sites; ``server resume``
continues a stopped run from its checkpoint. All of it goes through Flower's
own CLI (``flwr run``, ``flwr ls``, ``flwr supernode``), pointed at the
server's Flower home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)
from lhs_federated.apps import run_config
from lhs_federated.apps.preflight import check_out_dir
from lhs_federated.apps.run_config import LOOP_RESULT_FILE, LOOP_TASK_KEY
from lhs_federated.config import is_plain_name
from lhs_federated.deploy import processes
from lhs_federated.deploy.app_bundle import write_bundle_dir
from lhs_federated.deploy.certs import check_certificate, check_private_mode
from lhs_federated.deploy.server_config import ServerConfig
from lhs_federated.errors import ConfigError, LhsError, StudyRunError
from lhs_federated.governance.run_files import GOVERNANCE_DIR, ledger_closed
from lhs_federated.results.progress import EVENTS_FILE, ProgressEvent, read_events, report_progress
from lhs_federated.results.writer import utc_now
from lhs_federated.study import Study, load_study

CONNECTION = "coordinator"  # the connection name in the server's Flower home


@dataclass(frozen=True)
class ServerPaths:
    """Files a coordinator keeps in its state folder."""

    state: Path

    @property
    def flwr_home(self) -> Path:  # noqa: D102
        return self.state / "flwr"

    @property
    def pid(self) -> Path:  # noqa: D102
        return self.state / "server.pid"

    @property
    def ready(self) -> Path:  # noqa: D102
        return self.state / "server.ready"

    @property
    def log(self) -> Path:  # noqa: D102
        return self.state / "logs" / "superlink.log"

    @property
    def sites(self) -> Path:
        """Site name -> registered node id, the binding the ServerApp enforces."""
        return self.state / run_config.SITE_NODES_FILE

    @property
    def runs(self) -> Path:  # noqa: D102
        return self.state / "runs"

    @property
    def bundle(self) -> Path:  # noqa: D102
        return self.state / "bundle"


def superlink_args(config: ServerConfig, paths: ServerPaths) -> list[str]:
    """The ``flower-superlink`` command line for a coordinator."""
    args = [
        sys.executable,
        "-m",
        "lhs_federated.deploy.superlink",  # Flower's, Control API for this host only
        "--host",
        config.server.host,
        "--port",
        str(config.server.port),
        "--disable-runtime-dependency-installation",
    ]
    if config.server.database is not None:
        args += ["--database", str(config.resolve(config.server.database))]
    if config.tls.insecure:
        return [*args, "--insecure"]
    return [
        *args,
        "--ssl-ca-certfile",
        str(config.resolve(config.tls.ca_certificate)),
        "--ssl-certfile",
        str(config.resolve(config.tls.certificate)),
        "--ssl-keyfile",
        str(config.resolve(config.tls.private_key)),
        "--enable-supernode-auth",
    ]


def check_server(config: ServerConfig) -> None:
    """Check the TLS files and the port before starting anything.

    Raises
    ------
    ConfigError
        For an expired certificate, one not issued by the CA or not naming the
        host sites connect to, or a port already in use.
    """
    if not config.tls.insecure:
        check_private_mode(
            config.resolve(config.tls.private_key),  # type: ignore[arg-type]
            what="TLS private key",
        )
        host = config.server.host if config.server.host not in ("0.0.0.0", "::") else None
        check_certificate(
            config.resolve(config.tls.certificate),  # type: ignore[arg-type]
            ca_path=config.resolve(config.tls.ca_certificate),
            host=host,
            what="server certificate",
        )
    processes.check_port_free(config.server.host, config.server.port, what="the SuperLink")


def write_connection(config: ServerConfig, paths: ServerPaths) -> None:
    """Point the server's Flower home at its SuperLink (for ``flwr`` commands)."""
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::") else config.server.host
    connection: dict[str, Any] = {"address": f"{host}:{config.server.port}"}
    if config.tls.insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(config.resolve(config.tls.ca_certificate))
    paths.flwr_home.mkdir(parents=True, exist_ok=True)
    (paths.flwr_home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
    )


def flwr(config: ServerConfig, *args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr`` command against the server's SuperLink; return its JSON.

    Raises
    ------
    LhsError
        If the command fails, with Flower's own message.
    """
    paths = ServerPaths(config.state_dir)
    env = processes.flower_environment(paths.flwr_home)
    done = subprocess.run(
        [processes.flower_command("flwr"), *args, "--format", "json"],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    try:
        payload = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError as exc:
        raise LhsError(f"`flwr {' '.join(args)}` failed: {done.stdout}{done.stderr}") from exc
    if not payload.get("success", False):
        raise LhsError(
            f"`flwr {' '.join(args[:2])}` failed: {payload.get('error-message', payload)}"
        )
    return payload


def register_site(config: ServerConfig, name: str, public_key: Path) -> str:
    """Register a site's SuperNode public key at the SuperLink; return its node id.

    A key that is already registered (a restart with a persistent database)
    keeps the node id the last start recorded for this site; a key registered
    for anything else is an error. On a loaded machine Flower's CLI sometimes
    gives up connecting to a SuperLink that is up ("Connection to the
    SuperLink is unavailable"): that is tried again twice, since otherwise
    the whole start fails.

    Raises
    ------
    ConfigError
        If ``name`` is not a plain site name, or the key is already registered
        but not as this site's.
    """
    if not is_plain_name(name):
        raise ConfigError(
            f"site name {name!r} must be 1-64 letters, digits, '-', '_' or '.' (as in [sites])."
        )
    try:
        payload = _register(config, name, public_key)
    except LhsError as error:
        if "already in use" not in error.message:
            raise
        known = registered_nodes(config).get(name)
        if known is None:
            raise ConfigError(
                f"the public key {str(public_key)!r} for site {name!r} is already registered at "
                "the SuperLink, but not as this site's: a key belongs to one site. Give the "
                "site its own key, or unregister the old node (server/README.md, key rotation)."
            ) from error
        return known
    node = str(payload["node-id"])
    write_registered_nodes(config, {**registered_nodes(config), name: node})
    return node


def _register(config: ServerConfig, name: str, public_key: Path) -> dict[str, Any]:
    """``flwr supernode register``, tried up to three times while the SuperLink is unreachable."""
    args = ("supernode", "register", str(public_key), CONNECTION, "--name", name)
    for _ in range(2):
        try:
            return flwr(config, *args)
        except LhsError as error:
            if "SuperLink is unavailable" not in error.message:
                raise
        time.sleep(2.0)
    return flwr(config, *args)


def registered_nodes(config: ServerConfig) -> dict[str, str]:
    """Site name -> node id, as the last start registered them (``state/sites.json``)."""
    path = ServerPaths(config.state_dir).sites
    return json.loads(path.read_text()) if path.is_file() else {}


def write_registered_nodes(config: ServerConfig, nodes: dict[str, str]) -> None:
    """Record which node id each site's key was registered as (the ServerApp binds by it)."""
    path = ServerPaths(config.state_dir).sites
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(nodes, indent=2) + "\n")
    tmp.replace(path)


def start_server(config: ServerConfig) -> None:
    """Check, start, register sites and supervise the SuperLink (foreground).

    What it waits for is reported as progress events: the SuperLink coming
    up, the sites registered, then the sites online (counts) until all are.

    Raises
    ------
    ConfigError, LhsError
        If a check fails or the SuperLink does not start; nothing is left running.
    """
    paths = ServerPaths(config.state_dir)
    running = processes.read_pid_file(paths.pid)
    if running is not None:
        raise ConfigError(f"the coordinator is already running (pid {running}).")
    check_server(config)
    env = processes.flower_environment(paths.flwr_home)
    env[run_config.SERVER_STATE_ENV] = str(paths.state)  # bindings and keys stay here
    # Run folders (checkpoints, ledgers), Flower's database and logs: the operator's, 0600.
    umask = os.umask(0o077)
    superlink = processes.start_process(superlink_args(config, paths), log=paths.log, env=env)
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::") else config.server.host
    report_progress(
        ProgressEvent(
            "waiting", f"waiting for the SuperLink on {config.address}", {"step": "superlink"}
        )
    )
    try:
        processes.wait_until(
            lambda: processes.port_open(host, config.server.port),
            process=superlink,
            timeout=config.server.start_timeout,
            what="the SuperLink",
            log=paths.log,
        )
        write_connection(config, paths)
        report_progress(
            ProgressEvent(
                "waiting",
                f"SuperLink up (pid {superlink.pid}); registering {len(config.sites)} sites",
                {"step": "register", "sites_total": len(config.sites)},
            )
        )
        nodes = {
            name: register_site(config, name, config.resolve(key))
            for name, key in config.sites.items()
        }  # type: ignore[arg-type]
        write_registered_nodes(config, nodes)
        processes.write_pid_file(paths.pid, os.getpid())
        paths.ready.write_text(f"{time.time()}\n")
        report_progress(
            ProgressEvent(
                "waiting",
                f"coordinator ready on {config.address}: {len(nodes)}/{len(config.sites)} "
                "sites registered; waiting for them to come online",
                {"step": "sites", "sites_registered": len(nodes)},
            )
        )
        _wait_for_stop(superlink, while_waiting=OnlineWatch(config, nodes))
    finally:
        os.umask(umask)
        processes.stop_process(superlink)
        for marker in (paths.ready, paths.pid):
            marker.unlink(missing_ok=True)


class OnlineWatch:
    """Reports the sites coming online, until all are.

    Asks the SuperLink (``flwr supernode ls``, a process each time) every
    :attr:`EVERY` seconds for the first :attr:`EAGER` seconds (sites start
    then), once a minute after that, and stops asking once every site is
    online: a coordinator that serves for weeks does not keep starting
    processes to tell nobody.
    """

    EVERY, EAGER, LATER = 5.0, 180.0, 60.0

    def __init__(self, config: ServerConfig, nodes: dict[str, str]) -> None:
        self.config = config
        self.names = {node: name for name, node in nodes.items()}
        self.started = self.next_ask = time.monotonic()
        self.online: list[str] | None = None
        self.done = False

    def __call__(self) -> None:
        """Ask the SuperLink if it is time to; report a changed count."""
        if self.done or time.monotonic() < self.next_ask:
            return
        try:
            listed = flwr(self.config, "supernode", "ls", CONNECTION, timeout=30.0)["nodes"]
        except (LhsError, subprocess.TimeoutExpired):
            listed = []
        online = sorted(
            self.names.get(str(n.get("node-id")), str(n.get("node-id")))
            for n in listed
            if n.get("status") == "online"
        )
        total = len(self.config.sites)
        if online != self.online:
            self.online = online
            report_progress(
                ProgressEvent(
                    "sites-online",
                    f"{len(online)}/{total} sites online"
                    + (f": {', '.join(online)}" if online else ""),
                    {"sites_online": len(online), "sites_total": total, "online": online},
                )
            )
        self.done = len(online) >= total
        eager = time.monotonic() - self.started < self.EAGER
        self.next_ask = time.monotonic() + (self.EVERY if eager else self.LATER)


def _wait_for_stop(process: subprocess.Popen, *, while_waiting: Callable[[], None]) -> None:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping and process.poll() is None:
            while_waiting()
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if process.poll() is not None and not stopping:
        raise LhsError(f"the SuperLink stopped (exit code {process.returncode}); see its log.")


def start_detached(config: ServerConfig, *, timeout: float = 120.0) -> int:
    """Start ``lhs-fed server start`` in the background; return its pid once ready."""
    paths = ServerPaths(config.state_dir)
    paths.state.mkdir(parents=True, exist_ok=True)
    log = paths.state / "logs" / "server.log"
    paths.ready.unlink(missing_ok=True)  # left by an instance that was killed
    process = processes.start_process(
        [sys.executable, "-m", "lhs_federated", "server", "start", "--config", config.path],
        log=log,
        env=dict(os.environ),
        detach=True,
    )
    processes.wait_until(
        paths.ready.exists, process=process, timeout=timeout, what="the coordinator", log=log
    )
    return process.pid


def stop_server(config: ServerConfig) -> bool:
    """Stop a running coordinator; return whether one was running."""
    paths = ServerPaths(config.state_dir)
    pid = processes.read_pid_file(paths.pid)
    if pid is None:
        return False
    processes.terminate_pid(pid, what="the coordinator")
    return True


@dataclass(frozen=True)
class SubmittedRun:
    """A study submitted to the SuperLink."""

    run_id: str
    out_dir: Path
    study: Study


def submit_study(
    config: ServerConfig,
    study: Study,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    loop_task: dict[str, Any] | None = None,
) -> SubmittedRun:
    """Submit ``study`` to the running SuperLink as the lhs-federated app bundle.

    ``loop_task`` makes it a learning-loop study (monitor, gate, recalibrate;
    see :func:`lhs_federated.apps.loop_tasks.run_loop_task`), whose release
    folders the coordinator reads.

    Raises
    ------
    ConfigError
        If the coordinator is not running.
    """
    paths = ServerPaths(config.state_dir)
    if out_dir is not None and not resume:
        check_out_dir(out_dir.resolve())  # now, not once the sites have joined
    if processes.read_pid_file(paths.pid) is None:
        raise ConfigError(
            f"the coordinator is not running (no live pid in {paths.pid}); "
            f"start it with `lhs-fed server start --config {config.path}`."
        )
    if out_dir is None:
        stamp = utc_now().replace(":", "").replace("-", "").replace("+0000", "Z")
        out_dir = paths.runs / f"{study.name}-{stamp}"
    out_dir = out_dir.resolve()
    settings = {
        run_config.STUDY_KEY: study.to_json(),
        run_config.OUT_DIR_KEY: str(out_dir),
        run_config.ENGINE_KEY: run_config.DEPLOYMENT,
        run_config.RESUME_KEY: resume,
        run_config.EXPECTED_SITES_KEY: len(config.sites),
    }
    if loop_task is not None:
        settings[LOOP_TASK_KEY] = json.dumps(loop_task)
    paths.runs.mkdir(parents=True, exist_ok=True)
    # The ledger key's path is the coordinator's business: not in the run config,
    # which every site receives, but beside it in the state folder (0600).
    private = paths.runs / run_config.private_settings_name(out_dir.name)
    key = config.resolve(config.ledger.signing_key)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({run_config.LEDGER_KEY: str(key) if key else ""}, handle)
    run_config_file = paths.runs / f".{out_dir.name}.run-config.toml"
    run_config_file.write_text(tomli_w.dumps(settings), encoding="utf-8")
    bundle = write_bundle_dir(paths.bundle)
    payload = flwr(config, "run", str(bundle), CONNECTION, "--run-config", str(run_config_file))
    return SubmittedRun(str(payload["run-id"]), out_dir, study)


def wait_for_run(
    config: ServerConfig,
    run: SubmittedRun,
    *,
    timeout: float,
    on_poll: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Wait until a run finishes; return its summary.

    ``on_poll`` is called twice a second meanwhile (the CLI follows the run's
    ``events.jsonl`` with it, to draw the same per-round bar as ``simulate``).

    Raises
    ------
    StudyRunError
        If the run fails (with the reason the ServerApp wrote) or does not
        finish in time.
    """
    deadline = time.monotonic() + timeout
    status, next_check = "", 0.0
    summary_path, failure = run.out_dir / "summary.json", run.out_dir / "failure.json"
    # The ServerApp writes summary.json or failure.json when the run ends; asking the
    # SuperLink (a `flwr` process each time) is only for runs that end without either.
    # summary.json comes before the ledger's seal, the seal before the sites are
    # told: wait for that (or a failure).
    while time.monotonic() < deadline and not _run_over(run.out_dir):
        if time.monotonic() >= next_check:
            runs = flwr(config, "ls", CONNECTION, "--run-id", run.run_id)["runs"]
            status = str(runs[0]["status"]) if runs else "unknown"
            if status.startswith("finished"):
                break
            next_check = time.monotonic() + 15.0
        if on_poll is not None:
            on_poll()
        time.sleep(0.5)
    if on_poll is not None:
        on_poll()
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    if (run.out_dir / LOOP_RESULT_FILE).is_file():  # a learning-loop study's result
        return json.loads((run.out_dir / LOOP_RESULT_FILE).read_text())
    if failure.is_file():
        raise StudyRunError(f"run {run.run_id} failed: {json.loads(failure.read_text())['error']}")
    if not status.startswith("finished"):
        raise StudyRunError(
            f"run {run.run_id} did not finish within {timeout:g} s (status {status})."
        )
    raise StudyRunError(f"run {run.run_id} ended ({status}) without results in {run.out_dir}.")


def _run_over(run_dir: Path) -> bool:
    """The run failed (its ledger closed, or never opened), or its sites hold the final hash.

    A study's seal comes before the sites are told its final hash (each records
    ``study-closed`` then), so a completed study is over at its ``ledger-sealed``
    event, not at the seal; a learning-loop task, which logs no such event, ends
    at the SuperLink's ``finished`` status.
    """
    if (run_dir / "failure.json").exists():
        return ledger_closed(run_dir) or not (run_dir / GOVERNANCE_DIR).exists()
    if not ledger_closed(run_dir):
        return False
    events, _ = read_events(run_dir / EVENTS_FILE)
    return any(event.kind == "ledger-sealed" for event in events)


def server_status(config: ServerConfig) -> dict[str, Any]:
    """Runs and sites known to the running SuperLink."""
    runs = flwr(config, "ls", CONNECTION)["runs"]
    nodes = flwr(config, "supernode", "ls", CONNECTION)["nodes"]
    names = registered_nodes(config)
    by_node = {node: name for name, node in names.items()}
    for node in nodes:
        node["site"] = by_node.get(str(node["node-id"]), "")
    return {"runs": runs, "nodes": nodes}


def resume_study(config: ServerConfig, run_dir: Path) -> SubmittedRun:
    """Resubmit a stopped run to continue from its checkpoint.

    Raises
    ------
    ConfigError
        If ``run_dir`` is not a run folder.
    """
    resolved = run_dir / "study.resolved.toml"
    if not resolved.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no study.resolved.toml).")
    if (run_dir / "summary.json").exists():
        raise ConfigError(f"{run_dir} holds a completed run; nothing to resume.")
    if not (run_dir / "checkpoint.pkl").exists():
        raise ConfigError(f"{run_dir} has no checkpoint: no round completed; run the study again.")
    # The failed attempt's note would otherwise be read as this attempt's outcome.
    (run_dir / "failure.json").unlink(missing_ok=True)
    return submit_study(config, load_study(resolved), out_dir=run_dir, resume=True)
