"""The study's ``[privacy]`` section: which guarantee, and its parameters.

Four modes:

- ``none``: no differential privacy (the egress guard and minimum sizes still apply);
- ``sample-dp``: every site trains with DP-SGD (Opacus) so that each patient
  record is protected at ``(epsilon, delta)`` for the whole study, and each site
  also keeps its own budget across studies;
- ``client-dp``: Flower's central DP wrappers clip each site's update and add
  noise to the aggregate, protecting a whole site's contribution;
- ``distributed-dp``: the same client-level guarantee without trusting the
  coordinator: under secure aggregation each site clips its update and adds its
  share of the noise before masking, so the sum carries the study's noise and
  no single update is ever seen (:mod:`lhs_federated.privacy.distributed`).

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

# Strategies whose aggregate is the example-weighted mean of the updates (server
# optimisers apply their step to that mean): they can run on a secure sum. The
# others need every site's update on its own, which secure aggregation hides.
SECAGG_STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavg-ft",
)
_NEEDS_INDIVIDUAL = {
    "krum": "Krum scores each site's update by its distances to the others",
    "multikrum": "Multi-Krum scores each site's update by its distances to the others",
    "bulyan": "Bulyan selects and trims individual updates",
    "fedmedian": "the coordinate-wise median needs every site's update",
    "fedtrimmedavg": "the trimmed mean drops the largest and smallest individual updates",
    "scaffold": "SCAFFOLD's server control variate averages each site's own control change",
    "qfedavg": "q-FedAvg weights each site by its own training loss",
}


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


#: With ``num_shares = 0``, every site neighbours every other up to this many
#: sites (plain SecAgg); beyond, each has this many neighbours or more (SecAgg+).
ALL_PAIRS_UP_TO = 21

#: Largest quantisation range of secure aggregation: a thousand sites' sums of
#: millions of rows must stay below 2**61 (see lhs_federated.apps.secagg_payloads).
MAX_QUANTIZATION_RANGE = 2**32


@dataclass(frozen=True)
class SecAggSpec:
    """SecAgg+ settings (``[privacy.secagg]``), used when ``secure_aggregation = "secaggplus"``."""

    num_shares: int = setting(
        0,
        doc="neighbours each site shares its secrets with, itself included, odd (0: every "
        "site up to 21 sites, beyond max(21, 3 * ceil(log2 sites)); fewer: SecAgg+'s sparse "
        "graph, at least 3)",
        ge=0,
        le=10000,
    )
    reconstruction_threshold: int = setting(
        0,
        doc="shares that rebuild a secret, more than half of num_shares (0: the smallest "
        "majority); also the fewest sites a sum may cover",
        ge=0,
        le=10000,
    )
    clipping_range: float = setting(
        8.0,
        doc="largest change of a model parameter in one round; a larger one is an error",
        gt=0,
        le=1e6,
    )
    quantization_range: int = setting(
        2**24,
        doc="integer steps across [-clipping_range, clipping_range]; the mean's error per "
        "parameter is at most 2 * clipping_range / quantization_range",
        ge=2**8,
        le=MAX_QUANTIZATION_RANGE,
    )

    def shares_for(self, n_sites: int) -> int:
        """Neighbours per site among ``n_sites``, itself included.

        The setting if given; else (``num_shares = 0``) every site up to
        :data:`ALL_PAIRS_UP_TO` sites, and beyond that SecAgg+'s sparse graph
        (Bell et al. 2020) of ``max(21, 3 * ceil(log2 n))`` sites, made odd and
        at least an explicit threshold: so a site's secrets need at least 11
        colluding neighbours, its work grows with ``log n`` instead of ``n``,
        and 50 sites cost a round 21 neighbours each instead of 50.
        """
        if self.num_shares == 0:
            sparse = max(ALL_PAIRS_UP_TO, 3 * math.ceil(math.log2(max(n_sites, 2))))
            sparse = max(sparse, self.reconstruction_threshold)
            return min(n_sites, sparse | 1)
        return min(n_sites, self.num_shares)

    def threshold_for(self, n_sites: int) -> int:
        """Shares that rebuild a secret among ``n_sites`` (the setting, or a majority)."""
        shares = self.shares_for(n_sites)
        return self.reconstruction_threshold or shares // 2 + 1


@dataclass(frozen=True)
class PrivacySpec:
    """Differential privacy of the study (``[privacy]``)."""

    mode: Literal["none", "sample-dp", "client-dp", "distributed-dp"] = setting(
        "none",
        doc="none, sample-dp (DP-SGD at every site, Opacus), client-dp (Flower's "
        "central DP wrappers) or distributed-dp (client-level DP, each site adds its "
        "share of the noise under secure aggregation)",
    )
    epsilon: float | None = setting(
        None,
        doc="sample-dp: each site's target epsilon for the whole study; client-dp: "
        "the most the federation may spend (fixed clipping); distributed-dp: each "
        "site's target for the whole study",
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
        default_factory=ClientDPSpec,
        doc="client-dp and distributed-dp: clipping and noise ([privacy.client])",
    )
    secure_aggregation: Literal["none", "secaggplus"] = setting(
        "none",
        doc="none, or secaggplus: the coordinator learns only sums over sites (of model "
        "updates and of the federated statistics)",
    )
    secagg: SecAggSpec = setting(
        default_factory=SecAggSpec, doc="secaggplus: shares, threshold and quantisation"
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
    def secure(self) -> bool:
        """Whether sums over sites are computed with SecAgg+."""
        return self.secure_aggregation == "secaggplus"

    @property
    def client_dp(self) -> bool:
        """Whether the server applies client-level DP."""
        return self.mode == "client-dp"

    @property
    def distributed_dp(self) -> bool:
        """Whether each site adds its share of client-level noise before secure aggregation."""
        return self.mode == "distributed-dp"

    @property
    def site_accounted(self) -> bool:
        """Whether each site accounts the study's epsilon in its own privacy ledger."""
        return self.mode in ("sample-dp", "distributed-dp")


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
            "= 'sample-dp' (or 'client-dp' or 'distributed-dp'), or remove privacy.epsilon."
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
    if privacy.distributed_dp:
        check_distributed_settings(study, source=source)
    if privacy.secure:
        check_secure_aggregation(study, source=source)
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


