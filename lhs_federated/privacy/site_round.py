"""A site's training round under its privacy rules.

This is what the ClientApp's train handler calls. In every mode the site first
refuses if it is too small to train on. Under sample-dp it then, holding its
ledger, checks that the round fits the study's target and its own budget,
trains with DP-SGD at the study's fixed noise, and records the spend before the
update is returned (and may leave the site). Under distributed-dp the secure
aggregation stage wraps the round in :func:`noised_round`: the same budget
check, a plain round of training, then the clipped change with the site's share
of the noise, recorded before it is masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lhs_federated.data.sources import SiteData
from lhs_federated.data.split import site_seed
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.parameters import change_from
from lhs_federated.learning.site import train_at_site, training_inputs
from lhs_federated.learning.training import LocalUpdate
from lhs_federated.privacy.accounting import merge_history
from lhs_federated.privacy.budget import SiteBudget, SitePrivacy, check_site_size
from lhs_federated.privacy.distributed import noise_plan, noised_change, os_normal, seeded_normal
from lhs_federated.privacy.dp_sgd import PrivateTraining, train_private
from lhs_federated.study import Study

# Salt separating the DP noise stream of a simulated site from its sampling stream.
_NOISE_SALT = 7919
# Salt of a simulated site's distributed-dp noise stream.
_DISTRIBUTED_SALT = 7927


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


@dataclass(frozen=True)
class NoisedRound:
    """One distributed-dp round: the update, its noisy change, the study's epsilon after it.

    Attributes
    ----------
    update : LocalUpdate
        The site's plain update (stays at the site).
    change : dict of str to ndarray
        The change of the model clipped to the study's norm, plus the site's
        share of the noise (float64): what is quantised and masked.
    epsilon : float
        The study's cumulative epsilon at this site, as its ledger records it.
    """

    update: LocalUpdate
    change: dict[str, np.ndarray]
    epsilon: float


def noised_round(
    study: Study,
    privacy: SitePrivacy,
    *,
    n_train: int,
    server_round: int,
    start: dict[str, np.ndarray],
    train: Callable[[], SiteRound],
) -> NoisedRound:
    """A distributed-dp round: budget check, ``train()``, clip and noise, spend recorded.

    The ledger stays locked from the check to the record, as under sample-dp,
    and the spend is recorded before the noisy change is returned (and masked).

    Raises
    ------
    SiteRefusal
        If the site keeps no ledger, its ledger cannot be trusted, or the round
        would pass the study's target or the site's budget.
    """
    normal = (
        seeded_normal(site_seed(study.seed, privacy.site, server_round, _DISTRIBUTED_SALT))
        if privacy.seeded_noise
        else os_normal
    )
    with SiteBudget(privacy) as budget:
        grant = budget.grant(study, n_train, server_round)
        update = train().update
        noisy = noised_change(change_from(start, update.arrays), noise_plan(study), normal)
        history = merge_history(grant.history, grant.plan.round_history())
        spend = budget.commit(grant, history, server_round)
    return NoisedRound(update, noisy, spend.epsilon)
