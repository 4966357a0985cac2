"""Privacy-utility trade-off: DP-SGD against epsilon, and client-level DP central vs distributed.

Runs every combination of dataset x epsilon (0.5, 1, 3, 8 and no DP) x seed on
the in-process engine and prints a table of the mean over seeds of each run's
mean over sites (as FLamby reports), plus the DP time-overhead ratio (seconds of
the fastest DP run / seconds of the fastest run of the same study without DP).

Datasets:

- ``heart``: UCI Heart Disease, four hospitals, FLamby's protocol (drop-first
  one-hot, per-site scaling, 34 % stratified test split with split seed 43,
  logistic regression, 15 rounds of FedAvg, 100 local steps of batch 4), delta
  1e-3, study seeds 42-46. FLamby's DP FedAvg reached about 0.70 at epsilon 1.
  Target: mean accuracy >= 0.72 at epsilon 1.
- ``synthetic``: the default study (four synthetic sites), delta 1e-5.
- ``client-level`` (opt in: ``--datasets client-level``): the default study over
  40 synthetic sites at one epsilon (``--client-epsilon``, default 3), study
  seeds 0 to ``--seeds`` - 1, with no DP, central client-level DP (client-dp,
  Flower's server-side fixed clipping) and distributed DP (distributed-dp under
  SecAgg+) at the smallest-majority threshold (21 of 40: survives 19 dropouts)
  and at 36 of 40 (survives 4). Same clipping norm, same epsilon at every site;
  distributed-dp's sums carry more noise than central DP's by sqrt(sites in
  the sum / threshold), the price of surviving dropouts without trusting the
  coordinator. Each run's ``summed_epsilon`` is the epsilon of the noise the
  sums actually carried.

Sites get a large total budget here (the benchmark measures utility, not the
budget), and each run keeps its ledgers in its own run folder.

Usage::

    python benchmarks/privacy_utility.py [--seeds 5] [--datasets heart synthetic]
        [--out runs/benchmarks/privacy-utility] [--uci-folder PATH]
    python benchmarks/privacy_utility.py --datasets client-level --seeds 5

Writes ``runs.csv`` (one row per run) and ``table.csv`` in the output folder
(``client-level-runs.csv`` and ``client-level.csv`` for the client-level figure).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from lhs_federated import Study, load_study, simulate

REPO = Path(__file__).resolve().parents[1]
EPSILONS: tuple[float | None, ...] = (0.5, 1.0, 3.0, 8.0, None)
DELTAS = {"heart": 1e-3, "synthetic": 1e-5}


def default_uci_folder() -> Path:
    """``../shared/data/uci-heart-disease`` beside the repository (or higher up)."""
    for parent in REPO.parents:
        folder = parent / "shared" / "data" / "uci-heart-disease"
        if folder.is_dir():
            return folder
    raise SystemExit("UCI Heart Disease files not found; pass --uci-folder")


def heart_study(uci_folder: Path) -> Study:
    """UCI Heart under FLamby's protocol, built inline."""
    return load_study(None).with_overrides(
        {
            "name": "heart-flamby",
            "description": "UCI Heart Disease, FLamby protocol, logistic regression",
            "rounds": 15,
            "data.source": "uci-heart",
            "data.path": str(uci_folder),
            "data.test_fraction": 0.34,
            "data.split_seed": 43,
            "preprocessing.one_hot": "drop-first",
            "preprocessing.scaling": "site",
            "model.name": "logistic",
            "training.steps": 100,
            "training.batch_size": 4,
            "training.learning_rate": 0.01,
            "sites.epsilon_budget": 1000.0,
        }
    )


def synthetic_study() -> Study:
    """The default study on the synthetic cohort."""
    return load_study(None).with_overrides({"name": "synthetic", "sites.epsilon_budget": 1000.0})


def with_privacy(study: Study, epsilon: float | None, delta: float, seed: int) -> Study:
    """``study`` at ``seed`` with per-site DP-SGD at ``epsilon`` (``None``: no DP)."""
    overrides: dict[str, object] = {"seed": seed}
    if epsilon is not None:
        overrides.update(
            {"privacy.mode": "sample-dp", "privacy.epsilon": epsilon, "privacy.delta": delta}
        )
    return study.with_overrides(overrides)


CLIENT_SITES = 40
#: Client-level settings: label -> overrides (the epsilon is added to all but no DP).
CLIENT_MODES: dict[str, dict[str, object]] = {
    "no DP": {},
    "client-dp (central)": {"privacy.mode": "client-dp"},
    "distributed-dp t=21": {
        "privacy.mode": "distributed-dp",
        "privacy.secure_aggregation": "secaggplus",
        "privacy.secagg.reconstruction_threshold": 21,
    },
    "distributed-dp t=36": {
        "privacy.mode": "distributed-dp",
        "privacy.secure_aggregation": "secaggplus",
        "privacy.secagg.reconstruction_threshold": 36,
    },
}


