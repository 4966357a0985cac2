"""SecAgg+ at a site: the four stages as ClientApp handlers, and their egress guards.

Each stage is its own message type (names in :mod:`lhs_federated.apps.records`),
so the site's governance approves, and its ledger records, every stage like any
other message, and the egress guard lets out only the stage's declared records:

- ``query.secagg_setup``: the site makes fresh key pairs; reply: two public keys;
- ``query.secagg_share``: the neighbours' public keys in; reply: one encrypted
  pair of shares (self-mask seed, mask key) per neighbour;
- ``train.secagg_collect`` (a training round: the site trains first, as for a
  plain ``train`` message) or ``query.secagg_collect`` (the federated
  statistics): the shares addressed to the site in; reply: the masked vector
  (int64 arrays of the declared names and shapes, nothing else);
- ``query.secagg_unmask``: who survived and who dropped; reply: the site's
  shares of the survivors' seeds and of the dropped sites' mask keys.

The site keeps its keys and the shares it holds in its node state (never sent),
takes the threshold from the approved study, refuses stages out of order, and
takes part in one sum of the statistics per run and one per training round: a
coordinator that asked again with other sites dropped could subtract sums.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lhs_federated.apps import records
from lhs_federated.apps.client_site import SITE_CONFIG, resolve_site
from lhs_federated.apps.loop_secagg import SITE_VECTORS, declared_loop_shapes, is_loop_vector
from lhs_federated.apps.secagg import (
    MODULUS,
    SecAggError,
    SharedKeys,
    SiteKeys,
    mask_vector,
    receive_shares,
    share_keys,
    unmask_shares,
)
from lhs_federated.apps.secagg_payloads import (
    Quantiser,
    encode_statistics,
    encode_update,
    statistics_shapes,
    update_shapes,
)
from lhs_federated.data.statistics import ColumnSums
from lhs_federated.errors import SiteRefusal
from lhs_federated.learning.parameters import change_from
from lhs_federated.learning.site import n_features
from lhs_federated.learning.training import LocalUpdate
from lhs_federated.privacy.distributed import plan_problem
from lhs_federated.privacy.egress import (
    EgressBlocked,
    Problem,
    metric_problems,
    model_array_specs,
)
from lhs_federated.privacy.site_round import SiteRound, noised_round
from lhs_federated.study import Study

STATE_KEY = "lhs-secagg"
#: The setup reply's key for the site's own minimum cell size, applied to the sums' totals.
MIN_CELL_SIZE = "min-cell-size"
STAGES = ("setup", "share", "collect", "unmask")
MODEL, STATISTICS = "model", "statistics"
#: Upper bounds on what one stage may carry per item (PEM keys, Fernet tokens, shares).
MAX_KEY_BYTES, MAX_CIPHERTEXT_BYTES, MAX_SHARE_BYTES = 512, 2048, 1024

LocalRound = Callable[[Message, Context, dict[str, np.ndarray]], SiteRound]


@dataclass
class SiteState:
    """One site's part of the current protocol instance (kept in the node state)."""

    kind: str = ""
    round: int = -1
    stage: str = "unmask"
    keys: list[bytes] = field(default_factory=list)  # secret1, pk1, sk2, pk2
    seed: bytes = b""
    nodes: list[int] = field(default_factory=list)  # neighbours shown at share, self included
    others: list[int] = field(default_factory=list)  # the neighbours but the site itself
    channel: list[bytes] = field(default_factory=list)  # per node of `others`
    pairwise: list[bytes] = field(default_factory=list)
    held: list[int] = field(default_factory=list)  # whose shares the site holds
    held_b: list[bytes] = field(default_factory=list)
    held_sk: list[bytes] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # sums the site took part in

    @classmethod
    def load(cls, context: Context) -> SiteState:
        """The state in the node's context (a fresh one at a run's first stage)."""
        stored = context.state.config_records.get(STATE_KEY)
        return cls(**dict(stored)) if stored is not None else cls()

    def save(self, context: Context) -> None:
        """Write the state back into the node's context."""
        # A shallow copy: asdict's deep copy of the held shares cost milliseconds per stage.
        context.state.config_records[STATE_KEY] = ConfigRecord(dict(vars(self)))

    @property
    def site_keys(self) -> SiteKeys:
        """The key pairs made at setup."""
        return SiteKeys(*self.keys)

    @property
    def shared(self) -> SharedKeys:
        """The keys agreed with each neighbour at the share stage."""
        return SharedKeys(
            dict(zip(self.others, self.channel, strict=True)),
            dict(zip(self.others, self.pairwise, strict=True)),
        )


