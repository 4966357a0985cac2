"""The coordinator's record of privacy spent: per site, per round.

Under sample-dp and distributed-dp each site reports its study's cumulative
epsilon with its update (``dp-epsilon``), from its own ledger; under
client-level DP with fixed clipping, Flower's accountant in the strategy
wrapper holds the federation's epsilon, the same for every site. Both become
``privacy`` rows of ``metrics.csv`` (one per site and round), a ``privacy``
section of ``summary.json`` and a column of the printed results table.

Under distributed-dp each site counts on the fewest sites a sum may cover; the
coordinator knows how many sites each sum actually covered, so it adds the
epsilon of the noise that summed (a ``secure-sum`` row per round, at most the
sites' figure).
"""

from __future__ import annotations

import math
from typing import Any

from flwr.app import Message
from flwr.serverapp.strategy import Strategy

from lhs_federated.apps import records
from lhs_federated.apps.client_dp import client_dp_epsilon, client_noise_multiplier
from lhs_federated.privacy.accounting import SITE_ACCOUNTANT, epsilon_of
from lhs_federated.privacy.distributed import noise_plan
from lhs_federated.privacy.dp_sgd import SECURE_RNG
from lhs_federated.study import Study

SPLIT = "privacy"
METRIC = "epsilon"
#: The "site" of the epsilon of the noise that summed (distributed-dp), as in rounds.csv.
SUMMED = "secure-sum"
#: ``latest`` key holding sum over rounds of 1 / z_summed**2 (distributed-dp): the
#: Gaussian rounds compose in RDP as one release at that precision, and ``latest``
#: is what a checkpoint keeps, so a resumed run goes on composing.
_SUMMED_PRECISION = "secure-sum:precision"

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
            if self.study.privacy.site_accounted:
                value = float(reply.content[records.METRICS][records.DP_EPSILON])
            elif federation is not None:
                value = federation
            else:
                value, reason = math.nan, "adaptive clipping: Flower keeps no accountant"
            self.latest[site] = value
            rows.append((server_round, site, SPLIT, METRIC, value, reason))
        if self.study.privacy.distributed_dp and trained:
            rows.append((server_round, SUMMED, SPLIT, METRIC, self._summed(len(trained)), ""))
        return rows

    def _summed(self, sites: int) -> float:
        """Cumulative epsilon of the noise the sums carried, after one more of ``sites``."""
        z = noise_plan(self.study).summed_noise_multiplier(sites)
        precision = self.latest.get(_SUMMED_PRECISION, 0.0) + 1 / z**2
        self.latest[_SUMMED_PRECISION] = precision
        history = ((precision**-0.5, 1.0, 1),)
        epsilon = epsilon_of(history, self.study.privacy.delta, SITE_ACCOUNTANT)
        self.latest[SUMMED] = epsilon
        return epsilon

    def summary(self) -> dict[str, Any] | None:
        """The ``privacy`` section of ``summary.json`` (``None`` without DP)."""
        if not self.active:
            return None
        privacy = self.study.privacy
        spent = {
            site: (None if math.isnan(v) else v)
            for site, v in sorted(self.latest.items())
            if not site.startswith(SUMMED)
        }
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
        elif privacy.distributed_dp:
            plan = noise_plan(self.study)
            section.update(
                accountant=SITE_ACCOUNTANT,
                clipping="site-fixed",
                clipping_norm=plan.clipping_norm,
                noise_multiplier=plan.noise_multiplier,
                noise_shares=plan.noise_shares,
                site_noise_std=plan.site_stddev,
                summed_noise_epsilon=self.latest.get(SUMMED),
                note="distributed DP: each site clips its update and adds noise of std "
                "z*C/sqrt(t) before secure aggregation, so every sum (of at least t sites) "
                "carries the noise z*C and no update is seen alone; epsilon per site is its "
                "own ledger's, summed_noise_epsilon that of the noise the sums carried.",
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
