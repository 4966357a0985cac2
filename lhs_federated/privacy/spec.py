"""The study's ``[privacy]`` section: which guarantee, and its parameters.

Three modes:

- ``none``: no differential privacy (the egress guard and minimum sizes still apply);
- ``sample-dp``: every site trains with DP-SGD (Opacus) so that each patient
  record is protected at ``(epsilon, delta)`` for the whole study, and each site
  also keeps its own budget across studies;
- ``client-dp``: Flower's central DP wrappers clip each site's update and add
  noise to the aggregate, protecting a whole site's contribution.

Settings are checked once, when the study is loaded; what cannot be known
then (a site's number of rows, its remaining budget) is checked at the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lhs_federated.config import setting
from lhs_federated.errors import ConfigError

# Strategies whose aggregate is an unweighted mean under client-level DP: Flower's
# noise (std z*C/m) is calibrated to the mean of m clipped updates. Medians,
# trimmed means, Krum and server optimisers (FedAdam, FedAvgM, ...) change the
# sensitivity of the released model, so that calibration would be wrong.
CLIENT_DP_STRATEGIES = ("fedavg", "fedprox")


#: The largest study epsilon accepted (accepted: > 0 and <= 100).
MAX_STUDY_EPSILON = 100.0


@dataclass(frozen=True)
class ClientDPSpec:
    """Client-level DP with Flower's strategy wrappers (``[privacy.client]``)."""

    clipping: Literal["server-fixed", "client-fixed", "server-adaptive", "client-adaptive"] = (
        setting(
            "server-fixed",
            doc="where updates are clipped (server or client) and whether the norm is "
            "fixed or adapted each round",
        )
    )
    noise_multiplier: float | None = setting(
        None,
        doc="z: noise std is z*C/m; fixed clipping: default calibrated from "
        "privacy.epsilon and privacy.delta over the study's rounds",
        gt=0,
    )
    clipping_norm: float = setting(
        1.0, doc="C: bound on the norm of each site's update (adaptive: initial value)", gt=0
    )
    clipped_count_stddev: float | None = setting(
        None, doc="adaptive clipping: noise std of the count of clipped updates (required)", ge=0
    )
    target_clipped_quantile: float = setting(
        0.5, doc="adaptive clipping: share of updates the norm aims to leave unclipped", ge=0, le=1
    )
    clip_norm_lr: float = setting(
        0.2, doc="adaptive clipping: learning rate of the clipping norm", gt=0
    )


@dataclass(frozen=True)
class PrivacySpec:
    """Differential privacy of the study (``[privacy]``)."""

    mode: Literal["none", "sample-dp", "client-dp"] = setting(
        "none",
        doc="none, sample-dp (DP-SGD at every site, Opacus) or client-dp (Flower's "
        "central DP wrappers)",
    )
    epsilon: float | None = setting(
        None,
        doc="sample-dp: each site's target epsilon for the whole study; client-dp: "
        "the most the federation may spend (fixed clipping)",
    )
    delta: float = setting(
        1e-5, doc="delta of the guarantee; sample-dp needs it below 1/n at every site"
    )
    max_grad_norm: float = setting(
        1.0, doc="sample-dp: bound on each record's gradient norm (per-sample clipping)", gt=0
    )
    accountant: Literal["rdp", "prv"] = setting(
        "rdp", doc="sample-dp: Opacus accountant of the study's epsilon"
    )
    min_train_rows: int = setting(20, doc="a site with fewer training rows refuses to train", ge=1)
    client: ClientDPSpec = setting(
        default_factory=ClientDPSpec, doc="client-dp: clipping and noise ([privacy.client])"
    )

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (
            math.isfinite(self.epsilon) and 0 < self.epsilon <= MAX_STUDY_EPSILON
        ):
            raise ValueError(
                f"privacy.epsilon must be a positive number of at most {MAX_STUDY_EPSILON:g} "
                f"(the privacy loss a site accepts for the study, e.g. 1.0; beyond "
                f"{MAX_STUDY_EPSILON:g} DP promises nothing); got {self.epsilon!r}."
            )
        if not (math.isfinite(self.delta) and 0 < self.delta < 1):
            raise ValueError(
                f"privacy.delta must be in (0, 1), and in practice well below 1/n for the "
                f"smallest site (e.g. 1e-5); got {self.delta!r}: a delta of 1 or more "
                "promises nothing."
            )

    def rows_to_train(self, min_cell_size: int) -> int:
        """Fewest training rows a site trains on: the study's minimum or the site's cell size.

        A site below it refuses every round (its updates would reveal too much
        about few patients); the preflight of a run and ``lhs-fed data validate``
        apply the same rule beforehand.
        """
        return max(self.min_train_rows, min_cell_size)

    @property
    def sample_dp(self) -> bool:
        """Whether sites train with DP-SGD."""
        return self.mode == "sample-dp"

    @property
    def client_dp(self) -> bool:
        """Whether the server applies client-level DP."""
        return self.mode == "client-dp"


