"""``lhs-fed loop``: the learning loop simulated over a cohort's periods.

A loop file holds ``[loop]`` (what the loop does) and ``[study]`` (the study
of the first release, on a dated cohort). The loop trains on the first
``initial_periods`` and releases; then, each following period, it

1. scores the frozen first release, its current release and an oracle on the
   period's held-out rows (simulation only, :mod:`lhs_federated.loop.scoring`);
2. monitors its current release on the period (:mod:`lhs_federated.loop.monitor`);
3. on an alert (or every period, ``update_on = "every-period"``) updates the
   release on the most recent period(s) (:mod:`lhs_federated.loop.update`),
   publishes the candidate with its parent, and gates it against the champion
   on the period's held-out rows (:mod:`lhs_federated.loop.gate`); promoted or
   rejected, the reason goes into the registry ledger.

Every step is a study run by the real ServerApp and ClientApp, on the
engine the loop is given (:mod:`lhs_federated.loop.engine`): by default the
in-process one, whose simulated sites keep one governance folder each for
the whole loop, so a site's ledger holds every step it took part in; with
``lhs-fed loop --server`` the deployed one, where every step is a study at
the consortium's sites (the same driver, no scoring step: the coordinator
holds no rows). Results:
``registry/``, ``monitoring/`` (timeline and alerts), ``loop-timeline.csv``,
``loop-events.json`` and ``loop-report.html``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)
from lhs_federated.apps.federation import SECURE_SUM_SITE
from lhs_federated.config import build, read_toml, setting
from lhs_federated.data.periods import period_labels
from lhs_federated.data.sources import raw_sites
from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.keys import load_private_key, write_key_pair
from lhs_federated.loop.alerts import AlertRules
from lhs_federated.loop.engine import InProcessEngine, LoopEngine
from lhs_federated.loop.gate import GateSpec, decide
from lhs_federated.loop.monitor import monitor_release
from lhs_federated.loop.release import release_run
from lhs_federated.loop.report import write_loop_report
from lhs_federated.loop.scoring import score_period
from lhs_federated.loop.update import (
    RECALIBRATION_ROUNDS,
    recalibrated_run,
    refitted_run,
    update_study,
)
from lhs_federated.registry.store import Registry, ReleaseRef
from lhs_federated.results.progress import ProgressEvent, report_progress
from lhs_federated.study import Study, finalise_study

Progress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class LoopSpec:
    """The ``[loop]`` table of a loop file."""

    release: str = setting("cvd-risk", doc="the registry name of the loop's releases")
    initial_periods: int = setting(4, doc="periods the first release is trained on", ge=1)
    initial_recalibration: Literal["none", "logistic"] = setting(
        "none",
        doc="logistic: before the first release, refit the trained model's intercept and slope "
        "on its training rows (pooled, exact): a federated fit stopped short of the maximum "
        "likelihood leaves its slope off 1 at every site",
    )
    update: Literal["in-the-large", "logistic", "refit", "per-site"] = setting(
        "per-site",
        doc="update method: in-the-large or logistic (pooled recalibration), refit (all "
        "weights, warm-started) or per-site (each site's own logistic recalibration)",
    )
    update_on: Literal["alert", "every-period"] = setting(
        "alert", doc="update after an alert, or every period (a schedule)"
    )
    update_periods: int = setting(1, doc="most recent periods an update is fitted on", ge=1)
    per_site_method: Literal["in-the-large", "logistic"] = setting(
        "in-the-large", doc="per-site updates: each site's intercept, or intercept and slope"
    )
    update_sites: Literal["alerting", "all"] = setting(
        "alerting", doc="per-site updates: recalibrate the sites that alerted, or every site"
    )
    oracle: bool = setting(True, doc="score an oracle refitted on each period (simulation)")
    periods: tuple[str, ...] | None = setting(
        None,
        doc="the periods, in order (deployment: the coordinator holds no data to read them "
        "from; simulation: default every period of the data)",
    )
    alerts: AlertRules = setting(default_factory=AlertRules, doc="alert rules")
    gate: GateSpec = setting(default_factory=GateSpec, doc="the promotion gate")


@dataclass(frozen=True)
class LoopFile:
    """A loop file: the loop and its first study."""

    loop: LoopSpec
    study: Study
    periods: list[str]


def load_loop(path: str | Path, *, deployed: bool = False) -> LoopFile:
    """Read and check a loop file (``deployed``: for a consortium, whose data it cannot read).

    Raises
    ------
    ConfigError
        Naming the file and key at fault (a study without dated data, too
        few periods for the loop, no ``loop.periods`` for a deployment).
    """
    path = Path(path)
    table = read_toml(path, what="loop file")
    unknown = sorted(set(table) - {"loop", "study"})
    if unknown or "study" not in table:
        raise ConfigError(
            f"{path}: a loop file holds a [loop] and a [study] table"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "; [study] is missing")
        )
    spec = build(LoopSpec, table.get("loop", {}), source=str(path), section="loop")
    study = finalise_study(table["study"], source=f"{path} [study]", base_dir=path.parent)
    if study.contract.index_date is None:
        raise ConfigError(f"{path}: the loop's study needs dated data (a contract index_date).")
    if spec.update == "per-site" and study.privacy.secure:
        raise ConfigError(
            f"{path}: loop.update = 'per-site' fits each site's own recalibration from its own "
            "score and information, which secure aggregation (study.privacy.secure_aggregation "
            "= 'secaggplus') hides from the coordinator; use loop.update = 'in-the-large', "
            "'logistic' or 'refit', or no secure aggregation."
        )
    if deployed and spec.periods is None:
        raise ConfigError(
            f"{path}: a loop in deployment needs loop.periods (the periods, in order: the "
            'coordinator cannot read them from the sites\' data), e.g. periods = ["2020Q1", ...].'
        )
    periods = list(spec.periods) if spec.periods is not None else data_periods(study)
    if len(periods) <= spec.initial_periods:
        raise ConfigError(
            f"{path}: loop.initial_periods = {spec.initial_periods} leaves no period to "
            f"monitor: the data hold {len(periods)} ({periods[0]}..{periods[-1]})."
        )
    return LoopFile(spec, study, periods)


def data_periods(study: Study) -> list[str]:
    """Every period in the study's data, sorted."""
    return sorted(site_periods(study).keys())


