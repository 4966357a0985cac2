"""Starting, watching and stopping the Flower processes of a deployment.

Every wait has a deadline, every process writes to a log file in the owner's
state folder, and a start that fails part-way stops whatever it had started,
so a bad configuration never leaves a stray SuperLink or SuperNode running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lhs_federated.errors import ConfigError, LhsError


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: their own home, no telemetry, no installs.

    Flower's processes start others by name (the SuperLink starts
    ``flower-superexec``, which starts ``flwr-serverapp``), so the folder of
    this Python's executables comes first on ``PATH``.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }


def flower_command(name: str) -> str:
    """Path of a Flower executable installed beside this Python."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise LhsError(f"{name} not found next to {sys.executable} or on PATH; is flwr installed?")
    return found


def check_port_free(host: str, port: int, *, what: str) -> None:
    """Raise a clear error if ``host:port`` is already taken.

    Raises
    ------
    ConfigError
        Naming the port, what needed it, and how to choose another.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"port {port} on {host} is already in use ({exc.strerror}); {what} needs it. "
                "Stop whatever holds it or choose another port in the config."
            ) from exc


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def start_process(
    args: Sequence[str], *, log: Path, env: dict[str, str], detach: bool = False
) -> subprocess.Popen:
    """Start a process with its output appended to ``log``.

    A supervised process stays in its supervisor's process group, so that
    killing the supervisor's group (as a service manager does) stops it too;
    a ``detach``-ed one (a supervisor started in the background) gets a
    session of its own.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        return subprocess.Popen(
            list(args), stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=detach
        )


def tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    if not log.is_file():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    process: subprocess.Popen,
    timeout: float,
    what: str,
    log: Path,
    explain: Callable[[int], str] = lambda code: "",
) -> None:
    """Wait for ``ready()``; fail early if ``process`` exits, late at the deadline.

    Raises
    ------
    LhsError
        With the process's exit code explained and the end of its log.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        code = process.poll()
        if code is not None:
            reason = explain(code) or f"it exited with code {code}"
            raise LhsError(f"{what} did not start: {reason}.\nLast lines of {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            stop_process(process)
            raise LhsError(
                f"{what} was not ready after {timeout:g} s; stopped it.\n"
                f"Last lines of {log}:\n{tail(log)}"
            )
        time.sleep(0.2)


def stop_process(process: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited, unreaped child counts as gone)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True  # no procfs: the signal check above is all there is
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def terminate_pid(pid: int, *, what: str, timeout: float = 30.0) -> None:
    """SIGTERM a supervisor started elsewhere and wait until it has exited.

    Waiting for the process itself (not its pid file) matters: a supervisor
    removes its pid file while it is still stopping its children.

    Raises
    ------
    LhsError
        If it is still running after ``timeout`` seconds.
    """
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise LhsError(f"{what} (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.1)


def _started_at(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from procfs); None without procfs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_pid_file(path: Path, pid: int) -> None:
    """Record a detached process's pid and start time (atomically).

    The start time tells that process from a later one given the same pid:
    a supervisor killed without removing its file leaves a stale pid, and
    pids are reused within minutes on a busy machine (at most 32768 of them
    by default), so ``stop`` would otherwise signal a stranger.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{pid} {_started_at(pid) or ''}".rstrip() + "\n")
    tmp.replace(path)


def read_pid_file(path: Path) -> int | None:
    """The pid recorded in ``path`` if that very process is still alive.

    A live process with the pid but another start time is not it (the pid was reused).
    """
    try:
        pid_text, _, started = path.read_text().strip().partition(" ")
        pid = int(pid_text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    if started and _started_at(pid) not in (None, started):
        return None
    return pid
