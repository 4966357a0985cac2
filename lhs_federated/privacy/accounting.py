"""The noise plan of a study at a site, and epsilon of accountant histories.

Two mechanisms are planned here. DP-SGD (sample-dp) and the site's share of
client-level noise under secure aggregation (distributed-dp, one Gaussian
release per round: noise multiplier ``z`` on a sum of updates clipped to norm
``C``, no sampling, so an accountant history of ``(z, 1.0, 1)`` per round).
Both compose in the same ledger, so a site's total budget counts them together.

DP-SGD's guarantee covers the whole study only if the noise multiplier is
chosen once, for every step the site will ever take in it (rounds x local
steps), and then kept fixed: calibrating each round for the full target would
spend the budget again every round. :func:`plan_study` makes that one
calibration, with Poisson sampling at the rate Opacus uses
(``1 / number of batches``).

Histories are Opacus accountant histories: ``(noise_multiplier, sample_rate,
steps)`` triples. They compose across rounds and across studies, which is
how a site adds up what it has spent. Epsilon of a history is cached, since a
site asks for the same figures every round.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from lhs_federated.learning.training import planned_steps
from lhs_federated.study import Study

History = tuple[tuple[float, float, int], ...]

# The site's total across studies is always converted with RDP: it composes
# histories of any study exactly and is an upper bound of the PRV figure.
SITE_ACCOUNTANT = "rdp"

# Renyi orders of the RDP conversion. Opacus's default list has 99 fractional
# orders below 11, whose series converge slowly (or not at all) at the high
# sampling rates of small sites; integer orders and a few fractional ones give
# an epsilon at most about 0.6 % larger (still an upper bound) 4-7 times faster.
RDP_ORDERS = tuple(sorted({1.5, 1.75, 2.5, 3.5, 4.5, *range(2, 64), 80, 128, 256}))


def _epsilon_options(accountant: str) -> dict[str, Any]:
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


@dataclass(frozen=True)
class DPPlan:
    """How one site trains privately in every round of one study.

    Attributes
    ----------
    noise_multiplier : float
        sigma, fixed for the whole study (noise std is sigma * max_grad_norm).
    sample_rate : float
        Poisson sampling rate of each batch (``1 / batches per epoch``).
    steps_per_round : int
        Optimiser steps the site takes each round.
    rounds : int
        Rounds the plan covers.
    max_grad_norm : float
        Per-sample gradient clipping bound.
    accountant : str
        Opacus accountant of the study's epsilon (``rdp`` or ``prv``).
    target_epsilon, target_delta : float
        The study's guarantee at this site.
    n_train : int
        Training rows the plan was made for.
    mechanism : str
        ``dp-sgd`` (sample-dp) or ``distributed-gaussian`` (distributed-dp:
        one release per round, ``max_grad_norm`` is the update's clipping norm).
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    max_grad_norm: float
    accountant: str
    target_epsilon: float
    target_delta: float
    n_train: int
    mechanism: str = "dp-sgd"

    def round_history(self) -> History:
        """The accountant history one round adds."""
        return ((self.noise_multiplier, self.sample_rate, self.steps_per_round),)

    def to_dict(self) -> dict[str, Any]:
        """Plain form, for the ledger."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPPlan:
        """Rebuild a plan from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a field is missing, unknown or of the wrong type.
        """
        fields = set(cls.__dataclass_fields__)
        # Ledgers written before distributed-dp hold DP-SGD plans without a mechanism.
        if set(data) not in (fields, fields - {"mechanism"}):
            raise ValueError(f"plan keys {sorted(data)} differ from the expected {sorted(fields)}")
        ints = {"steps_per_round", "rounds", "n_train"}
        strings = {"accountant", "mechanism"}
        for key, value in data.items():
            if key in strings:
                ok = isinstance(value, str)
            elif key in ints:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                ok = ok and math.isfinite(value) and value > 0
            if not ok:
                raise ValueError(f"plan field {key!r} has an invalid value {value!r}")
        return cls(**data)


def plan_study(study: Study, n_train: int) -> DPPlan:
    """Calibrate the noise of a sample-dp study for a site with ``n_train`` rows.

    The sample rate and the steps per round are those of Opacus's Poisson
    loader over the study's batch size, so the accountant's history after a
    round is exactly :meth:`DPPlan.round_history`.

    Raises
    ------
    ValueError
        If the study's epsilon is too small to reach with any noise.
    """
    privacy = study.privacy
    spec = study.training
    batches = math.ceil(n_train / min(spec.batch_size, n_train))
    steps = planned_steps(n_train, spec)
    sigma = calibrate_noise(
        float(privacy.epsilon or 0.0),
        privacy.delta,
        1 / batches,
        steps * study.rounds,
        privacy.accountant,
    )
    return DPPlan(
        noise_multiplier=sigma,
        sample_rate=1 / batches,
        steps_per_round=steps,
        rounds=study.rounds,
        max_grad_norm=privacy.max_grad_norm,
        accountant=privacy.accountant,
        target_epsilon=float(privacy.epsilon or 0.0),
        target_delta=privacy.delta,
        n_train=n_train,
    )


#: Mechanism names of :attr:`DPPlan.mechanism`.
DP_SGD, DISTRIBUTED_GAUSSIAN = "dp-sgd", "distributed-gaussian"


def distributed_noise_multiplier(study: Study) -> float:
    """The noise multiplier z of a distributed-dp study: given, or calibrated to epsilon.

    One Gaussian release per round (sensitivity: the clipping norm), composed
    over the study's rounds with the site's own accountant (Opacus RDP), so the
    ledger's epsilon after the last round is at most the target.

    Raises
    ------
    ValueError
        If the given multiplier spends more than ``privacy.epsilon``, or the
        epsilon cannot be reached.
    """
    privacy = study.privacy
    target = float(privacy.epsilon or 0.0)
    given = privacy.client.noise_multiplier
    if given is None:
        return calibrate_noise(target, privacy.delta, 1.0, study.rounds, SITE_ACCOUNTANT)
    spent = epsilon_of(((float(given), 1.0, study.rounds),), privacy.delta, SITE_ACCOUNTANT)
    if spent > target:
        raise ValueError(
            f"privacy.client.noise_multiplier = {given:g} spends epsilon {spent:.3f} over the "
            f"study's {study.rounds} rounds, more than privacy.epsilon = {target:g}; raise the "
            "multiplier, lower the rounds, or remove the multiplier to have it calibrated"
        )
    return float(given)


def plan_distributed(study: Study, n_train: int) -> DPPlan:
    """The ledger plan of a distributed-dp study: one release of noise ``z`` per round."""
    privacy = study.privacy
    return DPPlan(
        noise_multiplier=distributed_noise_multiplier(study),
        sample_rate=1.0,
        steps_per_round=1,
        rounds=study.rounds,
        max_grad_norm=privacy.client.clipping_norm,
        accountant=SITE_ACCOUNTANT,
        target_epsilon=float(privacy.epsilon or 0.0),
        target_delta=privacy.delta,
        n_train=n_train,
        mechanism=DISTRIBUTED_GAUSSIAN,
    )


def plan_for(study: Study, n_train: int) -> DPPlan:
    """The plan of a study its sites account for (sample-dp or distributed-dp)."""
    if study.privacy.distributed_dp:
        return plan_distributed(study, n_train)
    return plan_study(study, n_train)


@lru_cache(maxsize=256)
def calibrate_noise(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest noise multiplier (to Opacus's tolerance) whose epsilon stays <= ``epsilon``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                **_epsilon_options(accountant),
            )
        )


def merge_history(*parts: History) -> History:
    """Concatenate histories, merging neighbouring entries with the same sigma and rate.

    Merging changes nothing for the accountants (epsilon depends on the
    multiset of steps) but keeps ledgers short and epsilon cache hits frequent.
    """
    merged: list[tuple[float, float, int]] = []
    for part in parts:
        for sigma, rate, steps in part:
            if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
                merged[-1] = (sigma, rate, merged[-1][2] + steps)
            else:
                merged.append((float(sigma), float(rate), int(steps)))
    return tuple(merged)


@lru_cache(maxsize=4096)
def epsilon_of(history: History, delta: float, accountant: str) -> float:
    """Epsilon of an accountant history at ``delta`` (0 for an empty history)."""
    if not history:
        return 0.0
    engine = create_accountant(mechanism=accountant)
    engine.history = [tuple(entry) for entry in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(engine.get_epsilon(delta, **_epsilon_options(accountant)))