def client_level_grid(epsilon: float, seeds: list[int], out: Path) -> pd.DataFrame:
    """Every client-level mode x seed on the default study over 40 sites; one row per run."""
    base = load_study(None).with_overrides(
        {"name": "client-level", "data.synthetic.sites": CLIENT_SITES}
    )
    rows = []
    total = len(CLIENT_MODES) * len(seeds)
    for label, overrides in CLIENT_MODES.items():
        for seed in seeds:
            privacy = {"privacy.epsilon": epsilon} if overrides else {}
            study = base.with_overrides({**overrides, **privacy, "seed": seed})
            folder = out / "runs" / f"client-level-{label.replace(' ', '_')}-seed{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            started = time.perf_counter()
            summary = simulate(study, out_dir=folder, report=False).summary
            seconds = time.perf_counter() - started
            spent = summary.get("privacy") or {}
            rows.append(
                {
                    "mode": label,
                    "seed": seed,
                    "auroc": summary["final"]["mean"]["auroc"],
                    "site_epsilon": spent.get("max_epsilon"),
                    "summed_epsilon": spent.get("summed_noise_epsilon", spent.get("max_epsilon")),
                    "noise_multiplier": spent.get("noise_multiplier"),
                    "seconds": seconds,
                }
            )
            print(
                f"[{len(rows)}/{total}] {label} seed={seed}: AUROC {rows[-1]['auroc']:.3f}, "
                f"{seconds:.1f} s",
                flush=True,
            )
    return pd.DataFrame(rows)


def summarise_client_level(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD and range of AUROC over seeds per mode, with the epsilons and the fastest run."""
    return (
        runs.groupby("mode", sort=False)
        .agg(
            auroc=("auroc", "mean"),
            auroc_sd=("auroc", "std"),
            auroc_min=("auroc", "min"),
            auroc_max=("auroc", "max"),
            site_epsilon=("site_epsilon", "max"),
            summed_epsilon=("summed_epsilon", "max"),
            noise_multiplier=("noise_multiplier", "first"),
            fastest=("seconds", "min"),
        )
        .reset_index()
    )


def run_grid(studies: dict[str, Study], seeds: list[int], out: Path) -> pd.DataFrame:
    """Run every dataset x epsilon x seed; one row per run."""
    rows = []
    total = len(studies) * len(EPSILONS) * len(seeds)
    for dataset, base in studies.items():
        for epsilon in EPSILONS:
            for seed in seeds:
                study = with_privacy(base, epsilon, DELTAS[dataset], seed)
                folder = out / "runs" / f"{dataset}-eps{epsilon or 'none'}-seed{seed}"
                shutil.rmtree(folder, ignore_errors=True)
                started = time.perf_counter()
                results = simulate(study, out_dir=folder)
                seconds = time.perf_counter() - started
                mean = results.summary["final"]["mean"]
                privacy = results.summary.get("privacy") or {}
                rows.append(
                    {
                        "dataset": dataset,
                        "epsilon": epsilon,
                        "seed": seed,
                        "accuracy": mean["accuracy"],
                        "auroc": mean["auroc"],
                        "spent_epsilon": privacy.get("max_epsilon"),
                        "seconds": seconds,
                    }
                )
                print(
                    f"[{len(rows)}/{total}] {dataset} eps={epsilon} seed={seed}: "
                    f"accuracy {mean['accuracy']:.3f}, AUROC {mean['auroc']:.3f}, "
                    f"{seconds:.1f} s",
                    flush=True,
                )
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD over seeds per dataset and epsilon, with the DP time-overhead ratio.

    The ratio compares the fastest run of each setting with the fastest run
    without DP: on a shared machine the minimum is the figure least disturbed
    by other work.
    """
    runs = runs.assign(epsilon=runs["epsilon"].fillna(float("inf")))
    table = (
        runs.groupby(["dataset", "epsilon"])
        .agg(
            accuracy=("accuracy", "mean"),
            accuracy_sd=("accuracy", "std"),
            auroc=("auroc", "mean"),
            auroc_sd=("auroc", "std"),
            spent_epsilon=("spent_epsilon", "max"),
            seconds=("seconds", "median"),
            fastest=("seconds", "min"),
        )
        .reset_index()
    )
    plain = table[table["epsilon"] == float("inf")].set_index("dataset")["fastest"]
    table["time_ratio"] = table["fastest"] / table["dataset"].map(plain)
    table["epsilon"] = table["epsilon"].map(lambda e: "no DP" if e == float("inf") else f"{e:g}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", nargs="+", default=["heart", "synthetic"])
    default_out = REPO / "runs" / "benchmarks" / "privacy-utility"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--uci-folder", type=Path, default=None)
    parser.add_argument("--client-epsilon", type=float, default=3.0)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    builders = {
        "heart": lambda: heart_study(args.uci_folder or default_uci_folder()),
        "synthetic": synthetic_study,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if "client-level" in args.datasets:
        runs = client_level_grid(args.client_epsilon, list(range(args.seeds)), args.out)
        runs.to_csv(args.out / "client-level-runs.csv", index=False)
        table = summarise_client_level(runs)
        table.to_csv(args.out / "client-level.csv", index=False)
        print(
            f"client-level DP, default study over {CLIENT_SITES} sites, epsilon "
            f"{args.client_epsilon:g} (delta 1e-5), seeds 0-{args.seeds - 1}:"
        )
        with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
            print(table.to_string(index=False))
    studies = {name: builders[name]() for name in args.datasets if name != "client-level"}
    if not studies:
        print(f"files in {args.out}")
        return
    runs = run_grid(studies, list(range(42, 42 + args.seeds)), args.out)
    runs.to_csv(args.out / "runs.csv", index=False)
    table = summarise(runs)
    table.to_csv(args.out / "table.csv", index=False)
    with pd.option_context("display.width", 140, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    heart = table[(table["dataset"] == "heart") & (table["epsilon"] == "1")]
    if not heart.empty:
        accuracy = float(heart["accuracy"].iloc[0])
        verdict = "met" if accuracy >= 0.72 else "NOT met"
        print(f"target (heart, eps 1, delta 1e-3): mean accuracy {accuracy:.3f} >= 0.72: {verdict}")
    print(f"files in {args.out}")


if __name__ == "__main__":
    main()
