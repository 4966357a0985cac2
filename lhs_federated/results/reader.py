"""A finished run read back from its folder, as DataFrames and the summary.

The counterpart of :mod:`lhs_federated.results.writer.writer`: notebooks, sweeps and
reports read runs through :func:`read_results` rather than parsing the files
themselves, so the format is defined in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class RunResults:
    """A finished run, read back from its folder.

    Attributes
    ----------
    out_dir : Path
        The run folder.
    metrics : DataFrame
        Long format: round, site, split, metric, value, reason.
    summary : dict
        The contents of ``summary.json``.
    """

    out_dir: Path
    metrics: pd.DataFrame
    summary: dict[str, Any]

    @property
    def per_round(self) -> pd.DataFrame:
        """Test metrics as a table: one row per round and site, one column per metric."""
        test = self.metrics[self.metrics["split"] == "test"]
        return test.pivot_table(
            index=["round", "site"], columns="metric", values="value", aggfunc="first"
        )

    @property
    def final(self) -> pd.DataFrame:
        """Test metrics of the last round, one row per site."""
        table = self.per_round
        last = table.index.get_level_values("round").max()
        return table.xs(last, level="round")


def read_results(out_dir: str | Path) -> RunResults:
    """Load a run folder's metrics and summary.

    Raises
    ------
    FileNotFoundError
        If the folder holds no completed run (no ``summary.json``).
    """
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{out_dir} holds no completed run (summary.json is missing)")
    metrics = pd.read_csv(
        out_dir / "metrics.csv",
        dtype={"reason": str},
        keep_default_na=False,
        na_values={"value": [""]},
    )
    return RunResults(out_dir, metrics, json.loads(summary_path.read_text(encoding="utf-8")))
