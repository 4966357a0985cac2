"""Does lhs-federated give a researcher the right answer on real, messy, small-site data?

Two tables, each run at ``sites.min_cell_size`` 1, 5 and 10 (same seed, same split):

- ``messy``: our own table of issue 10's shape (tests/messy.py): six sites of
  3 to 150 patients, 42 binary and one-hot columns with rare levels, two
  numeric columns with gaps, about 30% positives;
- ``uci-heart``: the four UCI Heart Disease hospitals (../shared/data), the
  lhs-federated protocol (simulations/heart_disease_lhs.toml) with plain FedAvg.

For each it prints the federation's mean AUROC over sites (the definition the
CLI, ``summary.json`` and the report use, read from ``summary.json``; sites with
fewer than 10 test rows or cases of a class are left out at every cell size) for the
FedAvg, pooled and local-only models, beside a plain scikit-learn pooled
logistic regression (mean imputation, standardisation, default
``LogisticRegression``) fitted on the same training rows and scored on the same
test splits with the same mean. Targets: FedAvg within 0.01 AUROC of the
scikit-learn fit on both tables; the disclosure rule at 10 costing at most
0.01 AUROC against 1. ``auroc all`` is AUROC on all test rows together.

    nice -n 10 python benchmarks/real_data_check.py [--tables messy uci-heart] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lhs_federated import load_study, simulate
from lhs_federated.data.sources import load_sites
from lhs_federated.study import Study

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from messy import messy_sites, write_messy_folder  # noqa: E402

SHARED = next(
    (p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()),
    REPO.parent / "shared" / "data",
)
CELL_SIZES = (1, 5, 10)


def messy_study(folder: Path) -> Study:
    """The default study on the messy folder; the two smallest sites cannot train."""
    write_messy_folder(folder, messy_sites())
    return load_study(None).with_overrides(
        {
            "name": "messy",
            "data.source": "folder",
            "data.path": str(folder),
            "federation.min_sites": 4,
            "rounds": 40,
        }
    )


def uci_study() -> Study:
    """The lhs-federated UCI Heart study with plain FedAvg."""
    return load_study(REPO / "simulations" / "heart_disease_lhs.toml").with_overrides(
        {
            "data.path": str(SHARED / "uci-heart-disease"),
            "strategy.name": "fedavg",
            "strategy.params": {},
            "preprocessing.indicators": "centred",  # the default rule, not the study's pin
        }
    )


def sklearn_auroc(study: Study) -> dict[str, float]:
    """A plain scikit-learn pooled logistic regression's AUROC at each site's test split."""
    sites = load_sites(study)
    model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(
        np.vstack([s.train.features for s in sites]),
        np.concatenate([s.train.outcome for s in sites]),
    )
    scores = {}
    for s in sites:
        y = s.test.outcome
        scores[s.name] = (
            float(roc_auc_score(y, model.predict_proba(s.test.features)[:, 1]))
            if y.min() != y.max()
            else float("nan")
        )
    scores["all"] = float(
        roc_auc_score(
            np.concatenate([s.test.outcome for s in sites]),
            model.predict_proba(np.vstack([s.test.features for s in sites]))[:, 1],
        )
    )
    return scores


def federation_mean(summary: dict[str, Any], per_site: dict[str, float]) -> float:
    """The mean over sites as the run's summary defines it (sites it counts)."""
    counted = summary["final"].get("counted_sites", list(per_site))
    values = [per_site[s] for s in counted if s in per_site and not np.isnan(per_site[s])]
    return float(np.mean(values)) if values else float("nan")


def at_cell_size(study: Study, cell: int) -> Study:
    """The study at a minimum cell size, its means over the sites counted at 10.

    The means leave out sites with fewer than ``evaluation.min_test_cases`` test
    rows or cases of a class; fixing it at 10 keeps the same sites in every
    mean, so the three cell sizes compare like with like.
    """
    return study.with_overrides({"sites.min_cell_size": cell, "evaluation.min_test_cases": 10})


def run_table(name: str, study: Study, out: Path) -> list[dict[str, Any]]:
    rows = []
    for cell in CELL_SIZES:
        run_dir = out / f"{name}-mcs{cell}"
        if not (run_dir / "summary.json").is_file():
            simulate(at_cell_size(study, cell), out_dir=run_dir, report=False)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        comparison = summary["comparison"]
        reference = sklearn_auroc(at_cell_size(study, cell))
        per_site = {s: v for s, v in reference.items() if s != "all"}
        rows.append(
            {
                "table": name,
                "min_cell_size": cell,
                "fedavg": comparison["mean"]["federated"]["auroc"],
                "pooled": comparison["mean"]["pooled"]["auroc"],
                "local": comparison["mean"]["local"]["auroc"],
                "sklearn": federation_mean(summary, per_site),
                "fedavg_all": comparison["all-sites"]["federated"]["auroc"],
                "sklearn_all": reference["all"],
                "departures": len(summary.get("preprocessing", {}).get("departures", [])),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["messy", "uci-heart"])
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="real-data-check-"))
    rows = []
    for name in args.tables:
        study = messy_study(out / "messy-data") if name == "messy" else uci_study()
        rows += run_table(name, study, out)
    header = (
        f"{'table':<10} {'mcs':>3} {'fedavg':>7} {'pooled':>7} {'local':>7} {'sklearn':>7} "
        f"{'fed-skl':>7} {'all fed':>7} {'all skl':>7} {'departures':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['table']:<10} {r['min_cell_size']:>3} {r['fedavg']:7.3f} {r['pooled']:7.3f} "
            f"{r['local']:7.3f} {r['sklearn']:7.3f} {r['fedavg'] - r['sklearn']:+7.3f} "
            f"{r['fedavg_all']:7.3f} {r['sklearn_all']:7.3f} {r['departures']:>10}"
        )
    for name in args.tables:
        by_cell = {r["min_cell_size"]: r for r in rows if r["table"] == name}
        cost = by_cell[1]["fedavg"] - by_cell[10]["fedavg"]
        cost_all = by_cell[1]["fedavg_all"] - by_cell[10]["fedavg_all"]
        print(
            f"{name}: disclosure rule at 10 vs 1 costs {cost:+.3f} mean AUROC "
            f"({cost_all:+.3f} on all test rows)"
        )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
