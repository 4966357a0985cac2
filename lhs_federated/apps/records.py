"""The message contract between the ServerApp and the ClientApp.

Every key that travels, and how our objects become Flower records and back,
is defined here once, so both apps and the site's egress guard agree on
exactly what a message may hold: the guard lets out nothing that
:func:`reply_records`, :func:`train_metric_keys` and
:func:`evaluate_metric_keys` do not declare.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SType
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from lhs_federated.data.statistics import ColumnSums, Standardizer
from lhs_federated.learning.metrics import METRIC_NAMES, MetricReport
from lhs_federated.learning.site import SiteSummary
from lhs_federated.study import Study

# Keys of the ConfigRecord the server sends.
ROUND = "server-round"
STUDY = "study"
STUDY_HASH = "study-hash"
PREP_MEAN = "preprocessing-mean"
PREP_SCALE = "preprocessing-scale"
# Simulation only: where the simulated sites' governance folders are. In the one
# ConfigRecord, because Flower's DP clipping mods accept no second one.
SIMULATED_SITE_FOLDERS = "simulated-site-folders"

# SCAFFOLD's control variates travel inside the one ArrayRecord of a message
# (Flower validates exactly one per reply), named with these prefixes; a site
# keeps its own control variate in its node state under CLIENT_CONTROL.
SERVER_CONTROL_PREFIX = "scaffold-c:"
CONTROL_DELTA_PREFIX = "scaffold-delta-c:"
CLIENT_CONTROL = "scaffold-client-control"

# Record names in messages.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
UNDEFINED = "undefined"
SITE = "site"
COUNTS = "counts"
SUMS = "sums"
# The site's runtime adds it to a discovery reply, after the egress guard: the site
# ledger's last record (seq, hash), which the coordinator records for the run.
SITE_LEDGER = "site-ledger"

# Keys of the MetricRecords sites send.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train_loss"
DP_EPSILON = "dp-epsilon"  # sample-dp: the study's cumulative epsilon at the site
UNIT_WEIGHT = "unit-weight"  # client-dp: every site weighs the same in the mean
NORM_BIT = KEY_NORM_BIT  # client-side adaptive clipping: whether the update was clipped
COUNT_KEYS = ("n-train", "n-test", "positives-train", "positives-test")  # query counts
SUMS_KEYS = ("count", "sum", "sum-of-squares")  # query column sums
SITE_KEYS = ("name",)
UNDEFINED_REASON_MAX = 200  # characters of a reason a metric is undefined

# Error codes of replies a site sends on purpose (Flower's own codes are < 100).
SITE_REFUSED = 4031
SITE_ERROR = 4220
EGRESS_BLOCKED = 4032  # the site's egress guard stopped a reply


# The coordinator's "your ledger is closed" message; its reply is empty.
LEDGER_CLOSE_ACTION = "ledger_close"
LEDGER_CLOSE = f"{MessageType.QUERY}.{LEDGER_CLOSE_ACTION}"


# The learning loop's messages (see lhs_federated.apps.loop_messages): a release
# monitored at a site, champion and challenger compared there, and one Newton step
# of a federated recalibration.
MONITOR_ACTION, GATE_ACTION, RECALIBRATE_ACTION = "monitor", "gate", "recalibrate"
MONITOR = f"{MessageType.EVALUATE}.{MONITOR_ACTION}"
GATE = f"{MessageType.EVALUATE}.{GATE_ACTION}"
RECALIBRATE = f"{MessageType.TRAIN}.{RECALIBRATE_ACTION}"
DRIFT = "drift"

# SecAgg+'s stages (see lhs_federated.apps.secagg_messages): keys, shares, the masked
# vector (of a training round's update, or of the federated statistics), unmasking.
SECAGG_SETUP_ACTION, SECAGG_SHARE_ACTION = "secagg_setup", "secagg_share"
SECAGG_COLLECT_ACTION, SECAGG_UNMASK_ACTION = "secagg_collect", "secagg_unmask"
SECAGG_SETUP = f"{MessageType.QUERY}.{SECAGG_SETUP_ACTION}"
SECAGG_SHARE = f"{MessageType.QUERY}.{SECAGG_SHARE_ACTION}"
SECAGG_COLLECT_UPDATE = f"{MessageType.TRAIN}.{SECAGG_COLLECT_ACTION}"
SECAGG_COLLECT_STATISTICS = f"{MessageType.QUERY}.{SECAGG_COLLECT_ACTION}"
SECAGG_UNMASK = f"{MessageType.QUERY}.{SECAGG_UNMASK_ACTION}"
SECAGG = "secagg"  # the stage's ConfigRecord, both ways
MASKED = "masked"  # the masked vector's ArrayRecord (int64, mod 2**62)


def reply_records(message_type: str) -> dict[str, type]:
    """The records a reply of each message type may hold (name -> record type)."""
    return {
        MessageType.QUERY: {SITE: ConfigRecord, COUNTS: MetricRecord, SUMS: MetricRecord},
        MessageType.TRAIN: {ARRAYS: ArrayRecord, METRICS: MetricRecord},
        MessageType.EVALUATE: {METRICS: MetricRecord, UNDEFINED: ConfigRecord},
        MONITOR: {METRICS: MetricRecord, UNDEFINED: ConfigRecord, DRIFT: MetricRecord},
        GATE: {METRICS: MetricRecord, UNDEFINED: ConfigRecord},
        RECALIBRATE: {METRICS: MetricRecord},
        SECAGG_SETUP: {SECAGG: ConfigRecord},
        SECAGG_SHARE: {SECAGG: ConfigRecord},
        SECAGG_COLLECT_UPDATE: {MASKED: ArrayRecord, METRICS: MetricRecord},
        SECAGG_COLLECT_STATISTICS: {MASKED: ArrayRecord},
        SECAGG_UNMASK: {SECAGG: ConfigRecord},
    }.get(message_type, {})


def train_metric_keys(study: Study) -> frozenset[str]:
    """Keys a train reply's MetricRecord may hold under ``study``."""
    keys = {NUM_EXAMPLES, TRAIN_LOSS}
    if study.privacy.sample_dp:
        keys.add(DP_EPSILON)
    if study.privacy.client_dp:
        keys.add(UNIT_WEIGHT)
        if study.privacy.client.clipping == "client-adaptive":
            keys.add(NORM_BIT)
    return frozenset(keys)


