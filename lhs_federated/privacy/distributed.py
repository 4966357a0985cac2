"""Distributed DP: each site adds its share of the client-level noise before secure aggregation.

Central client-level DP (``client-dp``) trusts the coordinator: it receives
every clipped update and adds the noise itself. Under ``distributed-dp`` each
site clips its round's change of the model to L2 norm ``C``
(``privacy.client.clipping_norm``) and adds Gaussian noise of variance
``(z C)^2 / t`` per parameter, where ``t`` is
``privacy.secagg.reconstruction_threshold``, the fewest sites any secure sum
may cover. The coordinator sees only the sum of at least ``t`` such updates,
which carries noise of variance at least ``(z C)^2``: the study's noise, as if
the coordinator had added it, without any single update being visible. With
``s >= t`` sites in the sum the noise is ``z sqrt(s / t)`` times ``C``; each
site can only count on ``t`` (it cannot see who else is in the sum), so it
accounts ``z`` per round in its own ledger, and the coordinator reports the
epsilon of the noise that summed beside it.

The noise is added before quantisation and masking. A deployed site draws it
from the operating system's CSPRNG (:func:`os.urandom`), never from anything
the coordinator sends; a simulated site seeds it from the study, its name and
the round (reproducible research runs), as client-dp's simulated noise does.
The site takes ``z``, ``C`` and ``t`` from the study it approved; the
coordinator's copy of the plan in the round's config must match it
(:func:`plan_problem`), so a coordinator that tries to lower or drop the noise
is refused rather than obeyed.

The guarantee assumes, as SecAgg+ does, a semi-honest coordinator and honest
sites: a site that leaves out its noise lowers the sum's noise, and sites
colluding with the coordinator can subtract theirs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lhs_federated.errors import ConfigError
from lhs_federated.privacy.accounting import distributed_noise_multiplier
from lhs_federated.privacy.egress import model_array_specs
from lhs_federated.study import Study

#: Keys of the noise plan in the round's config (coordinator -> site).
PLAN_KEYS = ("dp-noise-multiplier", "dp-clipping-norm", "dp-noise-shares")
#: Chance that a site's noisy update leaves the quantisation range in one round,
#: which the study's ``privacy.secagg.clipping_range`` must make negligible.
OUT_OF_RANGE_CHANCE = 1e-9

Normal = Callable[[tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class NoisePlan:
    """One site's share of the study's client-level noise.

    Attributes
    ----------
    noise_multiplier : float
        z: the sum's noise std is at least ``z * clipping_norm``.
    clipping_norm : float
        C: bound on the L2 norm of each site's change of the model in a round.
    noise_shares : int
        t: the fewest sites in a sum, so each adds ``1 / t`` of the variance.
    """

    noise_multiplier: float
    clipping_norm: float
    noise_shares: int

    @property
    def site_stddev(self) -> float:
        """Std of the noise one site adds to each parameter: ``z * C / sqrt(t)``."""
        return self.noise_multiplier * self.clipping_norm / math.sqrt(self.noise_shares)

    def summed_noise_multiplier(self, sites: int) -> float:
        """The noise multiplier of a sum of ``sites`` noisy updates carries: ``z * sqrt(s / t)``."""
        return self.noise_multiplier * math.sqrt(sites / self.noise_shares)

    def to_config(self) -> dict[str, float | int]:
        """The plan as the coordinator sends it in the round's config."""
        values = (self.noise_multiplier, self.clipping_norm, self.noise_shares)
        return dict(zip(PLAN_KEYS, values, strict=True))


def noise_plan(study: Study) -> NoisePlan:
    """The study's noise plan (z calibrated to ``privacy.epsilon`` unless given)."""
    privacy = study.privacy
    return NoisePlan(
        distributed_noise_multiplier(study),
        privacy.client.clipping_norm,
        privacy.secagg.reconstruction_threshold,
    )


def plan_problem(study: Study, sent: Mapping[str, object]) -> str:
    """Why the plan a message carries is not the approved study's ("" if it is)."""
    expected = noise_plan(study).to_config()
    got = {key: sent.get(key) for key in PLAN_KEYS}
    if got == expected:
        return ""
    return (
        f"the coordinator's noise plan {got} is not the approved study's {expected} "
        "(privacy.client.noise_multiplier from privacy.epsilon, privacy.client.clipping_norm, "
        "privacy.secagg.reconstruction_threshold); the site adds the study's noise or none"
    )


def clip_to_norm(change: Mapping[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    """``change`` scaled down to L2 norm ``norm`` over all parameters (unchanged if within)."""
    total = math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in change.values()))
    scale = min(1.0, norm / total) if total > 0 else 1.0
    return {name: np.asarray(v, dtype=np.float64) * scale for name, v in change.items()}


def noised_change(
    change: Mapping[str, np.ndarray], plan: NoisePlan, normal: Normal
) -> dict[str, np.ndarray]:
    """The clipped change plus this site's share of the noise, per parameter."""
    clipped = clip_to_norm(change, plan.clipping_norm)
    return {name: value + plan.site_stddev * normal(value.shape) for name, value in clipped.items()}


def seeded_normal(seed: int) -> Normal:
    """Standard normal draws from a seed: simulated sites only (reproducible runs)."""
    generator = np.random.default_rng(seed)
    return lambda shape: generator.standard_normal(shape)


def os_normal(shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws from the operating system's CSPRNG (Box-Muller on os.urandom).

    Deployed sites use this: no seed exists that anyone could replay.
    """
    count = int(np.prod(shape, dtype=np.int64))
    pairs = (count + 1) // 2
    words = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64) >> np.uint64(11)
    uniform = words.astype(np.float64) / 2.0**53  # 53 random bits in [0, 1)
    radius = np.sqrt(-2.0 * np.log1p(-uniform[:pairs]))  # 1 - u in (0, 1]: log is finite
    angle = 2.0 * math.pi * uniform[pairs:]
    draws = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return draws[:count].reshape(shape)


def check_distributed_dp(study: Study, *, source: str) -> None:
    """Study-load checks of distributed DP that need the accountant and the model.

    The noisy update must stay within ``privacy.secagg.clipping_range`` (a
    change beyond it is an error at the site, never a silent clip, which would
    change the mechanism): the norm bound plus enough standard deviations of
    the site's noise that a round goes out of range with chance below
    :data:`OUT_OF_RANGE_CHANCE`.

    Raises
    ------
    ConfigError
        If no noise reaches the epsilon, the given multiplier spends more, or
        the clipping range leaves too little room for the noise.
    """
    if not study.privacy.distributed_dp:
        return
    try:
        plan = noise_plan(study)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}.") from error
    parameters = sum(math.prod(shape) for shape, _ in model_array_specs(study).values())
    tail = NormalDist().inv_cdf(1 - OUT_OF_RANGE_CHANCE / (2 * max(parameters, 1)))
    needed = plan.clipping_norm + tail * plan.site_stddev
    clipping_range = study.privacy.secagg.clipping_range
    if clipping_range < needed:
        raise ConfigError(
            f"{source}: privacy.secagg.clipping_range = {clipping_range:g} leaves too little "
            f"room for distributed DP's noise: each site adds noise of std "
            f"{plan.site_stddev:.3g} per parameter (z = {plan.noise_multiplier:.3g} x C = "
            f"{plan.clipping_norm:g} / sqrt(t = {plan.noise_shares})) to an update of norm at "
            f"most C, and the noisy update must stay within the range. Use "
            f"privacy.secagg.clipping_range >= {math.ceil(needed)}, or a larger "
            "privacy.secagg.reconstruction_threshold (more sites share the noise)."
        )
