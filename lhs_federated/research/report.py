"""One self-contained HTML report per run or sweep folder.

``report.html`` needs nothing beside it: figures are PNGs inlined as base64
``data:`` URIs and the styling is inline, so it can be mailed, archived with
the study or opened offline. It is rebuilt from the folder's own files (the
resolved study, ``versions.json``, the CSV tables and ``summary.json``), so
``lhs-fed report RUN_DIR`` gives the same report for any finished folder.

A run report shows the study, the data each site contributed, the federated
model beside the pooled and local-only baselines, convergence, calibration,
participation per round, and the versions and seeds that make it
reproducible. A sweep report shows the grid, the aggregate table (mean, SD,
95% CI per configuration), one row per run, and the effect of each knob.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lhs_federated.errors import ConfigError
from lhs_federated.research import report_sites
from lhs_federated.research.cross_site_file import CROSS_SITE_FILE, read_cross_site
from lhs_federated.results.notes import run_notes
from lhs_federated.results.progress import ProgressEvent, report_progress
from lhs_federated.results.reader import read_results
from lhs_federated.results.writer import utc_now

REPORT_NAME = "report.html"
SHOWN_METRICS = ("auroc", "accuracy", "balanced_accuracy", "brier", "calibration_slope", "ece")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd;
padding-bottom: 0.2em; margin-top: 1.8em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
tr.mean td { font-weight: bold; background: #fafafa; }
.muted { color: #666; font-size: 0.9em; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; } img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.good { color: #1a7f37; } .bad { color: #b3261e; }
.wide { overflow-x: auto; } td { white-space: nowrap; }
"""


def write_report(folder: str | Path) -> Path:
    """Write ``report.html`` for a run or a sweep folder; return its path.

    Raises
    ------
    ConfigError
        If the folder holds neither a completed run nor a sweep.
    """
    folder = Path(folder)
    if (folder / "sweep.toml").is_file():
        return write_sweep_report(folder)
    if (folder / "summary.json").is_file():
        return write_run_report(folder)
    raise ConfigError(
        f"{str(folder)!r} holds no completed run (summary.json) or sweep (sweep.toml); "
        "name a folder written by `lhs-fed simulate` or `lhs-fed sweep`."
    )


def write_run_report(run_dir: str | Path) -> Path:
    """Write the HTML report of a completed run folder; return its path."""
    from lhs_federated.research import plots

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    summary = results.summary
    study = _read_toml(run_dir / "study.resolved.toml")
    versions = json.loads((run_dir / "versions.json").read_text(encoding="utf-8"))
    sites = pd.read_csv(run_dir / "sites.csv", dtype=str)
    rounds = pd.read_csv(run_dir / "rounds.csv", dtype=str, keep_default_na=False)
    comparison = summary.get("comparison")

    def step(what: str, done: int) -> None:
        data = {"step": "report", "done": done, "total": 3}
        report_progress(ProgressEvent("step", f"report: {what}", data), run_dir=run_dir)

    step(f"study and data of {len(sites)} sites", 0)
    parts = [
        f"<h1>{_e(summary['study'])}: federated study report</h1>",
        f"<p>{_e(study.get('description', ''))}</p>",
        f"<p><strong>As run:</strong> {_e(_as_run(summary, versions, sites))}</p>",
        f"<p class='muted'>study hash <code>{_e(summary['study_hash'])}</code> · "
        f"{_e(summary['status'])} {_e(summary['finished_at'])} · {summary['seconds']:.1f} s · "
        f"engine {_e(versions.get('engine', '?'))}</p>",
        "<h2>Study</h2>",
        _key_values(_study_facts(study, versions.get("engine", ""))),
        f"<details><summary>Resolved study (TOML)</summary><pre>"
        f"{_e((run_dir / 'study.resolved.toml').read_text(encoding='utf-8'))}</pre></details>",
        "<h2>Data per site</h2>",
        _sites_table(sites),
        "<p class='muted'>Counts below a site's minimum cell size are withheld "
        "(shown as &lt;N).</p>",
        _figure(plots.site_data(sites), "Rows and outcome prevalence per site"),
        _departures(summary.get("preprocessing", {})),
        "<h2>Results</h2>",
        _notes(run_notes(summary)),
    ]
    if comparison is not None:
        step("federated vs pooled vs local, cross-site matrix", 1)
        parts.append(_comparison_section(comparison, summary, plots, run_dir))
    step("final metrics, convergence, calibration", 2)
    parts += [
        "<h3>Final round, federated model, every metric</h3>",
        _final_table(summary["final"]),
        "<p class='muted'>* shown but left out of the means (too few test rows or cases of a "
        "class; see the notes above). AUROC 95% CI: DeLong, at each site.</p>",
        _undefined(summary["final"].get("undefined", {})),
        _figure(plots.convergence(results.per_round), "Convergence per site and on average"),
    ]
    calibration_path = run_dir / "calibration.csv"
    if calibration_path.is_file():
        calibration = pd.read_csv(calibration_path)
        if len(calibration):
            parts.append(
                _figure(
                    plots.calibration_curves(calibration),
                    "Calibration of the final federated model at each site (bins with fewer "
                    "people, or fewer cases of a class, than the minimum cell size are left out)",
                )
            )
        else:
            parts.append(
                "<p class='muted'>No calibration curve: every bin at every site holds fewer "
                "people, or fewer cases of a class, than the minimum cell size.</p>"
            )
    parts += [
        "<h2>Rounds</h2>",
        _frame_table(_rounds_shown(rounds, len(sites)), text_columns=("trained", "failed")),
        "<h2>Reproducibility</h2>",
        _key_values(
            {
                "seed": versions.get("seed"),
                "split seed": versions.get("split_seed"),
                "python": versions.get("python"),
                "platform": versions.get("platform"),
                **{name: v or "not installed" for name, v in versions["packages"].items()},
            }
        ),
    ]
    return _write(run_dir, f"{summary['study']} report", parts)


