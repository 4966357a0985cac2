"""What a reply carried, reduced to hashes and counts for the ledgers.

The site's governance mod digests each reply it sends and the coordinator
digests each reply it receives, with this one function, so the site's ledger
and the coordinator's can be matched record for record (``lhs-fed audit
crosscheck``). The content hash covers every record of the reply (arrays
byte for byte, metrics and configs as canonical JSON); the size is that of
Flower's wire format.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto

from lhs_federated.apps import records
from lhs_federated.governance.site_folder import error_digest

#: The MetricRecord key under which a site reports the privacy budget it has spent:
#: the one key the ClientApp sends (a second spelling here once left every ledger blank).
EPSILON = records.DP_EPSILON


@dataclass(frozen=True)
class ReplyDigest:
    """Hashes and counts of one reply.

    Attributes
    ----------
    status : str
        ``ok``, ``refused`` (error code ``SITE_REFUSED``) or ``error``.
    content_hash : str
        SHA-256 of the content (:func:`content_hash`) or of the error.
    size : int
        Bytes of the serialised content, or of the error as canonical JSON.
    arrays_hash : str or None
        :func:`~lhs_federated.apps.records.hash_arrays` of the reply's arrays.
    examples : int or None
        ``num-examples`` the reply reports.
    epsilon : float or None
        Privacy budget spent so far, if the reply reports it.
    error_code : int or None
        Code of an error reply.
    detail : str or None
        Reason of an error reply.
    """

    status: str
    content_hash: str
    size: int
    arrays_hash: str | None = None
    examples: int | None = None
    epsilon: float | None = None
    error_code: int | None = None
    detail: str | None = None


def digest_reply(reply: Message) -> ReplyDigest:
    """Digest a reply (content or error) for a ledger record."""
    if reply.has_error():
        code, reason = int(reply.error.code), str(reply.error.reason)
        digest, size = error_digest(code, reason)
        status = "refused" if code == records.SITE_REFUSED else "error"
        return ReplyDigest(status, digest, size, error_code=code, detail=reason)
    content = reply.content
    metrics = content.get(records.METRICS)
    examples = epsilon = None
    if metrics is not None:
        if records.NUM_EXAMPLES in metrics:
            examples = int(metrics[records.NUM_EXAMPLES])
        if EPSILON in metrics:
            epsilon = float(metrics[EPSILON])
    digest = content_hash(content)
    known = _SIZES.get(digest)
    if known is None:
        arrays = content.get(records.ARRAYS)
        known = (
            recorddict_to_proto(content).ByteSize(),
            records.hash_arrays(records.from_array_record(arrays))
            if isinstance(arrays, ArrayRecord)
            else None,
        )
        if len(_SIZES) >= _SIZES_MAX:
            _SIZES.clear()
        _SIZES[digest] = known
    return ReplyDigest(
        "ok", digest, known[0], arrays_hash=known[1], examples=examples, epsilon=epsilon
    )


#: Wire size and arrays hash of content already digested in this process, by content
#: hash. Both follow from what the content hash covers (every record's type, name and
#: values, arrays byte for byte), so the coordinator's digest of a reply a simulated
#: site digested before sending it costs one hash, not a second serialisation.
_SIZES: dict[str, tuple[int, str | None]] = {}
_SIZES_MAX = 65_536


def content_hash(content: RecordDict) -> str:
    """SHA-256 over every record of ``content``, in name order.

    Arrays contribute their name, dtype, shape, serialisation type and bytes;
    metric and config records their items as canonical JSON.
    """
    digest = hashlib.sha256()
    for name in sorted(content):
        record = content[name]
        digest.update(f"{type(record).__name__}|{name}|".encode())
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                digest.update(
                    f"{key}|{array.dtype}|{list(array.shape)}|{array.stype}|{len(array.data)}|".encode()
                )
                digest.update(array.data)
        else:
            digest.update(_canonical(dict(record.items())))
    return digest.hexdigest()


def update_norm(sent: dict[str, np.ndarray], returned: dict[str, np.ndarray]) -> float | None:
    """L2 norm of a site's update (returned minus sent arrays); None if shapes differ."""
    if list(sent) != list(returned):
        return None
    total = 0.0
    for name, before in sent.items():
        after = returned[name]
        if np.shape(after) != np.shape(before):
            return None
        total += float(np.sum((np.asarray(after, np.float64) - before) ** 2))
    return math.sqrt(total)


def _canonical(value: dict[str, Any]) -> bytes:
    def plain(item: Any) -> Any:
        if isinstance(item, bytes):
            return {"bytes": item.hex()}
        if isinstance(item, list):
            return [plain(v) for v in item]
        return item

    return json.dumps(
        {key: plain(item) for key, item in value.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