def check_distributed_settings(study: Any, *, source: str) -> None:
    """Settings distributed DP needs: secure aggregation, a target, a fixed norm, a threshold.

    The noise calibration and its room in the quantisation range are checked
    with the accountant (:func:`lhs_federated.privacy.distributed.check_distributed_dp`).

    Raises
    ------
    ConfigError
        Naming the setting that is missing or conflicts.
    """
    privacy: PrivacySpec = study.privacy
    if not privacy.secure:
        raise ConfigError(
            f"{source}: privacy.mode = 'distributed-dp' needs privacy.secure_aggregation = "
            f"'secaggplus' (got {privacy.secure_aggregation!r}): each site's update carries only "
            "its share of the noise, which is safe only inside a secure sum. Set "
            "privacy.secure_aggregation = 'secaggplus', or use privacy.mode = 'client-dp'."
        )
    if privacy.epsilon is None:
        raise ConfigError(
            f"{source}: privacy.mode = 'distributed-dp' needs privacy.epsilon, each site's "
            "target for the whole study (for example 3.0)."
        )
    if privacy.client.clipping.endswith("adaptive"):
        raise ConfigError(
            f"{source}: privacy.mode = 'distributed-dp' clips each update at the site with the "
            f"fixed norm privacy.client.clipping_norm; privacy.client.clipping = "
            f"{privacy.client.clipping!r} adapts the norm from individual updates, which no one "
            "sees under secure aggregation. Use 'client-fixed'."
        )
    if privacy.secagg.reconstruction_threshold == 0:
        sites = known_site_count(study)
        example = privacy.secagg.threshold_for(sites) if sites else 3
        raise ConfigError(
            f"{source}: privacy.mode = 'distributed-dp' needs privacy.secagg."
            "reconstruction_threshold set explicitly (for example "
            f"{example}{f' of the {sites} sites' if sites else ''}): it is the fewest sites "
            "any secure sum covers, so each site adds 1/threshold of the noise variance and "
            "every sum carries at least the study's noise."
        )