def site_periods(study: Study) -> dict[str, set[str]]:
    """Period -> the sites with rows in it."""
    found: dict[str, set[str]] = {}
    contract = study.contract
    for raw in raw_sites(study):
        labels = period_labels(
            raw.table[contract.index_date], contract.period, site=raw.name, source=raw.source
        )
        for label in set(labels):
            found.setdefault(label, set()).add(raw.name)
    return found


def _at(study: Study, sites: set[str]) -> Study:
    """The study restricted to ``sites`` (in the source's order)."""
    order = [
        r.name
        for r in raw_sites(
            dataclasses.replace(study, data=dataclasses.replace(study.data, sites=None))
        )
    ]
    data = dataclasses.replace(study.data, sites=tuple(s for s in order if s in sites))
    return dataclasses.replace(study, data=data)


def run_loop(
    loop: LoopFile,
    folder: Path,
    *,
    progress: Progress | None = None,
    engine: LoopEngine | None = None,
) -> dict[str, Any]:
    """Run the loop (see the module docstring); return its summary and events.

    ``engine`` runs each step (default: the study's simulated sites, in
    process, with a coordinator key made for the loop); with a deployed one
    (:class:`~lhs_federated.deploy.loop_engine.DeployedEngine`) the same steps run
    at the consortium's sites, and the timeline holds what monitoring found
    there (no oracle, no pooled scoring: the coordinator holds no rows).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise LhsError(f"loop folder {str(folder)!r} exists and is not empty; choose another.")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    spec, base = loop.loop, loop.study
    if engine is None:
        write_key_pair(folder / "coordinator.key")
        engine = InProcessEngine(folder / "coordinator.key", folder / "governance" / "sites")
    key_path = engine.key_path
    key = load_private_key(key_path)
    registry = Registry(folder / "registry")
    periods = loop.periods
    # Which sites hold rows in each period (simulation); a deployment's sites say so themselves.
    present = site_periods(base) if engine.pooled_data else None

    def at(study: Study, window: list[str]) -> Study:
        return study if present is None else _at(study, set().union(*(present[p] for p in window)))

    initial = periods[: spec.initial_periods]
    first = at(update_study(base, initial, name=base.name), initial)
    _note(
        progress,
        "training",
        0,
        len(periods) - len(initial),
        f"first release on {initial[0]}..{initial[-1]}",
        folder,
    )
    trained = folder / "runs" / "v1-train"
    engine.train(first, trained)
    update = None
    if spec.initial_recalibration == "logistic":
        polish = update_study(first, initial, name=base.name, rounds=RECALIBRATION_ROUNDS)
        update = recalibrated_run(
            folder / "runs" / "v1-recalibrated", polish, trained, "logistic",
            key_path=key_path, engine=engine,
        )  # fmt: skip
        update = {**update, "periods": initial}
        trained = folder / "runs" / "v1-recalibrated"
    published = release_run(
        trained, spec.release, key_path=key_path, registry_root=registry.root, engine=engine,
        update=update, study=first if update else None,
    )  # fmt: skip
    frozen = champion = ReleaseRef.parse(published["release"])
    events: list[dict[str, Any]] = [
        {"period": initial[-1], "kind": "release", "release": str(frozen), "status": "current",
         "reason": "first release"}
    ]  # fmt: skip
    scores: list[dict[str, Any]] = []
    todo = periods[spec.initial_periods :]
    for done, period in enumerate(todo, start=1):
        if engine.pooled_data:
            period_study = at(update_study(base, [period], name=f"{base.name}-{period}"), [period])
            models = {"frozen": registry.folder(frozen), "loop": registry.folder(champion)}
            for row in score_period(period_study, period, models, oracle=spec.oracle):
                scores.append({**row, "release": str(champion)})
        monitored = monitor_release(
            registry, champion, [period], key=key, key_path=key_path,
            out_root=folder / "monitoring", rules=spec.alerts, study=at(base, [period]),
            engine=engine,
        )  # fmt: skip
        if not engine.pooled_data:  # the sites' own figures are the loop's timeline
            scores += [{**_monitored_score(r), "release": str(champion)} for r in monitored.rows]
        for alert in monitored.alerts:
            events.append({"period": period, "kind": "alert", **alert.row()})
        note = f"{len(monitored.alerts)} alerts"
        if done < len(todo) and (monitored.alerts or spec.update_on == "every-period"):
            window = periods[max(0, periods.index(period) - spec.update_periods + 1) :]
            window = window[: window.index(period) + 1]
            # a federation's alert (secure aggregation: drift of the pooled rows) names no site
            alerting = {a.site for a in monitored.alerts} - {SECURE_SUM_SITE}
            champion, decision = _update_and_gate(
                spec, at(base, window), window, registry, champion, folder=folder, engine=engine,
                only_sites=alerting if spec.update_sites == "alerting" and alerting else None,
            )  # fmt: skip
            events.append({"period": period, "kind": "release", **decision})
            note += f"; {decision['release']} {decision['status']}: {decision['reason']}"
        _note(progress, period, done, len(todo), note, folder)
    summary = summarise(scores, events, drift_events(base), todo)
    summary["engine"] = engine.name
    summary["seconds"] = round(time.monotonic() - started, 1)
    _write_csv(folder / "loop-timeline.csv", scores)
    (folder / "loop-events.json").write_text(json.dumps(events, indent=2, default=str) + "\n")
    write_loop_report(folder / "loop-report.html", scores, events, drift_events(base), summary)
    return {"summary": summary, "events": events, "scores": scores}


def _monitored_score(row: dict[str, Any]) -> dict[str, Any]:
    """A monitoring row as a timeline score of the loop's model (what the sites measured)."""
    nan = float("nan")
    return {
        "period": row["period"], "site": row["site"], "model": "loop", "n": row.get("n"),
        **{k: nan if row.get(k) is None else row[k]
           for k in ("auroc", "calibration_intercept", "calibration_slope")},
    }  # fmt: skip


