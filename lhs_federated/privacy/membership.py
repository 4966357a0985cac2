"""A loss-threshold membership-inference check of a released model.

The attack of Yeom et al. (2018): a record whose loss under the model is low
is guessed to have been in the training data. Its *advantage* is the best
true-positive rate minus false-positive rate over all thresholds (0: the
attacker learns nothing; 1: it tells members from non-members perfectly).
Against a record that is in or out with even odds, (epsilon, delta)-DP bounds
any attacker's advantage by ``(e^eps - 1 + 2 delta) / (e^eps + 1)``
(Humphries et al., 2020; :func:`dp_advantage_bound`). The check plays the
attacker with the sites' own splits: training rows are the members, held-out
test rows the non-members. Taking the best threshold over
the same rows is the attacker's most favourable case, and it is not zero even
for a model that learned nothing (about ``1/sqrt(n)`` by chance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from lhs_federated.data.sources import SiteData
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import set_arrays
from lhs_federated.learning.site import n_features, site_standardizer
from lhs_federated.learning.training import predict_proba
from lhs_federated.study import Study

_CLIP = 1e-7


@dataclass(frozen=True)
class MembershipAttack:
    """How well a loss threshold tells training rows from held-out rows.

    Attributes
    ----------
    advantage : float
        max over thresholds of TPR - FPR, in [0, 1].
    auc : float
        AUROC of the negative loss as a membership score (0.5: no signal).
    threshold : float
        The loss at which the advantage is reached.
    n_members, n_nonmembers : int
        Rows on each side.
    """

    advantage: float
    auc: float
    threshold: float
    n_members: int
    n_nonmembers: int


def record_losses(outcome: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each record under the model."""
    p = np.clip(np.asarray(probability, dtype=float), _CLIP, 1 - _CLIP)
    y = np.asarray(outcome, dtype=float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def loss_threshold_attack(
    member_losses: np.ndarray, nonmember_losses: np.ndarray
) -> MembershipAttack:
    """Run the loss-threshold attack on the two groups' losses.

    Raises
    ------
    ValueError
        If either group is empty.
    """
    members = np.asarray(member_losses, dtype=float)
    others = np.asarray(nonmember_losses, dtype=float)
    if len(members) == 0 or len(others) == 0:
        raise ValueError(
            f"the attack needs members and non-members; got {len(members)} and {len(others)}"
        )
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(others))])
    scores = -np.concatenate([members, others])
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return MembershipAttack(
        advantage=float(max(0.0, tpr[best] - fpr[best])),
        auc=float(roc_auc_score(labels, scores)),
        threshold=float(-thresholds[best]) if np.isfinite(thresholds[best]) else math.inf,
        n_members=len(members),
        n_nonmembers=len(others),
    )


def attack_released_model(
    study: Study,
    arrays: dict[str, np.ndarray],
    sites: Iterable[SiteData],
    standardizer: Standardizer | None,
) -> MembershipAttack:
    """Attack a released model with every site's training and test rows.

    Parameters
    ----------
    study : Study
        The study that produced the model.
    arrays : dict of str to ndarray
        The released model's parameters.
    sites : iterable of SiteData
        The sites' splits (training rows are members).
    standardizer : Standardizer or None
        The federated preprocessing statistics (``None`` under per-site scaling).
    """
    model = build_model(study.model, n_features(study), seed=study.seed)
    set_arrays(model, arrays)
    members, others = [], []
    for site in sites:
        scale = site_standardizer(study, site, standardizer)
        for table, bucket in ((site.train, members), (site.test, others)):
            probability = predict_proba(model, scale.transform(table.features))
            bucket.append(record_losses(table.outcome, probability))
    return loss_threshold_attack(np.concatenate(members), np.concatenate(others))


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """Upper bound on any membership attacker's advantage under (epsilon, delta)-DP."""
    return min(1.0, (math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1))
