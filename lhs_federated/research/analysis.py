"""What a simulated study adds after its federation: baselines, comparisons, calibration.

Only a simulation holds every site's rows in one place, so only here can the
federated model be set beside the pooled and local-only models
(:mod:`lhs_federated.research.baselines`) and scored on all sites' test rows together.
:func:`analyse_run` does that for a finished run folder and adds to it:

- ``comparison.csv``: the ``federated`` and ``pooled`` models scored at every
  site's test split and on all test rows together (``all-sites``), and each
  ``local:<site>`` model at its own site (and its AUROC and accuracy on all
  test rows), one row per model, place and metric;
- ``cross_site.csv``: each local model's AUROC and accuracy at every site and
  on all test rows (:mod:`lhs_federated.research.cross_site`);
- ``calibration.csv``: the final federated model's calibration curve at each
  site (equal-width bins; bins with fewer people, or fewer cases of a class,
  than the minimum cell size are left out);
- ``summary.json``: a ``comparison`` table (federated, pooled and local per
  site and on average, and the gain from federation, federated minus local)
  and the ``baselines`` budget, rewritten atomically.

The federated model is scored exactly as the sites scored it (same
preprocessing, same fine-tuning for personalised strategies), so the
comparison's federated column equals the last round of ``metrics.csv``; and
under the same disclosure control as a site's replies (a site's metrics on
fewer test rows than the minimum cell size are withheld, whatever the model).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lhs_federated.data.sources import SiteData, load_sites
from lhs_federated.learning.metrics import (
    MEAN_METRICS,
    METRIC_NAMES,
    MetricReport,
    nan_weighted_mean,
)
from lhs_federated.learning.personalisation import fine_tuning_of, personalise
from lhs_federated.learning.site import (
    federated_standardizer,
    predict_at_site,
    score_predictions,
    site_standardizer,
    summarise_site,
)
from lhs_federated.privacy.egress import suppress_evaluation
from lhs_federated.research.baselines import POOLED, local_name, train_baselines
from lhs_federated.research.cross_site import SUMMARY_MAX_SITES, CrossSiteMatrix, score_cross_site
from lhs_federated.research.cross_site_file import (
    CROSS_SITE_FILE,
    CROSS_SITE_METRICS,
    write_cross_site,
)
from lhs_federated.results.progress import ProgressEvent, report_progress
from lhs_federated.results.writer import write_json
from lhs_federated.study import Study

FEDERATED = "federated"
ALL_SITES = "all-sites"
COMPARED_METRICS = tuple(m for m in MEAN_METRICS if m != "prevalence")
COMPARISON_COLUMNS = ("model", "evaluated_at", "metric", "value", "reason")
CALIBRATION_COLUMNS = ("model", "site", "bin", "lower", "upper", "n", "mean_predicted", "observed")


@dataclass(frozen=True)
class ModelScores:
    """One model's metrics at each site's test split and on all test rows together."""

    per_site: dict[str, MetricReport]
    all_sites: MetricReport


def analyse_run(study: Study, out_dir: str | Path) -> dict[str, Any]:
    """Score the run's final model beside its baselines and extend the run folder.

    Parameters
    ----------
    study : Study
        The study the run folder holds (resolved).
    out_dir : str or Path
        A completed run folder (with ``summary.json`` and ``model/``).

    Returns
    -------
    dict
        The updated summary (also written as ``summary.json``).
    """
    out_dir = Path(out_dir)
    sites = load_sites(study)
    summaries = [summarise_site(s, study, min_cell_size=study.sites.min_cell_size) for s in sites]
    federated = federated_standardizer(study, summaries)
    standardizers = {s.name: site_standardizer(study, s, federated) for s in sites}
    with np.load(out_dir / "model" / "model.npz") as npz:
        final = {name: npz[name] for name in npz.files}

    fine_tuning = fine_tuning_of(study)
    predictions = {
        FEDERATED: {
            s.name: predict_at_site(
                study,
                personalise(
                    study,
                    s,
                    final,
                    standardizer=standardizers[s.name],
                    fine_tuning=fine_tuning,
                    server_round=study.rounds,
                ),
                s.test.features,
                standardizers[s.name],
            )
            for s in sites
        }
    }
    progress = _StepProgress(out_dir)
    baselines = (
        train_baselines(
            study,
            sites,
            standardizers,
            on_trained=lambda done, total: progress(
                f"baselines: {done} of {total} models trained", done, total
            ),
        )
        if study.baselines.enabled
        else {}
    )
    if POOLED in baselines:
        predictions[POOLED] = {
            s.name: predict_at_site(
                study, baselines[POOLED].arrays, s.test.features, standardizers[s.name]
            )
            for s in sites
        }
    cell = study.sites.min_cell_size
    rows = {FEDERATED: cell}  # sites below the cell size never train
    rows.update({name: model.n_rows for name, model in baselines.items()})
    scores = {
        name: _score(study, sites, by_site, trained_on=rows[name])
        for name, by_site in predictions.items()
    }
    cross = None
    if baselines:  # local models: full metrics at home, the matrix's metrics everywhere
        progress(f"cross-site matrix: {len(sites)} local models at {len(sites)} sites", 0, 1)
        cross = score_cross_site(
            study,
            sites,
            [baselines[local_name(s.name)].arrays for s in sites],
            standardizers,
            min_cell_size=cell,
        )
        progress("cross-site matrix scored", 1, 1)
        outcome = np.concatenate([s.test.outcome for s in sites])
        for i, site in enumerate(sites):
            name = local_name(site.name)
            home = predict_at_site(
                study, baselines[name].arrays, site.test.features, standardizers[site.name]
            )
            report = _guarded(score_predictions(study, site.test.outcome, home), cell, rows[name])
            everywhere = _guarded(_matrix_report(cross, i, outcome), cell, rows[name])
            scores[name] = ModelScores({site.name: report}, everywhere)
            for metric in CROSS_SITE_METRICS:  # the diagonal is the site's own report
                cross.values[metric][i, i] = report.values[metric]
        write_cross_site(out_dir / CROSS_SITE_FILE, cross.sites, cross.values, cross.all_sites)

    _write_comparison(out_dir / "comparison.csv", scores)
    _write_calibration(out_dir / "calibration.csv", study, sites, predictions[FEDERATED])
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    counted = summary["final"].get("counted_sites", [s.name for s in sites])
    summary["comparison"] = comparison_table(scores, [s.name for s in sites], counted, cross)
    if baselines:
        cell = study.sites.min_cell_size
        summary["baselines"] = {
            "budget": "fixed epochs" if study.baselines.epochs else "the federation's steps",
            "pooled_scaling": study.baselines.pooled_scaling,
            "models": {
                name: {
                    "rows": model.n_rows if model.n_rows >= cell else f"<{cell}",
                    "steps": model.training.steps,
                    "optimizer": model.training.optimizer,
                    "learning_rate": model.training.learning_rate,
                    "batch_size": model.training.batch_size,
                }
                for name, model in baselines.items()
            },
        }
    write_json(out_dir / "summary.json", summary)
    return summary


def _score(
    study: Study, sites: list[SiteData], by_site: dict[str, np.ndarray], *, trained_on: int
) -> ModelScores:
    """A model's scores at every site and on all test rows, guarded (see :func:`_guarded`)."""
    cell = study.sites.min_cell_size
    outcome = np.concatenate([s.test.outcome for s in sites])
    everything = np.concatenate([by_site[s.name] for s in sites])
    per_site = {
        s.name: _guarded(
            score_predictions(study, s.test.outcome, by_site[s.name]), cell, trained_on
        )
        for s in sites
    }
    all_sites = _guarded(score_predictions(study, outcome, everything), cell, trained_on)
    return ModelScores(per_site, all_sites)


