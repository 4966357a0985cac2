"""In-process engine against the Ray engine: the default study on 100 and 1000 synthetic sites.

For each number of sites and each engine, ``--repeats`` fresh processes (so no
run inherits another's imports, caches or Ray instance) each run the default
study's model on sites of 100 rows for 5 rounds, baselines and report off (they
run in the coordinator's process alike on both engines). Prints the wall
seconds of ``simulate`` (data, checks, the engine's start-up and the
federation; imports excluded), best of the repeats and all of them, and Ray
against in-process. The machine may be shared: the best of several is the
steadier figure, and the load average is printed. Target (issue 18): at 1000
sites, Ray no slower than in-process.

    python benchmarks/engines.py [--sites 100 1000] [--repeats 3] [--actors-per-core 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("inprocess", "ray")


def one(sites: int, engine: str, rounds: int, actors_per_core: float | None) -> dict:
    """Time one simulation in this process; the figures as a dict."""
    from lhs_federated import load_study, simulate
    from lhs_federated.apps import engines

    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("lhs_federated").setLevel(logging.ERROR)
    if actors_per_core is not None:  # the engine reads it when it starts
        engines.ACTORS_PER_CORE = actors_per_core
    study = load_study(None).with_overrides(
        {
            "data.synthetic.sites": sites,
            "data.synthetic.rows_per_site": 100,
            "rounds": rounds,
            "baselines.enabled": False,
        }
    )
    out = Path(tempfile.mkdtemp(prefix="lhs-engines-")) / "run"
    start = time.perf_counter()
    results = simulate(study, backend=engine, out_dir=out, report=False)
    wall = time.perf_counter() - start
    return {
        "sites": sites,
        "engine": engine,
        "wall": round(wall, 2),
        "arrays_sha256": results.summary["model"]["arrays_sha256"],
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--actors-per-core", type=float, default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figures = one(args.sites[0], args.engines[0], args.rounds, args.actors_per_core)
        print(json.dumps(figures))
        return
    print(f"{'sites':>6} {'engine':>10} {'best s':>8}  runs (s) [load]  model hash")
    for sites in args.sites:
        best: dict[str, float] = {}
        for engine in args.engines:
            runs = [_run_child(sites, engine, args) for _ in range(args.repeats)]
            best[engine] = min(r["wall"] for r in runs)
            walls = " ".join(f"{r['wall']:.1f}" for r in runs)
            loads = " ".join(f"{r['load']:.1f}" for r in runs)
            hashes = {r["arrays_sha256"][:12] for r in runs}
            print(f"{sites:>6} {engine:>10} {best[engine]:>8.1f}  {walls} [{loads}]  {hashes}")
        if len(best) == len(ENGINES):
            print(f"{sites:>6} {'ray/inproc':>10} {best['ray'] / best['inprocess']:>8.2f}")
    print("(best of the repeats, each in a fresh process; target at 1000 sites: ray/inproc <= 1)")


def _run_child(sites: int, engine: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", "--sites", str(sites), "--engines", engine]
    command += ["--rounds", str(args.rounds)]
    if args.actors_per_core is not None:
        command += ["--actors-per-core", str(args.actors_per_core)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{engine} at {sites} sites failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