def _update_and_gate(
    spec: LoopSpec, base: Study, window: list[str], registry: Registry, champion: ReleaseRef,
    *, folder: Path, engine: LoopEngine, only_sites: set[str] | None = None,
) -> tuple[ReleaseRef, dict[str, Any]]:  # fmt: skip
    """Update the champion on ``window``, release the candidate, gate it; the new champion.

    One update study (the window's rows) serves the update, the candidate's
    reference evaluation and the gate: a site approves it once.
    """
    rounds = None if spec.update == "refit" else RECALIBRATION_ROUNDS  # Newton steps
    study = update_study(base, window, name=f"{base.name}-update", rounds=rounds)
    version = registry.next_version(spec.release)
    run_dir = folder / "runs" / f"{version}-update"
    if spec.update == "refit":
        update = refitted_run(
            run_dir, study, parent=str(champion), registry=registry.root, engine=engine
        )
    else:
        update = recalibrated_run(
            run_dir, study, registry.folder(champion), spec.update, key_path=engine.key_path,
            per_site_method=spec.per_site_method, only_sites=only_sites, engine=engine,
        )  # fmt: skip
    published = release_run(
        run_dir, spec.release, key_path=engine.key_path, registry_root=registry.root,
        parent=str(champion), update={**update, "periods": window}, study=study, engine=engine,
    )  # fmt: skip
    candidate = ReleaseRef.parse(published["release"])
    gate = engine.task(
        study,
        folder / "runs" / f"{version}-gate",
        {"kind": "gate", "champion": str(registry.folder(champion)),
         "challenger": str(registry.folder(candidate)), "policy": spec.gate.policy()},
    )  # fmt: skip
    promoted, reason = decide(gate["result"], gate["failed"], spec.gate.rule)
    verdicts = {s: v["passed"] for s, v in gate["result"].items()}
    registry.decide(candidate, promoted=promoted, reason=reason,
                    key=load_private_key(engine.key_path),
                    evidence={"verdicts": verdicts, "failed": gate["failed"]})  # fmt: skip
    decision = {
        "release": str(candidate), "parent": str(champion), "method": spec.update,
        "status": "current" if promoted else "rejected", "reason": reason, "verdicts": verdicts,
    }  # fmt: skip
    return (candidate if promoted else champion), decision