def evaluate_metric_keys(study: Study) -> frozenset[str]:
    """Keys an evaluate reply's MetricRecord may hold under ``study``."""
    keys = {*METRIC_NAMES, NUM_EXAMPLES}
    if study.privacy.client_dp:
        keys.add(UNIT_WEIGHT)
    return frozenset(keys)


def train_reply(
    study: Study, arrays: dict[str, np.ndarray], n_examples: int, loss: float, epsilon: float | None
) -> RecordDict:
    """A train reply: the update and its metrics (the privacy keys the study needs).

    Under sample-level DP the training loss is sent as NaN: it is computed from
    the site's rows without noise, so it is not covered by the DP guarantee.
    """
    if study.privacy.sample_dp:
        loss = float("nan")
    metrics = MetricRecord({NUM_EXAMPLES: n_examples, TRAIN_LOSS: loss})
    if epsilon is not None:
        metrics[DP_EPSILON] = epsilon
    if study.privacy.client_dp:
        metrics[UNIT_WEIGHT] = 1
    return RecordDict({ARRAYS: to_array_record(arrays), METRICS: metrics})


def study_config(study: Study) -> ConfigRecord:
    """The study itself and its hash, sent with every message."""
    return ConfigRecord({STUDY: study.to_json(), STUDY_HASH: study.hash})