def _guarded(report: MetricReport, cell: int, trained_on: int) -> MetricReport:
    """A report under the disclosure control a site's egress guard applies.

    Metrics on fewer test rows than the minimum cell size are withheld, and so
    is the prevalence when it gives a small count of cases away
    (:func:`~lhs_federated.privacy.egress.suppress_evaluation`); every score of
    a model trained on fewer rows than the cell size (the local-only model of a
    tiny site) is withheld too.
    """
    if trained_on < cell:
        reason = f"withheld: model trained on fewer rows than the minimum cell size ({cell})"
        return MetricReport(
            {m: float("nan") for m in report.values}, dict.fromkeys(report.values, reason)
        )
    return MetricReport(
        *suppress_evaluation(
            report.values, report.undefined, n_key="n", weight_keys=(), min_cell_size=cell
        )
    )


class _StepProgress:
    """Progress events of the analysis step: about ten per stage, however many sites."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._shown = -1.0

    def __call__(self, message: str, done: int, total: int) -> None:
        share = done / max(total, 1)
        if done in (0, total) or share - self._shown >= 0.1:
            self._shown = -1.0 if done == total else share
            data = {"step": "analysis", "done": done, "total": total}
            report_progress(ProgressEvent("step", message, data), run_dir=self._run_dir)


def _matrix_report(cross: CrossSiteMatrix, i: int, outcome: np.ndarray) -> MetricReport:
    """Local model ``i`` on all test rows: the matrix's metrics, the rest undefined."""
    values = {m: float("nan") for m in METRIC_NAMES}
    values["n"], values["prevalence"] = float(len(outcome)), float(outcome.mean())
    for metric in CROSS_SITE_METRICS:
        values[metric] = float(cross.all_sites[metric][i])
    reason = "local-only models are scored away from home on AUROC and accuracy only"
    undefined = {m: reason for m in COMPARED_METRICS if m not in CROSS_SITE_METRICS}
    return MetricReport(values, undefined)


