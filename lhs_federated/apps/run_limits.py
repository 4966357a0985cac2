"""What a site does in one run: the study's rounds, once each, with one preprocessing.

A site approves a study, and the study says how many rounds it has. A modified
coordinator can still send a train or evaluate message for any round number,
as often as it likes, with any preprocessing statistics in its config: 8 rounds
of a 2-round study gave it 10 raw updates, and evaluations of crafted models
under crafted standardisers read exact counts of small subgroups. So before a
handler runs, the site checks each train and evaluate message against the
run's history it keeps in its node state (Flower's per-run ``Context.state``):

- the round is one of the study's (1 to ``rounds``) and rounds only go
  forward; a round may be asked again once (an interrupted round that the
  coordinator resumes), never a third time;
- the preprocessing (federated means and scales, or none) is the one the run's
  first message carried, with finite means and positive finite scales.

A message that fails is refused (:class:`SiteRefusal`): the site replies with
the reason, records the refusal in its ledger and does no work. This holds for
every privacy mode; under sample-level DP the site's privacy ledger also
bounds what any number of runs of a study can spend.
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType

from lhs_federated.apps import records
from lhs_federated.apps.client_site import PARTITION_ID, SITE_CONFIG
from lhs_federated.errors import SiteRefusal
from lhs_federated.site_config import load_site_config

#: Node-state record of the run's history at this site.
STATE_KEY = "lhs-run-history"
#: How often one round may be asked: once, and once more after an interruption.
MAX_ATTEMPTS = 2


def run_limits_mod(message: Message, context: Context, call_next) -> Message:
    """Refuse train and evaluate messages outside the study's rounds or the run's preprocessing."""
    kind = message.metadata.message_type.split(".")[0]
    if kind in (MessageType.TRAIN, MessageType.EVALUATE):
        config = message.content[records.CONFIG]
        study = records.study_from_config(config)
        history = _history(context)
        site = site_label(context)
        check_round(history.setdefault(kind, []), int(config[records.ROUND]), study.rounds, site)
        preprocessing = preprocessing_digest(config, site)
        pinned = history.setdefault("preprocessing", preprocessing)
        if pinned != preprocessing:
            raise SiteRefusal(
                site,
                "the message's preprocessing (means and scales) differs from the one this run "
                "started with; a run evaluates and trains with one fixed preprocessing",
            )
        history[kind].append(int(config[records.ROUND]))
        context.state[STATE_KEY] = ConfigRecord({"json": json.dumps(history)})
    return call_next(message, context)


def check_round(done: list[int], server_round: int, rounds: int, site: str) -> None:
    """Check one more ``server_round`` after the rounds ``done`` in this run.

    Raises
    ------
    SiteRefusal
        If the round is outside 1 to ``rounds``, earlier than one already done,
        or asked for the third time.
    """
    if not 1 <= server_round <= rounds:
        raise SiteRefusal(
            site,
            f"round {server_round} is outside the approved study's rounds (1 to {rounds})",
        )
    if done and server_round < max(done):
        raise SiteRefusal(
            site, f"round {server_round} comes after round {max(done)}: rounds only go forward"
        )
    if done.count(server_round) >= MAX_ATTEMPTS:
        raise SiteRefusal(
            site,
            f"round {server_round} was asked {MAX_ATTEMPTS} times already in this run "
            "(once, and once more after an interruption)",
        )


def preprocessing_digest(config: ConfigRecord, site: str) -> str:
    """SHA-256 of a message's preprocessing statistics ("none" without them).

    Raises
    ------
    SiteRefusal
        If the means are not finite, the scales not positive and finite, or
        their lengths differ.
    """
    standardizer = records.standardizer_from_config(config)
    if standardizer is None:
        return "none"
    mean, scale = standardizer.mean, standardizer.scale
    if (
        mean.shape != scale.shape
        or not np.isfinite(mean).all()
        or not (np.isfinite(scale).all() and (scale > 0).all())
    ):
        raise SiteRefusal(
            site,
            "the message's preprocessing is invalid (means must be finite, scales positive "
            "and finite, one of each per feature)",
        )
    digest = hashlib.sha256(mean.astype(float).tobytes() + scale.astype(float).tobytes())
    return digest.hexdigest()


def site_label(context: Context) -> str:
    """The site's name as its own config gives it (a simulated site: its partition)."""
    if SITE_CONFIG in context.node_config:
        return _deployed_name(str(context.node_config[SITE_CONFIG]))
    return f"partition {context.node_config.get(PARTITION_ID, context.node_id)}"


@functools.lru_cache(maxsize=4)
def _deployed_name(config_path: str) -> str:
    return load_site_config(config_path).site.name


def _history(context: Context) -> dict:
    stored = context.state.get(STATE_KEY)
    return json.loads(str(stored["json"])) if stored is not None else {}