def _comparison_section(
    comparison: dict[str, Any], summary: dict[str, Any], plots: Any, run_dir: Path
) -> str:
    columns = [c for c in ("federated", "pooled", "local", "gain") if c in comparison["mean"]]
    metrics = ("auroc", "accuracy", "brier")
    headers = ["site"] + [f"{_short(m)} {c}" for m in metrics for c in columns]
    keys = [(m, c) for m in metrics for c in columns]

    def cell(value: Any, column: int) -> Markup:
        metric, model = keys[column - 1]
        return _number(value, gain=model == "gain", lower_is_better=metric in LOWER_IS_BETTER)

    left_out = summary["final"].get("left_out", {})
    rows = [
        [_marked(site, left_out), *(row[c].get(m) for m, c in keys)]
        for site, row in comparison["per_site"].items()
    ]
    mean = ["mean", *(comparison["mean"][c].get(m) for m, c in keys)]
    parts = [
        "<h3>Federated vs pooled vs local-only (test splits)</h3>",
        "<p class='muted'>pooled: one model trained on all sites' rows (possible only in "
        "simulation); local: each site's own model; gain: federated minus local (for the Brier "
        "score lower is better).</p>",
        _per_site_table(headers, rows, [mean], cell, sort_column=1, what="federated AUROC"),
        "<h3>All sites' test rows together</h3>",
        _all_sites_table(comparison["all-sites"]),
    ]
    if "pooled" in comparison["mean"]:
        parts.append(
            _figure(
                plots.model_comparison(comparison),
                "Federated, pooled and local-only models per site",
            )
        )
    parts.append(_cross_site_figure(comparison, plots, run_dir))
    baselines = summary.get("baselines")
    if baselines:
        parts.append(f"<p class='muted'>Baseline budget: {_e(baselines['budget'])}.</p>")
        parts.append(_baselines_table(baselines["models"]))
    return "\n".join(parts)


