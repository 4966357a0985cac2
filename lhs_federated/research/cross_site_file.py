"""``cross_site.csv``: every local model's AUROC and accuracy at every site.

One row per metric and local model (``trained_at``), one column per site where
it is scored and ``all-sites``; an undefined or withheld cell is empty. Kept
apart from the scoring (:mod:`lhs_federated.research.cross_site`) so a report
reads it without loading the models' code.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CROSS_SITE_FILE = "cross_site.csv"
CROSS_SITE_METRICS = ("auroc", "accuracy")
ALL_SITES = "all-sites"


def write_cross_site(
    path: Path, sites: list[str], values: dict[str, np.ndarray], all_sites: dict[str, np.ndarray]
) -> None:
    """Write ``cross_site.csv`` atomically: ``metric, trained_at, <site>..., all-sites``.

    Values have six significant digits (an AUROC on a hospital's test split moves
    in steps far coarser than that); an undefined cell is empty.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "trained_at", *sites, ALL_SITES])
        for metric in CROSS_SITE_METRICS:
            for i, site in enumerate(sites):
                cells = [*values[metric][i], all_sites[metric][i]]
                writer.writerow([metric, site, *(_text(v) for v in cells)])
    tmp.replace(path)


def read_cross_site(path: Path, metric: str) -> tuple[list[str], np.ndarray]:
    """Site names and the K x K matrix of ``metric`` from a ``cross_site.csv``."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        sites = header[2:-1]
        rows = [
            [float(v) if v else np.nan for v in row[2:-1]] for row in reader if row[0] == metric
        ]
    return sites, np.array(rows, dtype=float).reshape(len(rows), len(sites))


def _text(value: float) -> str:
    return "" if np.isnan(value) else format(float(value), ".6g")
