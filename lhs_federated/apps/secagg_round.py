"""SecAgg+ at the coordinator: the four stages through the Grid, and what the sum gives.

:func:`secure_sum` drives one protocol instance over a list of nodes (setup,
share keys, collect masked vectors, unmask) with plain Grid messages, so it runs
the same in-process, on Ray and deployed, and every stage's messages pass the
audited grid (the coordinator's ledger records each reply's digest, which
``lhs-fed audit crosscheck`` matches with the sites' ledgers). A site that
fails or does not answer a stage is dropped from the later ones; one that drops
after sharing its keys is recovered from the others' shares. When fewer than
the threshold remain, :class:`SecureAggregationFailed` says at which stage and
who failed why.

On top of it, :func:`secure_training` runs a training round of a FedAvg-family
strategy (the strategy samples and configures; its ``aggregate_train`` receives
one reply holding the securely averaged model), and :func:`secure_statistics`
the federated statistics, with the minimum cell size applied to the total.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from lhs_federated.apps import records
from lhs_federated.apps.coordinator_audit import CoordinatorAudit
from lhs_federated.apps.secagg import MODULUS, SecAggError, neighbours, sum_masked, unmask_sum
from lhs_federated.apps.secagg_messages import MIN_CELL_SIZE, MODEL, STATISTICS
from lhs_federated.apps.secagg_payloads import (
    Quantiser,
    decode_statistics,
    decode_update,
    statistics_shapes,
    update_shapes,
)
from lhs_federated.apps.site_grid import SiteGrid
from lhs_federated.data.statistics import ColumnSums
from lhs_federated.errors import StudyRunError
from lhs_federated.governance.durability import batched_durability
from lhs_federated.study import Study


class SecureAggregationFailed(StudyRunError):  # noqa: N818 - a failed round, named as such
    """Too few sites remained for a secure sum; ``failed`` says who and why."""

    def __init__(self, message: str, failed: Mapping[str, str]) -> None:
        super().__init__(message)
        self.failed = dict(failed)


@dataclass
class SecureSum:
    """The decoded sum and who is in it.

    Attributes
    ----------
    total : dict of str to ndarray
        The sum of the contributors' integer vectors.
    contributors : list of str
        Sites whose masked vectors are in the sum.
    failed : dict of str to str
        Sites that failed a stage, with the stage and reason.
    replies : list of (str, Message)
        The contributors' masked-vector replies (their other records, such
        as a sample-dp epsilon, are read from these).
    min_cell_size : int
        The largest minimum cell size of the study and of the contributors
        (each declares its own at setup): the rule for the sum's totals.
    """

    total: dict[str, np.ndarray]
    contributors: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    replies: list[tuple[str, Message]] = field(default_factory=list)
    min_cell_size: int = 1


# One durability block for the whole sum (see batched_durability): its four stages
# are one unit that a resumed run repeats (keys and shares live only in memory), so
# their ledger records reach the disk with one sync instead of one or more per stage.
@batched_durability()
def secure_sum(
    grid: SiteGrid,
    study: Study,
    nodes: list[int],
    *,
    kind: str,
    config: ConfigRecord,
    shapes: Mapping[str, tuple[int, ...]],
    server_round: int,
    collect_content: Mapping[int, RecordDict] | None = None,
    audit: CoordinatorAudit | None = None,
) -> SecureSum:
    """Run SecAgg+ over ``nodes`` and return the sum of their vectors of ``shapes``.

    ``config`` is the round's config (study, round, preprocessing);
    ``collect_content`` the extra records each node's collect message carries
    (the strategy's train message: arrays and its config).

    Raises
    ------
    SecureAggregationFailed
        If fewer sites than the threshold remain at any stage.
    """
    spec = study.privacy.secagg
    timeout = study.federation.round_timeout
    threshold = spec.threshold_for(len(nodes))
    order = sorted(nodes, key=grid.sites.__getitem__)
    # A sparse graph drawn from the OS, fresh each sum: colluders chosen from the
    # study's seed could otherwise be a target's neighbours (the sum is the same).
    random.SystemRandom().shuffle(order)
    graph = neighbours(order, spec.shares_for(len(nodes)))
    failed: dict[int, str] = {}

    def exchange(stage: str, message_type: str, inputs: dict[int, dict]) -> dict[int, Message]:
        messages = []
        for node, values in inputs.items():
            content = RecordDict(
                {
                    **(collect_content or {}).get(node, {}),
                    records.CONFIG: ConfigRecord(dict(config)),
                    records.SECAGG: ConfigRecord({"kind": kind, **values}),
                }
            )
            messages.append(Message(content, node, message_type))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        ok = {}
        for reply in replies:
            node = grid.node_of(reply)
            if reply.has_error():
                failed[node] = f"{stage}: {reply.error.reason}"
            else:
                ok[node] = reply
        for node in inputs:
            if node not in ok and node not in failed:
                failed[node] = f"{stage}: no reply within {timeout:g} s"
        if len(ok) < threshold:
            raise _failure(grid, stage, len(ok), threshold, failed)
        return ok

    keys, cell_sizes = {}, {}
    for node, reply in exchange("setup", records.SECAGG_SETUP, {n: {} for n in order}).items():
        record = reply.content[records.SECAGG]
        keys[node] = (bytes(record["pk1"]), bytes(record["pk2"]))
        cell_sizes[node] = int(record.get(MIN_CELL_SIZE, 0))
    shown = {n: [m for m in graph[n] if m in keys] for n in keys}
    share_inputs = {
        n: {
            "nodes": shown[n],
            "pk1": [keys[m][0] for m in shown[n]],
            "pk2": [keys[m][1] for m in shown[n]],
        }
        for n in keys
    }
    outbox: dict[int, dict[int, bytes]] = {}
    for node, reply in exchange("share keys", records.SECAGG_SHARE, share_inputs).items():
        record = reply.content[records.SECAGG]
        destinations = [int(d) for d in record["destinations"]]
        if sorted(destinations) != sorted(m for m in shown[node] if m != node):
            failed[node] = (
                "share keys: its shares were not addressed to the neighbours it was shown"
            )
            continue
        outbox[node] = dict(zip(destinations, record["ciphertexts"], strict=True))
    sources = {n: sorted(s for s in outbox if n in outbox[s]) for n in outbox}
    collect_inputs = {
        n: {"sources": sources[n], "ciphertexts": [outbox[s][n] for s in sources[n]]}
        for n in outbox
    }
    message_type = (
        records.SECAGG_COLLECT_UPDATE if kind == MODEL else records.SECAGG_COLLECT_STATISTICS
    )
    masked, replies = {}, []
    for node, reply in exchange("collect masked vectors", message_type, collect_inputs).items():
        problem = _masked_problem(reply, shapes)
        if problem:
            failed[node] = f"collect masked vectors: reply rejected: {problem}"
            continue
        masked[node] = records.from_array_record(reply.content[records.MASKED])
        replies.append((grid.sites[node], reply))
    survivors = set(masked)
    if len(survivors) < threshold:
        raise _failure(grid, "collect masked vectors", len(survivors), threshold, failed)
    dropped = set(outbox) - survivors
    unmask_inputs = {
        n: {
            "active": [m for m in [*sources[n], n] if m in survivors],
            "dropped": [m for m in sources[n] if m in dropped],
        }
        for n in sorted(survivors)
    }
    shares: dict[int, list[bytes]] = {}
    for node, reply in exchange("unmask", records.SECAGG_UNMASK, unmask_inputs).items():
        record = reply.content[records.SECAGG]
        held = set(unmask_inputs[node]["active"]) | set(unmask_inputs[node]["dropped"])
        for owner, share in zip(record["nodes"], record["shares"], strict=True):
            if int(owner) in held:
                shares.setdefault(int(owner), []).append(bytes(share))
    try:
        total = unmask_sum(
            sum_masked(masked.values()),
            survivors=survivors,
            dropped=dropped,
            shares=shares,
            public_keys=keys,
            neighbourhood={d: [n for n in survivors if d in sources[n]] for d in dropped},
            threshold=threshold,
        )
    except SecAggError as error:
        raise _failure(
            grid, "unmask", len(survivors), threshold, failed, detail=str(error)
        ) from error
    result = SecureSum(
        total,
        sorted(grid.sites[n] for n in survivors),
        {grid.sites[n]: why for n, why in failed.items()},
        sorted(replies, key=lambda item: item[0]),
        max(study.sites.min_cell_size, *(cell_sizes[n] for n in survivors)),
    )
    if audit is not None:
        audit.record(
            "secure-aggregation",
            {
                "round": server_round,
                "kind": kind,
                "protocol": "secaggplus",
                "num_shares": spec.shares_for(len(nodes)),
                "threshold": threshold,
                "sites": sorted(grid.sites[n] for n in nodes),
                "contributors": result.contributors,
                "recovered_after_dropout": sorted(grid.sites[n] for n in dropped),
                "failed": result.failed,
                "min_cell_size": result.min_cell_size,
            },
        )
    return result


def _failure(
    grid: SiteGrid,
    stage: str,
    left: int,
    threshold: int,
    failed: Mapping[int, str],
    *,
    detail: str = "",
) -> SecureAggregationFailed:
    named = {grid.sites.get(n, f"node-{n}"): why for n, why in failed.items()}
    reasons = (
        "; ".join(f"{site}: {why.rstrip('.')}" for site, why in sorted(named.items())) or "none"
    )
    return SecureAggregationFailed(
        f"secure aggregation failed at the {stage} stage: {left} sites remained, fewer than "
        f"the threshold of {threshold} (privacy.secagg.reconstruction_threshold)"
        f"{' (' + detail + ')' if detail else ''}. Failures: {reasons}.",
        named,
    )


def _masked_problem(reply: Message, shapes: Mapping[str, tuple[int, ...]]) -> str:
    masked = reply.content.get(records.MASKED)
    if not isinstance(masked, ArrayRecord):
        return "no masked vector"
    got = {name: (tuple(a.shape), str(a.dtype)) for name, a in masked.items()}
    if got != {name: (tuple(shape), "int64") for name, shape in shapes.items()}:
        return f"masked vector {sorted(got)} differs from the declared names and shapes"
    for name, array in masked.items():
        values = array.numpy()
        if values.size and (values.min() < 0 or values.max() >= MODULUS):
            return f"masked values of {name!r} outside [0, 2**62)"
    return ""


def secure_training(
    grid: SiteGrid,
    strategy: Strategy,
    study: Study,
    arrays: dict[str, np.ndarray],
    config: ConfigRecord,
    server_round: int,
    *,
    train_rows: int,
    audit: CoordinatorAudit | None = None,
) -> tuple[SecureSum, ArrayRecord | None, MetricRecord]:
    """A training round through SecAgg+: the strategy's sample, its aggregate of the secure mean.

    The sites' example-weighted mean update is added to ``arrays`` and handed to
    ``strategy.aggregate_train`` as a single reply weighing all the rows, so
    FedAvg returns it and server optimisers (FedAdam, FedAvgM, ...) take their
    step from it. ``train_rows`` (the rows the sites reported at discovery)
    bounds the summed weight: a larger sum means a site overstated its rows.

    Raises
    ------
    SecureAggregationFailed
        If too few sites remain, or the summed weight is impossible.
    """
    messages = list(
        strategy.configure_train(server_round, records.to_array_record(arrays), config, grid)
    )
    nodes = [m.metadata.dst_node_id for m in messages]
    content = {
        m.metadata.dst_node_id: {k: v for k, v in m.content.items() if k != records.CONFIG}
        for m in messages
    }
    quantiser = Quantiser(
        study.privacy.secagg.clipping_range, study.privacy.secagg.quantization_range
    )
    shapes = update_shapes({name: value.shape for name, value in arrays.items()})
    result = secure_sum(
        grid, study, nodes, kind=MODEL, config=config, shapes=shapes,
        server_round=server_round, collect_content=content, audit=audit,
    )  # fmt: skip
    mean, weight, loss = decode_update(result.total, quantiser)
    if weight > train_rows:
        raise SecureAggregationFailed(
            f"the secure sum weighs {weight} training rows, more than the {train_rows} the "
            "sites reported at discovery: a site overstated its rows",
            result.failed,
        )
    averaged = {
        name: (arrays[name].astype(np.float64) + mean[name]).astype(arrays[name].dtype)
        for name in arrays
    }
    reply_metrics = MetricRecord({records.NUM_EXAMPLES: weight, records.TRAIN_LOSS: loss})
    reply = Message(
        RecordDict(
            {records.ARRAYS: records.to_array_record(averaged), records.METRICS: reply_metrics}
        ),
        reply_to=result.replies[0][1],
    )
    new_arrays, metrics = strategy.aggregate_train(server_round, [reply])
    return result, new_arrays, MetricRecord({**reply_metrics, **(metrics or {})})


def secure_statistics(
    grid: SiteGrid, study: Study, width: int, *, audit: CoordinatorAudit | None = None
) -> tuple[ColumnSums, SecureSum]:
    """The federation's column sums through SecAgg+, small cells withheld from the total.

    The minimum cell size (the largest of the study's and the sites' own)
    applies to the total over sites: a column observed in fewer people, or an
    indicator with fewer ones or zeros, across all sites is withheld, and no
    site's own small column biases the statistics.
    """
    config = records.study_config(study)
    result = secure_sum(
        grid, study, list(grid.sites), kind=STATISTICS, config=config,
        shapes=statistics_shapes(width), server_round=0, audit=audit,
    )  # fmt: skip
    total = decode_statistics(result.total).suppress_small_cells(result.min_cell_size)
    return total, result
