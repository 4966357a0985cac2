"""Alert rules on a release's monitoring results, with defaults a clinician accepts.

A rule fires for one site, period and metric:

- calibration intercept (in the large) outside +-0.2;
- calibration slope outside [0.8, 1.2];
- AUROC more than 0.05 below the release's reference at that site, its 95%
  interval excluding the reference value;
- population stability index of an input above 0.25.

With ``require_ci`` (the default) a calibration rule also needs the metric's
95% interval to exclude perfect calibration (0 for the intercept, 1 for the
slope): a site of 300 patients has an intercept standard error near 0.15, so
the bare bound would alert on chance alone in about one period in five. A
withheld metric (too few rows) raises no alert; it is reported as withheld.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhs_federated.config import setting

ALERT_COLUMNS = ("release", "period", "site", "metric", "value", "bound", "detail")


@dataclass(frozen=True)
class AlertRules:
    """The ``[loop.alerts]`` table (and ``lhs-fed monitor`` options)."""

    intercept_bound: float = setting(0.2, doc="calibration intercept alert outside +-this", gt=0)
    slope_low: float = setting(0.8, doc="calibration slope alert below this", gt=0)
    slope_high: float = setting(1.2, doc="calibration slope alert above this", gt=0)
    auroc_drop: float = setting(0.05, doc="AUROC alert this far below the reference", gt=0)
    psi: float = setting(0.25, doc="population stability index alert above this", gt=0)
    require_ci: bool = setting(
        True, doc="calibration alerts only when the 95% CI excludes perfect calibration"
    )


@dataclass(frozen=True)
class Alert:
    """One rule that fired."""

    release: str
    period: str
    site: str
    metric: str
    value: float
    bound: str
    detail: str

    def row(self) -> dict[str, Any]:
        """The alert as a CSV row."""
        return {k: getattr(self, k) for k in ALERT_COLUMNS}

    def __str__(self) -> str:
        return f"{self.site} {self.period}: {self.metric} = {self.value:.3f} ({self.detail})"


def site_alerts(
    rules: AlertRules,
    *,
    release: str,
    period: str,
    site: str,
    values: dict[str, float | None],
    reference_auroc: float | None,
    psi: dict[str, float | None],
) -> list[Alert]:
    """The alerts of one site's monitoring of one period."""
    alerts = []

    def add(metric: str, value: float, bound: str, detail: str) -> None:
        alerts.append(Alert(release, period, site, metric, value, bound, detail))

    calibration = (
        ("calibration_intercept", -rules.intercept_bound, rules.intercept_bound, 0.0),
        ("calibration_slope", rules.slope_low, rules.slope_high, 1.0),
    )
    for metric, low, high, ideal in calibration:
        value, ci_low, ci_high = (values.get(metric + s) for s in ("", "_low", "_high"))
        if value is None or low <= value <= high:
            continue
        has_ci = ci_low is not None and ci_high is not None
        if rules.require_ci and not (has_ci and not ci_low <= ideal <= ci_high):
            continue
        detail = f"95% CI {ci_low:.3f} to {ci_high:.3f}" if has_ci else "no CI"
        add(metric, value, f"[{low:g}, {high:g}]", detail)
    auc, auc_high = values.get("auroc"), values.get("auroc_high")
    if (
        auc is not None
        and reference_auroc is not None
        and auc_high is not None
        and reference_auroc - auc > rules.auroc_drop
        and auc_high < reference_auroc
    ):
        add("auroc", auc, f">= {reference_auroc - rules.auroc_drop:.3f}",
            f"reference {reference_auroc:.3f}; 95% CI up to {auc_high:.3f}")  # fmt: skip
    for feature, value in psi.items():
        if value is not None and value > rules.psi:
            add(f"psi:{feature}", value, f"> {rules.psi:g}", "input distribution shifted")
    return alerts


def append_alerts(path: Path, alerts: list[Alert]) -> None:
    """Append alerts to ``alerts.csv`` (its header written once)."""
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ALERT_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(a.row() for a in alerts)
