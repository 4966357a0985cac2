"""The loop's HTML timeline report: one self-contained page.

Per site, three panels over the periods: AUROC, calibration intercept and
slope (their target bands shaded) of the
frozen first release, of the loop's current release and of an oracle refitted
on each period; alerts marked on the loop's line (red), promoted releases
(green lines) and rejected candidates (grey dashes) on the time axis, and the
cohort's drift events (orange dots, at the site they hit or at every site).
A table gives the benchmark figures and the list of releases and alerts.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLOURS = {"frozen": "#7f7f7f", "loop": "#1f77b4", "oracle": "#2ca02c"}
PANELS = (
    ("auroc", "AUROC"),
    ("calibration_intercept", "calibration intercept"),
    ("calibration_slope", "calibration slope"),
)
BANDS = {"calibration_slope": (0.9, 1.1), "calibration_intercept": (-0.2, 0.2)}
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "font-size:14px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
)


def timeline_png(
    scores: list[dict[str, Any]], events: list[dict[str, Any]], drift: list[dict[str, Any]]
) -> bytes:
    """The per-site panels as one PNG."""
    periods = sorted({r["period"] for r in scores})
    sites = sorted({r["site"] for r in scores})
    x_of = {p: i for i, p in enumerate(periods)}
    figure = Figure(figsize=(14, 2.4 * len(sites) + 0.6), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(sites), 3, squeeze=False)
    for row, site in enumerate(sites):
        for col, (metric, label) in enumerate(PANELS):
            ax = axes[row][col]
            if metric in BANDS:
                ax.axhspan(*BANDS[metric], color="#2ca02c", alpha=0.08, lw=0)
            for model, colour in COLOURS.items():
                points = [
                    (x_of[r["period"]], r[metric])
                    for r in scores
                    if r["site"] == site and r["model"] == model
                ]
                if points:
                    xs, ys = zip(*sorted(points), strict=True)
                    ax.plot(xs, ys, marker="o", ms=3, color=colour, label=model, lw=1.5)
            for event in events:
                if event["period"] not in x_of:
                    continue
                x = x_of[event["period"]]
                if event["kind"] == "alert" and event["site"] == site:
                    loop_y = [
                        r[metric]
                        for r in scores
                        if r["site"] == site
                        and r["model"] == "loop"
                        and r["period"] == event["period"]
                    ]
                    if loop_y:
                        ax.plot([x], loop_y, marker="v", color="#d62728", ms=8, ls="none")
                elif event["kind"] == "release":
                    promoted = event["status"] == "current"
                    ax.axvline(x + 0.5, color="#2ca02c" if promoted else "#999999",
                               ls="-" if promoted else "--", lw=1)  # fmt: skip
                    if row == 0:
                        ax.annotate(event["release"].split("@")[-1], (x + 0.5, 1.0),
                                    xycoords=("data", "axes fraction"), fontsize=7,
                                    ha="left", va="top")  # fmt: skip
            for k, event in enumerate(drift):
                if event["period"] in x_of and event["site"] in (None, site):
                    ax.axvline(x_of[event["period"]] - 0.5, color="#ff7f0e", ls=":", lw=1.5)
                    height = 0.02 + 0.08 * (k % 3)
                    ax.annotate(event["kind"], (x_of[event["period"]] - 0.45, height),
                                xycoords=("data", "axes fraction"), fontsize=7,
                                color="#ff7f0e")  # fmt: skip
            ax.set_title(f"{site}: {label}", fontsize=10)
            ax.set_xticks(range(len(periods)), periods, fontsize=7)
            ax.tick_params(axis="y", labelsize=8)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="lower left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_loop_report(
    path: Path,
    scores: list[dict[str, Any]],
    events: list[dict[str, Any]],
    drift: list[dict[str, Any]],
    summary: dict[str, Any],
) -> Path:
    """Write ``loop-report.html`` (and the timeline PNG beside it, for a quick look)."""
    png = timeline_png(scores, events, drift)
    path.with_suffix(".png").write_bytes(png)
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(m)}</td><td>{v['mean_auroc']}</td><td>{v['slope_in_band']}</td>"
        f"<td>{v['site_periods']}</td></tr>"
        for m, v in summary["models"].items()
    )
    releases = "".join(
        f"<tr><td>{e(ev['period'])}</td><td>{e(ev['release'])}</td><td>{e(ev['status'])}</td>"
        f"<td>{e(str(ev.get('reason', '')))}</td></tr>"
        for ev in events
        if ev["kind"] == "release"
    )
    alerts = "".join(
        f"<tr><td>{e(ev['period'])}</td><td>{e(ev['site'])}</td><td>{e(ev['metric'])}</td>"
        f"<td>{ev['value']:.3f}</td><td>{e(ev['bound'])}</td></tr>"
        for ev in events
        if ev["kind"] == "alert"
    )
    drifts = ", ".join(
        f"{d['kind']} at {d['site'] or 'every site'} from {d['period']}" for d in drift
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Learning loop</title>"
        f"<style>{STYLE}</style></head><body><h1>Learning loop: timeline</h1>"
        f"<p>Periods {e(', '.join(summary['periods']))}. Drift events: {e(drifts or 'none')}.</p>"
        f"<img alt='timeline' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        "<h2>Frozen vs loop vs oracle</h2><table><tr><th>model</th><th>mean AUROC</th>"
        f"<th>slope in [0.9, 1.1]</th><th>site-periods</th></tr>{rows}</table>"
        "<h2>Releases</h2><table><tr><th>after period</th><th>release</th><th>status</th>"
        f"<th>reason</th></tr>{releases}</table>"
        "<h2>Alerts</h2><table><tr><th>period</th><th>site</th><th>metric</th><th>value</th>"
        f"<th>bound</th></tr>{alerts or '<tr><td colspan=5>none</td></tr>'}</table>"
        "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path