def _advance(state: SiteState, site: str, kind: str, server_round: int, stage: str) -> None:
    """Refuse a stage out of order, of another sum, or of a sum already taken part in."""
    tag = f"{kind}:{server_round}"
    if stage == "setup":
        if tag in state.done:
            raise SiteRefusal(
                site,
                f"it took part in the secure sum of {kind} round {server_round} already; a "
                "second sum over other sites would let the coordinator subtract the two",
            )
    elif (state.kind, state.round, state.stage) != (
        kind,
        server_round,
        STAGES[STAGES.index(stage) - 1],
    ):
        raise SiteRefusal(
            site,
            f"secure aggregation stage {stage!r} of {kind} round {server_round} came after "
            f"{state.stage!r} of {state.kind or 'no'} round {state.round}; stages run "
            f"{' -> '.join(STAGES)}",
        )
    state.kind, state.round, state.stage = kind, server_round, stage


def _threshold(study: Study, neighbours: int) -> int:
    spec = study.privacy.secagg
    return max(2, spec.reconstruction_threshold or neighbours // 2 + 1)


def _reply(message: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=message)


def _stage(
    message: Message, context: Context, stage: str
) -> tuple[SiteState, str, Study, ConfigRecord, int]:
    """The site's state advanced to ``stage``, its name, the study, the stage's inputs, its node."""
    config = message.content[records.CONFIG]
    inputs = message.content[records.SECAGG]
    study = records.study_from_config(config)
    site = resolve_site(study, context).data.name
    if not study.privacy.secure:
        raise SiteRefusal(
            site, "the study does not use secure aggregation (privacy.secure_aggregation = 'none')"
        )
    state = SiteState.load(context)
    _advance(state, site, str(inputs["kind"]), int(config.get(records.ROUND, 0)), stage)
    return state, site, study, inputs, message.metadata.dst_node_id


def setup(message: Message, context: Context) -> Message:
    """Stage 1: fresh key pairs; reply with the public halves and the site's minimum cell size.

    The coordinator applies the largest minimum cell size of the study and of
    every site in a sum to its totals (a site's own stricter rule cannot be
    applied to its hidden values).
    """
    state, _, study, _, _ = _stage(message, context, "setup")
    keys = SiteKeys.generate()
    state.keys = [keys.secret1, keys.pk1, keys.sk2, keys.pk2]
    state.nodes, state.others, state.channel, state.pairwise = [], [], [], []
    state.held, state.held_b, state.held_sk = [], [], []
    state.save(context)
    return _reply(
        message,
        RecordDict(
            {
                records.SECAGG: ConfigRecord(
                    {
                        "pk1": keys.pk1,
                        "pk2": keys.pk2,
                        MIN_CELL_SIZE: resolve_site(study, context).min_cell_size,
                    }
                )
            }
        ),
    )


def share(message: Message, context: Context) -> Message:
    """Stage 2: shares of the self-mask seed and mask key, one encrypted pair per neighbour."""
    state, site, study, inputs, node = _stage(message, context, "share")
    nodes = [int(n) for n in inputs["nodes"]]
    public = dict(zip(nodes, zip(inputs["pk1"], inputs["pk2"], strict=True), strict=True))
    spec = study.privacy.secagg
    if len(nodes) < 3 or (spec.num_shares and len(nodes) > spec.num_shares):
        raise SiteRefusal(
            site,
            f"the coordinator showed {len(nodes)} neighbours; the study's secure aggregation "
            f"needs 3 to {spec.num_shares or 'all the'} sites (privacy.secagg.num_shares)",
        )
    try:
        seed, ciphertexts, own, shared = share_keys(
            node, state.site_keys, public, threshold=_threshold(study, len(nodes))
        )
    except SecAggError as error:
        raise SiteRefusal(site, f"secure aggregation: {error}") from error
    state.nodes, state.others = list(public), list(shared.channel)
    state.channel = [shared.channel[n] for n in state.others]
    state.pairwise = [shared.pairwise[n] for n in state.others]
    state.seed = seed
    state.held, state.held_b, state.held_sk = [node], [own[node][0]], [own[node][1]]
    state.save(context)
    content = ConfigRecord(
        {"destinations": list(ciphertexts), "ciphertexts": list(ciphertexts.values())}
    )
    return _reply(message, RecordDict({records.SECAGG: content}))


def _masked(context: Context, state: SiteState, node: int, vector: dict) -> ArrayRecord:
    """The masked vector; the sum is marked as taken part in, so it is never given twice."""
    masked = mask_vector(
        node,
        vector,
        seed=state.seed,
        pairwise=state.shared.pairwise,
        alive=state.held,
    )
    state.done.append(f"{state.kind}:{state.round}")
    state.save(context)
    return records.to_array_record(masked)


def _receive(state: SiteState, site: str, study: Study, inputs: ConfigRecord, node: int) -> None:
    sources = [int(n) for n in inputs["sources"]]
    try:
        shares = receive_shares(
            node, state.shared.channel, dict(zip(sources, inputs["ciphertexts"], strict=True))
        )
    except SecAggError as error:
        raise SiteRefusal(site, f"secure aggregation: {error}") from error
    threshold = _threshold(study, len(state.nodes))
    if len(shares) + 1 < threshold:
        raise SiteRefusal(
            site,
            f"secure aggregation: shares of {len(shares)} other sites arrived; its sum must "
            f"hide it among at least {threshold} sites (privacy.secagg.reconstruction_threshold)",
        )
    for source, (b_share, sk_share) in sorted(shares.items()):
        state.held.append(source)
        state.held_b.append(b_share)
        state.held_sk.append(sk_share)


def make_collect_update(local_round: LocalRound) -> Callable[[Message, Context], Message]:
    """Stage 3 of a training round: train, then reply with the masked weighted update.

    Under distributed-dp the site first checks the round's noise plan against
    the approved study, then sends its clipped change plus its share of the
    noise, with a unit weight (the noise is calibrated to a sum of clipped
    updates, each counted once) and no training loss (outside the guarantee).
    """

    def change_of(
        message: Message, context: Context, study: Study, sent: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], LocalUpdate, float | None]:
        if not study.privacy.distributed_dp:
            result = local_round(message, context, sent)
            return change_from(sent, result.update.arrays), result.update, result.epsilon
        runtime = resolve_site(study, context)
        noised = noised_round(
            study,
            runtime.privacy,
            n_train=len(runtime.data.train.outcome),
            server_round=int(message.content[records.CONFIG][records.ROUND]),
            start=sent,
            train=lambda: local_round(message, context, sent),
        )
        return noised.change, noised.update, noised.epsilon

    def collect_update(message: Message, context: Context) -> Message:
        state, site, study, inputs, node = _stage(message, context, "collect")
        if study.privacy.distributed_dp:
            problem = plan_problem(study, message.content[records.CONFIG])
            if problem:
                raise SiteRefusal(site, problem)
        _receive(state, site, study, inputs, node)
        sent = records.from_array_record(message.content[records.ARRAYS])
        delta, update, epsilon = change_of(message, context, study, sent)
        if update.n_examples < resolve_site(study, context).min_cell_size:
            raise SiteRefusal(
                site, "its update would come from fewer rows than its minimum cell size"
            )
        privacy = study.privacy
        loss = math.nan if privacy.site_accounted else float(update.loss)
        weight = 1 if privacy.distributed_dp else int(update.n_examples)
        quantiser = Quantiser(privacy.secagg.clipping_range, privacy.secagg.quantization_range)
        try:
            vector = encode_update(
                delta, weight, loss, quantiser, _rounding(study, context, site, state.round)
            )
        except SecAggError as error:
            raise SiteRefusal(site, f"secure aggregation: {error}") from error
        metrics = MetricRecord({} if epsilon is None else {records.DP_EPSILON: epsilon})
        masked = _masked(context, state, node, vector)
        return _reply(message, RecordDict({records.MASKED: masked, records.METRICS: metrics}))

    return collect_update


