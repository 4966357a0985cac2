"""A site's training round under its privacy rules.

This is what the ClientApp's train handler calls. In every mode the site first
refuses if it is too small to train on. Under sample-dp it then, holding its
ledger, checks that the round fits the study's target and its own budget,
trains with DP-SGD at the study's fixed noise, and records the spend before the
update is returned (and may leave the site).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lhs_federated.data.sources import SiteData
from lhs_federated.data.split import site_seed
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.site import train_at_site, training_inputs
from lhs_federated.learning.training import LocalUpdate
from lhs_federated.privacy.budget import SiteBudget, SitePrivacy, check_site_size
from lhs_federated.privacy.dp_sgd import PrivateTraining, train_private
from lhs_federated.study import Study

# Salt separating the DP noise stream of a simulated site from its sampling stream.
_NOISE_SALT = 7919


@dataclass(frozen=True)
class SiteRound:
    """One round's update and, under sample-dp, the study's epsilon after it.

    Attributes
    ----------
    update : LocalUpdate
        The site's update.
    epsilon : float or None
        The study's cumulative epsilon at this site (sample-dp), else ``None``.
    """

    update: LocalUpdate
    epsilon: float | None


def train_site_round(
    study: Study,
    data: SiteData,
    privacy: SitePrivacy,
    *,
    min_cell_size: int,
    arrays: dict[str, np.ndarray],
    server_round: int,
    standardizer: Standardizer,
    proximal_mu: float = 0.0,
    correction: dict[str, np.ndarray] | None = None,
) -> SiteRound:
    """Train one round at a site, within its privacy rules.

    Raises
    ------
    SiteRefusal
        If the site is too small, its ledger cannot be trusted, or the round
        would pass the study's target or the site's budget.
    """
    n_train = len(data.train.outcome)
    check_site_size(study, data.name, n_train, min_cell_size=min_cell_size)
    if not study.privacy.sample_dp:
        update = train_at_site(
            study,
            data,
            arrays,
            server_round=server_round,
            standardizer=standardizer,
            proximal_mu=proximal_mu,
            correction=correction,
        )
        return SiteRound(update, None)
    noise_seed = (
        site_seed(study.seed, data.name, server_round, _NOISE_SALT)
        if privacy.seeded_noise
        else None
    )
    with SiteBudget(privacy) as budget:
        grant = budget.grant(study, n_train, server_round)
        inputs = training_inputs(
            study, data, arrays, server_round=server_round, standardizer=standardizer
        )
        update = train_private(
            inputs.model,
            inputs.features,
            inputs.outcome,
            study.training,
            PrivateTraining(grant.plan, grant.history, noise_seed),
            seed=inputs.seed,
            proximal_mu=proximal_mu,
        )
        spend = budget.commit(grant, update.privacy_history, server_round)
    return SiteRound(update, spend.epsilon)
