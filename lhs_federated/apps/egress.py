"""The egress guard: a ClientApp mod inspecting every reply before it leaves the site.

It sits between the site's error handling and the handlers (and after any
client-side clipping), so it sees exactly what would be sent. Query, train and
evaluate replies are checked against what :mod:`lhs_federated.apps.records`
declares for the study (record names and types, metric keys, the model's
arrays), small counts are suppressed, and anything else blocks the reply: the
details go to the ``lhs_federated.egress`` log at the site, and the
coordinator gets an error reply (code ``EGRESS_BLOCKED``) naming only the
kinds of problem. The rules themselves are Flower-free, in
:mod:`lhs_federated.privacy.egress`.
"""

from __future__ import annotations

import logging
import math

from flwr.app import (
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from lhs_federated.apps import records
from lhs_federated.apps.client_site import resolve_site
from lhs_federated.apps.loop_messages import GUARDS as LOOP_GUARDS
from lhs_federated.apps.secagg_messages import GUARDS as SECAGG_GUARDS
from lhs_federated.learning.metrics import METRIC_NAMES
from lhs_federated.learning.site import n_features
from lhs_federated.privacy.egress import (
    EgressBlocked,
    Problem,
    array_problems,
    metric_problems,
    model_array_specs,
    reason_problems,
    suppress_counts,
    suppress_evaluation,
    suppress_sums,
)
from lhs_federated.study import Study

LOGGER = logging.getLogger("lhs_federated.egress")

_WHAT = {
    MessageType.QUERY: "query reply",
    MessageType.TRAIN: "train reply",
    MessageType.EVALUATE: "evaluate reply",
}


def egress_guard_mod(message: Message, context: Context, call_next) -> Message:
    """Let a reply out only if it holds what the study declares (see the module docstring)."""
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    study = records.study_from_config(message.content[records.CONFIG])
    site = resolve_site(study, context)
    kind = message.metadata.message_type
    what = _WHAT.get(kind, f"{kind} reply")
    try:
        content = guard_reply(kind, reply.content, study, site.data.name, site.min_cell_size)
    except EgressBlocked as blocked:
        for problem in blocked.problems:
            LOGGER.warning(
                "site %s: %s blocked: %s: %s",
                site.data.name,
                what,
                problem.category,
                problem.detail,
            )
        return Message(Error(code=records.EGRESS_BLOCKED, reason=blocked.message), reply_to=message)
    if content is reply.content:  # nothing to withhold: the reply leaves as it is
        return reply
    return Message(content, reply_to=message)


def guard_reply(
    kind: str, content: RecordDict, study: Study, site: str, min_cell_size: int
) -> RecordDict:
    """The content that may leave for a reply of message type ``kind``.

    Raises
    ------
    EgressBlocked
        If the content holds anything the study does not declare.
    """
    if kind == records.LEDGER_CLOSE:
        if len(content):
            raise EgressBlocked(
                site, "ledger-close reply", [Problem("unexpected record", f"{sorted(content)}")]
            )
        return RecordDict()
    declared = records.reply_records(kind)
    problems = [
        Problem("unexpected record", f"record {name!r} ({type(record).__name__})")
        for name, record in content.items()
        if not isinstance(record, declared.get(name, ()))
    ]
    if not declared:
        problems.append(Problem("unexpected message type", repr(kind)))
    if problems:
        raise EgressBlocked(site, _WHAT.get(kind, f"{kind} reply"), problems)
    guard = {
        MessageType.QUERY: _guard_query,
        MessageType.TRAIN: _guard_train,
        MessageType.EVALUATE: _guard_evaluate,
        **LOOP_GUARDS,
        **SECAGG_GUARDS,
    }[kind]
    return guard(content, study, site, min_cell_size)


def _guard_query(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    problems = metric_problems(records.COUNT_KEYS, content.get(records.COUNTS, {}), what="count")
    names = dict(content.get(records.SITE, {}))
    if names != {"name": site}:
        problems.append(Problem("site record other than the site's name", f"keys {sorted(names)}"))
    guarded = RecordDict({records.SITE: ConfigRecord({"name": site})})
    guarded[records.COUNTS] = MetricRecord(
        suppress_counts(dict(content.get(records.COUNTS, {})), k)
    )
    if records.SUMS in content and study.privacy.secure:
        problems.append(Problem("column sums in clear under secure aggregation", "they go masked"))
    elif records.SUMS in content:
        sums, sum_problems = suppress_sums(
            dict(content[records.SUMS]), records.SUMS_KEYS, n_features(study), k
        )
        problems += sum_problems
        guarded[records.SUMS] = MetricRecord(sums)
    if problems:
        raise EgressBlocked(site, "query reply", problems)
    return guarded


def train_array_specs(study: Study) -> dict:
    """Arrays a train reply may hold.

    The model's, and under SCAFFOLD the change of the site's control variate
    (one per model array, same shape and dtype).
    """
    specs = model_array_specs(study)
    if study.strategy.name == "scaffold":
        specs |= {records.CONTROL_DELTA_PREFIX + name: spec for name, spec in specs.items()}
    return specs


def _guard_train(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    arrays = content.get(records.ARRAYS)
    metrics = content.get(records.METRICS)
    problems = []
    if study.privacy.secure:  # only the masked vector of train.secagg_collect may leave
        problems.append(Problem("plain update under secure aggregation", "train reply"))
    if arrays is None or metrics is None:
        problems.append(Problem("missing record", "a train reply needs arrays and metrics"))
    else:
        got = {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}
        problems += array_problems(train_array_specs(study), got)
        problems += metric_problems(records.train_metric_keys(study), metrics, what="train metric")
        loss = metrics.get(records.TRAIN_LOSS)
        if study.privacy.sample_dp and isinstance(loss, float) and not math.isnan(loss):
            problems.append(Problem("training loss outside the DP guarantee", "train_loss"))
        if float(metrics.get(records.NUM_EXAMPLES, 0)) < k:
            problems.append(
                Problem("update from fewer rows than the minimum cell size", f"k = {k}")
            )
    if problems:
        raise EgressBlocked(site, "train reply", problems)
    if list(content) == [records.ARRAYS, records.METRICS]:
        return content  # exactly the declared records, each checked: nothing to rebuild
    return RecordDict({records.ARRAYS: arrays, records.METRICS: metrics})


def _guard_evaluate(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    metrics = content.get(records.METRICS)
    undefined = dict(content.get(records.UNDEFINED, {}))
    if metrics is None:
        raise EgressBlocked(site, "evaluate reply", [Problem("missing record", "metrics")])
    problems = metric_problems(records.evaluate_metric_keys(study), metrics, what="metric")
    problems += reason_problems(undefined, METRIC_NAMES, records.UNDEFINED_REASON_MAX)
    if problems:
        raise EgressBlocked(site, "evaluate reply", problems)
    values, reasons = suppress_evaluation(
        dict(metrics),
        undefined,
        n_key="n",
        weight_keys=(records.NUM_EXAMPLES, records.UNIT_WEIGHT),
        min_cell_size=k,
    )
    return RecordDict(
        {records.METRICS: MetricRecord(values), records.UNDEFINED: ConfigRecord(reasons)}
    )
