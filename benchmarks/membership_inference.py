"""Membership inference against released models, with and without per-site DP-SGD.

A loss-threshold attacker (Yeom et al., 2018) tries to tell the sites'
training rows from their held-out rows using the released model's loss on
each. Its advantage (best TPR - FPR) is reported per scenario and epsilon,
beside:

- ``chance``: the advantage the same best-threshold attacker reaches when the
  member labels are shuffled (what "no leak" looks like at these sample sizes);
- ``bound``: the most any attacker can reach under (epsilon, delta)-DP.

Scenarios:

- ``mlp-small-sites``: a deliberately overfitting model (MLP 64x64, 20 local
  epochs per round) on four small synthetic sites (about 56 training rows each);
- ``heart-logistic``: the UCI Heart study of ``privacy_utility.py``.

Usage::

    python benchmarks/membership_inference.py [--seeds 3] [--out runs/benchmarks/membership]

Writes ``runs.csv``, ``table.csv`` and ``advantage.png`` in the output folder.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from privacy_utility import default_uci_folder, heart_study

from lhs_federated import Study, load_study, simulate
from lhs_federated.data.sources import load_sites
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import set_arrays
from lhs_federated.learning.site import n_features, site_standardizer
from lhs_federated.learning.training import predict_proba
from lhs_federated.privacy.membership import (
    attack_released_model,
    dp_advantage_bound,
    loss_threshold_attack,
    record_losses,
)

REPO = Path(__file__).resolve().parents[1]
EPSILONS: tuple[float | None, ...] = (None, 8.0, 1.0)
DELTA = 1e-3


def overfitting_study() -> Study:
    """An MLP trained long on small synthetic sites: a model that memorises."""
    return load_study(None).with_overrides(
        {
            "name": "mlp-small-sites",
            "data.synthetic.rows_per_site": 80,
            "model.name": "mlp",
            "model.hidden_layers": [64, 64],
            "training.epochs": 20,
            "training.batch_size": 16,
            "training.learning_rate": 0.1,
            "sites.epsilon_budget": 1000.0,
        }
    )


def chance_advantage(study: Study, released: ReleasedModel, repeats: int = 20) -> float:
    """Mean advantage of the attack when membership labels are shuffled."""
    model = build_model(study.model, n_features(study), seed=study.seed)
    set_arrays(model, released.arrays)
    losses, n_members = [], 0
    for site in load_sites(study):
        scale = site_standardizer(study, site, released.standardizer)
        for table in (site.train, site.test):
            probability = predict_proba(model, scale.transform(table.features))
            losses.append(record_losses(table.outcome, probability))
        n_members += len(site.train.outcome)
    pooled = np.concatenate(losses)
    rng = np.random.default_rng(0)
    advantages = []
    for _ in range(repeats):
        order = rng.permutation(len(pooled))
        members, others = pooled[order[:n_members]], pooled[order[n_members:]]
        advantages.append(loss_threshold_attack(members, others).advantage)
    return float(np.mean(advantages))


def run(scenarios: dict[str, Study], seeds: list[int], out: Path) -> pd.DataFrame:
    """Train, release and attack every scenario x epsilon x seed."""
    rows = []
    for name, base in scenarios.items():
        for epsilon in EPSILONS:
            for seed in seeds:
                overrides: dict[str, object] = {"seed": seed}
                if epsilon is not None:
                    overrides.update(
                        {
                            "privacy.mode": "sample-dp",
                            "privacy.epsilon": epsilon,
                            "privacy.delta": DELTA,
                        }
                    )
                study = base.with_overrides(overrides)
                folder = out / "runs" / f"{name}-eps{epsilon or 'none'}-seed{seed}"
                shutil.rmtree(folder, ignore_errors=True)
                results = simulate(study, out_dir=folder)
                released = ReleasedModel.load(folder)
                attack = attack_released_model(
                    study, released.arrays, load_sites(study), released.standardizer
                )
                rows.append(
                    {
                        "scenario": name,
                        "epsilon": epsilon,
                        "seed": seed,
                        "advantage": attack.advantage,
                        "attack_auc": attack.auc,
                        "chance": chance_advantage(study, released),
                        "bound": 1.0 if epsilon is None else dp_advantage_bound(epsilon, DELTA),
                        "test_auroc": results.summary["final"]["mean"]["auroc"],
                    }
                )
                print(
                    f"{name} eps={epsilon} seed={seed}: advantage {attack.advantage:.3f} "
                    f"(chance {rows[-1]['chance']:.3f}), attack AUC {attack.auc:.3f}, "
                    f"test AUROC {rows[-1]['test_auroc']:.3f}",
                    flush=True,
                )
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path) -> None:
    """Bar chart of the attack's advantage by scenario and epsilon, with chance level."""
    plt.switch_backend("Agg")
    scenarios = list(dict.fromkeys(table["scenario"]))
    labels = list(dict.fromkeys(table["epsilon"]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.6), sharey=True)
    for axis, scenario in zip(np.atleast_1d(axes), scenarios, strict=True):
        part = table[table["scenario"] == scenario].set_index("epsilon").loc[labels]
        axis.bar(labels, part["advantage"], yerr=part["advantage_sd"], color="#4c72b0")
        axis.plot(labels, part["chance"], "k--", marker="o", label="chance (shuffled labels)")
        axis.set_title(scenario)
        axis.set_xlabel("epsilon")
        axis.set_ylim(0, max(0.3, float(table["advantage"].max()) * 1.3))
    np.atleast_1d(axes)[0].set_ylabel("membership advantage (TPR - FPR)")
    np.atleast_1d(axes)[0].legend(loc="upper right")
    fig.suptitle("Loss-threshold membership inference on the released model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "membership")
    parser.add_argument("--uci-folder", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = {
        "mlp-small-sites": overfitting_study(),
        "heart-logistic": heart_study(args.uci_folder or default_uci_folder()),
    }
    runs = run(scenarios, list(range(42, 42 + args.seeds)), args.out)
    runs.to_csv(args.out / "runs.csv", index=False)
    runs["epsilon"] = runs["epsilon"].map(lambda e: "no DP" if pd.isna(e) else f"{e:g}")
    table = (
        runs.groupby(["scenario", "epsilon"], sort=False)
        .agg(
            advantage=("advantage", "mean"),
            advantage_sd=("advantage", "std"),
            attack_auc=("attack_auc", "mean"),
            chance=("chance", "mean"),
            bound=("bound", "first"),
            test_auroc=("test_auroc", "mean"),
        )
        .reset_index()
    )
    table.to_csv(args.out / "table.csv", index=False)
    plot(table, args.out / "advantage.png")
    with pd.option_context("display.width", 140, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    print(f"files in {args.out}")


if __name__ == "__main__":
    main()
