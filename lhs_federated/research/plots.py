"""Figures of a run or a sweep, as PNG bytes (matplotlib's Agg canvas).

Every figure is drawn on its own :class:`~matplotlib.figure.Figure` attached
to an Agg canvas, never through ``pyplot``: nothing global changes, so a
researcher's notebook backend is left alone and plotting works headless.
Inputs are the plain tables of a results folder (DataFrames and the summary
dictionary), so a report can be rebuilt from the folder alone.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
MODEL_COLOURS = {"federated": "#1f77b4", "pooled": "#7f7f7f", "local": "#ff7f0e"}
LABELS = {"auroc": "AUROC", "accuracy": "accuracy", "brier": "Brier score", "ece": "ECE"}
#: Above this many sites a figure draws no per-site labels, lines or legend entries.
LABELLED_SITES_MAX = 20
#: Above this many sites per-site bars become distributions.
BARS_SITES_MAX = 50


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def convergence(per_round: pd.DataFrame, metrics: Sequence[str] = ("auroc", "accuracy")) -> bytes:
    """Test metrics per round at each site (thin) and their mean (bold).

    Parameters
    ----------
    per_round : DataFrame
        Index (round, site), one column per metric (``RunResults.per_round``).
    metrics : sequence of str
        One panel per metric.
    """
    figure = _figure(5.2 * len(metrics), 3.6)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    table = per_round.reset_index()
    many = table["site"].nunique() > LABELLED_SITES_MAX
    for ax, metric in zip(axes, metrics, strict=True):
        if many:  # the spread of sites, not one line each
            by_round = table.groupby("round")[metric]
            low, high = by_round.quantile(0.1), by_round.quantile(0.9)
            ax.fill_between(low.index, low, high, alpha=0.25, label="10th-90th percentile")
            median = by_round.median()
            ax.plot(median.index, median.to_numpy(), linewidth=1.5, label="median site")
        else:
            for site, rows in table.groupby("site", sort=True):
                ax.plot(rows["round"], rows[metric], marker=".", linewidth=1, label=str(site))
        mean = table.groupby("round")[metric].mean()
        ax.plot(mean.index, mean.to_numpy(), color="black", linewidth=2.5, label="mean of sites")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)} on each site's test split")
        ax.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return _png(figure)


def model_comparison(
    comparison: dict[str, Any], metrics: Sequence[str] = ("auroc", "accuracy")
) -> bytes:
    """Grouped bars per site (and the mean): federated, pooled and local-only.

    Parameters
    ----------
    comparison : dict
        The ``comparison`` table of ``summary.json``.
    metrics : sequence of str
        One panel per metric.
    """
    sites = list(comparison["per_site"])
    groups = [*sites, "mean"]
    columns = [c for c in ("federated", "pooled", "local") if c in comparison["mean"]]
    if len(sites) > BARS_SITES_MAX:
        return _model_distributions(comparison, sites, columns, metrics)
    figure = _figure(max(5.0, 1.1 * len(groups) + 2) * len(metrics) / 1.4, 3.8)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / len(columns)
    for ax, metric in zip(axes, metrics, strict=True):
        for k, column in enumerate(columns):
            values = [comparison["per_site"][s][column].get(metric) for s in sites]
            values.append(comparison["mean"][column].get(metric))
            heights = [np.nan if v is None else v for v in values]
            positions = np.arange(len(groups)) + (k - (len(columns) - 1) / 2) * width
            ax.bar(positions, heights, width, label=column, color=MODEL_COLOURS[column])
        ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right")
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)}: federated vs pooled vs local")
        finite = [
            v
            for c in columns
            for s in sites
            if (v := comparison["per_site"][s][c].get(metric)) is not None
        ]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
        ax.grid(axis="y", alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return _png(figure)


def _model_distributions(
    comparison: dict[str, Any], sites: list[str], columns: list[str], metrics: Sequence[str]
) -> bytes:
    """Box plots over sites of each model's metric: many sites' bars, summarised."""
    figure = _figure(4.6 * len(metrics), 3.8)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        data = []
        for column in columns:
            values = [comparison["per_site"][s][column].get(metric) for s in sites]
            data.append([v for v in values if v is not None])
        parts = ax.boxplot(data, tick_labels=columns, patch_artist=True, showfliers=False)
        for patch, column in zip(parts["boxes"], columns, strict=True):
            patch.set_facecolor(MODEL_COLOURS[column])
            patch.set_alpha(0.6)
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)} over {len(sites)} sites")
        ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def calibration_curves(calibration: pd.DataFrame) -> bytes:
    """Observed event rate against mean predicted risk, per site.

    Parameters
    ----------
    calibration : DataFrame
        ``calibration.csv`` of a run (bins below the minimum cell size are
        already left out).
    """
    figure = _figure(5.0, 4.6)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    many = calibration["site"].nunique() > LABELLED_SITES_MAX
    for site, rows in calibration.groupby("site", sort=True):
        if many:  # one thin line per site, no legend entry
            ax.plot(rows["mean_predicted"], rows["observed"], color="#1f77b4", alpha=0.15, lw=0.8)
        else:
            ax.plot(rows["mean_predicted"], rows["observed"], marker="o", label=str(site))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted risk (bin)")
    ax.set_ylabel("observed event rate (bin)")
    ax.set_title("Calibration of the final model at each site")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(figure)


def site_data(sites: pd.DataFrame) -> bytes:
    """Each site's training and test rows, split by outcome, and its prevalence.

    Counts a site withheld (below its minimum cell size) are left out.
    """
    table = sites.set_index("site").apply(pd.to_numeric, errors="coerce")
    if len(table) > BARS_SITES_MAX:
        return _site_distributions(table)
    figure = _figure(10.0, 3.8)
    size_ax, prevalence_ax = figure.subplots(1, 2)
    x = np.arange(len(table))
    for offset, split in ((-0.2, "train"), (0.2, "test")):
        positives = table[f"positives_{split}"].to_numpy(float)
        negatives = table[f"n_{split}"].to_numpy(float) - positives
        size_ax.bar(
            x + offset,
            negatives,
            0.38,
            color="#9ecae1" if split == "train" else "#c6dbef",
            label=f"{split}: no event",
        )
        size_ax.bar(
            x + offset,
            positives,
            0.38,
            bottom=negatives,
            color="#de2d26" if split == "train" else "#fc9272",
            label=f"{split}: event",
        )
    size_ax.set_xticks(x, table.index, rotation=30, ha="right")
    size_ax.set_ylabel("patients")
    size_ax.set_title("Rows per site (train | test) by outcome")
    size_ax.legend(fontsize=8)
    prevalence = (table["positives_train"] + table["positives_test"]) / (
        table["n_train"] + table["n_test"]
    )
    prevalence_ax.bar(x, prevalence.to_numpy(float), color="#756bb1")
    prevalence_ax.set_xticks(x, table.index, rotation=30, ha="right")
    prevalence_ax.set_ylim(0, 1)
    prevalence_ax.set_ylabel("share with the outcome")
    prevalence_ax.set_title("Outcome prevalence per site")
    for ax in (size_ax, prevalence_ax):
        ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def _site_distributions(table: pd.DataFrame) -> bytes:
    """Histograms of site sizes and prevalences: many sites' bars, summarised.

    Sites that withheld a count (below their minimum cell size) are left out.
    """
    figure = _figure(10.0, 3.6)
    size_ax, prevalence_ax = figure.subplots(1, 2)
    rows = (table["n_train"] + table["n_test"]).dropna().to_numpy(float)
    size_ax.hist(rows, bins=30, color="#9ecae1")
    size_ax.set_xlabel("patients per site (train + test)")
    size_ax.set_ylabel("sites")
    size_ax.set_title(f"Rows per site ({len(rows)} of {len(table)} sites)")
    prevalence = (
        (table["positives_train"] + table["positives_test"]) / (table["n_train"] + table["n_test"])
    ).dropna()
    prevalence_ax.hist(prevalence.to_numpy(float), bins=30, range=(0, 1), color="#756bb1")
    prevalence_ax.set_xlabel("share with the outcome")
    prevalence_ax.set_ylabel("sites")
    prevalence_ax.set_title(f"Outcome prevalence ({len(prevalence)} of {len(table)} sites)")
    for ax in (size_ax, prevalence_ax):
        ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def cross_site_matrix(sites: Sequence[str], values: np.ndarray, metric: str) -> bytes:
    """Heat map: each site's local-only model (rows) scored at every site (columns).

    Up to :data:`LABELLED_SITES_MAX` sites every cell carries its value and every
    site its name; above, the picture alone (a report lists the best and worst
    sites beside it). The figure's size is capped, so drawing is linear in cells.
    """
    k = len(sites)
    labelled = k <= LABELLED_SITES_MAX
    side = min(0.8 * k + 3.0, 9.0)
    figure = _figure(side, min(0.6 * k + 2.0, 8.0))
    ax = figure.subplots()
    finite = np.isfinite(values)
    image = ax.imshow(
        values,
        cmap="viridis",
        vmin=np.nanmin(values) if finite.any() else 0,
        vmax=1,
        interpolation="nearest",
    )
    if labelled:
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white", fontsize=9)
        ax.set_xticks(range(k), list(sites), rotation=30, ha="right")
        ax.set_yticks(range(k), list(sites))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("scored at (test split)")
    ax.set_ylabel("local model trained at")
    ax.set_title(f"Local-only models across sites: {_label(metric)}")
    figure.colorbar(image, ax=ax, shrink=0.8)
    return _png(figure)


def sweep_effects(
    aggregate: pd.DataFrame, grid_keys: Sequence[str], metric_columns: Sequence[str]
) -> list[tuple[str, bytes]]:
    """Mean and 95% confidence interval of each metric against each varied grid key.

    For every grid key with more than one value, one figure: a panel per
    metric column, the key on the x axis, one line per combination of the
    other keys (at most eight lines; the rest are averaged over).

    Parameters
    ----------
    aggregate : DataFrame
        The sweep's aggregate table: the grid keys, then ``<column>_mean``,
        ``<column>_ci_low`` and ``<column>_ci_high`` per metric column.
    grid_keys : sequence of str
        Grid keys other than ``seed``.
    metric_columns : sequence of str
        Metric columns to draw (e.g. ``federated_auroc``, ``gain_auroc``).

    Returns
    -------
    list of (str, bytes)
        A caption and the PNG of each figure.
    """
    figures = []
    varied = [k for k in grid_keys if aggregate[k].nunique() > 1]
    for key in varied:
        others = [k for k in varied if k != key]
        combos = (
            list(itertools.islice(aggregate.groupby(others, sort=True), 8))
            if others
            else [((), aggregate)]
        )
        figure = _figure(4.4 * len(metric_columns), 3.6)
        axes = figure.subplots(1, len(metric_columns), squeeze=False)[0]
        for ax, column in zip(axes, metric_columns, strict=True):
            for label, rows in combos:
                rows = rows.sort_values(key)
                mean = rows[f"{column}_mean"].to_numpy(float)
                low = mean - rows[f"{column}_ci_low"].to_numpy(float)
                high = rows[f"{column}_ci_high"].to_numpy(float) - mean
                name = ", ".join(
                    f"{k}={v}" for k, v in zip(others, np.atleast_1d(label), strict=False)
                )
                ax.errorbar(
                    _positions(rows[key]),
                    mean,
                    yerr=[np.nan_to_num(low), np.nan_to_num(high)],
                    marker="o",
                    capsize=3,
                    label=name or "mean",
                )
            ax.set_xlabel(key)
            ax.set_ylabel(column.replace("_", " "))
            ax.set_title(column.replace("_", " "))
            ax.grid(alpha=0.3)
            if column.startswith("gain"):
                ax.axhline(0, color="grey", linewidth=1)
        figure.legend(
            *axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncols=4
        )
        figures.append(
            (f"{', '.join(metric_columns)} against {key} (mean, 95% CI over seeds)", _png(figure))
        )
    return figures


def _positions(values: pd.Series) -> np.ndarray | list[str]:
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.to_numpy(float) if numbers.notna().all() else [str(v) for v in values]
