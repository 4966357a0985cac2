"""How a simulated study grows with its sites: 10, 100 and 1000 synthetic sites of 100 rows.

For each number of sites, in a fresh process (so peak memory is that run's):
- data: generating, validating, encoding and splitting every site's rows (once; cached after),
- floor: the same local training, averaging and evaluation without Flower
  (``plain_loop`` of benchmarks/simulation_overhead.py),
- simulate (in-process engine, the default study's model, 5 rounds), split into
  federation (until the analysis step starts), baselines (pooled and local-only
  models, cross-site matrix, calibration) and report (report.html),
- peak resident memory of the process and the report's size.
Prints wall seconds and CPU seconds of this process (the machine may be shared:
CPU seconds are the steadier figure), federation / floor, and seconds per site.
Targets: 1000 sites with baselines and report within 60 s and 4 GiB, federation
within 2x the floor, time linear in sites. Writes benchmarks/results/scale.json.

    python benchmarks/scale.py [--sites 10 100 1000] [--rounds 5] [--rows 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulation_overhead import plain_loop

from lhs_federated import load_study, simulate
from lhs_federated.data.sources import load_sites
from lhs_federated.results.progress import EVENTS_FILE
from lhs_federated.results.writer import versions


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"wall": round(wall - start[0], 3), "cpu": round(cpu - start[1], 3)}


def one(sites: int, rounds: int, rows: int) -> dict:
    """Measure one size in this process; the figures as a dict."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("lhs_federated").setLevel(logging.ERROR)
    study = load_study(None).with_overrides(
        {
            "data.synthetic.sites": sites,
            "data.synthetic.rows_per_site": rows,
            "rounds": rounds,
        }
    )
    figures: dict = {"sites": sites, "rounds": rounds, "rows_per_site": rows}
    plain_loop(study.with_overrides({"data.synthetic.sites": 2, "rounds": 1}))  # warm-up
    start = _clock()
    load_sites(study)
    figures["data"] = _since(start)
    start = _clock()
    plain_loop(study)
    figures["floor"] = _since(start)
    out = Path(tempfile.mkdtemp(prefix="lhs-scale-")) / "run"
    start = _clock()
    marks: dict[str, tuple[float, float]] = {}

    class Marker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            event = getattr(record, "lhs_event", None)
            step = event.data.get("step") if event is not None else None
            if event is not None and event.kind == "step" and step not in marks:
                marks[step] = _clock()

    progress = logging.getLogger("lhs_federated.progress")
    progress.addHandler(Marker())
    progress.setLevel(logging.INFO)
    simulate(study, out_dir=out)
    end = _clock()
    figures["simulate"] = _since(start)
    analysis, report = marks["analysis"], marks["report"]
    figures["federation"] = {"wall": analysis[0] - start[0], "cpu": analysis[1] - start[1]}
    figures["baselines"] = {"wall": report[0] - analysis[0], "cpu": report[1] - analysis[1]}
    figures["report"] = {"wall": end[0] - report[0], "cpu": end[1] - report[1]}
    figures["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["report_mib"] = (out / "report.html").stat().st_size / 2**20
    figures["events"] = sum(1 for _ in (out / EVENTS_FILE).open())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100, help="rows per synthetic site")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.sites[0], args.rounds, args.rows)))
        return
    results = []
    for sites in args.sites:
        command = [sys.executable, __file__, "--one", "--sites", str(sites)]
        command += ["--rounds", str(args.rounds), "--rows", str(args.rows)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        _print(results)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "scale.json").write_text(
        json.dumps({"results": results, "versions": versions()}, indent=2)
    )


def _print(results: list[dict]) -> None:
    parts = ("data", "floor", "federation", "baselines", "report", "simulate")
    print(f"\n{'sites':>6} " + " ".join(f"{p:>16}" for p in parts), end="")
    print(f"{'fed/floor':>10}{'peak MiB':>10}{'report MiB':>11}{'ms/site':>9}")
    for r in results:
        cells = " ".join(f"{r[p]['wall']:>7.1f}s {r[p]['cpu']:>6.1f}c" for p in parts)
        ratio = r["federation"]["cpu"] / max(r["floor"]["cpu"], 1e-9)
        per_site = 1000 * r["simulate"]["cpu"] / r["sites"]
        print(f"{r['sites']:>6} {cells}{ratio:>10.2f}{r['peak_mib']:>10.0f}", end="")
        print(f"{r['report_mib']:>11.2f}{per_site:>9.1f}")
    print(
        "(s: wall seconds, c: CPU seconds of the process; simulate = federation + baselines"
        " + report; targets at 1000 sites: simulate <= 60 s, peak <= 4096 MiB, fed/floor <= 2)"
    )


if __name__ == "__main__":
    main()
