"""The coordinator's run of a study on any Flower Grid.

One loop serves every engine (in-process, Ray simulation, a deployed
SuperLink). It drives the Flower strategy's own ``configure_*`` and
``aggregate_*`` methods, so sampling and aggregation stay Flower's, and adds
what a clinical study needs around them:

1. a discovery and federated-statistics round (who the sites are, their
   counts, and the column sums that give global means and scales);
2. per round: training, a check that enough sites returned an update (a
   refusal or a crash is recorded with its reason, never averaged in),
   aggregation over replies in site order (so floating-point sums are the same
   on every engine), then evaluation of the new global model at every site;
3. results written as the run goes, and a progress event after each round.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from lhs_federated.apps import records
from lhs_federated.apps.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lhs_federated.apps.client_dp import simulated_noise
from lhs_federated.apps.coordinator_audit import AuditOptions, CoordinatorAudit
from lhs_federated.apps.preflight import check_out_dir, check_sites
from lhs_federated.apps.privacy_log import PrivacyLog
from lhs_federated.apps.reply_checks import ReplyChecks, ReplyRejectedError, check_summary
from lhs_federated.apps.run_config import DEPLOYMENT
from lhs_federated.apps.secagg_round import (
    SecureAggregationFailed,
    secure_statistics,
    secure_training,
)
from lhs_federated.apps.site_grid import SiteGrid
from lhs_federated.apps.strategies import build_strategy
from lhs_federated.data.statistics import FederatedStatistics, Standardizer
from lhs_federated.errors import StudyRunError
from lhs_federated.governance.durability import batched_durability
from lhs_federated.learning.export import save_model
from lhs_federated.learning.metrics import METRIC_NAMES, MetricReport, federation_means
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.site import (
    SiteSummary,
    federated_statistics,
    min_test_cases,
    n_features,
)
from lhs_federated.privacy.distributed import noise_plan
from lhs_federated.privacy.spec import check_secure_aggregation
from lhs_federated.registry.warm_start import load_warm_start
from lhs_federated.results.notes import convergence, departures_line, preprocessing_summary
from lhs_federated.results.progress import ProgressEvent, RoundProgress, report_progress
from lhs_federated.results.writer import RunWriter, utc_now
from lhs_federated.study import Study

LOGGER = logging.getLogger("lhs_federated.federation")
#: The "site" of the federation's own rows under secure aggregation (metrics.csv,
#: rounds.csv): the coordinator knows only sums over sites.
SECURE_SUM_SITE = "secure-sum"


@dataclass
class RoundOutcome:
    """Replies of one stage, split by what happened at each site."""

    ok: list[tuple[str, Message]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_study(
    grid: Grid,
    study: Study,
    out_dir: Path,
    *,
    engine: str,
    resume: bool = False,
    audit_options: AuditOptions | None = None,
    expected_sites: int = 0,
    write_results: Callable[[Path], None] | None = None,
    site_nodes: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Run ``study`` on ``grid`` and write its results folder.

    Parameters
    ----------
    grid : Grid
        Any Flower Grid whose nodes run the lhs-federated ClientApp.
    study : Study
        The resolved study.
    out_dir : Path
        Results folder; created once the sites are known to be ready.
    engine : str
        Name of the engine, recorded in ``versions.json``.
    resume : bool
        Continue the run in ``out_dir`` from its last checkpoint.
    audit_options : AuditOptions, optional
        The coordinator's ledger key and the simulated sites' governance
        folders (default: a key made for this run, folders under the run).
    expected_sites : int
        Sites registered at the coordinator, waited for before discovery
        (0: start with those connected).
    site_nodes : mapping of int to str, optional
        A deployment's binding of node ids to the site keys in server.toml:
        only these nodes take part, each only as its own site (None: every
        connected node, as in simulation).
    write_results : callable, optional
        Writes the run's further files for readers (a simulation's analysis
        and report) once ``summary.json`` is written and before the ledger is
        sealed over every file (upper layers pass it in: they own those files).

    Returns
    -------
    dict
        The run summary (also written as ``summary.json``).

    Raises
    ------
    StudyRunError
        If sites do not connect, fail discovery, or too few return updates.
    """
    started = time.monotonic()
    random.seed(study.seed)  # Flower strategies sample sites with `random`
    checkpoint = load_checkpoint(out_dir, study) if resume else None
    if not resume:
        check_out_dir(out_dir)  # before waiting for any site
    warm = load_warm_start(study)  # an update study: a verified release, matching inputs
    audit = CoordinatorAudit(grid, study, out_dir, audit_options or AuditOptions())
    summaries, site_grid, refused = discover_sites(
        audit.grid, study, expected_sites=expected_sites, site_nodes=site_nodes
    )
    statistics = _federated_statistics(site_grid, study, summaries, audit)
    departures = [d.to_json() for d in statistics.departures] if statistics else []
    if departures:
        LOGGER.warning("%s", departures_line(departures, n_features(study)))
    if checkpoint is None:
        for warning in check_sites(study, summaries.values()):
            LOGGER.warning("preflight: %s", warning)
        standardizer = statistics.standardizer if statistics else None
        strategy = build_strategy(study, n_sites=len(summaries))
        arrays = get_arrays(build_model(study.model, n_features(study), seed=study.seed))
        if warm is not None:  # the release's weights mean nothing under other statistics
            arrays, standardizer = warm.arrays, warm.standardizer
        final_reports: dict[str, MetricReport] = {}
    else:
        standardizer, strategy = checkpoint.standardizer, checkpoint.strategy
        arrays, final_reports = checkpoint.arrays, checkpoint.reports
        random.setstate(checkpoint.random_state)
    privacy = PrivacyLog(study, strategy)
    checks = ReplyChecks.from_discovery(study, summaries.values())
    if checkpoint is not None:
        privacy.latest.update(checkpoint.privacy_spent)
    done = checkpoint.round if checkpoint else 0
    writer = RunWriter(out_dir, study, engine=engine, resume_after=done if checkpoint else None)
    try:
        audit.open(
            {node: s.name for node, s in summaries.items()},
            engine=engine,
            resumed_after=done if checkpoint else None,
            refused_nodes=refused,
        )
        writer.write_sites([_site_row(s, study.sites.min_cell_size) for s in summaries.values()])
        simulated = engine != DEPLOYMENT
        for server_round in range(done + 1, study.rounds + 1):
            # A simulation's ledgers reach the disk once a round, before its checkpoint:
            # a crash loses at most the round in progress, which resume repeats.
            with batched_durability() if simulated else nullcontext():
                arrays, final_reports = _run_round(
                    site_grid,
                    strategy,
                    study,
                    arrays,
                    standardizer,
                    server_round,
                    writer,
                    audit,
                    privacy,
                    checks,
                    simulated=simulated,
                )
            save_checkpoint(
                out_dir,
                Checkpoint(
                    study.hash, server_round, arrays, strategy, standardizer,
                    random.getstate(), final_reports, dict(privacy.latest),
                ),
            )  # fmt: skip
        model_files = save_model(out_dir / "model", study, arrays, standardizer)
        summary = _summary(
            study, summaries, final_reports, arrays, model_files, time.monotonic() - started
        )
        summary["preprocessing"] = preprocessing_summary(study, departures, n_features(study))
        summary["convergence"] = convergence(out_dir)
        if privacy.active:
            summary["privacy"] = privacy.summary()
        summary["ledger"] = audit.finish(arrays)
        writer.finish(summary)
        if write_results is not None:
            write_results(out_dir)
        report_close(out_dir, *audit.seal())
    except Exception as error:
        writer.fail(error)
        audit.fail(error)
        raise
    return summary


