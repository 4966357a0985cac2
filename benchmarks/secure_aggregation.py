"""What SecAgg+ costs a round, and what it changes in the model.

For 4, 10 and 50 simulated sites (in-process engine, the default study's model,
governance and egress guard on as by default), plain FedAvg against the same
study with ``privacy.secure_aggregation = "secaggplus"``:

- seconds per round (median over rounds 2 to R: round 1 pays PyTorch's warm-up;
  the best of ``--repeats`` runs, as the machine may be shared),
- bytes per round the sites send for training (the replies of the round's
  training stages, as the coordinator's ledger records their sizes),
- the neighbours each site shares its secrets with (``num_shares``: every site
  up to 21 sites, SecAgg+'s sparse graph beyond),
- the federation's mean AUROC after the last round,
- the CPU seconds of the whole run (best of the repeats: steadier than wall time
  when other jobs share the machine);

then 3 deployed sites on loopback (SuperLink and SuperNodes as real processes),
plain and secure. Targets (issue 17): at most 2x plain FedAvg's round time at 10
simulated sites; mean AUROC within 0.005 of plain FedAvg on the default study.
Writes benchmarks/results/secure_aggregation.json.

    python benchmarks/secure_aggregation.py [--rounds 5] [--sites 4 10 50] [--repeats 3]
        [--no-deployed]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from lhs_federated import load_study, simulate
from lhs_federated.governance.verify import load_entries
from lhs_federated.results.writer import versions

SECURE = {"privacy.secure_aggregation": "secaggplus"}


def round_figures(run_dir: Path) -> dict[str, Any]:
    """Seconds and bytes per training round of a finished run, from rounds.csv and its ledger."""
    rounds = pd.read_csv(run_dir / "rounds.csv")
    seconds = rounds["seconds"].tolist()
    sizes: dict[int, int] = {}
    neighbours = None
    for entry in load_entries(run_dir / "governance" / "coordinator.jsonl"):
        data = entry.data
        if entry.kind == "secure-aggregation" and data.get("kind") == "model":
            neighbours = data["num_shares"]
        training = data.get("stage") != "evaluate"  # train, or the secure round's stages
        if entry.kind == "site-reply" and training and data.get("round") and data.get("size"):
            sizes[data["round"]] = sizes.get(data["round"], 0) + int(data["size"])
    summary = json.loads((run_dir / "summary.json").read_text())
    later = seconds[1:] or seconds
    return {
        "seconds_per_round": statistics.median(later),
        "first_round_seconds": seconds[0],
        "reply_bytes_per_round": statistics.median(sizes.values()) if sizes else None,
        "num_shares": neighbours,
        "mean_auroc": summary["final"]["mean"]["auroc"],
    }


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the fewest seconds per round, and every run's figure beside it."""
    best = min(runs, key=lambda run: run["seconds_per_round"])
    figures = {**best, "seconds_per_round_runs": [run["seconds_per_round"] for run in runs]}
    if "cpu_seconds" in best:  # in-process runs: the whole run's CPU, steadier on a busy machine
        figures["cpu_seconds"] = min(run["cpu_seconds"] for run in runs)
    return figures


def simulated(n_sites: int, rounds: int, repeats: int, root: Path) -> dict[str, Any]:
    """Plain and secure runs of the default study over ``n_sites`` synthetic sites."""
    study = load_study(None).with_overrides(
        {
            "name": f"bench-{n_sites}",
            "rounds": rounds,
            "data.synthetic.sites": n_sites,
            "baselines.enabled": False,
        }
    )
    figures = {}
    for label, overrides in (("plain", {}), ("secure", SECURE)):
        runs = []
        for repeat in range(repeats):
            out = root / f"{label}-{n_sites}-{repeat}"
            cpu = time.process_time()
            simulate(study.with_overrides(overrides), out_dir=out, report=False)
            runs.append({**round_figures(out), "cpu_seconds": time.process_time() - cpu})
        figures[label] = best_of(runs)
    figures["time_ratio"] = (
        figures["secure"]["seconds_per_round"] / figures["plain"]["seconds_per_round"]
    )
    figures["auroc_difference"] = abs(
        figures["secure"]["mean_auroc"] - figures["plain"]["mean_auroc"]
    )
    return figures


