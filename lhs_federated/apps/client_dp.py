"""Client-level DP: Flower's DP strategy wrappers around the study's strategy.

Under ``privacy.mode = "client-dp"`` the coordinator wraps the registry's
strategy in one of Flower's four wrappers (server- or client-side clipping,
fixed or adaptive norm). Flower adds Gaussian noise with std ``z*C/m`` to the
mean of the ``m`` clipped updates, which is right only for an unweighted
mean: lhs-federated therefore weights every site equally under client-dp
(sites send a unit weight, :data:`records.UNIT_WEIGHT`) and allows only
strategies whose aggregate is that mean (checked at study load).

Fixed clipping is accounted with Flower's ``RdpAccountant`` (no sampling
amplification, as Flower requires): the noise multiplier is calibrated from
``privacy.epsilon`` over the study's rounds when not given, and with
``max_epsilon`` set Flower refuses a round that would pass it. Adaptive
clipping has no accountant in Flower, so it needs an explicit noise
multiplier and ``clipped_count_stddev``. Client-side clipping needs the
matching Flower mod at the sites: :func:`client_clipping_mod`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from lhs_federated.apps import records
from lhs_federated.apps.client_site import resolve_site
from lhs_federated.errors import ConfigError, SiteRefusal
from lhs_federated.privacy.distributed import check_distributed_dp
from lhs_federated.study import Study

_MAX_NOISE = 1e4


def sampled_sites(study: Study, n_sites: int) -> int:
    """Sites Flower's FedAvg samples each round (its own formula)."""
    min_sites = min(study.federation.min_sites or n_sites, n_sites)
    return max(int(n_sites * study.strategy.fraction_train), min_sites)


def make_accountant(study: Study, n_sites: int) -> RdpAccountant:
    """Flower's RDP accountant for the study's fixed-clipping releases."""
    return RdpAccountant(
        PrivacyConfig(
            target_delta=study.privacy.delta,
            population_size=n_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=study.privacy.epsilon,
        )
    )


def epsilon_after(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` Gaussian releases at noise ``z`` (no amplification)."""
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=1,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, 1, 1), releases)
    return accountant.get_epsilon(delta)


def client_noise_multiplier(study: Study) -> float:
    """The study's client-level noise multiplier: given, or calibrated to epsilon.

    Calibration is a bisection on Flower's own accountant, so the study's
    rounds spend at most ``privacy.epsilon``.

    Raises
    ------
    ConfigError
        If the given multiplier would spend more than ``privacy.epsilon`` over
        the study's rounds.
    """
    privacy = study.privacy
    given = privacy.client.noise_multiplier
    if given is not None:
        if privacy.epsilon is not None:
            spent = epsilon_after(given, study.rounds, privacy.delta)
            if spent > privacy.epsilon:
                raise ConfigError(
                    f"privacy.client.noise_multiplier = {given:g} spends epsilon {spent:.3f} "
                    f"over the study's {study.rounds} rounds, more than privacy.epsilon = "
                    f"{privacy.epsilon:g}; raise the multiplier, lower the rounds, or remove "
                    "the multiplier to have it calibrated."
                )
        return given
    target = float(privacy.epsilon or 0.0)
    low, high = 0.0, 1.0
    while epsilon_after(high, study.rounds, privacy.delta) > target:
        low, high = high, high * 2
        if high > _MAX_NOISE:
            raise ConfigError(f"privacy.epsilon = {target:g} is too small to reach.")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if epsilon_after(middle, study.rounds, privacy.delta) > target:
            low = middle
        else:
            high = middle
    return high


def check_client_dp(study: Study, *, source: str) -> None:
    """Study-load checks of client-level DP that need an accountant (central or distributed).

    Raises
    ------
    ConfigError
        If the noise does not fit the epsilon, or adaptive clipping's count
        noise is too small for Flower's split of the noise.
    """
    check_distributed_dp(study, source=source)
    if not study.privacy.client_dp:
        return
    client = study.privacy.client
    try:
        z = client_noise_multiplier(study)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error.message}") from error
    stddev = client.clipped_count_stddev
    if client.clipping.endswith("adaptive") and stddev is not None and z >= 2 * stddev:
        raise ConfigError(
            f"{source}: adaptive clipping splits the noise between the updates and the "
            f"count of clipped updates; it needs privacy.client.noise_multiplier ({z:g}) "
            f"below 2 x clipped_count_stddev ({stddev:g}). Raise clipped_count_stddev."
        )


@contextmanager
def simulated_noise(study: Study, server_round: int, *, simulated: bool) -> Iterator[None]:
    """Seed the noise Flower's DP wrappers add in a simulated round.

    Flower draws the client-level noise from numpy's global generator, so a
    simulation's model changed from one run of the same seed to the next. In
    simulation the generator is seeded from the study's seed and the round
    (a resumed run draws the same noise) and restored afterwards. A deployed
    coordinator keeps the unseeded generator: every site reads the study's
    seed, and noise anyone can replay protects nobody.
    """
    if not (simulated and study.privacy.client_dp):
        yield
        return
    state = np.random.get_state()
    np.random.seed(np.random.SeedSequence([study.seed, server_round]).generate_state(1))
    try:
        yield
    finally:
        np.random.set_state(state)


def wrap_client_dp(strategy: Strategy, study: Study, n_sites: int) -> Strategy:
    """The study's strategy wrapped in the Flower DP wrapper it asks for."""
    client = study.privacy.client
    m = sampled_sites(study, n_sites)
    z = client_noise_multiplier(study)
    if client.clipping == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, z, client.clipping_norm, m, accountant=make_accountant(study, n_sites)
        )
    if client.clipping == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, z, client.clipping_norm, m, accountant=make_accountant(study, n_sites)
        )
    adaptive: dict[str, Any] = {
        "initial_clipping_norm": client.clipping_norm,
        "target_clipped_quantile": client.target_clipped_quantile,
        "clip_norm_lr": client.clip_norm_lr,
        "clipped_count_stddev": client.clipped_count_stddev,
    }
    if client.clipping == "server-adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(strategy, z, m, **adaptive)
    return DifferentialPrivacyClientSideAdaptiveClipping(strategy, z, m, **adaptive)


def client_dp_epsilon(strategy: Strategy) -> float | None:
    """Epsilon spent so far by a fixed-clipping wrapper (``None`` if unaccounted)."""
    spent = getattr(strategy, "privacy_spent", lambda: None)()
    return None if spent is None else float(spent.epsilon)


def client_clipping_mod(message: Message, context: Context, call_next) -> Message:
    """Apply Flower's client-side clipping mod to train messages of client-clipping studies.

    Flower's mods expect the clipping norm in every message they see, so this
    mod routes only the train messages of studies that clip at the client, and
    checks a fixed norm against the study's before clipping with it.

    Raises
    ------
    SiteRefusal
        If the server sent a clipping norm other than the study's fixed one.
    """
    if message.metadata.message_type != MessageType.TRAIN:
        return call_next(message, context)
    config = message.content[records.CONFIG]
    study = records.study_from_config(config)
    client = study.privacy.client
    if not study.privacy.client_dp or not client.clipping.startswith("client-"):
        return call_next(message, context)
    if client.clipping == "client-fixed":
        sent = float(config.get(KEY_CLIPPING_NORM, math.nan))
        if sent != client.clipping_norm:
            raise SiteRefusal(
                resolve_site(study, context).data.name,
                f"the server asked to clip at {sent!r}, not at the study's "
                f"privacy.client.clipping_norm {client.clipping_norm!r}.",
            )
        return fixedclipping_mod(message, context, call_next)
    return adaptiveclipping_mod(message, context, call_next)