def _per_site_table(
    headers: Sequence[str],
    rows: list[list[Any]],
    means: list[list[Any]],
    cell: Any,
    *,
    sort_column: int,
    what: str,
    lower_is_worse: bool = True,
) -> str:
    """One row per site and the means; above ~50 sites, quantiles and the worst sites.

    ``cell(value, column)`` formats a value; text (a confidence interval) is
    shown as is, and has no quantiles.
    """
    bold = set(range(-len(means), 0))
    if not report_sites.many_sites(len(rows)):
        shown = report_sites.format_rows([*rows, *means], cell)
        return _table(headers, shown, text_columns={0}, mean_rows={len(shown) + i for i in bold})
    quantiles, worst = report_sites.summarised_rows(
        rows, sort_column=sort_column, lower_is_worse=lower_is_worse
    )
    summary = report_sites.format_rows([*quantiles, *means], cell)
    return (
        f"<p class='muted'>{len(rows)} sites: quantiles over sites where a value is defined, "
        f"then the {len(worst)} sites with the {'lowest' if lower_is_worse else 'highest'} "
        f"{_e(what)} (every site is in the results folder's CSV files).</p>"
        + _table(
            ["over sites", *headers[1:]],
            summary,
            text_columns={0},
            mean_rows={len(summary) + i for i in bold},
        )
        + _table(headers, report_sites.format_rows(worst, cell), text_columns={0})
    )


def _all_sites_table(all_sites: dict[str, dict[str, Any]]) -> str:
    headers = ["model", *(_short(m) for m in SHOWN_METRICS)]
    rows = [[name, *(v.get(m) for m in SHOWN_METRICS)] for name, v in all_sites.items()]
    local = [row for row in rows if str(row[0]).startswith("local:")]
    if report_sites.many_sites(len(local)):  # the local models as a distribution
        quantiles, _ = report_sites.summarised_rows(local, sort_column=1)
        rows = [row for row in rows if row not in local]
        rows += [[f"local ({len(local)} models): {label}", *rest] for label, *rest in quantiles]
    return _table(
        headers, report_sites.format_rows(rows, lambda v, _: _number(v)), text_columns={0}
    )


def _baselines_table(models: dict[str, dict[str, Any]]) -> str:
    headers = ["model", "rows", "steps", "optimizer", "learning rate", "batch"]
    rows = [
        [n, m["rows"], m["steps"], m["optimizer"], m["learning_rate"], m["batch_size"]]
        for n, m in models.items()
    ]
    local = [row for row in rows if str(row[0]).startswith("local:")]
    if report_sites.many_sites(len(local)):
        quantiles, _ = report_sites.summarised_rows([row[:3] for row in local], sort_column=1)
        first = local[0]
        rows = [row for row in rows if row not in local] + [
            [f"local ({len(local)} models): {label}", *values, *first[3:]]
            for label, *values in quantiles
        ]
    return _table(headers, rows, text_columns={0, 3})


def _cross_site_figure(comparison: dict[str, Any], plots: Any, run_dir: Path) -> str:
    """The cross-site heat map; above ~20 sites unlabelled, with the best and worst listed."""
    metric = "accuracy"
    path = run_dir / CROSS_SITE_FILE
    if path.is_file():
        sites, values = read_cross_site(path, metric)
    elif "cross_site" in comparison:  # a folder written before cross_site.csv
        matrix = comparison["cross_site"][metric]
        sites = list(matrix)
        values = np.array(
            [[np.nan if matrix[a][b] is None else matrix[a][b] for b in sites] for a in sites]
        )
    else:
        return ""
    figure = _figure(
        plots.cross_site_matrix(sites, values, metric),
        "Each site's local-only model scored at every site",
    )
    if len(sites) <= plots.LABELLED_SITES_MAX:
        return figure
    ends = report_sites.matrix_ends(sites, values)
    return figure + (
        f"<p class='muted'>Local models whose {metric} away from home is best and worst "
        "(mean over the other sites where it is defined):</p>"
        + _table(
            ["", "trained at", f"mean {metric} elsewhere", "sites"],
            [[rank, site, _number(mean), count] for rank, site, mean, count in ends],
            text_columns={0, 1},
        )
    )