def check_privacy(study: Any, *, source: str) -> None:
    """Cross-field checks of ``[privacy]`` against the rest of the study.

    Raises
    ------
    ConfigError
        For a setting that would silently weaken or break the guarantee.
    """
    privacy: PrivacySpec = study.privacy
    client = privacy.client
    if privacy.mode == "none" and privacy.epsilon is not None:
        raise ConfigError(
            f"{source}: privacy.epsilon = {privacy.epsilon:g} is set but privacy.mode is "
            "'none', so the study would run without any privacy guarantee. Set privacy.mode "
            "= 'sample-dp' (or 'client-dp'), or remove privacy.epsilon."
        )
    if privacy.sample_dp and study.strategy.name == "qfedavg":
        raise ConfigError(
            f"{source}: strategy 'qfedavg' weights sites by their training loss, which sites "
            "do not send under sample-level DP (it is not covered by the guarantee); choose "
            "another strategy."
        )
    if privacy.sample_dp and privacy.epsilon is None:
        raise ConfigError(
            f"{source}: privacy.mode = 'sample-dp' needs privacy.epsilon, each site's target "
            "for the whole study (for example 1.0)."
        )
    if not privacy.client_dp:
        return
    if study.strategy.name not in CLIENT_DP_STRATEGIES:
        raise ConfigError(
            f"{source}: client-level DP calibrates its noise (std z*C/m) to an unweighted "
            f"mean of the m clipped updates, but strategy {study.strategy.name!r} aggregates "
            f"differently, so the guarantee would be wrong. Use strategy.name "
            f"{' or '.join(map(repr, CLIENT_DP_STRATEGIES))} (lhs-federated weights every "
            "site equally under client-dp), or privacy.mode = 'sample-dp'."
        )
    adaptive = client.clipping.endswith("adaptive")
    if adaptive:
        if client.clipped_count_stddev is None:
            raise ConfigError(
                f"{source}: privacy.client.clipping = {client.clipping!r} needs an explicit "
                "privacy.client.clipped_count_stddev: Flower's default (m/20) only works when "
                "the noise multiplier is below m/10, out of reach for a few hospitals."
            )
        if client.noise_multiplier is None:
            raise ConfigError(
                f"{source}: privacy.client.clipping = {client.clipping!r} needs "
                "privacy.client.noise_multiplier; adaptive clipping has no accountant to "
                "calibrate it from an epsilon."
            )
        if study.federation.min_sites is not None:
            raise ConfigError(
                f"{source}: adaptive clipping with federation.min_sites would aggregate rounds "
                "in which fewer sites answered than were sampled, with noise calibrated for "
                "all of them (too little noise per site). Remove federation.min_sites (every "
                "sampled site must answer) or use fixed clipping, whose accountant skips such "
                "rounds."
            )
        if privacy.epsilon is not None:
            raise ConfigError(
                f"{source}: privacy.epsilon cannot be enforced with adaptive clipping (Flower "
                "keeps no accountant for it); remove privacy.epsilon or use "
                "privacy.client.clipping = 'server-fixed' or 'client-fixed'."
            )
    elif client.noise_multiplier is None and privacy.epsilon is None:
        raise ConfigError(
            f"{source}: client-level DP with fixed clipping needs privacy.epsilon (the noise "
            "multiplier is then calibrated to it) or privacy.client.noise_multiplier."
        )