def drift_events(study: Study) -> list[dict[str, Any]]:
    """The cohort's named drift events, with the period label each starts in."""
    from lhs_federated.data.synthetic import period_label

    return [
        {"label": e.label, "kind": e.kind, "site": e.site, "period": period_label(e.from_period)}
        for e in study.data.synthetic.drift
    ]


def summarise(
    scores: list[dict[str, Any]], events: list[dict[str, Any]], drift: list[dict[str, Any]],
    periods: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Mean AUROC and share of calibration slopes in [0.9, 1.1] per model; alerts."""
    out: dict[str, Any] = {"models": {}}
    for model in sorted({r["model"] for r in scores}):
        rows = [r for r in scores if r["model"] == model]
        aurocs = [r["auroc"] for r in rows if r["auroc"] == r["auroc"]]
        slopes = [
            r["calibration_slope"] for r in rows if r["calibration_slope"] == r["calibration_slope"]
        ]
        out["models"][model] = {
            "mean_auroc": round(sum(aurocs) / len(aurocs), 4) if aurocs else None,
            "slope_in_band": round(sum(0.9 <= s <= 1.1 for s in slopes) / len(slopes), 3)
            if slopes
            else None,
            "site_periods": len(rows),
        }
    alerts = [e for e in events if e["kind"] == "alert"]
    out["alerts"] = len(alerts)
    out["alerting_site_periods"] = len({(e["period"], e["site"]) for e in alerts})
    out["releases"] = [e["release"] + " " + e["status"] for e in events if e["kind"] == "release"]
    out["drift_events"] = drift
    out["periods"] = periods
    return out


def _note(
    progress: Progress | None, period: str, done: int, total: int, note: str, folder: Path
) -> None:
    if progress is not None:
        progress(period, done, total, note)
    report_progress(
        ProgressEvent(
            "step", f"period {period}: {note}", {"period": period, "done": done, "total": total}
        ),
        run_dir=folder,
    )


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