def known_site_count(study: Any) -> int | None:
    """Sites the study will have, when its own settings tell (synthetic data, a site list)."""
    if study.data.sites is not None:
        return len(study.data.sites)
    if study.data.source == "synthetic":
        return int(study.data.synthetic.sites)
    return None


def check_secure_aggregation(study: Any, *, source: str, n_sites: int | None = None) -> None:
    """Secure aggregation's conflicts with the strategy, privacy mode and number of sites.

    ``n_sites`` is the number of sites that joined (the coordinator checks it
    after discovery); without it, the number the study itself implies, if any.

    Raises
    ------
    ConfigError
        For a strategy that needs individual updates, client-level DP (its
        server clips individual updates), or shares and threshold that cannot
        work for the sites.
    """
    name = study.strategy.name
    if name in _NEEDS_INDIVIDUAL:
        raise ConfigError(
            f"{source}: privacy.secure_aggregation = 'secaggplus' hides every site's update "
            f"from the coordinator, but strategy {name!r} needs them one by one "
            f"({_NEEDS_INDIVIDUAL[name]}). Use strategy.name "
            f"{', '.join(map(repr, SECAGG_STRATEGIES))}, or privacy.secure_aggregation = 'none'."
        )
    if study.privacy.client_dp:
        raise ConfigError(
            f"{source}: privacy.secure_aggregation = 'secaggplus' cannot run with "
            "privacy.mode = 'client-dp': Flower's DP wrappers clip and weigh each site's update "
            "at the coordinator, which secure aggregation hides. Use privacy.mode = "
            "'distributed-dp' (the sites add the noise before masking), 'sample-dp' or 'none' "
            "with secure aggregation."
        )
    spec: SecAggSpec = study.privacy.secagg
    if spec.num_shares and spec.num_shares < 3:
        raise ConfigError(
            f"{source}: privacy.secagg.num_shares = {spec.num_shares} leaves a site's secrets "
            "with fewer than 3 sites (itself included); use at least 3, or 0 for every site."
        )
    if spec.num_shares % 2 == 0 and spec.num_shares:
        raise ConfigError(
            f"{source}: privacy.secagg.num_shares = {spec.num_shares} must be odd: each site "
            "shares with itself and as many neighbours on each side of the ring."
        )
    if spec.num_shares and spec.reconstruction_threshold > spec.num_shares:
        raise ConfigError(
            f"{source}: privacy.secagg.reconstruction_threshold = "
            f"{spec.reconstruction_threshold} is larger than privacy.secagg.num_shares = "
            f"{spec.num_shares}: no secret could ever be rebuilt."
        )
    sites = n_sites if n_sites is not None else known_site_count(study)
    where = "sites joined" if n_sites is not None else "sites in the study"
    if sites is None:
        return
    if sites < 3:
        raise ConfigError(
            f"{source}: privacy.secure_aggregation = 'secaggplus' needs at least 3 sites; "
            f"{sites} {where}, and the sum of two sites tells each the other's values."
        )
    shares, threshold = spec.shares_for(sites), spec.threshold_for(sites)
    if threshold > sites:
        raise ConfigError(
            f"{source}: privacy.secagg.reconstruction_threshold = {threshold} is larger than "
            f"the {sites} {where}: no round could ever be unmasked. Use at most {sites}."
        )
    if threshold <= shares // 2 or threshold < 2:
        raise ConfigError(
            f"{source}: privacy.secagg.reconstruction_threshold = {threshold} is not more than "
            f"half of the {shares} shares each site makes (privacy.secagg.num_shares = "
            f"{spec.num_shares or f'0, so {shares} at {sites} sites'}): a coordinator could "
            "rebuild both secrets of one site and read its update. Use at least "
            f"{shares // 2 + 1} (0: that majority)."
        )