def study_from_config(config: ConfigRecord) -> Study:
    """Rebuild the study a message carries, checking it against its hash.

    Raises
    ------
    ValueError
        If the message has no study or the study does not match its hash.
    """
    if STUDY not in config or STUDY_HASH not in config:
        raise ValueError(f"the message carries no study (keys: {sorted(config)})")
    text = str(config[STUDY])
    digest = _sha256_of(text)
    if digest != config[STUDY_HASH]:
        raise ValueError(
            f"the study in the message hashes to {digest}, not the stated {config[STUDY_HASH]}"
        )
    return _study_of(digest, text)


@functools.lru_cache(maxsize=8)
def _sha256_of(text: str) -> str:
    """SHA-256 of a study's text, once per text: every mod of every message checks it.

    Keyed on the text itself (equal strings, not merely the same object), so a
    changed study is hashed anew.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=8)
def _study_of(digest: str, text: str) -> Study:
    """Parse a study once per process; every message of a run carries the same one."""
    return Study.from_json(text, source="the study sent by the server")


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as an ArrayRecord (order kept)."""
    return ArrayRecord(
        {name: numpy_to_array(np.ascontiguousarray(value)) for name, value in arrays.items()}
    )


def numpy_to_array(value: np.ndarray) -> Array:
    """``Array(value)``, byte for byte, without ``np.save`` writing the same header again.

    Flower serialises an array with ``np.save``: a ``.npy`` header that follows
    from the dtype, shape and memory order alone, then the raw bytes. The first
    array of each layout is made by Flower and its header kept; later ones are
    that header and their bytes (plain dtypes only: object and structured
    dtypes always go through ``np.save``).
    """
    if value.dtype.hasobject or value.dtype.fields is not None:
        return Array(value)
    fortran = bool(value.flags.f_contiguous and not value.flags.c_contiguous)
    layout = (value.dtype, value.shape, fortran)
    header = _NPY_HEADERS.get(layout)
    if header is None:
        made = Array(value)
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[layout] = made.data[: len(made.data) - value.nbytes]
        return made
    return Array(
        dtype=str(value.dtype),
        shape=tuple(value.shape),
        stype=SType.NUMPY,
        data=header + value.tobytes(order="F" if fortran else "C"),
    )


_NPY_HEADERS: dict[tuple[np.dtype, tuple[int, ...], bool], bytes] = {}


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as named numpy arrays."""
    return {name: array_to_numpy(array) for name, array in record.items()}


def array_to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()``, without parsing the same ``.npy`` header again and again.

    ``np.load`` parses every array's header with ``ast.literal_eval``: for a
    model's few small arrays that is most of the cost, paid at every site for
    every message. The first array with a given header is read by ``np.load``;
    later ones with the identical header are read from their bytes with the
    dtype and shape it gave (never pickles: an object dtype is not cached).
    The result is a writable copy, as ``np.load`` returns.
    """
    data = array.data
    if array.stype != SType.NUMPY or not isinstance(data, bytes) or data[:6] != b"\x93NUMPY":
        return array.numpy()
    size = 2 if data[6] == 1 else 4
    header_end = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
    layout = _NPY_LAYOUTS.get(data[:header_end])
    if layout is None:
        loaded = array.numpy()
        if not loaded.dtype.hasobject and len(_NPY_LAYOUTS) < 4096:
            order = "F" if loaded.flags.f_contiguous and not loaded.flags.c_contiguous else "C"
            _NPY_LAYOUTS[data[:header_end]] = (loaded.dtype, loaded.shape, order)
        return loaded
    dtype, shape, order = layout
    flat = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header_end)
    return flat.reshape(shape, order=order).copy(order="K")


_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], str]] = {}


def standardizer_to_config(standardizer: Standardizer) -> ConfigRecord:
    """Federated preprocessing statistics as config entries."""
    return ConfigRecord(
        {
            PREP_MEAN: [float(v) for v in standardizer.mean],
            PREP_SCALE: [float(v) for v in standardizer.scale],
        }
    )


