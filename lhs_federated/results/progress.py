"""Progress events of a running study, sent through :mod:`logging`.

The coordinator runs inside a Flower ServerApp (in this process for the
in-process and Ray engines, in a SuperLink's process in deployment), so it
reports progress as log records on the ``lhs_federated.progress`` logger
rather than by calling a display: the CLI attaches a handler that draws a
progress bar, a notebook can attach its own, and without a handler nothing is
printed. The event rides on the record as ``record.lhs_progress``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

LOGGER = logging.getLogger("lhs_federated.progress")


@dataclass(frozen=True)
class RoundProgress:
    """One finished round."""

    study: str
    round: int
    rounds: int
    sites_done: int
    sites_total: int
    mean_auroc: float
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs."""
        auroc = "n/a" if math.isnan(self.mean_auroc) else f"{self.mean_auroc:.3f}"
        text = (
            f"{self.study}: round {self.round}/{self.rounds}, "
            f"{self.sites_done}/{self.sites_total} sites trained, mean AUROC {auroc}"
        )
        if self.failed:
            text += "; " + "; ".join(f"{site} {why}" for site, why in self.failed.items())
        return text


def report_progress(event: RoundProgress) -> None:
    """Log ``event`` at INFO on the progress logger."""
    LOGGER.info("%s", event.describe(), extra={"lhs_progress": event})
