"""The promotion gate: a challenger replaces the champion only if the sites say so.

Champion and challenger are compared in one federated evaluation
(``evaluate.gate``) on each site's most recent held-out rows; each site
applies the study's non-inferiority policy itself
(:class:`~lhs_federated.learning.monitoring.GatePolicy`) and its verdict goes
out in its reply, which its own ledger records. The coordinator then decides
by the rule of the loop: ``every`` site non-inferior (the default), or a
``majority`` of the sites that gave a verdict. A site whose metrics were
withheld (too few rows) gives no verdict and is named. The decision and its
reason go into the registry ledger: the challenger becomes current, or is kept
marked rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lhs_federated.config import setting

GateRule = Literal["every", "majority"]


@dataclass(frozen=True)
class GateSpec:
    """The ``[loop.gate]`` table."""

    rule: GateRule = setting("every", doc="every site non-inferior, or a majority")
    auroc_margin: float = setting(0.01, doc="non-inferiority margin of AUROC", ge=0)
    intercept_bound: float = setting(0.2, doc="challenger's calibration intercept within +-", gt=0)
    slope_low: float = setting(0.8, doc="challenger's calibration slope at least", gt=0)
    slope_high: float = setting(1.2, doc="challenger's calibration slope at most", gt=0)

    def policy(self) -> dict[str, float]:
        """The per-site policy the sites apply."""
        return {
            "auroc_margin": self.auroc_margin,
            "intercept_bound": self.intercept_bound,
            "slope_low": self.slope_low,
            "slope_high": self.slope_high,
        }


def decide(
    per_site: dict[str, dict[str, Any]], failed: dict[str, str], rule: GateRule
) -> tuple[bool, str]:
    """Promote or not, from the sites' verdicts, with the reason."""
    voting = {s: v for s, v in per_site.items() if "undefined or withheld" not in v["reason"]}
    silent = sorted(set(per_site) - set(voting)) + sorted(failed)
    passed = sorted(s for s, v in voting.items() if v["passed"])
    failing = {s: v["reason"] for s, v in voting.items() if not v["passed"]}
    if not voting:
        return False, "no site could give a verdict" + (f" ({', '.join(silent)})" if silent else "")
    note = f"; no verdict from {', '.join(silent)}" if silent else ""
    if rule == "every":
        if failing:
            first = next(iter(failing))
            return False, (
                f"not non-inferior at {len(failing)} of {len(voting)} sites "
                f"({first}: {failing[first]}){note}"
            )
        return True, f"non-inferior at every site ({len(voting)}){note}"
    if len(passed) * 2 > len(voting):
        return True, f"non-inferior at {len(passed)} of {len(voting)} sites (majority){note}"
    return False, f"non-inferior at only {len(passed)} of {len(voting)} sites{note}"