def collect_statistics(message: Message, context: Context) -> Message:
    """Stage 3 of a sum of statistics: the column sums, or one of the learning loop's sums.

    The masked column counts, sums and sums of squares (the statistics round),
    or a monitoring study's bin counts and moments (a ``drift`` sum), or a
    pooled recalibration's score and information (see
    :mod:`lhs_federated.apps.loop_secagg`). The site withholds no small cell:
    its values are hidden in the sum, and the coordinator applies the minimum
    cell size to the total.
    """
    state, site, study, inputs, node = _stage(message, context, "collect")
    _receive(state, site, study, inputs, node)
    try:
        if state.kind in SITE_VECTORS:
            vector = SITE_VECTORS[state.kind](message, context)
        else:
            vector = encode_statistics(
                ColumnSums.of(resolve_site(study, context).data.train.features)
            )
    except SecAggError as error:
        raise SiteRefusal(site, f"secure aggregation: {error}") from error
    masked = _masked(context, state, node, vector)
    return _reply(message, RecordDict({records.MASKED: masked}))


def unmask(message: Message, context: Context) -> Message:
    """Stage 4: shares of the survivors' seeds and of the dropped sites' mask keys."""
    state, site, study, inputs, node = _stage(message, context, "unmask")
    active, dropped = [int(n) for n in inputs["active"]], [int(n) for n in inputs["dropped"]]
    if node not in active:
        raise SiteRefusal(site, "secure aggregation: the unmask stage lists this site as dropped")
    held = {n: (b, s) for n, b, s in zip(state.held, state.held_b, state.held_sk, strict=True)}
    try:
        shares = unmask_shares(active, dropped, held, threshold=_threshold(study, len(state.nodes)))
    except SecAggError as error:
        raise SiteRefusal(site, f"secure aggregation: {error}") from error
    state.save(context)
    content = ConfigRecord({"nodes": list(shares), "shares": list(shares.values())})
    return _reply(message, RecordDict({records.SECAGG: content}))


