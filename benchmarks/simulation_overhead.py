"""What Flower costs a simulated study: in-process and Ray engines against the plain floor.

For one study, times (median of --repeats runs, imports excluded):
- the in-process engine (`simulate(..., backend="inprocess")`),
- the Ray engine (`simulate(..., backend="ray")`, Ray start-up included as a user sees it),
- the floor: the same local training and evaluation calls, in the same order, with the same
  averaging, but no Flower, no messages and no result files.
Prints the times and the ratios to the floor (target: in-process within 1.5x of the floor), and
writes them to benchmarks/results/simulation_overhead.json.

    python benchmarks/simulation_overhead.py [--study STUDY.toml] [--repeats 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lhs_federated import load_study, simulate
from lhs_federated.data.sources import load_sites
from lhs_federated.data.statistics import ColumnSums, Standardizer
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.site import evaluate_at_site, n_features, train_at_site
from lhs_federated.results.writer import versions


def plain_loop(study) -> None:
    """The federation's computation without Flower: statistics, train, average, evaluate."""
    torch.set_num_threads(1)
    sites = load_sites(study)
    standardizer = Standardizer.from_sums(
        ColumnSums.combine(ColumnSums.of(s.train.features) for s in sites)
    )
    arrays = get_arrays(build_model(study.model, n_features(study), seed=study.seed))
    for server_round in range(1, study.rounds + 1):
        updates = [
            train_at_site(study, site, arrays, server_round=server_round, standardizer=standardizer)
            for site in sites
        ]
        total = sum(u.n_examples for u in updates)
        arrays = {k: sum(u.arrays[k] * (u.n_examples / total) for u in updates) for k in arrays}
        for site in sites:
            evaluate_at_site(study, site, arrays, standardizer=standardizer)


def timed(function, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls (CPU: this process only)."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--study", type=Path, default=None, help="study TOML (default: the default study)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    study = load_study(args.study)
    load_sites(study)  # data generation is common to all three; keep it out of the timings
    scratch = Path(tempfile.mkdtemp(prefix="lhs-bench-"))
    counter = iter(range(1_000_000))

    def run(backend: str):
        return lambda: simulate(
            study, backend=backend, out_dir=scratch / f"{backend}-{next(counter)}"
        )

    plain_loop(study)  # warm-up (first-call costs of torch)
    run("inprocess")()  # warm-up (first-call costs of the apps: imports, code hash)
    timings = {"floor": timed(lambda: plain_loop(study), args.repeats)}
    timings["inprocess"] = timed(run("inprocess"), args.repeats)
    if not args.no_ray:  # Ray's work is in its actors: only wall time means anything
        timings["ray"] = timed(run("ray"), max(1, args.repeats // 3))
    sites = len(load_sites(study))
    print(f"study {study.name!r}: {sites} sites, {study.rounds} rounds, model {study.model.name}")
    print(f"{'engine':<12}{'wall s':>10}{'x floor':>10}{'cpu s':>10}{'x floor':>10}{'s/round':>10}")
    (floor_wall, floor_cpu) = timings["floor"]
    for name, (wall, cpu) in timings.items():
        print(
            f"{name:<12}{wall:>10.3f}{wall / floor_wall:>10.2f}{cpu:>10.3f}"
            f"{cpu / floor_cpu:>10.2f}{wall / study.rounds:>10.3f}"
        )
    wall, cpu = timings["inprocess"]
    print(
        f"in-process / floor = {wall / floor_wall:.2f} wall, {cpu / floor_cpu:.2f} CPU "
        "(target <= 1.5; on a shared machine the CPU ratio is the steadier one)"
    )
    figures = {name: wall for name, (wall, _) in timings.items()}
    cpu_figures = {name: cpu for name, (_, cpu) in timings.items()}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "simulation_overhead.json").write_text(
        json.dumps(
            {
                "study": study.name,
                "study_hash": study.hash,
                "seconds": figures,
                "cpu_seconds": cpu_figures,
                "sites": sites,
                "rounds": study.rounds,
                "versions": versions(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