def comparison_table(
    scores: dict[str, ModelScores],
    sites: list[str],
    counted: list[str],
    cross: CrossSiteMatrix | None = None,
) -> dict[str, Any]:
    """Federated, pooled and local per site and on average, and the gain from federation.

    ``local`` at a site is that site's own local-only model; ``gain`` is
    federated minus local (for Brier score and ECE, lower is better, so a
    negative gain is an improvement). Means follow the run's one definition
    (``summary.json`` ``final.mean_definition``): unweighted over the
    ``counted`` sites (those with enough test rows and cases of each class)
    where a metric is defined. ``cross_site`` holds each local model's AUROC
    and accuracy at every site (``cross``), when there are at most
    :data:`~lhs_federated.research.cross_site.SUMMARY_MAX_SITES` sites
    (``cross_site.csv`` always holds it).
    """

    def clean(value: float) -> float | None:
        return None if np.isnan(value) else float(value)

    def values(name: str, site: str) -> dict[str, float]:
        if name == "local":
            name = local_name(site)
        if name not in scores:
            return {}
        return {m: scores[name].per_site[site].values[m] for m in COMPARED_METRICS}

    columns = [FEDERATED] + ([POOLED, "local"] if POOLED in scores else [])
    per_site: dict[str, dict[str, dict[str, float]]] = {
        site: {column: values(column, site) for column in columns} for site in sites
    }
    if POOLED in scores:
        for row in per_site.values():
            row["gain"] = {m: row[FEDERATED][m] - row["local"][m] for m in COMPARED_METRICS}
        columns.append("gain")
    mean = {
        column: {
            m: clean(
                nan_weighted_mean([per_site[s][column][m] for s in counted], [1.0] * len(counted))
            )
            for m in COMPARED_METRICS
        }
        for column in columns
    }
    table: dict[str, Any] = {
        "metrics": list(COMPARED_METRICS),
        "per_site": {
            site: {c: {m: clean(v) for m, v in row[c].items()} for c in columns}
            for site, row in per_site.items()
        },
        "mean": mean,
        "counted_sites": list(counted),
        ALL_SITES: {
            name: {m: clean(s.all_sites.values[m]) for m in COMPARED_METRICS}
            for name, s in scores.items()
        },
    }
    if cross is not None and len(sites) <= SUMMARY_MAX_SITES:
        table["cross_site"] = {metric: cross.as_dict(metric) for metric in CROSS_SITE_METRICS}
    return table


def _write_comparison(path: Path, scores: dict[str, ModelScores]) -> None:
    rows = []
    for name, score in scores.items():
        places = {**score.per_site, ALL_SITES: score.all_sites}
        for place, report in places.items():
            for metric in METRIC_NAMES:
                value = report.values.get(metric, float("nan"))
                rows.append(
                    (
                        name,
                        place,
                        metric,
                        "" if np.isnan(value) else repr(float(value)),
                        report.undefined.get(metric, ""),
                    )
                )
    _write_csv(path, COMPARISON_COLUMNS, rows)


def _write_calibration(
    path: Path, study: Study, sites: list[SiteData], predictions: dict[str, np.ndarray]
) -> None:
    bins, cell = study.evaluation.calibration_bins, study.sites.min_cell_size
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for site in sites:
        p = predictions[site.name]
        which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
        for b in range(bins):
            members = which == b
            n = int(members.sum())
            positives = int(site.test.outcome[members].sum())
            if n < cell or any(0 < count < cell for count in (positives, n - positives)):
                continue  # a bin of few people, or one giving a small count of cases away
            rows.append(
                (
                    FEDERATED,
                    site.name,
                    b,
                    f"{edges[b]:.4f}",
                    f"{edges[b + 1]:.4f}",
                    n,
                    repr(float(p[members].mean())),
                    repr(float(site.test.outcome[members].mean())),
                )
            )
    _write_csv(path, CALIBRATION_COLUMNS, rows)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Write a CSV table atomically (temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    tmp.replace(path)
