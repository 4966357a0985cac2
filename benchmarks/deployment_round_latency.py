"""Seconds per round of a deployed study: a SuperLink and 3 sites on loopback.

Real processes throughout: TLS, SuperNode authentication, each site's gated
launcher, governance ledgers at the coordinator and at every site. Prints the
seconds of each round (from the coordinator's rounds.csv), their mean and
median, and the time to start the consortium; writes them to
benchmarks/results/deployment_round_latency.json. Target: at most 8 s per round
on average (Flower's defaults took 15-19 s per round on this kind of machine).

    python benchmarks/deployment_round_latency.py [--rounds 10] [--sites 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

from lhs_federated import load_study
from lhs_federated.cli import main as lhs_fed
from lhs_federated.deploy.loopback import build_loopback
from lhs_federated.results.writer import versions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sites", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lhs-latency-"))
    synth = ["data", "synth", "--sites", str(args.sites), "--rows-per-site", "300"]
    if lhs_fed([*synth, "--out", str(root / "data")]) != 0:
        raise SystemExit("could not write the synthetic site tables")
    tables = {p.stem: p for p in sorted((root / "data").glob("site-*.csv"))}
    consortium = build_loopback(root / "consortium", tables)
    study = load_study(None).with_overrides(
        {
            "name": "latency",
            "rounds": args.rounds,
            "data.source": "folder",
            "data.path": str(root / "data"),
            "federation.round_timeout": 120.0,
        }
    )
    started = time.perf_counter()
    consortium.start()
    start_seconds = time.perf_counter() - started
    try:
        consortium.approve(study)
        started = time.perf_counter()
        summary = consortium.run(study, timeout=60 * args.rounds + 300)
        run_seconds = time.perf_counter() - started
    finally:
        consortium.stop()
    run_dir = next((consortium.server.state_dir / "runs").glob("latency-*"))
    with (run_dir / "rounds.csv").open() as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    print(f"{args.sites} sites on loopback, TLS + node authentication, gated launchers, ledgers")
    print(f"start coordinator and sites: {start_seconds:.1f} s")
    print("round  seconds")
    for number, value in enumerate(seconds, start=1):
        print(f"{number:>5}  {value:7.2f}")
    mean, median = statistics.mean(seconds), statistics.median(seconds)
    print(f"mean {mean:.2f} s, median {median:.2f} s per round (target: mean <= 8 s)")
    print(f"whole run (ServerApp start, discovery, rounds, ledger close): {run_seconds:.1f} s")
    print(f"final mean AUROC {summary['final']['mean']['auroc']:.3f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "deployment_round_latency.json").write_text(
        json.dumps(
            {
                "sites": args.sites,
                "rounds": seconds,
                "mean": mean,
                "median": median,
                "start_seconds": start_seconds,
                "run_seconds": run_seconds,
                "versions": versions(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
