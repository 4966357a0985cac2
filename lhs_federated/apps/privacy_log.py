"""The coordinator's record of privacy spent: per site, per round.

Under sample-dp each site reports its study's cumulative epsilon with its
update (``dp-epsilon``); under client-level DP with fixed clipping, Flower's
accountant in the strategy wrapper holds the federation's epsilon, the same
for every site. Both become ``privacy`` rows of ``metrics.csv`` (one per site
and round), a ``privacy`` section of ``summary.json`` and a column of the
printed results table.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import Message
from flwr.serverapp.strategy import Strategy

from lhs_federated.apps import records
from lhs_federated.apps.client_dp import client_dp_epsilon, client_noise_multiplier
from lhs_federated.privacy.dp_sgd import SECURE_RNG
from lhs_federated.study import Study

SPLIT = "privacy"
METRIC = "epsilon"

RNG_NOTE = (
    "Opacus ran without a secure RNG (secure_mode off: torchcsprng is not available for "
    "this Python); simulated sites seed their DP noise from the study seed so research runs "
    "are reproducible, deployed sites seed it from the operating system."
)


class PrivacyLog:
    """Collects epsilon per site per round of one run.

    Parameters
    ----------
    study : Study
        The study being run.
    strategy : Strategy
        The coordinator's strategy (a Flower DP wrapper under client-dp).
    """

    def __init__(self, study: Study, strategy: Strategy) -> None:
        self.study = study
        self.strategy = strategy
        self.latest: dict[str, float] = {}

    @property
    def active(self) -> bool:
        """Whether the study uses differential privacy."""
        return self.study.privacy.mode != "none"

    def round_rows(
        self, server_round: int, trained: list[tuple[str, Message]]
    ) -> list[tuple[int, str, str, str, float, str]]:
        """``metrics.csv`` rows of epsilon after this round, one per site that trained."""
        if not self.active:
            return []
        rows = []
        federation = client_dp_epsilon(self.strategy) if self.study.privacy.client_dp else None
        for site, reply in trained:
            reason = ""
            if self.study.privacy.sample_dp:
                value = float(reply.content[records.METRICS][records.DP_EPSILON])
            elif federation is not None:
                value = federation
            else:
                value, reason = math.nan, "adaptive clipping: Flower keeps no accountant"
            self.latest[site] = value
            rows.append((server_round, site, SPLIT, METRIC, value, reason))
        return rows

    def summary(self) -> dict[str, Any] | None:
        """The ``privacy`` section of ``summary.json`` (``None`` without DP)."""
        if not self.active:
            return None
        privacy = self.study.privacy
        spent = {site: (None if math.isnan(v) else v) for site, v in sorted(self.latest.items())}
        section: dict[str, Any] = {
            "mode": privacy.mode,
            "target_epsilon": privacy.epsilon,
            "delta": privacy.delta,
            "epsilon": spent,
            "max_epsilon": max((v for v in spent.values() if v is not None), default=None),
        }
        if privacy.sample_dp:
            section.update(
                accountant=privacy.accountant,
                max_grad_norm=privacy.max_grad_norm,
                secure_rng=SECURE_RNG,
                note=RNG_NOTE,
            )
        else:
            section.update(
                clipping=privacy.client.clipping,
                clipping_norm=privacy.client.clipping_norm,
                noise_multiplier=client_noise_multiplier(self.study),
                note="client-level DP: epsilon protects each site's whole contribution; "
                "noise added by the coordinator (Flower's DP wrapper).",
            )
        return section
