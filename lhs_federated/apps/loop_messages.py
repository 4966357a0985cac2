"""The learning loop's messages: monitor a release, gate a challenger, recalibrate.

Three message types beside Flower's plain ``query``/``train``/``evaluate``
(names in :mod:`lhs_federated.apps.records`), each carrying the study it
belongs to, checked against its hash and approved by the site like any other:

- ``evaluate.monitor``: the release's arrays and preprocessing, the bins of
  each input column; the site replies with the release's metrics and 95%
  intervals on its evaluation rows and the columns' histograms and moments
  (and those of its training rows, for a release's reference);
- ``evaluate.gate``: champion and challenger (arrays prefixed ``champion/``
  and ``challenger/``) and the study's policy; the site replies with both
  models' metrics and its own verdict, which its ledger records with the reply;
- ``train.recalibrate``: the release and the current recalibration
  parameters; the site replies with the score and information of its
  training rows (one Newton step of the pooled fit).

This module holds the records both sides build and read, the ClientApp
handlers (:func:`register`) and the egress guard of each reply
(:data:`GUARDS`): nothing leaves that the study does not declare, bin counts
of 1 to k - 1 are withheld, and a site below its minimum cell size sends no
metric and no gradient.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lhs_federated.apps import records
from lhs_federated.apps.client_site import resolve_site
from lhs_federated.apps.reply_checks import ReplyRejectedError
from lhs_federated.data.statistics import Standardizer
from lhs_federated.learning.drift import ColumnSummary
from lhs_federated.learning.monitoring import (
    MONITOR_KEYS,
    GatePolicy,
    SiteMonitoring,
    gate_at_site,
    monitor_at_site,
    recalibration_terms,
)
from lhs_federated.learning.site import n_features, site_standardizer
from lhs_federated.privacy.egress import EgressBlocked, Problem, metric_problems, reason_problems
from lhs_federated.study import Study

EDGES, EDGE_COUNTS, WITH_REFERENCE = "monitor-edges", "monitor-edge-counts", "monitor-reference"
CHALLENGER_MEAN, CHALLENGER_SCALE = "challenger-mean", "challenger-scale"
POLICY_KEYS = {
    "auroc_margin": "gate-auroc-margin",
    "intercept_bound": "gate-intercept-bound",
    "slope_low": "gate-slope-low",
    "slope_high": "gate-slope-high",
}
METHOD, PARAMS = "recalibration-method", "recalibration-params"
# Each site's own recalibration in a release (JSON {site: [a, b]}), of the model sent
# (the gate: of the champion and of the challenger).
SITE_PARAMS, CHAMPION_SITE_PARAMS, CHALLENGER_SITE_PARAMS = (
    "site-recalibration",
    "champion-site-recalibration",
    "challenger-site-recalibration",
)
CHAMPION, CHALLENGER = "champion/", "challenger/"
GRADIENT, INFORMATION = "gradient", "information"
VERDICT, VERDICT_REASON = "verdict", "verdict"
SUMMARY_PARTS = ("counts", "n", "sum", "sum-of-squares")
GATE_KEYS = (*(CHAMPION + k for k in MONITOR_KEYS), *(CHALLENGER + k for k in MONITOR_KEYS))


# --- what the coordinator sends ---------------------------------------------------------


def edges_to_config(edges: list[np.ndarray]) -> ConfigRecord:
    """The bins of every input column, flattened."""
    return ConfigRecord(
        {
            EDGES: [float(v) for e in edges for v in e],
            EDGE_COUNTS: [len(e) for e in edges],
        }
    )


def edges_from_config(config: ConfigRecord) -> list[np.ndarray]:
    """The bins of every input column."""
    flat, counts = np.asarray(config[EDGES], float), list(config[EDGE_COUNTS])
    return np.split(flat, np.cumsum(counts)[:-1]) if counts else []


def policy_to_config(policy: GatePolicy) -> ConfigRecord:
    """The gate's policy, as the sites apply it."""
    return ConfigRecord({key: float(getattr(policy, name)) for name, key in POLICY_KEYS.items()})


def policy_from_config(config: ConfigRecord) -> GatePolicy:
    """The gate's policy a message carries."""
    return GatePolicy(**{name: float(config[key]) for name, key in POLICY_KEYS.items()})


# --- replies ---------------------------------------------------------------------------


def _summaries_to_record(
    record: dict[str, list[float]], prefix: str, summaries: list[ColumnSummary]
) -> None:
    record[f"{prefix}-counts"] = [float(c) for s in summaries for c in s.counts]
    record[f"{prefix}-n"] = [float(s.n) for s in summaries]
    record[f"{prefix}-sum"] = [float(s.total) for s in summaries]
    record[f"{prefix}-sum-of-squares"] = [float(s.total_squares) for s in summaries]


