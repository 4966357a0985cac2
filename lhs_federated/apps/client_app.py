"""The site's Flower ClientApp: messages in, calls of :mod:`lhs_federated.learning.site` out.

Three message types: ``query`` (who the site is, its counts and column sums),
``train`` (one round of local training from the global model) and
``evaluate`` (clinical metrics of the global model on the site's test split).
Every message carries the study, checked against its hash. A site that cannot
or will not do what is asked replies with an error whose reason names the site
(:func:`site_errors_mod`), so the coordinator records why, rather than
waiting for a timeout or seeing an anonymous crash. Every reply passes the
egress guard (:func:`~lhs_federated.apps.egress.egress_guard_mod`) before it
leaves; client-side clipping (client-level DP) is applied before the guard.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from lhs_federated.apps import loop_messages, records, secagg_messages
from lhs_federated.apps.client_dp import client_clipping_mod
from lhs_federated.apps.client_site import resolve_site
from lhs_federated.apps.egress import egress_guard_mod
from lhs_federated.apps.run_limits import run_limits_mod
from lhs_federated.apps.scaffold import SiteControl
from lhs_federated.apps.site_governance import (
    CLOSE_ACTION,
    acknowledge_close,
    site_governance_mod,
)
from lhs_federated.errors import LhsError, SiteRefusal
from lhs_federated.learning.personalisation import fine_tuning_of, personalise
from lhs_federated.learning.site import evaluate_at_site, site_standardizer, summarise_site
from lhs_federated.privacy.metric_release import release_metrics
from lhs_federated.privacy.site_round import SiteRound, train_site_round
from lhs_federated.study import Study


def site_errors_mod(message: Message, context: Context, call_next) -> Message:
    """Turn a site's deliberate refusals and input errors into error replies.

    A refusal (:class:`SiteRefusal`) gets code ``SITE_REFUSED`` so the
    coordinator can tell it from a failure; other lhs-federated errors (a site
    whose data break the contract) get ``SITE_ERROR``. Anything else is a bug
    and is left to Flower, which reports it as a ClientApp exception.
    """
    try:
        return call_next(message, context)
    except SiteRefusal as refusal:
        return Message(Error(code=records.SITE_REFUSED, reason=refusal.message), reply_to=message)
    except LhsError as error:
        return Message(Error(code=records.SITE_ERROR, reason=error.message), reply_to=message)


# Outermost first. Governance checks approval before anything else runs and records
# exactly the reply that leaves the site (after the guard); errors become replies;
# the run's limits (rounds, preprocessing) are checked before any work; the egress
# guard sees what client-side clipping leaves.
SITE_MODS = [
    site_governance_mod,
    site_errors_mod,
    run_limits_mod,
    egress_guard_mod,
    client_clipping_mod,
]
app = ClientApp(mods=SITE_MODS)
app.query(CLOSE_ACTION)(acknowledge_close)
loop_messages.register(app)  # evaluate.monitor, evaluate.gate, train.recalibrate


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Reply with the site's name, counts and (federated scaling) column sums."""
    study = records.study_from_config(message.content[records.CONFIG])
    site = resolve_site(study, context)
    summary = summarise_site(site.data, study, min_cell_size=site.min_cell_size)
    if study.privacy.secure:  # the column sums go through the secure statistics round
        summary = dataclasses.replace(summary, sums=None)
    return Message(records.summary_to_record(summary), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the global model locally for one round and reply with the update."""
    study = records.study_from_config(message.content[records.CONFIG])
    arrays, control = SiteControl.receive(
        records.from_array_record(message.content[records.ARRAYS]), context
    )
    result = local_round(message, context, arrays, control)
    update = result.update
    sent = update.arrays
    if control is not None:  # SCAFFOLD: the control variate's change travels too
        sent = {**sent, **control.finish(arrays, update, study.training.learning_rate, context)}
    content = records.train_reply(study, sent, update.n_examples, update.loss, result.epsilon)
    return Message(content, reply_to=message)


def local_round(
    message: Message,
    context: Context,
    arrays: dict[str, np.ndarray],
    control: SiteControl | None = None,
) -> SiteRound:
    """One round of local training from ``arrays``, as plain and secure rounds both run it."""
    config = message.content[records.CONFIG]
    study = records.study_from_config(config)
    site = resolve_site(study, context)
    torch.set_num_threads(site.threads)
    return train_site_round(
        study,
        site.data,
        site.privacy,
        min_cell_size=site.min_cell_size,
        arrays=arrays,
        server_round=int(config[records.ROUND]),
        standardizer=site_standardizer(study, site.data, records.standardizer_from_config(config)),
        proximal_mu=proximal_mu_of(study),
        correction=None if control is None else control.correction,
    )


secagg_messages.register(app, local_round)  # SecAgg+ stages (query/train.secagg_*)


def proximal_mu_of(study: Study) -> float:
    """FedProx's proximal term, from the approved study (0 for any other strategy).

    Flower's FedProx also sends it in every train message; the site takes the
    study's, so a coordinator cannot add a proximal term to a FedAvg study or
    change FedProx's. Flower's default is 0.
    """
    if study.strategy.name != "fedprox":
        return 0.0
    return float(study.strategy.params.get("proximal_mu", 0.0))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Score the global model on the site's test split."""
    config = message.content[records.CONFIG]
    study = records.study_from_config(config)
    site = resolve_site(study, context)
    torch.set_num_threads(site.threads)
    standardizer = site_standardizer(study, site.data, records.standardizer_from_config(config))
    arrays = personalise(  # fedavg-ft: the study's local steps first; never leaves the site
        study,
        site.data,
        records.from_array_record(message.content[records.ARRAYS]),
        standardizer=standardizer,
        fine_tuning=fine_tuning_of(study),
        server_round=int(config[records.ROUND]),
    )
    report = evaluate_at_site(study, site.data, arrays, standardizer=standardizer)
    if site.config is not None:  # the site's own coarsening of what it releases
        policy = site.config.policy
        report = release_metrics(report, noise=policy.metric_noise, decimals=policy.metric_decimals)
    content = records.report_to_record(report, unit_weight=study.privacy.client_dp)
    return Message(content, reply_to=message)
