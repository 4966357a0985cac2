"""Seconds from starting a study that cannot run to the error that says so.

Three studies that are bound to fail, each timed from the call to the error
(imports excluded), on the in-process engine:

- ``small-sites``: six sites from CSV files, two of them too small to train
  (below ``privacy.min_train_rows``), and every site needed each round;
- ``min-sites``: four sites and ``federation.min_sites = 6``;
- ``results-folder``: the coordinator's ServerApp (what ``flwr run`` and a
  deployed coordinator run) started on a results folder that already holds a run.

Prints each time and the first line of the error; run it with another
checkout's interpreter to compare (``/work/main/.venv/bin/python
benchmarks/preflight_seconds.py``).

    python benchmarks/preflight_seconds.py [--cases small-sites min-sites results-folder]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lhs_federated import load_study, simulate
from lhs_federated.apps import server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.data.contract import builtin_contract_text
from lhs_federated.data.io import write_table
from lhs_federated.data.synthetic import SyntheticCohort, generate_cohort
from lhs_federated.errors import LhsError

CASES = ("small-sites", "min-sites", "results-folder")


def site_folder(folder: Path, *, sites: int, small: int) -> Path:
    """``sites`` CSV files (``small`` of them with 12 patients) and the contract."""
    folder.mkdir(parents=True)
    tables = generate_cohort(SyntheticCohort(sites=sites, rows_per_site=150), seed=7)
    for k, (name, table) in enumerate(tables.items()):
        if k >= sites - small:
            outcome = table["cvd_event_10y"].astype(int)
            table = table.loc[outcome.sort_values().index].iloc[list(range(6)) + list(range(-6, 0))]
        write_table(table, folder / f"{name}.csv")
    (folder / "contract.toml").write_text(builtin_contract_text("cardio-risk"), encoding="utf-8")
    return folder


def study_of(folder: Path, **overrides):
    return load_study(None).with_overrides(
        {"name": "preflight", "data.source": "folder", "data.path": str(folder), **overrides}
    )


def timed(call) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        call()
    except (LhsError, FileExistsError) as error:
        return time.perf_counter() - start, str(getattr(error, "message", error))
    return time.perf_counter() - start, "no error"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for case in args.cases:
            if case == "small-sites":
                study = study_of(site_folder(root / "six", sites=6, small=2))
                seconds, message = timed(lambda s=study: simulate(s, out_dir=root / "r1"))
            elif case == "min-sites":
                study = study_of(
                    site_folder(root / "four", sites=4, small=0), **{"federation.min_sites": 6}
                )
                seconds, message = timed(lambda s=study: simulate(s, out_dir=root / "r2"))
            else:
                study = study_of(site_folder(root / "three", sites=3, small=0), rounds=1)
                simulate(study, out_dir=root / "done", report=False)
                run_config = {
                    server_app.STUDY_KEY: study.to_json(),
                    server_app.OUT_DIR_KEY: str(root / "done"),
                    server_app.ENGINE_KEY: "inprocess",
                }
                seconds, message = timed(lambda c=run_config: run_inprocess(c, 3))
            results[case] = {"seconds": round(seconds, 2), "error": message}
            print(f"{case:<16}{seconds:>8.2f} s  {message[:160]}", flush=True)
    out = Path(__file__).resolve().parent / "results" / "preflight_seconds.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