def summaries_from_record(
    record: MetricRecord, prefix: str, edge_counts: list[int]
) -> list[ColumnSummary] | None:
    """Column summaries of a monitoring reply (None if the reply has none)."""
    if f"{prefix}-counts" not in record:
        return None
    counts = np.split(
        np.asarray(record[f"{prefix}-counts"], float), np.cumsum([c + 1 for c in edge_counts])[:-1]
    )
    n, total, squares = (
        np.asarray(record[f"{prefix}-{part}"], float) for part in SUMMARY_PARTS[1:]
    )
    return [
        ColumnSummary(counts[j], float(n[j]), float(total[j]), float(squares[j]))
        for j in range(len(edge_counts))
    ]


def monitoring_to_record(monitoring: SiteMonitoring) -> RecordDict:
    """A monitoring reply: metrics, reasons, column summaries."""
    metrics = MetricRecord({k: float(monitoring.values[k]) for k in MONITOR_KEYS})
    drift: dict[str, list[float]] = {}
    if monitoring.current is not None:
        _summaries_to_record(drift, "current", monitoring.current)
    if monitoring.reference is not None:
        _summaries_to_record(drift, "reference", monitoring.reference)
    return RecordDict(
        {
            records.METRICS: metrics,
            records.UNDEFINED: ConfigRecord(dict(monitoring.undefined)),
            records.DRIFT: MetricRecord(drift),
        }
    )


def monitoring_from_record(content: RecordDict, edge_counts: list[int]) -> SiteMonitoring:
    """Parse a monitoring reply."""
    metrics = content[records.METRICS]
    undefined = {str(k): str(v) for k, v in content[records.UNDEFINED].items()}
    drift = content[records.DRIFT]
    return SiteMonitoring(
        {k: float(metrics[k]) for k in MONITOR_KEYS},
        undefined,
        summaries_from_record(drift, "current", edge_counts),
        summaries_from_record(drift, "reference", edge_counts),
    )


def gate_from_record(content: RecordDict) -> tuple[dict[str, float], dict[str, float], bool, str]:
    """Champion's and challenger's metrics, the site's verdict and its reason."""
    metrics = content[records.METRICS]
    champion = {k: float(metrics[CHAMPION + k]) for k in MONITOR_KEYS}
    challenger = {k: float(metrics[CHALLENGER + k]) for k in MONITOR_KEYS}
    reason = str(content[records.UNDEFINED].get(VERDICT_REASON, ""))
    return champion, challenger, bool(metrics[VERDICT] == 1), reason


# --- the site's handlers -----------------------------------------------------------------


def _standardizer(study: Study, site, config: ConfigRecord, mean: str, scale: str) -> Standardizer:
    if mean in config:
        return Standardizer(np.asarray(config[mean], float), np.asarray(config[scale], float))
    return site_standardizer(study, site.data, None)


def site_params_to_config(params: dict[str, list[float]]) -> str:
    """Per-site recalibrations as a config value."""
    return json.dumps(params, sort_keys=True)


def _site_params(config: ConfigRecord, key: str, site: str) -> list[float] | None:
    if key not in config:
        return None
    found = json.loads(str(config[key])).get(site)
    return None if found is None else [float(found[0]), float(found[1])]


def monitor(message: Message, context: Context) -> Message:
    """Score the release on the site's evaluation rows; summarise its columns.

    Under secure aggregation the summaries go masked, in the study's ``drift``
    sum (:mod:`lhs_federated.apps.loop_secagg`), never in this reply.
    """
    config = message.content[records.CONFIG]
    study = records.study_from_config(config)
    site = resolve_site(study, context)
    torch.set_num_threads(site.threads)
    monitoring = monitor_at_site(
        study,
        site.data,
        records.from_array_record(message.content[records.ARRAYS]),
        standardizer=_standardizer(study, site, config, records.PREP_MEAN, records.PREP_SCALE),
        edges=edges_from_config(config),
        with_reference=bool(config.get(WITH_REFERENCE, False)),
        min_cell_size=site.min_cell_size,
        site_params=_site_params(config, SITE_PARAMS, site.data.name),
    )
    if study.privacy.secure:
        monitoring = dataclasses.replace(monitoring, current=None, reference=None)
    return Message(monitoring_to_record(monitoring), reply_to=message)