def report_close(out_dir: Path, notified: list[str], not_notified: dict[str, str]) -> None:
    """Log which sites hold the sealed ledger's final hash (the sealed files cannot say)."""
    for site, why in not_notified.items():
        LOGGER.warning("site %s was not told the ledger's final hash: %s", site, why)
    report_progress(
        ProgressEvent(
            "ledger-sealed",
            f"ledger sealed; final hash sent to {len(notified)} of "
            f"{len(notified) + len(not_notified)} sites",
            {"sites_notified": notified, "sites_not_notified": not_notified},
        ),
        run_dir=out_dir,
    )


def discover_sites(
    grid: Grid,
    study: Study,
    *,
    expected_sites: int = 0,
    site_nodes: Mapping[int, str] | None = None,
) -> tuple[dict[int, SiteSummary], SiteGrid, dict[int, str]]:
    """Ask every connected node who it is and for its data summary.

    Waits up to ``federation.connect_timeout`` for ``expected_sites`` nodes
    (a coordinator knows how many sites are registered; sites restarting
    after an outage reconnect within seconds), then goes on with those
    connected if they are at least ``federation.min_sites``. With
    ``site_nodes`` (a deployment), a node whose id is not bound to a site key
    in server.toml is never asked, and a bound node that claims another
    site's name is refused: both are returned with the reason, for the ledger.

    Raises
    ------
    StudyRunError
        If a site fails or refuses, if two nodes claim the same site, or if
        fewer than ``federation.min_sites`` sites answer.
    """
    federation = study.federation
    deadline = time.monotonic() + federation.connect_timeout
    needed = federation.min_sites or 1
    refused: dict[int, str] = {}

    def connected() -> list[int]:
        nodes = list(grid.get_node_ids())
        if site_nodes is None:
            return nodes
        for node in nodes:
            if node not in site_nodes:
                refused[node] = "its node id is not bound to any site key in server.toml"
        return [node for node in nodes if node in site_nodes]

    while len(node_ids := connected()) < max(needed, expected_sites):
        if time.monotonic() >= deadline:
            if len(node_ids) >= needed:
                LOGGER.warning(
                    "%d of %d registered sites connected within %g s; going on without the rest",
                    len(node_ids),
                    expected_sites,
                    federation.connect_timeout,
                )
                break
            raise StudyRunError(
                f"only {len(node_ids)} sites connected within {federation.connect_timeout:g} s; "
                f"the study needs {needed} (federation.min_sites)."
            )
        time.sleep(0.5)
    for node, reason in refused.items():
        LOGGER.warning("node %s refused: %s", node, reason)
    content = RecordDict({records.CONFIG: records.study_config(study)})
    messages = [Message(content, node_id, MessageType.QUERY) for node_id in sorted(node_ids)]
    probe = SiteGrid(grid, {})
    replies = probe.send_and_receive(messages, timeout=federation.round_timeout)
    errors, summaries = [], {}
    for reply in replies:
        node = probe.node_of(reply)
        if reply.has_error():
            errors.append(f"node {node}: {reply.error.reason}")
            continue
        try:
            summary = records.summary_from_record(reply.content)
            check_summary(summary, n_features(study))
        except (ReplyRejectedError, KeyError, TypeError, ValueError) as rejected:
            refused[node] = f"discovery reply rejected: {rejected}"
            LOGGER.warning("node %s refused: %s", node, refused[node])
            continue
        if site_nodes is not None and summary.name != site_nodes[node]:
            refused[node] = (
                f"it claims to be site {summary.name!r}, but its key is {site_nodes[node]!r}'s"
            )
            LOGGER.warning("node %s refused: %s", node, refused[node])
            continue
        summaries[node] = summary
    answered = {probe.node_of(r) for r in replies}
    errors += [
        f"node {n}: no reply within {federation.round_timeout:g} s"
        for n in node_ids
        if n not in answered
    ]
    if errors:
        raise StudyRunError("sites could not join the study: " + "; ".join(errors))
    names = [s.name for s in summaries.values()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StudyRunError(
            f"two nodes claim to be site(s) {', '.join(twice)}; each site runs one node."
        )
    if len(summaries) < needed:
        raise StudyRunError(
            f"only {len(summaries)} sites joined; the study needs {needed} "
            f"(federation.min_sites). Refused: "
            + "; ".join(f"node {n}: {why}" for n, why in refused.items())
        )
    ordered = dict(sorted(summaries.items(), key=lambda item: item[1].name))
    return ordered, SiteGrid(grid, {node: s.name for node, s in ordered.items()}), refused


def _federated_statistics(
    grid: SiteGrid, study: Study, summaries: dict[int, SiteSummary], audit: CoordinatorAudit
) -> FederatedStatistics | None:
    """The federation's preprocessing statistics: from each site's sums, or their secure sum.

    Under secure aggregation the sites' column sums arrive only as one total
    (small cells withheld from the total), which stands for every site.

    Raises
    ------
    ConfigError
        If secure aggregation cannot work with the sites that joined.
    """
    if not study.privacy.secure:
        return federated_statistics(study, summaries.values())
    check_secure_aggregation(study, source="the study", n_sites=len(summaries))
    if study.preprocessing.scaling != "federated":
        return None
    total, _ = secure_statistics(grid, study, n_features(study), audit=audit)
    return federated_statistics(
        study, [SiteSummary(SECURE_SUM_SITE, None, None, None, None, total)]
    )


def _round_config(study: Study, standardizer: Standardizer | None) -> ConfigRecord:
    config = records.study_config(study)
    if standardizer is not None:
        config.update(records.standardizer_to_config(standardizer))
    return config


def _collect(
    grid: SiteGrid,
    messages: list[Message],
    replies: list[Message],
    timeout: float,
    check: Callable[[str, Message], None],
) -> RoundOutcome:
    """Split replies into those to aggregate and failures with their reasons.

    A reply that fails ``check`` (see :mod:`lhs_federated.apps.reply_checks`)
    is a failure of its site, never averaged in.
    """
    outcome = RoundOutcome()
    for reply in replies:
        site = grid.site_of(reply)
        if reply.has_error():
            kind = "refused" if reply.error.code == records.SITE_REFUSED else "failed"
            outcome.failed[site] = f"{kind}: {reply.error.reason}"
            continue
        try:
            check(site, reply)
        except ReplyRejectedError as rejected:
            LOGGER.warning("%s: reply rejected: %s", site, rejected)
            outcome.failed[site] = f"reply rejected: {rejected}"
        else:
            outcome.ok.append((site, reply))
    answered = {grid.node_of(r) for r in replies}
    for message in messages:
        if message.metadata.dst_node_id not in answered:
            outcome.failed[grid.sites[message.metadata.dst_node_id]] = (
                f"no reply within {timeout:g} s"
            )
    outcome.ok.sort(key=lambda item: item[0])
    return outcome


def _run_round(
    grid: SiteGrid,
    strategy: Strategy,
    study: Study,
    arrays: dict[str, np.ndarray],
    standardizer: Standardizer | None,
    server_round: int,
    writer: RunWriter,
    audit: CoordinatorAudit,
    privacy: PrivacyLog,
    checks: ReplyChecks,
    *,
    simulated: bool,
) -> tuple[dict[str, np.ndarray], dict[str, MetricReport]]:
    started = time.monotonic()
    federation = study.federation
    needed = min(federation.min_sites or len(grid.sites), len(grid.sites))
    timeout = federation.round_timeout

    connected = grid.wait_for_sites(
        needed, timeout=federation.connect_timeout, stage=f"round {server_round}"
    )
    if study.privacy.secure:
        trained, sampled, new_arrays, train_metrics = _secure_train(
            grid,
            strategy,
            study,
            arrays,
            standardizer,
            server_round,
            audit,
            checks,
            writer,
            started,
        )
    else:
        trained, sampled, new_arrays, train_metrics = _plain_train(
            grid, strategy, study, arrays, standardizer, server_round, checks, simulated, needed
        )
    for node, site in grid.sites.items():
        if node not in connected:
            trained.failed[site] = "not connected"
    if len(trained.ok) < needed:
        failures = (
            "; ".join(f"{site}: {why.rstrip('.')}" for site, why in trained.failed.items())
            or "none"
        )
        raise StudyRunError(
            f"round {server_round}: {len(trained.ok)} of {sampled} sites returned a "
            f"training update; the study needs {needed} (federation.min_sites). "
            f"Failures: {failures}."
        )
    if new_arrays is not None:
        arrays = records.from_array_record(new_arrays)
        if not all(np.isfinite(value).all() for value in arrays.values()):
            raise StudyRunError(
                f"round {server_round}: the aggregated model holds NaN or infinite values "
                f"({study.strategy.name}); lower the strategy's server learning rate."
            )
    audit.aggregated(
        server_round, arrays, train_metrics, [s for s, _ in trained.ok], trained.failed
    )
    rows: list[tuple[int, str, str, str, float, str]] = []
    train_metrics_of = (
        [(SECURE_SUM_SITE, train_metrics)] if study.privacy.secure and train_metrics else []
    )
    if not study.privacy.secure:
        train_metrics_of = [(site, reply.content[records.METRICS]) for site, reply in trained.ok]
    for site, metrics in train_metrics_of:
        rows.append((server_round, site, "train", "n", float(metrics[records.NUM_EXAMPLES]), ""))
        loss = float(metrics[records.TRAIN_LOSS])
        withheld = (
            "withheld: outside the sample-level DP guarantee"
            if study.privacy.sample_dp
            else "withheld: outside the distributed DP guarantee"
            if study.privacy.distributed_dp
            else ""
        )
        rows.append((server_round, site, "train", "loss", math.nan if withheld else loss, withheld))
    rows += privacy.round_rows(server_round, trained.ok)

    grid.wait_for_sites(
        needed, timeout=federation.connect_timeout, stage=f"round {server_round} evaluation"
    )
    messages = list(
        strategy.configure_evaluate(
            server_round, records.to_array_record(arrays), _round_config(study, standardizer), grid
        )
    )
    evaluated = _collect(
        grid,
        messages,
        list(grid.send_and_receive(messages, timeout=timeout)),
        timeout,
        lambda site, reply: checks.evaluate(site, reply.content),
    )
    if evaluated.ok:
        strategy.aggregate_evaluate(server_round, [reply for _, reply in evaluated.ok])
    reports = {site: records.report_from_record(reply.content) for site, reply in evaluated.ok}
    audit.evaluated(server_round, reports, evaluated.failed)
    for site, report in reports.items():
        for metric in METRIC_NAMES:
            rows.append(
                (
                    server_round,
                    site,
                    "test",
                    metric,
                    report.values.get(metric, float("nan")),
                    report.undefined.get(metric, ""),
                )
            )
    writer.add_metrics(rows)
    failed = {**{s: f"evaluation {w}" for s, w in evaluated.failed.items()}, **trained.failed}
    mean_auroc = federation_means(reports, min_cases=min_test_cases(study)).mean["auroc"]
    writer.add_round(
        server_round, time.monotonic() - started, [s for s, _ in trained.ok], failed, mean_auroc
    )
    report_progress(
        RoundProgress(
            study=study.name,
            round=server_round,
            rounds=study.rounds,
            sites_done=len(trained.ok),
            sites_total=len(grid.sites),
            mean_auroc=mean_auroc,
            failed=failed,
        ),
        run_dir=writer.out_dir,
    )
    return arrays, reports


def _plain_train(
    grid: SiteGrid,
    strategy: Strategy,
    study: Study,
    arrays: dict[str, np.ndarray],
    standardizer: Standardizer | None,
    server_round: int,
    checks: ReplyChecks,
    simulated: bool,
    needed: int,
) -> tuple[RoundOutcome, int, Any, Any]:
    """Send the train messages, check each reply alone, aggregate at least ``needed``."""
    timeout = study.federation.round_timeout
    messages = list(
        strategy.configure_train(
            server_round, records.to_array_record(arrays), _round_config(study, standardizer), grid
        )
    )
    sent = {m.metadata.dst_node_id: m.content[records.ARRAYS] for m in messages}
    trained = _collect(
        grid,
        messages,
        list(grid.send_and_receive(messages, timeout=timeout)),
        timeout,
        lambda site, reply: checks.train(site, reply.content, sent[grid.node_of(reply)]),
    )
    if len(trained.ok) < needed:
        return trained, len(messages), None, None  # the caller names the failures
    with simulated_noise(study, server_round, simulated=simulated):  # client-dp's noise
        new_arrays, metrics = strategy.aggregate_train(server_round, [r for _, r in trained.ok])
    return trained, len(messages), new_arrays, metrics


def _secure_train(
    grid: SiteGrid,
    strategy: Strategy,
    study: Study,
    arrays: dict[str, np.ndarray],
    standardizer: Standardizer | None,
    server_round: int,
    audit: CoordinatorAudit,
    checks: ReplyChecks,
    writer: RunWriter,
    started: float,
) -> tuple[RoundOutcome, int, Any, Any]:
    """A training round through SecAgg+; a failure is written to rounds.csv, then ends the run.

    Under distributed-dp the round's config carries the noise plan, which each
    site checks against the study it approved.
    """
    config = _round_config(study, standardizer)
    if study.privacy.distributed_dp:
        config.update(noise_plan(study).to_config())
    try:
        result, new_arrays, metrics = secure_training(
            grid,
            strategy,
            study,
            arrays,
            config,
            server_round,
            train_rows=sum(n for n in checks.train_rows.values() if n is not None),
            audit=audit,
        )
    except SecureAggregationFailed as failure:
        failed = {**failure.failed, SECURE_SUM_SITE: failure.message}
        writer.add_round(server_round, time.monotonic() - started, [], failed, math.nan)
        raise StudyRunError(f"round {server_round}: {failure.message}") from failure
    outcome = RoundOutcome(ok=result.replies, failed=result.failed)
    return outcome, len(result.contributors) + len(result.failed), new_arrays, metrics


def _not_scored(
    summaries: Iterable[SiteSummary], reports: dict[str, MetricReport]
) -> dict[str, str]:
    """Sites without a final evaluation, and why, for the list of sites left out of means."""
    return {
        s.name: "fewer test rows than its minimum cell size (withheld)"
        if s.n_test is None
        else "no evaluation in the final round (see rounds.csv)"
        for s in summaries
        if s.name not in reports
    }


def _site_row(summary: SiteSummary, min_cell_size: int) -> dict[str, Any]:
    def shown(value: int | None) -> Any:
        return f"<{min_cell_size}" if value is None else value

    return {
        "site": summary.name,
        "n_train": shown(summary.n_train),
        "n_test": shown(summary.n_test),
        "positives_train": shown(summary.positives_train),
        "positives_test": shown(summary.positives_test),
    }


def _summary(
    study: Study,
    summaries: dict[int, SiteSummary],
    reports: dict[str, MetricReport],
    arrays: dict[str, np.ndarray],
    model_files: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    sites = list(reports)
    means = federation_means(reports, min_cases=min_test_cases(study))

    def clean(value: float) -> float | None:
        return None if np.isnan(value) else value

    return {
        "study": study.name,
        "study_hash": study.hash,
        "status": "completed",
        "finished_at": utc_now(),
        "seconds": round(seconds, 3),
        "rounds": study.rounds,
        "sites": [s.name for s in summaries.values()],
        "final": {
            "per_site": {s: {m: clean(v) for m, v in reports[s].values.items()} for s in sites},
            "undefined": {s: reports[s].undefined for s in sites if reports[s].undefined},
            "mean": {m: clean(v) for m, v in means.mean.items()},
            "weighted_mean": {m: clean(v) for m, v in means.weighted_mean.items()},
            "counted_sites": list(means.counted),
            "left_out": {**means.left_out, **_not_scored(summaries.values(), reports)},
            "mean_definition": means.definition,
        },
        "model": {"arrays_sha256": records.hash_arrays(arrays), "files": model_files},
    }
