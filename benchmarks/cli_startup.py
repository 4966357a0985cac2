"""CLI start-up time: `lhs-fed --help`, `audit verify` and `site check --no-connect`.

Each command runs as a fresh process several times, beside `python -c pass` in the
same run (the bare interpreter on this machine, at this moment); the figures are
medians, and the targets are the excess over the bare interpreter: 0.5 s for
`--help` and `audit verify` on a small ledger, 1.5 s for `site check --no-connect`.
Beside the wall-clock time it prints the CPU seconds (user + system) each command
used: on a shared, busy machine the wall time grows with the load, the CPU time
much less, so that column says whether a change made a command lighter.

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lhs_federated.cli import main as lhs_fed
from lhs_federated.deploy.loopback import build_loopback

TARGETS = {"--help": 0.5, "audit verify": 0.5, "site check --no-connect": 1.5}


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``command`` run ``repeats`` times."""
    seconds, cpu = [], []
    for _ in range(repeats):
        started, cpu_before = time.perf_counter(), cpu_of_children()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - started)
        cpu.append(cpu_of_children() - cpu_before)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return statistics.median(seconds), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lhs-startup-"))
    study = root / "study.toml"
    study.write_text(
        'name = "startup"\nrounds = 1\n[data.synthetic]\nsites = 3\n'
        "[governance]\npreapproved = true\n"
    )
    if lhs_fed(["simulate", str(study), "--quiet", "--out", str(root / "run")]) != 0:
        raise SystemExit("could not run the small study whose ledger is verified")
    synth = ["data", "synth", "--sites", "1", "--rows-per-site", "200", "--out", str(root / "d")]
    if lhs_fed(synth) != 0:
        raise SystemExit("could not write a site table")
    site = build_loopback(root / "consortium", {"site-01": root / "d" / "site-01.csv"})
    ledger = root / "run" / "governance" / "coordinator.jsonl"
    entry = [sys.executable, "-m", "lhs_federated"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "--help": [*entry, "--help"],
        "audit verify": [
            *entry, "audit", "verify", str(ledger),
            "--public-key", str(ledger.with_name("coordinator.pub")),
        ],
        "site check --no-connect": [
            *entry, "site", "check", "--config", str(site.sites["site-01"].path), "--no-connect",
        ],
    }  # fmt: skip
    medians = {name: timed(command, args.repeats) for name, command in commands.items()}
    bare, bare_cpu = medians["python -c pass"]
    load = os.getloadavg()[0]
    print(
        f"median of {args.repeats} runs each (seconds); excess over `python -c pass`; "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    print(f"  {'':<33} {'wall':>6}  {'excess':>7}  {'target':>7}  {'cpu':>6}")
    print(f"  {'python -c pass':<33} {bare:6.3f}  {'':>7}  {'':>7}  {bare_cpu:6.3f}")
    worst = 0
    for name, target in TARGETS.items():
        wall, cpu = medians[name]
        excess = wall - bare
        verdict = "ok" if excess <= target else "OVER TARGET"
        worst |= excess > target
        print(
            f"  lhs-fed {name:<25} {wall:6.3f}  +{excess:6.3f}  +{target:<6}  {cpu:6.3f}  {verdict}"
        )
    sys.exit(1 if worst else 0)


if __name__ == "__main__":
    main()
