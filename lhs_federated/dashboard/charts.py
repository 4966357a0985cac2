"""Line charts as inline SVG: no chart library, nothing fetched, readable offline.

Sites are often offline and a dashboard served from a hospital network may
not reach a CDN, so the convergence plots are drawn here as SVG markup the
page embeds. A missing value (a metric a site could not compute, with its
reason in the table beside the chart) breaks the line instead of being drawn
as zero.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MEAN_COLOUR = "#222"

Series = dict[str, list[tuple[float, float | None]]]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + k * step for k in range(count)]


def line_chart(
    series: Series,
    *,
    title: str,
    y_label: str,
    width: int = 560,
    height: int = 260,
    emphasise: str | None = None,
) -> str:
    """An SVG line chart of ``series`` (name -> [(x, y or None)]), as markup.

    Parameters
    ----------
    series : dict
        One line per name; points with ``y`` None are gaps.
    title, y_label : str
        Shown above the chart and on its vertical axis.
    emphasise : str, optional
        The series drawn thick and dark (the federation's mean).
    """
    points = [(x, y) for line in series.values() for x, y in line if y is not None]
    if not points:
        return (
            f"<p class='muted'>{escape(title)}: nothing to plot yet "
            "(no round has been evaluated).</p>"
        )
    left, right, top, bottom = 52, 130, 26, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = min(xs), max(max(xs), min(xs) + 1)
    y_low, y_high = min(ys), max(ys)
    if y_high - y_low < 1e-9:
        y_low, y_high = y_low - 0.05, y_high + 0.05
    pad = (y_high - y_low) * 0.08
    y_low, y_high = y_low - pad, y_high + pad

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' viewBox='0 0 {width} {height}' "
        f"width='{width}' height='{height}' role='img' aria-label='{escape(title)}'>",
        f"<text x='{left}' y='16' font-weight='600'>{escape(title)}</text>",
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' "
        "stroke='#ccc'/>",
    ]
    for y in _ticks(y_low, y_high):
        parts.append(
            f"<line x1='{left}' x2='{left + plot_w}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' "
            "stroke='#eee'/>"
            f"<text x='{left - 6}' y='{sy(y) + 4:.1f}' text-anchor='end' font-size='11'>"
            f"{y:.2f}</text>"
        )
    x_ticks = sorted({round(x) for x in _ticks(x_low, x_high, min(6, int(x_high - x_low) + 1))})
    for x in x_ticks:
        parts.append(
            f"<text x='{sx(x):.1f}' y='{top + plot_h + 16}' text-anchor='middle' "
            f"font-size='11'>{x}</text>"
        )
    parts.append(
        f"<text x='{left + plot_w / 2:.0f}' y='{height - 4}' text-anchor='middle' "
        "font-size='11'>round</text>"
        f"<text x='12' y='{top + plot_h / 2:.0f}' font-size='11' text-anchor='middle' "
        f"transform='rotate(-90 12 {top + plot_h / 2:.0f})'>{escape(y_label)}</text>"
    )
    others = [name for name in series if name != emphasise]
    for k, (name, line) in enumerate(series.items()):
        # the same site has the same colour in every chart, with or without a mean line
        colour = MEAN_COLOUR if name == emphasise else PALETTE[others.index(name) % len(PALETTE)]
        stroke = 3 if name == emphasise else 1.5
        for segment in _segments(line):
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in segment)
            if len(segment) == 1:
                x, y = segment[0]
                parts.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{colour}'/>")
            else:
                parts.append(
                    f"<polyline points='{coords}' fill='none' stroke='{colour}' "
                    f"stroke-width='{stroke}'/>"
                )
        legend_y = top + 12 + 16 * k
        parts.append(
            f"<line x1='{left + plot_w + 10}' x2='{left + plot_w + 28}' y1='{legend_y - 4}' "
            f"y2='{legend_y - 4}' stroke='{colour}' stroke-width='{stroke}'/>"
            f"<text x='{left + plot_w + 32}' y='{legend_y}' font-size='11'>{escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _segments(line: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive defined points."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in sorted(line, key=lambda p: p[0]):
        if y is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((x, y))
    return [s for s in segments if s]
