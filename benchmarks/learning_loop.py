"""The learning loop on synthetic drift scenarios: detection, false alerts, frozen/loop/oracle.

Each scenario runs ``simulations/lhs_loop.toml``'s loop (first release on
quarters 1-4, then six quarters monitored; per-site recalibration on an
alert; the gate at every site) on a cohort with one named drift event, and
a null scenario with none. Printed:

- detection delay: periods from an event's first period to the first alert
  at a site it affects (global events: any site), for the loop's release;
- false alerts: alerting site-periods among site-periods no drift had yet
  reached (the null scenario alone, and every scenario before its event);
- mean AUROC, share of calibration slopes in [0.9, 1.1] and of intercepts in
  [-0.2, 0.2], over all scenarios' site-periods, for the frozen first release,
  the loop and an oracle refitted on each period;
- what the rows allow for the slope: each site-period's slope SE for a
  perfectly calibrated model with the same risks and its chance of landing
  in [0.9, 1.1] (the ceiling of the share above), the share of slopes whose
  95% interval holds 1, and the sites' slopes pooled per period (fixed
  effect, as the model card pools) with that pool's ceiling.

The scenarios share the cohort's seed (the same patients, other drift), so
their site-periods are not independent draws.

    nice -n 10 python benchmarks/learning_loop.py [--rows 2000] [--out DIR] [--scenarios a,b]
        [--loop 'update="logistic"'] [--study rounds=30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from lhs_federated.loop.scoring import SLOPE_BAND, slope_band_ceiling
from lhs_federated.loop.simulation import load_loop, run_loop

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "none": [],
    "prevalence-trend": [{"kind": "prevalence-trend", "from_period": 5, "size": 0.15}],
    "assay-change": [{"kind": "assay-change", "site": "site-02", "from_period": 6, "size": 1.5}],
    "case-mix": [{"kind": "case-mix", "site": "site-03", "from_period": 6, "size": 1.0}],
    "shock": [{"kind": "shock", "from_period": 7, "size": 0.8}],
}


def _period_index(label: str) -> int:
    year, quarter = label.split("Q")
    return (int(year) - 2020) * 4 + int(quarter)


def run_scenario(name: str, rows: int, out: Path, *, loop_set: dict, study_set: dict) -> dict:
    """One loop on one scenario; its scores, events and timing."""
    loop = load_loop(ROOT / "simulations" / "lhs_loop.toml")
    study = loop.study.with_overrides(
        {
            "name": f"bench-{name}",
            "data.synthetic.drift": SCENARIOS[name],
            "data.synthetic.rows_per_site": rows,
            "data.test_fraction": 0.5,
            **study_set,
        }
    )
    spec = dataclasses.replace(loop.loop, **loop_set)
    started = time.monotonic()
    result = run_loop(dataclasses.replace(loop, loop=spec, study=study), out / name)
    return {**result, "seconds": time.monotonic() - started}


def _settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` options, each value read as TOML (``update="logistic"``, ``rounds=30``)."""
    found = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        found[key] = tomllib.loads(f"v = {value}")["v"]
    return found