def _rounding(study: Study, context: Context, site: str, server_round: int) -> np.random.Generator:
    """Stochastic rounding's randomness: seeded in simulation (reproducible), the OS's deployed."""
    if SITE_CONFIG in context.node_config:
        return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    return np.random.default_rng([study.seed, server_round, zlib.crc32(site.encode())])


def register(app: ClientApp, local_round: LocalRound) -> None:
    """Add the SecAgg+ stages to the site's ClientApp (``local_round`` trains a round)."""
    app.query(records.SECAGG_SETUP_ACTION)(setup)
    app.query(records.SECAGG_SHARE_ACTION)(share)
    app.train(records.SECAGG_COLLECT_ACTION)(make_collect_update(local_round))
    app.query(records.SECAGG_COLLECT_ACTION)(collect_statistics)
    app.query(records.SECAGG_UNMASK_ACTION)(unmask)


# --- egress guards -----------------------------------------------------------------------


def _exact(record: ConfigRecord, keys: tuple[str, ...], what: str, site: str) -> None:
    if set(record) != set(keys):
        raise EgressBlocked(
            site, what, [Problem("unexpected secure aggregation key", f"keys {sorted(record)}")]
        )


def _byte_list(values: object, limit: int) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, bytes) and len(v) <= limit for v in values
    )