def gate(message: Message, context: Context) -> Message:
    """Score champion and challenger on the same rows and give the site's verdict."""
    config = message.content[records.CONFIG]
    study = records.study_from_config(config)
    site = resolve_site(study, context)
    arrays = records.from_array_record(message.content[records.ARRAYS])
    champion, challenger, passed, reason = gate_at_site(
        study,
        site.data,
        {k.removeprefix(CHAMPION): v for k, v in arrays.items() if k.startswith(CHAMPION)},
        {k.removeprefix(CHALLENGER): v for k, v in arrays.items() if k.startswith(CHALLENGER)},
        champion_standardizer=_standardizer(
            study, site, config, records.PREP_MEAN, records.PREP_SCALE
        ),
        challenger_standardizer=_standardizer(
            study, site, config, CHALLENGER_MEAN, CHALLENGER_SCALE
        ),
        policy=policy_from_config(config),
        min_cell_size=site.min_cell_size,
        champion_params=_site_params(config, CHAMPION_SITE_PARAMS, site.data.name),
        challenger_params=_site_params(config, CHALLENGER_SITE_PARAMS, site.data.name),
    )
    metrics = MetricRecord(
        {
            **{CHAMPION + k: float(champion.values[k]) for k in MONITOR_KEYS},
            **{CHALLENGER + k: float(challenger.values[k]) for k in MONITOR_KEYS},
            VERDICT: int(passed),
        }
    )
    reasons = ConfigRecord({VERDICT_REASON: reason[: records.UNDEFINED_REASON_MAX]})
    return Message(
        RecordDict({records.METRICS: metrics, records.UNDEFINED: reasons}), reply_to=message
    )