def _sites_table(sites: pd.DataFrame) -> str:
    """Counts per site; above ~50 sites their distribution and the smallest sites."""
    if not report_sites.many_sites(len(sites)):
        return _frame_table(sites, text_columns=("site",))
    numeric = sites.set_index("site").apply(pd.to_numeric, errors="coerce")
    rows = [
        [site, *(None if pd.isna(v) else float(v) for v in values)]
        for site, values in zip(numeric.index, numeric.to_numpy(), strict=True)
    ]
    quantiles, _ = report_sites.summarised_rows(rows, sort_column=1)
    smallest = sites.assign(_n=numeric["n_train"].to_numpy()).sort_values("_n", na_position="first")
    headers = list(map(str, sites.columns))
    return (
        f"<p class='muted'>{len(sites)} sites: quantiles of each count over the sites that "
        "report it, then the smallest sites (every site is in sites.csv).</p>"
        + _table(
            ["over sites", *headers[1:]],
            report_sites.format_rows(quantiles, lambda v, _: _number(v, digits=0)),
            text_columns={0},
        )
        + _frame_table(
            smallest.drop(columns="_n").head(report_sites.WORST_SHOWN), text_columns=("site",)
        )
    )


def _rounds_shown(rounds: pd.DataFrame, n_sites: int) -> pd.DataFrame:
    """The rounds table; with many sites, how many trained rather than every name."""
    if not report_sites.many_sites(n_sites) or "trained" not in rounds:
        return rounds
    counted = rounds["trained"].map(lambda names: f"{len(str(names).split())} sites")
    return rounds.assign(trained=counted)


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """Write the HTML report of a sweep folder; return its path."""
    from lhs_federated.research import plots

    sweep_dir = Path(sweep_dir)
    spec = _read_toml(sweep_dir / "sweep.toml")
    runs = (
        pd.read_csv(sweep_dir / "runs.csv")
        if (sweep_dir / "runs.csv").is_file()
        else pd.DataFrame()
    )
    aggregate_path = sweep_dir / "aggregate.csv"
    aggregate = pd.read_csv(aggregate_path) if aggregate_path.is_file() else pd.DataFrame()
    grid_keys = [k for k in spec.get("grid", {}) if k != "seed"]
    versions_path = sweep_dir / "versions.json"
    versions = (
        json.loads(versions_path.read_text(encoding="utf-8")) if versions_path.is_file() else {}
    )
    parts = [
        f"<h1>Sweep {_e(spec.get('name', sweep_dir.name))}</h1>",
        f"<p>{_e(spec.get('description', ''))}</p>",
        f"<p class='muted'>{len(runs)} runs recorded · report written {_e(utc_now())}</p>",
        "<h2>Grid</h2>",
        _key_values(
            {key: ", ".join(map(str, values)) for key, values in spec.get("grid", {}).items()}
        ),
        f"<details><summary>Sweep file (resolved)</summary><pre>"
        f"{_e((sweep_dir / 'sweep.toml').read_text(encoding='utf-8'))}</pre></details>",
        "<h2>Aggregate per configuration</h2>",
        "<p class='muted'>mean ± half-width of the 95% confidence interval over seeds "
        "(Student's t); SDs and interval bounds are in aggregate.csv.</p>",
        _aggregate_table(aggregate, grid_keys),
    ]
    if len(aggregate) and grid_keys:
        columns = [c for c in spec.get("plot", []) if f"{c}_mean" in aggregate.columns]
        for caption, png in plots.sweep_effects(aggregate, grid_keys, columns):
            parts.append(_figure(png, caption))
    parts += [
        "<h2>Runs</h2>",
        _frame_table(runs, text_columns=("run", "status", "error", "seed", *grid_keys)),
    ]
    if versions:
        parts += [
            "<h2>Reproducibility</h2>",
            _key_values(
                {
                    "python": versions.get("python"),
                    "platform": versions.get("platform"),
                    **{name: v or "not installed" for name, v in versions["packages"].items()},
                }
            ),
        ]
    return _write(sweep_dir, f"sweep {spec.get('name', '')}", parts)


DEPLOYED_DATA = "each site's own table, named in its own site config (the study's [data] is unused)"


def _as_run(summary: dict[str, Any], versions: dict[str, Any], sites: pd.DataFrame) -> str:
    """What actually ran, whatever the study's description says (it may name other sites)."""
    names = list(sites["site"]) if "site" in sites else summary.get("sites", [])
    engine = versions.get("engine", "?")
    data = DEPLOYED_DATA if engine == "deployment" else "simulated sites"
    return f"{len(names)} sites ({', '.join(map(str, names))}); {data}; engine {engine}."