def pooled_slopes(scores: list[dict], model: str) -> list[tuple[float, float]]:
    """Per scenario and period: the sites' slopes pooled (fixed effect), and that pool's SE.

    The card's pooled figures are such a meta-analysis; each site's weight is
    its slope's SE at perfect calibration (:func:`calibrated_slope_se`).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in scores:
        if r["model"] == model and r["calibration_slope_se"] == r["calibration_slope_se"]:
            groups.setdefault((r["scenario"], r["period"]), []).append(r)
    pooled = []
    for rows in groups.values():
        weights = [1 / r["calibration_slope_se"] ** 2 for r in rows]
        slope = sum(w * r["calibration_slope"] for w, r in zip(weights, rows, strict=True))
        pooled.append((slope / sum(weights), sum(weights) ** -0.5))
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="patients per site and quarter")
    parser.add_argument("--out", type=Path, default=None, help="keep the loops' folders here")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--loop",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='change a [loop] setting (update="logistic")',
    )
    parser.add_argument("--study", action="append", default=[], metavar="KEY=VALUE",
                        help="change a study setting (rounds=30)")  # fmt: skip
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="learning-loop-"))
    loop_set, study_set = _settings(args.loop), _settings(args.study)
    results = {
        n: run_scenario(n, args.rows, out, loop_set=loop_set, study_set=study_set)
        for n in args.scenarios.split(",")
    }
    if loop_set or study_set:
        print(f"settings: loop {loop_set or '-'}; study {study_set or '-'}")

    print(f"\nlearning loop: 4 sites x 10 quarters, {args.rows} patients per site-quarter")
    print(f"{'scenario':<18}{'event':<28}{'delay (periods)':>16}{'alerts':>8}{'seconds':>9}")
    false_null, false_pre = [0, 0], [0, 0]
    for name, result in results.items():
        alerts = [e for e in result["events"] if e["kind"] == "alert"]
        alerting = {(e["period"], e["site"]) for e in alerts}
        site_periods = {(r["period"], r["site"]) for r in result["scores"]}
        events = SCENARIOS[name]
        start = min((e["from_period"] for e in events), default=99)
        clean = {(p, s) for p, s in site_periods if _period_index(p) < start}
        false_pre[0] += len(clean & alerting)
        false_pre[1] += len(clean)
        if not events:
            false_null = [len(alerting), len(site_periods)]
        for event in events or [None]:
            if event is None:
                label, delay = "(no drift)", "-"
            else:
                label = f"{event['kind']}@{event.get('site') or 'all'} from Q{event['from_period']}"
                hits = sorted(
                    _period_index(p) - event["from_period"]
                    for p, s in alerting
                    if _period_index(p) >= event["from_period"]
                    and (event.get("site") is None or s == event["site"])
                )
                delay = str(hits[0]) if hits else "never"
            print(f"{name:<18}{label:<28}{delay:>16}{len(alerts):>8}{result['seconds']:>9.0f}")
    print(
        f"\nfalse alerts: null scenario {false_null[0]}/{false_null[1]} site-periods "
        f"({false_null[0] / max(false_null[1], 1):.1%}); every scenario before its event "
        f"{false_pre[0]}/{false_pre[1]} ({false_pre[0] / max(false_pre[1], 1):.1%})"
    )
    header = f"{'mean AUROC':>12}{'slope in [0.9,1.1]':>20}{'|intercept|<=0.2':>18}{'n':>6}"
    print(f"\n{'model':<8}{header}")
    scores = [{**r, "scenario": name} for name, result in results.items() for r in result["scores"]]
    for model in ("frozen", "loop", "oracle"):
        rows = [r for r in scores if r["model"] == model]
        auroc = sum(r["auroc"] for r in rows) / len(rows)
        slope = sum(0.9 <= r["calibration_slope"] <= 1.1 for r in rows) / len(rows)
        intercept = sum(abs(r["calibration_intercept"]) <= 0.2 for r in rows) / len(rows)
        print(f"{model:<8}{auroc:>12.3f}{slope:>20.0%}{intercept:>18.0%}{len(rows):>6}")
    # What the rows allow: a perfectly calibrated model's slope is itself an estimate.
    print(
        "\ncalibration slope, what the test rows allow (SE: a perfectly calibrated model's "
        "slope on the same rows)"
    )
    print(
        f"{'model':<8}{'mean slope':>11}{'SD':>7}{'median SE':>11}{'ceiling':>9}"
        f"{'|slope-1|<=1.96SE':>19}{'pooled in band':>16}{'pooled ceiling':>16}"
    )
    for model in ("frozen", "loop", "oracle"):
        rows = [r for r in scores if r["model"] == model]
        slopes = [r["calibration_slope"] for r in rows]
        ses = [r["calibration_slope_se"] for r in rows]
        ceiling = statistics.mean(r["slope_band_ceiling"] for r in rows)
        consistent = statistics.mean(
            abs(r["calibration_slope"] - 1) <= 1.96 * r["calibration_slope_se"] for r in rows
        )
        pooled = pooled_slopes(scores, model)
        in_band = statistics.mean(SLOPE_BAND[0] <= b <= SLOPE_BAND[1] for b, _ in pooled)
        pooled_ceiling = statistics.mean(slope_band_ceiling(se) for _, se in pooled)
        print(
            f"{model:<8}{statistics.mean(slopes):>11.3f}{statistics.pstdev(slopes):>7.3f}"
            f"{statistics.median(ses):>11.3f}{ceiling:>9.0%}{consistent:>19.0%}"
            f"{in_band:>16.0%}{pooled_ceiling:>16.0%}"
        )
    rows = [r for r in scores if r["model"] == "loop"]
    print(
        f"site-period test rows: median {statistics.median(r['n'] for r in rows):.0f} "
        f"(events {statistics.median(r['events'] for r in rows):.0f}); a slope SE of "
        f"{0.1 / 1.645:.3f} (90% in band for a calibrated model) needs about "
        f"{(statistics.median(r['calibration_slope_se'] for r in rows) / (0.1 / 1.645)) ** 2:.1f}"
        " times as many rows"
    )
    if "assay-change" in results:
        rows = [r for r in results["assay-change"]["scores"] if r["site"] == "site-02"]
        for model in ("frozen", "loop"):
            after = [r for r in rows if r["model"] == model and _period_index(r["period"]) >= 6]
            inside = sum(0.9 <= r["calibration_slope"] <= 1.1 for r in after)
            cal = sum(abs(r["calibration_intercept"]) <= 0.2 for r in after)
            print(f"assay change, site-02 after it, {model}: slope in band {inside}/{len(after)}, "
                  f"intercept in band {cal}/{len(after)}")  # fmt: skip
    summary = {
        n: {k: v for k, v in r["summary"].items() if k != "drift_events"}
        for n, r in results.items()
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nloops in {out}")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