def standardizer_from_config(config: ConfigRecord) -> Standardizer | None:
    """The federated preprocessing statistics of a message, if it has them."""
    if PREP_MEAN not in config:
        return None
    return Standardizer(np.asarray(config[PREP_MEAN], float), np.asarray(config[PREP_SCALE], float))


def summary_to_record(summary: SiteSummary) -> RecordDict:
    """A site's summary as a query reply; withheld counts are left out."""
    counts = {
        key: value
        for key, value in (
            ("n-train", summary.n_train),
            ("n-test", summary.n_test),
            ("positives-train", summary.positives_train),
            ("positives-test", summary.positives_test),
        )
        if value is not None
    }
    record = RecordDict({SITE: ConfigRecord({"name": summary.name}), COUNTS: MetricRecord(counts)})
    if summary.sums is not None:
        record[SUMS] = MetricRecord(
            {
                "count": summary.sums.count.tolist(),
                "sum": summary.sums.total.tolist(),
                "sum-of-squares": summary.sums.total_sq.tolist(),
            }
        )
    return record


def summary_from_record(record: RecordDict) -> SiteSummary:
    """Parse a site's query reply."""
    counts = record[COUNTS]
    sums = None
    if SUMS in record:
        raw = record[SUMS]
        sums = ColumnSums(
            np.asarray(raw["count"], float),
            np.asarray(raw["sum"], float),
            np.asarray(raw["sum-of-squares"], float),
        )

    def count(key: str) -> int | None:
        return int(counts[key]) if key in counts else None

    return SiteSummary(
        name=str(record[SITE]["name"]),
        n_train=count("n-train"),
        n_test=count("n-test"),
        positives_train=count("positives-train"),
        positives_test=count("positives-test"),
        sums=sums,
    )


def report_to_record(report: MetricReport, *, unit_weight: bool = False) -> RecordDict:
    """Evaluation metrics (NaN where undefined) plus the reasons as config.

    Every reply carries every metric key, because Flower's reply validation
    requires the same keys from all sites; undefined ones are NaN and the
    aggregation skips them. ``unit_weight`` adds the equal weight client-level
    DP aggregates with.
    """
    metrics = MetricRecord({name: float(report.values[name]) for name in METRIC_NAMES})
    metrics[NUM_EXAMPLES] = int(report.values["n"])
    if unit_weight:
        metrics[UNIT_WEIGHT] = 1
    return RecordDict({METRICS: metrics, UNDEFINED: ConfigRecord(dict(report.undefined))})


def report_from_record(record: RecordDict) -> MetricReport:
    """Parse an evaluation reply."""
    metrics = record[METRICS]
    undefined = (
        {str(k): str(v) for k, v in record[UNDEFINED].items()} if UNDEFINED in record else {}
    )
    return MetricReport(
        {name: float(metrics[name]) for name in METRIC_NAMES if name in metrics}, undefined
    )


def hash_array_record(record: ArrayRecord) -> str:
    """:func:`hash_arrays` of an ArrayRecord's arrays, computed once per content.

    Every simulated site hashes the global model its message brought, the same
    arrays for all of them. The hash follows from each array's name, dtype,
    shape, serialisation type and bytes, which key the memo, so a record with
    any other content is hashed anew.
    """
    key = tuple(
        (name, array.dtype, tuple(array.shape), array.stype, array.data)
        for name, array in record.items()
    )
    known = _RECORD_HASHES.get(key)
    if known is None:
        if len(_RECORD_HASHES) >= _RECORD_HASHES_MAX:
            _RECORD_HASHES.clear()
        known = _RECORD_HASHES[key] = hash_arrays(from_array_record(record))
    return known


#: Hashes of ArrayRecords already hashed in this process (see hash_array_record): a
#: round or two of global models, since the key holds the arrays' bytes.
_RECORD_HASHES: dict[tuple, str] = {}
_RECORD_HASHES_MAX = 8


def hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of named arrays."""
    digest = hashlib.sha256()
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