def _int_list(values: object) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )


def _guard_setup(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    record = content[records.SECAGG]
    _exact(record, ("pk1", "pk2", MIN_CELL_SIZE), "secure aggregation setup reply", site)
    if record[MIN_CELL_SIZE] != k:
        raise EgressBlocked(
            site,
            "secure aggregation setup reply",
            [Problem("not the site's minimum cell size", f"{record[MIN_CELL_SIZE]!r}, not {k}")],
        )
    if not _byte_list([record["pk1"], record["pk2"]], MAX_KEY_BYTES) or not all(
        bytes(record[key]).startswith(b"-----BEGIN PUBLIC KEY-----") for key in ("pk1", "pk2")
    ):
        raise EgressBlocked(
            site, "secure aggregation setup reply", [Problem("not a public key", "pk1/pk2")]
        )
    return content


def _guard_pairs(
    keys: tuple[str, str], limit: int, what: str
) -> Callable[[RecordDict, Study, str, int], RecordDict]:
    def guard(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
        record = content[records.SECAGG]
        _exact(record, keys, what, site)
        ids, blobs = record[keys[0]], record[keys[1]]
        if not _int_list(ids) or not _byte_list(blobs, limit) or len(ids) != len(blobs):
            raise EgressBlocked(
                site, what, [Problem("malformed secure aggregation lists", f"{keys}")]
            )
        return content

    return guard


def _guard_masked(content: RecordDict, shapes: dict[str, tuple[int, ...]]) -> list[Problem]:
    masked = content.get(records.MASKED)
    if masked is None:
        return [Problem("missing record", records.MASKED)]
    got = {name: (tuple(a.shape), str(a.dtype)) for name, a in masked.items()}
    expected = {name: (shape, "int64") for name, shape in shapes.items()}
    if got != expected:
        return [Problem("masked vector of undeclared names, shapes or dtype", f"{sorted(got)}")]
    for name, array in masked.items():
        values = array.numpy()
        if values.size and (values.min() < 0 or values.max() >= MODULUS):
            return [Problem("masked values outside the modulus", name)]
    return []


def _guard_collect_update(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    shapes = update_shapes({name: spec[0] for name, spec in model_array_specs(study).items()})
    problems = _guard_masked(content, shapes)
    allowed = {records.DP_EPSILON} if study.privacy.site_accounted else set()
    problems += metric_problems(
        allowed, content.get(records.METRICS, {}), what="secure aggregation metric"
    )
    if problems:
        raise EgressBlocked(site, "secure aggregation update", problems)
    return content


def _guard_collect_statistics(content: RecordDict, study: Study, site: str, k: int) -> RecordDict:
    shapes = statistics_shapes(n_features(study))
    masked = content.get(records.MASKED)
    if isinstance(masked, ArrayRecord) and is_loop_vector(masked):
        shapes = declared_loop_shapes(masked, study)
    problems = _guard_masked(content, shapes)
    if problems:
        raise EgressBlocked(site, "secure aggregation statistics", problems)
    return content


GUARDS = {
    records.SECAGG_SETUP: _guard_setup,
    records.SECAGG_SHARE: _guard_pairs(
        ("destinations", "ciphertexts"), MAX_CIPHERTEXT_BYTES, "secure aggregation share reply"
    ),
    records.SECAGG_COLLECT_UPDATE: _guard_collect_update,
    records.SECAGG_COLLECT_STATISTICS: _guard_collect_statistics,
    records.SECAGG_UNMASK: _guard_pairs(
        ("nodes", "shares"), MAX_SHARE_BYTES, "secure aggregation unmask reply"
    ),
}
