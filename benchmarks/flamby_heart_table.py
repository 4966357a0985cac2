"""FLamby's Fed-Heart-Disease benchmark: our table beside FLamby's published results.

Usage::

    python benchmarks/flamby_heart_table.py [--data DIR] [--flamby-results DIR]
        [--out DIR] [--workers N] [--protocol flamby|lhs|both]

Two protocols, each a ready study in simulations/:

- ``flamby``: FLamby's exactly (heart_disease_flamby.toml: per-centre
  normalisation, 740 rows, FLamby's split, 15 rounds x 100 steps, batch 4,
  baselines 50 epochs of Adam);
- ``lhs``: lhs-federated's (heart_disease_lhs.toml: federated imputation and
  standardisation, 920 rows, the same split procedure and budget).

Hyperparameters are chosen without touching a test row:

1. tuning: every candidate of every strategy (CANDIDATES below) runs with
   ``data.evaluate_on = "validation"``: each site's training split is split
   again (80/20, stratified, seed 44) and models are scored on the 20%;
   seeds 42 and 43;
2. selection: per strategy, the candidate with the best validation accuracy
   (mean over the four sites, then over the tuning seeds; ties: higher
   validation AUROC, then the earlier candidate). Under the lhs protocol the
   baselines' learning rate is chosen the same way, by the pooled model's
   validation accuracy (FLamby's baselines keep FLamby's fixed protocol);
3. final: the chosen settings run on the test splits with seeds 42-46.

Reported per method: mean accuracy over the four centre test sets (mean and SD
over the five seeds), as FLamby reports it, and AUROC and accuracy on all
test rows together. FLamby's "Local i" rows are model i scored at all four
centres, and so are ours. Every run is kept under --out; re-running resumes.

``--only baselines`` runs the pooled and local rows alone (one FedAvg round per
seed carries them), the quick way to check the anchor against FLamby's rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lhs_federated import load_study
from lhs_federated.research.sweep import PlannedRun, SweepProgress, execute_runs
from lhs_federated.results.progress import LOGGER as PROGRESS_LOGGER

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = {
    "flamby": REPO / "simulations" / "heart_disease_flamby.toml",
    "lhs": REPO / "simulations" / "heart_disease_lhs.toml",
}
SEEDS = (42, 43, 44, 45, 46)
TUNING_SEEDS = (42, 43)
LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1)
# FLamby's FedOpt settings (FedAdagrad has no betas).
FEDOPT = {
    "fedadam": {"beta_1": 0.9, "beta_2": 0.999, "tau": 1e-8},
    "fedyogi": {"beta_1": 0.9, "beta_2": 0.999, "tau": 1e-8},
    "fedadagrad": {"tau": 1e-8},
}


def _grid(**axes: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


# Candidates per strategy: local learning rate ("lr") and strategy parameters.
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "fedavg": _grid(lr=LEARNING_RATES),
    "fedprox": _grid(lr=(0.01, 0.03), proximal_mu=(0.01, 0.1, 1.0)),
    "fedadam": _grid(lr=(0.001, 0.01), eta=(0.01, 0.03, 0.1)),
    "fedyogi": _grid(lr=(0.001, 0.01), eta=(0.01, 0.03, 0.1)),
    "fedadagrad": _grid(lr=(0.001, 0.01), eta=(0.03, 0.1, 0.3)),
    "scaffold": _grid(lr=LEARNING_RATES),
    "fedavg-ft": [
        {"lr": lr, "fine_tune_steps": steps, "fine_tune_learning_rate": ft_lr}
        for lr in (0.003, 0.01, 0.03)
        for steps, ft_lr in ((20, 0.05), (50, 0.05), (50, 0.01))
    ],
}
FLAMBY_METHODS = {
    "Pooled Training": "pooled",
    "Local 0": "local cleveland",
    "Local 1": "local hungary",
    "Local 2": "local switzerland",
    "Local 3": "local va",
    "FedAvg100": "fedavg",
    "FedProx100": "fedprox",
    "FedAdam100": "fedadam",
    "FedYogi100": "fedyogi",
    "FedAdagrad100": "fedadagrad",
    "Scaffold100": "scaffold",
    "Cyclic100": "cyclic",
}
SITES = ("cleveland", "hungary", "switzerland", "va")
#: How the pooled row is trained under FLamby's protocol, said beside its figure.
POOLED_NOTE = (
    "pooled (FLamby protocol): trained on all centres' training rows standardised with the "
    "pooled rows' mean and SD (n-1), as FLamby's FedHeartDisease(pooled=True) does; scored "
    "at each centre on rows standardised with that centre's own statistics (FLamby's "
    "per-centre test sets). Standardising each centre's rows with its own statistics "
    'instead (baselines.pooled_scaling = "sites") gives 0.714 (SD 0.001). '
    "'FLamby acc all' is FLamby's 'Pooled Test': every model scored on all test rows "
    "standardised with the pooled training statistics; our 'acc all' scores each centre's "
    "rows as that centre scales them, so those two columns differ by construction."
)


def overrides(
    strategy: str,
    candidate: dict[str, Any],
    seed: int,
    *,
    baselines: bool = False,
    baselines_lr: float | None = None,
) -> dict[str, Any]:
    """Study overrides of one run: strategy, its parameters, learning rate, seed.

    ``baselines`` trains the pooled and local models in the run, with
    ``baselines_lr`` if given (else the study's own baseline protocol).
    """
    params = {k: v for k, v in candidate.items() if k != "lr"}
    params = {**FEDOPT.get(strategy, {}), **params}
    result: dict[str, Any] = {
        "seed": seed,
        "strategy.name": strategy,
        "strategy.params": params,
        "training.learning_rate": candidate["lr"],
        "baselines.enabled": baselines,
    }
    if baselines_lr is not None:
        result["baselines.learning_rate"] = baselines_lr
    return result


def plan(study: Any, runs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[PlannedRun]:
    """Planned runs of ``study`` with each run's overrides."""
    planned = []
    for strategy, candidate, extra in runs:
        variant = study.with_overrides(extra)
        planned.append(
            PlannedRun(
                variant.hash[:16],
                {"strategy": strategy, "candidate": json.dumps(candidate), "seed": variant.seed},
                variant,
            )
        )
    return planned


def summaries(folder: Path, planned: list[PlannedRun]) -> list[dict[str, Any]]:
    """One record per finished run: labels and the summary's comparison."""
    records = []
    for run in planned:
        path = folder / "runs" / run.run_id / "summary.json"
        if path.is_file():
            comparison = json.loads(path.read_text())["comparison"]
            records.append({**run.labels, "comparison": comparison})
    return records


def tune(study: Any, protocol: str, folder: Path, workers: int | None) -> dict[str, Any]:
    """Run every candidate on validation splits; return the chosen settings."""
    validation = study.with_overrides({"data.evaluate_on": "validation"})
    runs = []
    for strategy, candidates in CANDIDATES.items():
        for candidate, seed in itertools.product(candidates, TUNING_SEEDS):
            extra = overrides(strategy, candidate, seed)
            if protocol == "lhs" and strategy == "fedavg":  # baselines tuned along
                extra = overrides(
                    strategy, candidate, seed, baselines=True, baselines_lr=candidate["lr"]
                )
            runs.append((strategy, candidate, extra))
    planned = plan(validation, runs)
    execute_runs(
        planned, folder, metrics=("accuracy", "auroc"), workers=workers, name=f"tuning {protocol}"
    )
    records = summaries(folder, planned)
    table = pd.DataFrame(
        [
            {
                "strategy": r["strategy"],
                "candidate": r["candidate"],
                "seed": r["seed"],
                "accuracy": r["comparison"]["mean"]["federated"]["accuracy"],
                "auroc": r["comparison"]["mean"]["federated"]["auroc"],
                "pooled_accuracy": r["comparison"]["mean"].get("pooled", {}).get("accuracy"),
                "pooled_auroc": r["comparison"]["mean"].get("pooled", {}).get("auroc"),
            }
            for r in records
        ]
    )
    table.to_csv(folder / "tuning.csv", index=False)
    means = (
        table.groupby(["strategy", "candidate"], sort=False).mean(numeric_only=True).reset_index()
    )
    chosen: dict[str, Any] = {}
    for strategy in CANDIDATES:
        rows = means[means["strategy"] == strategy]
        best = rows.sort_values(["accuracy", "auroc"], ascending=False, kind="stable").iloc[0]
        chosen[strategy] = {
            "candidate": json.loads(best["candidate"]),
            "validation_accuracy": best["accuracy"],
            "validation_auroc": best["auroc"],
        }
    if protocol == "lhs":
        rows = means[means["strategy"] == "fedavg"]
        best = rows.sort_values(
            ["pooled_accuracy", "pooled_auroc"], ascending=False, kind="stable"
        ).iloc[0]
        chosen["baselines"] = {
            "learning_rate": json.loads(best["candidate"])["lr"],
            "validation_accuracy": best["pooled_accuracy"],
        }
    return chosen


def final(
    study: Any, protocol: str, chosen: dict[str, Any], folder: Path, workers: int | None
) -> list[dict[str, Any]]:
    """Run the chosen settings on the test splits with every seed."""
    runs = []
    for strategy in CANDIDATES:
        candidate = chosen[strategy]["candidate"]
        for seed in SEEDS:
            extra = overrides(strategy, candidate, seed)
            if strategy == "fedavg":  # the baselines ride along with the FedAvg runs
                lr = chosen["baselines"]["learning_rate"] if protocol == "lhs" else None
                extra = overrides(strategy, candidate, seed, baselines=True, baselines_lr=lr)
            runs.append((strategy, candidate, extra))
    planned = plan(study, runs)
    execute_runs(
        planned, folder, metrics=("accuracy", "auroc"), workers=workers, name=f"final {protocol}"
    )
    return summaries(folder, planned)


def baselines_only(study: Any, folder: Path, workers: int | None) -> list[dict[str, Any]]:
    """The pooled and local rows alone: one FedAvg round per seed carries the baselines."""
    runs = []
    for seed in SEEDS:
        candidate = {"lr": study.training.learning_rate}
        extra = {**overrides("fedavg", candidate, seed, baselines=True), "rounds": 1}
        runs.append(("fedavg", candidate, extra))
    planned = plan(study, runs)
    execute_runs(planned, folder, metrics=("accuracy",), workers=workers, name="baselines")
    return summaries(folder, planned)


def our_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per method and seed: mean accuracy over centres and all-test-rows metrics."""
    rows = []
    for r in records:
        c = r["comparison"]
        rows.append(
            {
                "method": r["strategy"],
                "seed": r["seed"],
                "mean_accuracy": c["mean"]["federated"]["accuracy"],
                "all_auroc": c["all-sites"]["federated"]["auroc"],
                "all_accuracy": c["all-sites"]["federated"]["accuracy"],
                **{f"acc_{s}": c["per_site"][s]["federated"]["accuracy"] for s in SITES},
            }
        )
        if "pooled" in c["all-sites"]:
            rows.append(
                {
                    "method": "pooled",
                    "seed": r["seed"],
                    "mean_accuracy": c["mean"]["pooled"]["accuracy"],
                    "all_auroc": c["all-sites"]["pooled"]["auroc"],
                    "all_accuracy": c["all-sites"]["pooled"]["accuracy"],
                    **{f"acc_{s}": c["per_site"][s]["pooled"]["accuracy"] for s in SITES},
                }
            )
            for site in SITES:
                across = c["cross_site"]["accuracy"][site]
                rows.append(
                    {
                        "method": f"local {site}",
                        "seed": r["seed"],
                        "mean_accuracy": float(np.mean([across[s] for s in SITES])),
                        "all_auroc": c["all-sites"][f"local:{site}"]["auroc"],
                        "all_accuracy": c["all-sites"][f"local:{site}"]["accuracy"],
                        **{f"acc_{s}": across[s] for s in SITES},
                    }
                )
    per_seed = pd.DataFrame(rows)
    table = per_seed.groupby("method", sort=False).agg(
        seeds=("seed", "count"),
        mean_accuracy=("mean_accuracy", "mean"),
        sd=("mean_accuracy", lambda v: v.std(ddof=1)),
        **{f"acc_{s}": (f"acc_{s}", "mean") for s in SITES},
        all_auroc=("all_auroc", "mean"),
        all_accuracy=("all_accuracy", "mean"),
    )
    return table


def flamby_table(folder: Path) -> pd.DataFrame:
    """FLamby's per-seed CSVs: mean accuracy over the four centres (SD over seeds)."""
    frames = [pd.read_csv(path) for path in sorted(folder.glob("heart_seed*.csv"))]
    if not frames:
        raise SystemExit(f"no heart_seed*.csv files in {folder}")
    results = pd.concat(frames)
    centres = results[results["Test"] != "Pooled Test"]
    per_seed = centres.groupby(["Method", "seed"])["Metric"].mean().groupby("Method")
    pooled_test = results[results["Test"] == "Pooled Test"].groupby("Method")["Metric"].mean()
    table = pd.DataFrame(
        {
            "flamby_accuracy": per_seed.mean(),
            "flamby_sd": per_seed.std(ddof=1),
            "flamby_pooled_test_accuracy": pooled_test,
        }
    )
    table.index = [FLAMBY_METHODS.get(m, m) for m in table.index]
    return table


def show(protocol: str, ours: pd.DataFrame, flamby: pd.DataFrame | None) -> str:
    order = ["pooled", *(f"local {s}" for s in SITES), *CANDIDATES, "cyclic"]
    lines = []
    header = (
        f"{'method':<18}{'mean acc (SD)':>16}"
        + "".join(f"{s[:6]:>8}" for s in SITES)
        + f"{'AUROC all':>11}{'acc all':>9}"
    )
    if flamby is not None:
        header += f"   | {'FLamby acc (SD)':>16}{'FLamby acc all':>16}"
    lines.append(header)
    for method in order:
        row = ours.loc[method] if method in ours.index else None
        if row is None and (flamby is None or method not in flamby.index):
            continue
        text = f"{method:<18}"
        if row is None:
            text += f"{'—':>16}" + "".join(f"{'—':>8}" for _ in SITES) + f"{'—':>11}{'—':>9}"
        else:
            text += f"{row['mean_accuracy']:>9.3f} ({row['sd']:.3f})" + "".join(
                f"{row[f'acc_{s}']:>8.3f}" for s in SITES
            )
            text += f"{row['all_auroc']:>11.3f}{row['all_accuracy']:>9.3f}"
        if flamby is not None:
            if method in flamby.index:
                f = flamby.loc[method]
                text += f"   | {f['flamby_accuracy']:>9.3f} ({f['flamby_sd']:.3f})"
                text += f"{f['flamby_pooled_test_accuracy']:>16.3f}"
            else:
                text += f"   | {'—':>16}{'—':>16}"
        lines.append(text)
    return "\n".join(lines)


def targets(protocol: str, ours: pd.DataFrame) -> str:
    federated = ours.loc[[m for m in CANDIDATES if m in ours.index]]
    best = federated["mean_accuracy"].idxmax()
    value = federated.loc[best, "mean_accuracy"]
    if protocol == "flamby":
        ok = value >= 0.745
        return (
            f"target (best federated >= 0.745): {best} {value:.3f} -> {'met' if ok else 'NOT met'}"
        )
    pooled = ours.loc["pooled", "mean_accuracy"]
    ok = value >= 0.80 and value >= pooled - 0.01
    return (
        f"target (best federated >= 0.80 and within 0.01 of pooled {pooled:.3f}): "
        f"{best} {value:.3f} ({value - pooled:+.3f} vs pooled) -> {'met' if ok else 'NOT met'}"
    )


class _Ticker(logging.Handler):
    """Runs done so far: one updating line on a terminal, a line per 10 runs in a log."""

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "lhs_progress", None)
        if not isinstance(event, SweepProgress):
            return
        text = f"{event.sweep}: {event.done}/{event.total} runs"
        if sys.stderr.isatty():
            end = "\n" if event.done == event.total else ""
            print(f"\r{text}", end=end, file=sys.stderr, flush=True)
        elif event.done % 10 == 0 or event.done == event.total:
            print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("/work/shared/data/uci-heart-disease"),
        help="folder with the four processed.*.data files",
    )
    parser.add_argument(
        "--flamby-results",
        type=Path,
        default=Path("/work/shared/data/flamby-fed-heart-disease-results"),
        help="FLamby's heart_seed*.csv files",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "flamby-heart",
        help="runs and tables (resumed if present)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )
    parser.add_argument("--protocol", choices=("flamby", "lhs", "both"), default="both")
    parser.add_argument(
        "--only",
        choices=("baselines",),
        default=None,
        help="baselines: the pooled and local rows alone (minutes, not the whole table)",
    )
    args = parser.parse_args(argv)

    PROGRESS_LOGGER.setLevel(logging.INFO)
    PROGRESS_LOGGER.addHandler(_Ticker())
    flamby = flamby_table(args.flamby_results)
    protocols = ("flamby", "lhs") if args.protocol == "both" else (args.protocol,)
    report: dict[str, Any] = {}
    for protocol in protocols:
        study = load_study(PROTOCOLS[protocol]).with_overrides(
            {"data.path": str(args.data.resolve())}
        )
        folder = args.out / protocol
        if args.only == "baselines":
            ours = our_table(baselines_only(study, folder / "baselines", args.workers))
            ours = ours.loc[[m for m in ours.index if m != "fedavg"]]
            print(f"\n{protocol} protocol, baselines only (seeds {SEEDS[0]}-{SEEDS[-1]}):")
            anchors = flamby.loc[[m for m in flamby.index if m in ours.index]]
            print(show(protocol, ours, anchors if protocol == "flamby" else None))
            if protocol == "flamby":
                print(POOLED_NOTE)
            continue
        chosen = tune(study, protocol, folder / "tuning", args.workers)
        ours = our_table(final(study, protocol, chosen, folder / "final", args.workers))
        ours.to_csv(folder / "table.csv")
        title = {
            "flamby": "FLamby protocol (per-centre normalisation, 740 rows)",
            "lhs": "lhs-native protocol (federated imputation and standardisation, 920 rows)",
        }[protocol]
        print(
            f"\n{title}: accuracy at 0.5; mean over the 4 centre test sets, "
            f"SD over seeds {SEEDS[0]}-{SEEDS[-1]}"
        )
        print(show(protocol, ours, flamby if protocol == "flamby" else None))
        if protocol == "flamby":
            print(POOLED_NOTE)
        print(targets(protocol, ours))
        print(
            "chosen on validation splits:",
            json.dumps({k: v.get("candidate", v) for k, v in chosen.items()}),
        )
        report[protocol] = {"chosen": chosen, "table": ours.reset_index().to_dict("records")}
    if args.only:
        return
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