def default_study_quality(root: Path) -> dict[str, float]:
    """The default study as shipped, plain and secure: the final mean AUROC of each."""
    plain = simulate(load_study(None), out_dir=root / "default-plain", report=False)
    secure = simulate(
        load_study(None).with_overrides(SECURE), out_dir=root / "default-secure", report=False
    )
    a, b = plain.summary["final"]["mean"]["auroc"], secure.summary["final"]["mean"]["auroc"]
    return {"plain_auroc": a, "secure_auroc": b, "difference": abs(a - b)}


def deployed(rounds: int, repeats: int, root: Path) -> dict[str, Any]:
    """Plain and secure runs on a loopback consortium of 3 sites (real processes)."""
    from lhs_federated.cli import main
    from lhs_federated.deploy.loopback import build_loopback

    args = ["data", "synth", "--sites", "3", "--rows-per-site", "300", "--out", str(root / "data")]
    assert main(args) == 0
    tables = {p.stem: p for p in sorted((root / "data").glob("site-*.csv"))}
    consortium = build_loopback(root / "deploy", tables)
    consortium.start()
    figures: dict[str, Any] = {}
    try:
        for label, overrides in (("plain", {}), ("secure", SECURE)):
            runs = []
            for repeat in range(repeats):
                study = load_study(None).with_overrides(
                    {
                        "name": f"bench-deployed-{label}-{repeat}",
                        "rounds": rounds,
                        "data.source": "folder",
                        "data.path": str(root / "data"),
                        "baselines.enabled": False,
                        **overrides,
                    }
                )
                consortium.approve(study)
                consortium.run(study)
                run_dir = next((consortium.server.state_dir / "runs").glob(f"{study.name}-*"))
                runs.append(round_figures(run_dir))
            figures[label] = best_of(runs)
    finally:
        consortium.stop()
    figures["time_ratio"] = (
        figures["secure"]["seconds_per_round"] / figures["plain"]["seconds_per_round"]
    )
    return figures


def main() -> None:
    """Run the measurements, print them, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 10, 50])
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; best kept")
    parser.add_argument("--no-deployed", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    results: dict[str, Any] = {
        "versions": versions(),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "simulated": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"best of {args.repeats} runs; seconds: median over rounds 2..{args.rounds}")
        print(f"{'sites':>6} {'plain s/round':>14} {'secure s/round':>15} {'ratio':>6} "
              f"{'plain B/round':>14} {'secure B/round':>15} {'shares':>7} "
              f"{'|dAUROC|':>9} {'CPU s/run plain':>16} {'secure':>7}")  # fmt: skip
        for n in args.sites:
            f = simulated(n, args.rounds, args.repeats, root)
            results["simulated"][n] = f
            print(
                f"{n:>6} {f['plain']['seconds_per_round']:>14.3f} "
                f"{f['secure']['seconds_per_round']:>15.3f} {f['time_ratio']:>6.2f} "
                f"{f['plain']['reply_bytes_per_round']:>14,.0f} "
                f"{f['secure']['reply_bytes_per_round']:>15,.0f} {f['secure']['num_shares']:>7} "
                f"{f['auroc_difference']:>9.5f} {f['plain']['cpu_seconds']:>16.2f} "
                f"{f['secure']['cpu_seconds']:>7.2f}"
            )
        quality = default_study_quality(root)
        results["default_study"] = quality
        print(
            f"default study: mean AUROC plain {quality['plain_auroc']:.4f}, secure "
            f"{quality['secure_auroc']:.4f}, difference {quality['difference']:.5f} "
            "(target <= 0.005)"
        )
        if not args.no_deployed:
            d = deployed(args.rounds, args.repeats, root)
            results["deployed_3_sites"] = d
            print(
                f"deployed, 3 sites on loopback: plain {d['plain']['seconds_per_round']:.2f} s, "
                f"secure {d['secure']['seconds_per_round']:.2f} s per round "
                f"(x{d['time_ratio']:.2f}); "
                f"replies {d['plain']['reply_bytes_per_round']:,.0f} B vs "
                f"{d['secure']['reply_bytes_per_round']:,.0f} B per round"
            )
    ten = results["simulated"].get(10)
    if ten:
        print(f"target: secure round at 10 sites <= 2x plain: x{ten['time_ratio']:.2f}")
    out = Path(__file__).parent / "results" / "secure_aggregation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
