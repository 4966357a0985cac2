"""The coordinator's side of the learning loop's studies, on any Flower Grid.

Each task is one study the sites approve, run like any other: discovery, the
coordinator's signed ledger (:class:`~lhs_federated.apps.coordinator_audit.CoordinatorAudit`,
every reply recorded, the sites told the final hash), and a results folder
whose files are hashed into the closing record. What differs is the work:

- :func:`monitor_release`: one ``evaluate.monitor`` message per site;
- :func:`gate_challenger`: one ``evaluate.gate`` message per site, each site's
  verdict in its reply (and so in its ledger) and the tally in the coordinator's;
- :func:`recalibrate_release`: ``train.recalibrate`` rounds, each summing the
  sites' scores and information into one Newton step of the pooled fit.

A task's kind and inputs reach the ServerApp in the run config
(:data:`LOOP_TASK_KEY`, JSON), so the same ServerApp serves the in-process
engine, Ray and a deployed SuperLink.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from lhs_federated.apps import loop_messages, loop_secagg, records
from lhs_federated.apps.coordinator_audit import AuditOptions, CoordinatorAudit
from lhs_federated.apps.federation import discover_sites, report_close
from lhs_federated.apps.preflight import check_out_dir
from lhs_federated.apps.reply_checks import ReplyRejectedError
from lhs_federated.apps.run_config import LOOP_RESULT_FILE
from lhs_federated.apps.secagg_round import secure_sum
from lhs_federated.apps.site_grid import SiteGrid
from lhs_federated.data.encoding import encoded_columns
from lhs_federated.data.statistics import Standardizer
from lhs_federated.errors import ConfigError, StudyRunError
from lhs_federated.learning.drift import reference_edges, summary_to_json
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.learning.metrics import MetricReport
from lhs_federated.learning.monitoring import GatePolicy, SiteMonitoring
from lhs_federated.learning.recalibration import (
    Recalibration,
    identity,
    newton_step,
    read_site_recalibration,
)
from lhs_federated.privacy.spec import check_secure_aggregation
from lhs_federated.results.writer import utc_now
from lhs_federated.study import Study, write_study

LOGGER = logging.getLogger("lhs_federated.loop")
RESULT_FILE = LOOP_RESULT_FILE


@dataclass
class TaskOutcome:
    """What a loop task found: per-site results and failures, and its ledger's close.

    ``secure_sum`` holds what a secure sum over the sites gave (a monitoring
    study under secure aggregation: the federation's drift summaries, who is
    in them and the minimum cell size applied); None without one.
    """

    kind: str
    per_site: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    secure_sum: dict[str, Any] | None = None


def _config(study: Study, standardizer: Standardizer | None, server_round: int = 1) -> ConfigRecord:
    """The study, the round (a site answers each round once) and the scaling."""
    config = records.study_config(study)
    config[records.ROUND] = server_round
    if standardizer is not None:
        config.update(records.standardizer_to_config(standardizer))
    return config


def _exchange(
    grid: SiteGrid, study: Study, message_type: str, content: Callable[[int], RecordDict]
) -> tuple[dict[str, Message], dict[str, str]]:
    """Send one message per site; replies by site, failures with their reasons."""
    messages = [Message(content(node), node, message_type) for node in sorted(grid.sites)]
    timeout = study.federation.round_timeout
    replies, failed = {}, {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        site = grid.site_of(reply)
        if reply.has_error():
            kind = "refused" if reply.error.code == records.SITE_REFUSED else "failed"
            failed[site] = f"{kind}: {reply.error.reason}"
        else:
            replies[site] = reply
    for site in grid.sites.values():
        if site not in replies and site not in failed:
            failed[site] = f"no reply within {timeout:g} s"
    if not replies:
        reasons = "; ".join(
            f"{site}: {why.splitlines()[0]}" for site, why in sorted(failed.items())
        )
        raise StudyRunError(
            f"no site answered the {message_type} message: {reasons or 'no sites'}."
        )
    return dict(sorted(replies.items())), failed


def _run_task(
    grid: Grid,
    study: Study,
    out_dir: Path,
    *,
    kind: str,
    engine: str,
    audit_options: AuditOptions | None,
    arrays: dict[str, np.ndarray],
    work: Callable[[SiteGrid, CoordinatorAudit, dict[str, int | None]], TaskOutcome],
    site_nodes: Mapping[int, str] | None = None,
) -> TaskOutcome:
    """Discovery, ledger, the task's ``work``, its result file and the ledger's close.

    ``site_nodes`` binds a deployment's node ids to its sites, as for a study
    (:func:`~lhs_federated.apps.federation.discover_sites`).
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)  # someone else's folder: nothing written into it
    audit = CoordinatorAudit(grid, study, out_dir, audit_options or AuditOptions())
    summaries, site_grid, refused = discover_sites(audit.grid, study, site_nodes=site_nodes)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_study(study, out_dir / "study.resolved.toml")
    audit.open(
        {node: s.name for node, s in summaries.items()}, engine=engine, refused_nodes=refused
    )
    try:
        test_rows = {s.name: s.n_test for s in summaries.values()}  # as reported at discovery
        outcome = work(site_grid, audit, test_rows)
        audit.record(f"loop-{kind}", {"result": outcome.result, "failed": outcome.failed})
        (out_dir / RESULT_FILE).write_text(
            json.dumps(
                {
                    "kind": kind,
                    "study_hash": study.hash,
                    "finished_at": utc_now(),
                    "result": outcome.result,
                    "failed": outcome.failed,
                    **({} if outcome.secure_sum is None else {"secure_sum": outcome.secure_sum}),
                },
                indent=2,
                default=_plain,
            )
            + "\n",
            encoding="utf-8",
        )
        outcome.ledger = audit.finish(arrays)
        # The closing record hashes result.json; then the sites are told, and the
        # event says so (a deployed coordinator waits for it).
        report_close(out_dir, *audit.seal())
    except Exception as error:
        audit.fail(error)
        raise
    return outcome


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _clean(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def monitor_release(
    grid: Grid,
    study: Study,
    out_dir: Path,
    model: ReleasedModel,
    edges: list[np.ndarray],
    *,
    with_reference: bool = False,
    site_params: dict[str, list[float]] | None = None,
    engine: str = "inprocess",
    audit_options: AuditOptions | None = None,
    site_nodes: Mapping[int, str] | None = None,
) -> TaskOutcome:
    """Score a release and summarise the data at every site (``evaluate.monitor``).

    ``study`` selects each site's rows (its ``evaluate_periods`` are the rows
    monitored); ``with_reference`` also summarises the training rows, to build
    a release's drift reference. Under secure aggregation the summaries are
    the federation's, from one secure sum (:mod:`lhs_federated.apps.loop_secagg`),
    and the sites' metrics stay per site.
    """
    edge_counts = [len(e) for e in edges]

    def monitor_config() -> ConfigRecord:
        config = _config(study, model.standardizer)
        config.update(loop_messages.edges_to_config(edges))
        config[loop_messages.WITH_REFERENCE] = with_reference
        if site_params:
            config[loop_messages.SITE_PARAMS] = loop_messages.site_params_to_config(site_params)
        return config

    def work(
        site_grid: SiteGrid, audit: CoordinatorAudit, test_rows: dict[str, int | None]
    ) -> TaskOutcome:
        _check_secure(study, site_grid)

        def content(node: int) -> RecordDict:
            return RecordDict(
                {
                    records.ARRAYS: records.to_array_record(model.arrays),
                    records.CONFIG: monitor_config(),
                }
            )

        replies, failed = _exchange(site_grid, study, records.MONITOR, content)
        per_site: dict[str, SiteMonitoring] = {}
        for site, reply in replies.items():
            try:
                loop_messages.check_monitor_reply(reply.content, edge_counts, test_rows[site])
                per_site[site] = loop_messages.monitoring_from_record(reply.content, edge_counts)
            except (ReplyRejectedError, KeyError, ValueError, TypeError) as error:
                LOGGER.warning("%s: monitoring reply rejected: %s", site, error)
                failed[site] = f"reply rejected: {error}"
        if not per_site:
            raise StudyRunError(f"no usable monitoring reply: {failed}")
        audit.evaluated(
            0, {s: MetricReport(m.values, m.undefined) for s, m in per_site.items()}, failed
        )
        result = {
            s: {
                "values": _clean(m.values),
                "undefined": m.undefined,
                "current": [summary_to_json(c) for c in m.current or []],
                "reference": [summary_to_json(c) for c in m.reference or []],
            }
            for s, m in per_site.items()
        }
        secure = None
        if study.privacy.secure:
            secure = _secure_drift(site_grid, study, audit, monitor_config(), edge_counts,
                                   with_reference=with_reference)  # fmt: skip
        return TaskOutcome("monitor", per_site, failed, result, secure_sum=secure)

    return _run_task(
        grid, study, out_dir, kind="monitor", engine=engine, audit_options=audit_options,
        site_nodes=site_nodes, arrays=model.arrays, work=work,
    )  # fmt: skip


def _check_secure(study: Study, grid: SiteGrid) -> None:
    """Before any site works: secure sums need enough sites for the study's threshold."""
    if study.privacy.secure:
        check_secure_aggregation(study, source="the study", n_sites=len(grid.sites))


def _secure_drift(
    grid: SiteGrid,
    study: Study,
    audit: CoordinatorAudit,
    config: ConfigRecord,
    edge_counts: list[int],
    *,
    with_reference: bool,
) -> dict[str, Any]:
    """The federation's drift summaries from one secure sum, small cells of the totals withheld.

    Raises
    ------
    SecureAggregationFailed
        If fewer sites than the threshold took part.
    """
    result = secure_sum(
        grid, study, list(grid.sites), kind=loop_secagg.DRIFT, config=config,
        shapes=loop_secagg.drift_shapes(edge_counts, with_reference=with_reference),
        server_round=int(config[records.ROUND]), audit=audit,
    )  # fmt: skip
    summaries = loop_secagg.decode_drift(
        result.total, edge_counts, with_reference=with_reference,
        min_cell_size=result.min_cell_size,
    )  # fmt: skip
    return {
        "contributors": result.contributors,
        "failed": result.failed,
        "min_cell_size": result.min_cell_size,
        **{rows: [summary_to_json(c) for c in columns] for rows, columns in summaries.items()},
    }


def gate_challenger(
    grid: Grid,
    study: Study,
    out_dir: Path,
    champion: ReleasedModel,
    challenger: ReleasedModel,
    policy: GatePolicy,
    *,
    champion_params: dict[str, list[float]] | None = None,
    challenger_params: dict[str, list[float]] | None = None,
    engine: str = "inprocess",
    audit_options: AuditOptions | None = None,
    site_nodes: Mapping[int, str] | None = None,
) -> TaskOutcome:
    """Champion vs challenger at every site (``evaluate.gate``); each site's verdict."""
    arrays = {
        **{loop_messages.CHAMPION + k: v for k, v in champion.arrays.items()},
        **{loop_messages.CHALLENGER + k: v for k, v in challenger.arrays.items()},
    }

    def work(site_grid: SiteGrid, audit: CoordinatorAudit, _rows: dict) -> TaskOutcome:
        def content(node: int) -> RecordDict:
            config = _config(study, champion.standardizer)
            config.update(loop_messages.policy_to_config(policy))
            for key, params in (
                (loop_messages.CHAMPION_SITE_PARAMS, champion_params),
                (loop_messages.CHALLENGER_SITE_PARAMS, challenger_params),
            ):
                if params:
                    config[key] = loop_messages.site_params_to_config(params)
            if challenger.standardizer is not None:
                config[loop_messages.CHALLENGER_MEAN] = challenger.standardizer.mean.tolist()
                config[loop_messages.CHALLENGER_SCALE] = challenger.standardizer.scale.tolist()
            return RecordDict(
                {records.ARRAYS: records.to_array_record(arrays), records.CONFIG: config}
            )

        replies, failed = _exchange(site_grid, study, records.GATE, content)
        per_site = {}
        for site, reply in replies.items():
            champ, chall, passed, reason = loop_messages.gate_from_record(reply.content)
            per_site[site] = {
                "champion": _clean(champ), "challenger": _clean(chall),
                "passed": passed, "reason": reason,
            }  # fmt: skip
        return TaskOutcome("gate", per_site, failed, per_site)

    return _run_task(
        grid, study, out_dir, kind="gate", engine=engine, audit_options=audit_options,
        site_nodes=site_nodes, arrays=challenger.arrays, work=work,
    )  # fmt: skip


def recalibrate_release(
    grid: Grid,
    study: Study,
    out_dir: Path,
    model: ReleasedModel,
    method: Recalibration,
    *,
    per_site: bool = False,
    site_params: dict[str, list[float]] | None = None,
    engine: str = "inprocess",
    audit_options: AuditOptions | None = None,
    site_nodes: Mapping[int, str] | None = None,
) -> TaskOutcome:
    """The maximum-likelihood recalibration of a release, by federated Newton steps.

    Pooled (the default): every site's score and information are summed into
    one step, so the fit is the pooled rows' exactly. ``per_site``: each
    site's own terms give its own step (a personalised recalibration, composed
    with the site's recalibration in the release, ``site_params``). Sites
    below their minimum cell size send no terms and are left out (named in
    ``failed``). Each Newton step is one of the study's rounds (at most
    ``rounds``; it stops once a step moves no parameter by 1e-9). Under secure
    aggregation each step is one secure sum of the terms (no site's are seen;
    the total's rows must reach the minimum cell size), and ``per_site`` is
    refused: it needs each site's own terms.

    Raises
    ------
    ConfigError
        If ``per_site`` is asked under secure aggregation (nothing written).
    """
    if per_site and study.privacy.secure:
        raise ConfigError(
            "a per-site recalibration fits each site's own score and information, which "
            "secure aggregation (privacy.secure_aggregation = 'secaggplus') hides from the "
            "coordinator: recalibrate pooled (loop.update = 'in-the-large' or 'logistic'), "
            "refit, or run without secure aggregation."
        )

    def work(site_grid: SiteGrid, audit: CoordinatorAudit, _rows: dict) -> TaskOutcome:
        _check_secure(study, site_grid)
        names = sorted(site_grid.sites.values())
        current = {name: identity(method) for name in (names if per_site else ["pooled"])}
        failed: dict[str, str] = {}
        size = len(identity(method))
        arrays = records.to_array_record(model.arrays)
        rounds = 0
        while rounds < study.rounds:
            rounds += 1

            def step_config(node: int, step: int = rounds) -> ConfigRecord:
                key = site_grid.sites[node] if per_site else "pooled"
                config = _config(study, model.standardizer, step)
                config[loop_messages.METHOD] = method
                config[loop_messages.PARAMS] = [
                    float(v) for v in current.get(key, identity(method))
                ]
                if site_params:
                    config[loop_messages.SITE_PARAMS] = loop_messages.site_params_to_config(
                        site_params
                    )
                return config

            if study.privacy.secure:  # pooled: the same config for every site
                sums, failed = _secure_recalibration(
                    site_grid, study, audit, step_config(min(site_grid.sites)), arrays, size
                )
            else:

                def content(node: int, config_of=step_config) -> RecordDict:
                    return RecordDict({records.ARRAYS: arrays, records.CONFIG: config_of(node)})

                replies, failed = _exchange(site_grid, study, records.RECALIBRATE, content)
                sums = _recalibration_sums(replies, failed, size, per_site=per_site)
            if not sums:
                raise StudyRunError("no site sent recalibration terms; nothing to fit.")
            step = 0.0
            for key, (gradient, information) in sums.items():
                new = newton_step(current[key], gradient, information)
                step = max(step, float(np.max(np.abs(new - current[key]))))
                current[key] = new
            if step < 1e-9:
                break
        fitted = {k: v.tolist() for k, v in current.items() if k not in failed}
        result = {"method": method, "per_site": per_site, "params": fitted, "newton_rounds": rounds}
        return TaskOutcome("recalibrate", {}, failed, result)

    return _run_task(
        grid, study, out_dir, kind="recalibrate", engine=engine, audit_options=audit_options,
        site_nodes=site_nodes, arrays=model.arrays, work=work,
    )  # fmt: skip


def _recalibration_sums(
    replies: dict[str, Message], failed: dict[str, str], size: int, *, per_site: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The sites' score and information, summed (pooled) or by site; unusable ones failed."""
    sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for site, reply in replies.items():
        metrics = reply.content[records.METRICS]
        g = np.asarray(metrics[loop_messages.GRADIENT], float)
        h = np.asarray(metrics[loop_messages.INFORMATION], float)
        if g.shape != (size,) or h.shape != (size * size,) or not np.isfinite([*g, *h]).all():
            failed[site] = "no usable recalibration terms (withheld or malformed)"
            continue
        key = site if per_site else "pooled"
        g0, h0 = sums.get(key, (np.zeros(size), np.zeros((size, size))))
        sums[key] = (g0 + g, h0 + h.reshape(size, size))
    return sums


def _secure_recalibration(
    grid: SiteGrid,
    study: Study,
    audit: CoordinatorAudit,
    config: ConfigRecord,
    arrays: ArrayRecord,
    size: int,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """One Newton step's pooled score and information from a secure sum; who failed.

    Raises
    ------
    StudyRunError
        If the sum covers fewer rows than its minimum cell size (or too few sites).
    """
    result = secure_sum(
        grid, study, list(grid.sites), kind=loop_secagg.RECALIBRATION, config=config,
        shapes=loop_secagg.recalibration_shapes(size), server_round=int(config[records.ROUND]),
        collect_content={node: {records.ARRAYS: arrays} for node in grid.sites}, audit=audit,
    )  # fmt: skip
    gradient, information, rows = loop_secagg.decode_recalibration(result.total, size)
    if rows < result.min_cell_size:
        raise StudyRunError(
            f"the secure sum of recalibration terms covers {rows} training rows, fewer than "
            f"the minimum cell size {result.min_cell_size}; nothing to fit."
        )
    return {"pooled": (gradient, information)}, dict(result.failed)


def model_edges(model: ReleasedModel) -> list[np.ndarray]:
    """Drift bins of a model's inputs, from its training statistics."""
    study = model.study
    columns = encoded_columns(study.contract, study.preprocessing.one_hot)
    standardizer = model.standardizer
    return reference_edges(
        [c.indicator for c in columns],
        None if standardizer is None else standardizer.mean,
        None if standardizer is None else standardizer.scale,
        [(c.low, c.high) for c in columns],
    )


def run_loop_task(
    grid: Grid,
    study: Study,
    out_dir: Path,
    task: dict[str, Any],
    *,
    engine: str,
    audit_options: AuditOptions | None = None,
    site_nodes: Mapping[int, str] | None = None,
) -> TaskOutcome:
    """The loop task a run config names (``LOOP_TASK_KEY``), run on ``grid``.

    ``task`` is ``{"kind": "monitor", "model": DIR, "edges": [...] | None,
    "with_reference": bool}``, ``{"kind": "gate", "champion": DIR,
    "challenger": DIR, "policy": {...}}`` or ``{"kind": "recalibrate",
    "model": DIR, "method": ...}``; a ``DIR`` is a run folder or a release
    (``study.resolved.toml`` and ``model/``).
    """
    kind = task.get("kind")
    options = {"engine": engine, "audit_options": audit_options, "site_nodes": site_nodes}

    def params(key: str) -> dict[str, list[float]]:
        return read_site_recalibration(Path(task[key]) / "model")

    if kind == "monitor":
        model = ReleasedModel.load(task["model"])
        edges = task.get("edges")
        edges = [np.asarray(e, float) for e in edges] if edges else model_edges(model)
        return monitor_release(
            grid, study, out_dir, model, edges,
            with_reference=bool(task.get("with_reference", False)),
            site_params=params("model"), **options,
        )  # fmt: skip
    if kind == "gate":
        return gate_challenger(
            grid, study, out_dir,
            ReleasedModel.load(task["champion"]), ReleasedModel.load(task["challenger"]),
            GatePolicy(**task.get("policy", {})), champion_params=params("champion"),
            challenger_params=params("challenger"), **options,
        )  # fmt: skip
    if kind == "recalibrate":
        return recalibrate_release(
            grid, study, out_dir, ReleasedModel.load(task["model"]), task["method"],
            per_site=bool(task.get("per_site", False)), site_params=params("model"), **options,
        )  # fmt: skip
    raise StudyRunError(f"unknown loop task kind {kind!r}; kinds: monitor, gate, recalibrate.")