def _study_facts(study: dict[str, Any], engine: str = "") -> dict[str, Any]:
    data, strategy, training = study["data"], study["strategy"], study["training"]
    params = ", ".join(f"{k}={v}" for k, v in strategy.get("params", {}).items())
    source = f"{data['source']}" + (f" ({data['path']})" if data.get("path") else "")
    return {
        "outcome": study["data"]["contract"]["outcome"]["column"],
        "data": DEPLOYED_DATA if engine == "deployment" else source,
        "contract": data["contract"]["name"],
        "split": f"test fraction {data['test_fraction']}, seed {data['split_seed']} "
        f"({data['split_seeding']}); scored on {data['evaluate_on']}",
        "preprocessing": ", ".join(f"{k} {v}" for k, v in study["preprocessing"].items()),
        "model": study["model"]["name"],
        "strategy": strategy["name"] + (f" ({params})" if params else ""),
        "rounds": study["rounds"],
        "local training": ", ".join(f"{k} {v}" for k, v in training.items()),
        "seed": study["seed"],
    }


def _final_table(final: dict[str, Any]) -> str:
    left_out = final.get("left_out", {})

    def interval(v: dict[str, Any]) -> Markup:
        low, high = v.get("auroc_ci_low"), v.get("auroc_ci_high")
        return Markup("—" if low is None or high is None else f"{low:.2f}–{high:.2f}")

    rows = [
        [_marked(site, left_out), *(v.get(m) for m in SHOWN_METRICS), interval(v)]
        for site, v in final["per_site"].items()
    ]
    means = [
        [label.replace("_", " "), *(final.get(label, {}).get(m) for m in SHOWN_METRICS), ""]
        for label in ("mean", "weighted_mean")
    ]
    return _per_site_table(
        ["site", *(_short(m) for m in SHOWN_METRICS), "AUROC 95% CI"],
        rows,
        means,
        lambda v, _: v if isinstance(v, str) else _number(v),
        sort_column=1,
        what="AUROC",
    )


def _marked(site: str, left_out: dict[str, str]) -> str:
    return f"{site} *" if site in left_out else site


def _notes(notes: list[str]) -> str:
    """What a reader must know to read the figures (the CLI prints the same)."""
    if not notes:
        return ""
    return "<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def _departures(preprocessing: dict[str, Any]) -> str:
    """Columns whose federated statistics are not the pooled rows', and what was used."""
    departures = preprocessing.get("departures", [])
    if not departures:
        return (
            "<p class='muted'>Federated preprocessing statistics: exactly those of the "
            "pooled rows.</p>"
            if preprocessing.get("scaling") == "federated"
            else ""
        )
    table = _table(
        ["column", "no values from", "used instead"],
        [[d["column"], ", ".join(d["withheld_at"]), d["used"]] for d in departures],
        text_columns={0, 1, 2},
    )
    return (
        f"<h3>Federated statistics: {len(departures)} of {preprocessing.get('columns', '?')} "
        "columns depart from the pooled rows'</h3><p class='muted'>A site withholds a "
        "column's sums when fewer than its minimum cell size of its patients have a value, "
        "a one or a zero in it; binary and one-hot columns are centred and divided by 0.5, "
        "not by their SD, so there the departure touches only imputation and centring.</p>"
        f"<details><summary>Columns</summary>{table}</details>"
    )


def _undefined(undefined: dict[str, dict[str, str]]) -> str:
    found = [
        (site, metric, reason)
        for site, reasons in undefined.items()
        for metric, reason in reasons.items()
    ]
    if not found:
        return ""
    if not report_sites.many_sites(len(undefined)):
        items = [
            f"<li>{_e(site)} {_e(metric)}: {_e(reason)}</li>" for site, metric, reason in found
        ]
    else:  # grouped: how many sites, and the first few
        groups: dict[tuple[str, str], list[str]] = {}
        for site, metric, reason in found:
            groups.setdefault((metric, reason), []).append(site)
        items = [
            f"<li>{_e(metric)}: {_e(reason)}: {len(names)} sites "
            f"({_e(', '.join(names[:3]))}{', …' if len(names) > 3 else ''})</li>"
            for (metric, reason), names in groups.items()
        ]
    return f"<p class='muted'>Undefined metrics:</p><ul class='muted'>{''.join(items)}</ul>"