def site_recalibration_terms(
    message: Message, context: Context
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Score, information and rows of the site's training rows; and its minimum cell size.

    Read from a recalibration message (the release's arrays, the method, the
    current parameters): a ``train.recalibrate`` message, or the collect
    stage of a secure sum of them (:mod:`lhs_federated.apps.loop_secagg`).
    """
    config = message.content[records.CONFIG]
    study = records.study_from_config(config)
    site = resolve_site(study, context)
    params = np.asarray(config[PARAMS], float)
    gradient, information, n = recalibration_terms(
        study,
        site.data,
        records.from_array_record(message.content[records.ARRAYS]),
        params,
        str(config[METHOD]),  # type: ignore[arg-type]
        standardizer=_standardizer(study, site, config, records.PREP_MEAN, records.PREP_SCALE),
        site_params=_site_params(config, SITE_PARAMS, site.data.name),
    )
    return gradient, information, n, site.min_cell_size


def recalibrate(message: Message, context: Context) -> Message:
    """Score and information of the site's training rows at the current parameters."""
    gradient, information, n, min_cell_size = site_recalibration_terms(message, context)
    if n < min_cell_size:  # nothing computed on fewer rows leaves the site
        gradient, information = np.full_like(gradient, np.nan), np.full_like(information, np.nan)
    metrics = MetricRecord(
        {
            GRADIENT: gradient.tolist(),
            INFORMATION: information.ravel().tolist(),
            records.NUM_EXAMPLES: int(n),
        }
    )
    return Message(RecordDict({records.METRICS: metrics}), reply_to=message)


def register(app: ClientApp) -> None:
    """Add the loop's handlers to the site's ClientApp."""
    app.evaluate(records.MONITOR_ACTION)(monitor)
    app.evaluate(records.GATE_ACTION)(gate)
    app.train(records.RECALIBRATE_ACTION)(recalibrate)


# --- egress guards -----------------------------------------------------------------------


def _withhold_small(values: dict, k: int) -> dict:
    if values.get("n", 0) >= k:
        return values
    return {key: (value if key == "n" else math.nan) for key, value in values.items()}


def _guard_monitor(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    metrics = dict(content.get(records.METRICS, {}))
    undefined = dict(content.get(records.UNDEFINED, {}))
    drift = dict(content.get(records.DRIFT, {}))
    problems = metric_problems(MONITOR_KEYS, metrics, what="monitoring metric")
    problems += reason_problems(undefined, MONITOR_KEYS, records.UNDEFINED_REASON_MAX)
    width = n_features(study)
    if drift and study.privacy.secure:
        problems.append(
            Problem("drift histograms in clear under secure aggregation", "they go masked")
        )
    for key, value in drift.items():
        prefix, _, part = key.partition("-")
        if prefix not in ("current", "reference") or part not in SUMMARY_PARTS:
            problems.append(Problem("unexpected drift key", repr(key)))
        elif not isinstance(value, list) or (part != "counts" and len(value) != width):
            problems.append(Problem("malformed drift summary", repr(key)))
    if problems:
        raise EgressBlocked(site, "monitor reply", problems)
    guarded: dict[str, list[float]] = {}
    for key, value in drift.items():  # counts of 1 to k - 1 never leave, whatever the code did
        array = np.asarray(value, float)
        if key.endswith("-counts"):
            array = np.where((array > 0) & (array < k), np.nan, array)
        guarded[key] = array.tolist()
    return RecordDict(
        {
            records.METRICS: MetricRecord(_withhold_small(metrics, k)),
            records.UNDEFINED: ConfigRecord(undefined),
            records.DRIFT: MetricRecord(guarded),
        }
    )


def _guard_gate(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    metrics = dict(content.get(records.METRICS, {}))
    undefined = dict(content.get(records.UNDEFINED, {}))
    problems = metric_problems((*GATE_KEYS, VERDICT), metrics, what="gate metric")
    problems += reason_problems(undefined, (VERDICT_REASON,), records.UNDEFINED_REASON_MAX)
    if problems:
        raise EgressBlocked(site, "gate reply", problems)
    for prefix in (CHAMPION, CHALLENGER):
        part = {k_[len(prefix) :]: v for k_, v in metrics.items() if k_.startswith(prefix)}
        metrics.update({prefix + key: v for key, v in _withhold_small(part, k).items()})
    return RecordDict(
        {records.METRICS: MetricRecord(metrics), records.UNDEFINED: ConfigRecord(undefined)}
    )


def _guard_recalibrate(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    metrics = dict(content.get(records.METRICS, {}))
    problems = [
        Problem("unexpected recalibration key", repr(key))
        for key in metrics
        if key not in (GRADIENT, INFORMATION, records.NUM_EXAMPLES)
    ]
    if problems:
        raise EgressBlocked(site, "recalibrate reply", problems)
    if float(metrics.get(records.NUM_EXAMPLES, 0)) < k:
        for key in (GRADIENT, INFORMATION):
            metrics[key] = [math.nan] * len(metrics.get(key, []))
    return RecordDict({records.METRICS: MetricRecord(metrics)})


#: The egress guard of each loop reply (see :func:`lhs_federated.apps.egress.guard_reply`).
GUARDS = {
    records.MONITOR: _guard_monitor,
    records.GATE: _guard_gate,
    records.RECALIBRATE: _guard_recalibrate,
}


# --- the coordinator's checks of each loop reply, before it is used -----------------------


def _finite_or_nan(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyRejectedError(f"{name} is not a number")
    if math.isinf(value):
        raise ReplyRejectedError(f"{name} is {value}")
    return float(value)


def check_monitor_reply(content: RecordDict, edge_counts: list[int], test_rows: int | None) -> None:
    """A monitoring reply holds the declared records, plausible metrics and true counts.

    Raises
    ------
    ReplyRejectedError
        If a record or key is missing or extra, a metric is infinite or out of
        its range, the row count exceeds what the site reported at discovery,
        or a histogram has the wrong shape, a negative count or more rows than
        the column.
    """
    expected = records.reply_records(records.MONITOR)
    if set(content) - set(expected) or records.METRICS not in content:
        raise ReplyRejectedError(
            f"records {sorted(content)}; a monitor reply holds {sorted(expected)}"
        )
    metrics = content[records.METRICS]
    if set(metrics) != set(MONITOR_KEYS):
        raise ReplyRejectedError(f"metric keys {sorted(metrics)} are not the monitoring metrics")
    values = {k: _finite_or_nan(f"metric {k!r}", metrics[k]) for k in MONITOR_KEYS}
    if test_rows is not None and values["n"] > test_rows:
        raise ReplyRejectedError(f"n = {values['n']:g} exceeds the {test_rows} rows reported")
    for key in ("auroc", "auroc_low", "auroc_high", "prevalence", "mean_risk", "brier"):
        if not math.isnan(values[key]) and not 0 <= values[key] <= 1:
            raise ReplyRejectedError(f"metric {key!r} = {values[key]:g} is outside [0, 1]")
    drift = content.get(records.DRIFT, MetricRecord())
    for prefix in ("current", "reference"):
        summaries = summaries_from_record(drift, prefix, edge_counts)
        if summaries is None:
            continue
        for j, s in enumerate(summaries):
            counts = s.counts[~np.isnan(s.counts)]
            if len(s.counts) != edge_counts[j] + 1 or (counts < 0).any():
                raise ReplyRejectedError(f"{prefix} histogram of column {j} is malformed")
            if not math.isnan(s.n) and counts.sum() > s.n:
                raise ReplyRejectedError(f"{prefix} histogram of column {j} holds more than n rows")