def _short(metric: str) -> str:
    return {
        "auroc": "AUROC",
        "accuracy": "acc",
        "balanced_accuracy": "bal.acc",
        "brier": "Brier",
        "calibration_slope": "slope",
        "ece": "ECE",
    }.get(metric, metric)


class Markup(str):
    """Text that is already HTML (escaped or built here), placed in a page as is."""


LOWER_IS_BETTER = frozenset({"brier", "ece"})


def _number(
    value: Any, *, gain: bool = False, digits: int = 3, lower_is_better: bool = False
) -> Markup:
    """A metric for a table: fixed digits, "—" when undefined, gains coloured.

    A gain is green when it is an improvement (above 0, or below 0 for
    metrics where lower is better) and red when it is a loss.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Markup("—")
    if not isinstance(value, float):
        return Markup(_e(value))
    if not gain:
        return Markup(f"{value:.{digits}f}")
    improvement = -value if lower_is_better else value
    colour = "good" if improvement > 0 else "bad" if improvement < 0 else ""
    return Markup(f"<span class='{colour}'>{value:+.{digits}f}</span>")


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    text_columns: Iterable[int] = (),
    mean_rows: Iterable[int] = (),
) -> str:
    """An HTML table; cells are Markup (as is), text (escaped) or numbers."""
    text_columns, mean_rows = set(text_columns), set(mean_rows)

    def cell(value: Any) -> str:
        if isinstance(value, Markup):
            return value
        return _e(value) if isinstance(value, str) else _number(value)

    def css(i: int) -> str:
        return " class='text'" if i in text_columns else ""

    head = "".join(f"<th{css(i)}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        ("<tr class='mean'>" if r in mean_rows else "<tr>")
        + "".join(f"<td{css(i)}>{cell(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for r, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(frame: pd.DataFrame, *, text_columns: Sequence[str] = (), digits: int = 3) -> str:
    """A DataFrame as an HTML table (scrolling sideways if wide).

    Floats are rounded to ``digits`` decimals except in ``text_columns``
    (settings such as grid values), which are shown as written.
    """
    if frame.empty:
        return "<p class='muted'>(none)</p>"
    text = {i for i, c in enumerate(frame.columns) if c in text_columns or frame[c].dtype == object}
    rows = [
        [
            str(v) if i in text or not isinstance(v, float) else _number(v, digits=digits)
            for i, v in enumerate(record)
        ]
        for record in frame.itertuples(index=False)
    ]
    return (
        f"<div class='wide'>{_table(list(map(str, frame.columns)), rows, text_columns=text)}</div>"
    )


def _aggregate_table(aggregate: pd.DataFrame, grid_keys: Sequence[str]) -> str:
    """Per configuration: the grid values, runs, and mean ± 95% CI half-width per column."""
    if aggregate.empty:
        return "<p class='muted'>(no completed runs)</p>"
    columns = [c.removesuffix("_mean") for c in aggregate.columns if c.endswith("_mean")]

    def cell(row: pd.Series, column: str) -> Markup:
        mean, high = row[f"{column}_mean"], row[f"{column}_ci_high"]
        if pd.isna(mean):
            return Markup("—")
        return Markup(f"{mean:.3f}" if pd.isna(high) else f"{mean:.3f} ± {high - mean:.3f}")

    rows = [
        [*(str(row[k]) for k in grid_keys), str(int(row["runs"])), *(cell(row, c) for c in columns)]
        for _, row in aggregate.iterrows()
    ]
    headers = [*grid_keys, "runs", *(c.replace("_", " ") for c in columns)]
    table = _table(headers, rows, text_columns=range(len(grid_keys)))
    return f"<div class='wide'>{table}</div>"


def _key_values(items: dict[str, Any]) -> str:
    return _table(
        ["setting", "value"], [[k, str(v)] for k, v in items.items()], text_columns={0, 1}
    )


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _write(folder: Path, title: str, parts: list[str]) -> Path:
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(parts)
        + "\n<p class='muted'>Written by lhs-federated.</p></body></html>\n"
    )
    path = folder / REPORT_NAME
    tmp = folder / f".{REPORT_NAME}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
