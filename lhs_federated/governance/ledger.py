"""The append-only, hash-chained, signed ledger: one JSON object per line.

One implementation serves the coordinator's ledger of a study, each site's
ledger and each site's approvals registry. Every record carries:

- ``seq``: 0, 1, 2, ... (record 0 is the header naming the ledger's role,
  owner and public key);
- ``time``: when it was appended (UTC, ISO 8601);
- ``kind`` and ``data``: what happened;
- ``prev_hash``: the previous record's ``hash`` (64 zeros for record 0);
- ``hash``: SHA-256 of the canonical JSON of the five fields above;
- ``signature``: Ed25519 signature of that hash by the owner's key (base64).

So changing, deleting, inserting or reordering a record breaks the chain or a
signature, and forging a record needs the private key. Truncation is caught
because a coordinator ledger must end with a closing record (``results-sealed``
or ``study-failed``), because ``summary.json`` names its ``study-finished``
record and the seal after it, and because the final hash is written into
every site's ledger.

Appends are durable and safe across processes: each one takes an exclusive
``flock`` on the file, re-reads the last record, writes one line, then
flushes and fsyncs. A crash in the middle of an append leaves a *torn* last
line: :func:`verify_ledger` reports it as such, and the next append moves the
torn bytes to a side file and records that it did (``torn-tail-recovered``),
so the chain never silently continues past a damaged record.

Inside :func:`~lhs_federated.governance.durability.batched_durability` appends
are written at once but made durable together when the block ends (one
``syncfs`` per file system): a simulation delivers a stage's messages to all
its simulated sites in one block, so a thousand site ledgers cost one sync
instead of thousands of fsyncs.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lhs_federated.errors import LhsError
from lhs_federated.governance.durability import flush, flush_folder
from lhs_federated.governance.keys import fingerprint, public_key_b64

FORMAT = "lhs-federated-ledger/1"
GENESIS = "0" * 64
HEADER = "ledger-opened"
TORN_RECOVERED = "torn-tail-recovered"

#: The kinds that close a ledger of each role; a closing ledger must end with one.
CLOSING_KINDS: dict[str, tuple[str, ...]] = {
    "coordinator": ("results-sealed", "study-failed"),
    "site": (),
    "approvals": (),
}
ROLES = tuple(CLOSING_KINDS)

#: What :func:`verify_ledger` can find wrong.
PROBLEM_KINDS = (
    "modified",
    "deleted",
    "inserted",
    "reordered",
    "truncated",
    "bad signature",
    "torn last line",
)

_FIELDS = {
    "seq": int,
    "time": str,
    "kind": str,
    "data": dict,
    "prev_hash": str,
    "hash": str,
    "signature": str,
}
_CHUNK = 65536


class LedgerError(LhsError):
    """A file is not a ledger, or a ledger cannot be appended to safely (exit 2)."""


@dataclass(frozen=True)
class Entry:
    """One record of a ledger, as stored.

    Attributes
    ----------
    seq, time, kind, data, prev_hash, hash, signature
        The record's fields (see the module docstring).
    line : int
        1-based line of the record in its file (0 for a record not read from
        a file).
    """

    seq: int
    time: str
    kind: str
    data: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str
    line: int = 0

    def body(self) -> dict[str, Any]:
        """The fields the hash covers."""
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "data": self.data,
            "prev_hash": self.prev_hash,
        }

    def content_matches_hash(self) -> bool:
        """Whether ``hash`` is the SHA-256 of the record's content."""
        return record_hash(self.body()) == self.hash

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        """Whether ``signature`` is ``public_key``'s signature of ``hash``.

        A signature that verified once in this process (or was made here) is
        not verified again: the answer depends on the key, hash and signature
        alone, and a site checks the same records of its ledger with every
        message.
        """
        known = (public_key.public_bytes_raw(), self.hash, self.signature)
        if known in _GOOD_SIGNATURES:
            return True
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), _digest(self.hash))
        except (InvalidSignature, ValueError):
            return False
        _remember(known)
        return True

    def to_line(self) -> bytes:
        """The record as one line of canonical JSON, newline included."""
        stored = {**self.body(), "hash": self.hash, "signature": self.signature}
        return canonical_json(stored) + b"\n"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN: the bytes every hash covers."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def record_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a record body's canonical JSON."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


def jsonable(value: Any) -> Any:
    """Plain JSON data for a ledger record.

    numpy scalars and arrays become numbers and lists, tuples become lists,
    paths become strings and non-finite floats become ``null`` (JSON has no
    NaN; a metric that is undefined is recorded with its reason elsewhere).
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # most of a record
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record {type(value).__name__} in a ledger: {value!r}")


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _digest(hash_hex: str) -> bytes:
    return bytes.fromhex(hash_hex) if len(hash_hex) == 64 else hash_hex.encode("utf-8")


def _seal(
    key: Ed25519PrivateKey, seq: int, kind: str, data: Any, prev_hash: str
) -> tuple[Entry, bytes]:
    """A new signed record and its stored line.

    The bytes are :func:`record_hash`'s and :meth:`Entry.to_line`'s (canonical
    JSON: sorted keys, no spaces), assembled from each field's JSON so that the
    data, most of a record, is encoded once rather than once for the hash and
    again for the line.
    """
    time = now()
    fields = {
        "data": _json(data),
        "kind": _json(kind),
        "prev_hash": _json(prev_hash),
        "seq": _json(seq),
        "time": _json(time),
    }
    body = "{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}"
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    signature = base64.b64encode(key.sign(_digest(digest))).decode("ascii")
    _remember((_public_bytes(key), digest, signature))
    stored = {**fields, "hash": _json(digest), "signature": _json(signature)}
    line = "{" + ",".join(f'"{name}":{stored[name]}' for name in sorted(stored)) + "}\n"
    return Entry(seq, time, kind, data, prev_hash, digest, signature), line.encode("utf-8")


def _json(value: Any) -> str:
    """One field's canonical JSON (as :func:`canonical_json`, as text)."""
    return _ENCODER.encode(value)


#: What ``json.dumps`` builds from canonical_json's options on every call, built once.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw public key of ``key``, derived once per key object (every record needs it)."""
    known = _PUBLIC_BYTES.get(key)
    if known is None:
        if len(_PUBLIC_BYTES) >= _GOOD_SIGNATURES_MAX:
            _PUBLIC_BYTES.clear()
        known = _PUBLIC_BYTES[key] = key.public_key().public_bytes_raw()
    return known


#: Raw public keys of the private keys that signed in this process, by key object.
_PUBLIC_BYTES: dict[Ed25519PrivateKey, bytes] = {}

#: Signatures known to verify in this process: (raw public key, record hash, signature).
#: Only good ones are kept, so a signature is never accepted that would not verify.
_GOOD_SIGNATURES: set[tuple[bytes, str, str]] = set()
_GOOD_SIGNATURES_MAX = 200_000


def _remember(known: tuple[bytes, str, str]) -> None:
    if len(_GOOD_SIGNATURES) >= _GOOD_SIGNATURES_MAX:
        _GOOD_SIGNATURES.clear()
    _GOOD_SIGNATURES.add(known)


def parse_line(raw: bytes, line: int) -> Entry:
    """Parse one stored line into an :class:`Entry` (no hash or signature check).

    Raises
    ------
    ValueError
        If the line is not a JSON object with the seven record fields of the
        right types.
    """
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    missing = [name for name in _FIELDS if name not in value]
    if missing:
        raise ValueError(f"field(s) {', '.join(missing)} missing")
    extra = sorted(set(value) - set(_FIELDS))
    if extra:
        raise ValueError(f"unexpected field(s) {', '.join(extra)}")
    for name, kind in _FIELDS.items():
        if not isinstance(value[name], kind) or isinstance(value[name], bool):
            raise ValueError(f"field {name!r} is {value[name]!r}, not a {kind.__name__}")
    return Entry(**value, line=line)


class Ledger:
    """The writing side of one ledger file, signing with ``key``.

    Use :meth:`open`; every :meth:`append` is one locked, fsynced write, so
    several processes (a site's ClientApp runs, one per message) may append
    to the same ledger.

    Attributes
    ----------
    path : Path
        The ledger file.
    header : Entry
        Record 0: role, owner, ledger id and public key.
    """

    def __init__(self, path: Path, key: Ed25519PrivateKey, header: Entry) -> None:
        self.path = path
        self._key = key
        self.header = header
        # The last record this object wrote, and the file's identity just after: while
        # the file is unchanged (same inode, size and mtime) the next append need not
        # re-read and re-verify the record it wrote itself.
        self._written: tuple[tuple[int, int, int, int], Entry] | None = None

    @property
    def role(self) -> str:
        """``coordinator``, ``site`` or ``approvals``."""
        return str(self.header.data["role"])

    @property
    def owner(self) -> str:
        """Who keeps the ledger (``coordinator`` or the site's name)."""
        return str(self.header.data["owner"])

    @property
    def ledger_id(self) -> str:
        """A random id given when the ledger was created."""
        return str(self.header.data["ledger_id"])

    @classmethod
    def open(
        cls,
        path: str | Path,
        key: Ed25519PrivateKey,
        *,
        role: str,
        owner: str,
        new: bool = False,
        details: Mapping[str, Any] | None = None,
    ) -> Ledger:
        """Open a ledger for appending, creating it (with its header) if needed.

        Parameters
        ----------
        path : str or Path
            The ledger file.
        key : Ed25519PrivateKey
            The owner's signing key; must be the key the header names.
        role : {"coordinator", "site", "approvals"}
            What the ledger records; decides which kinds close it.
        owner : str
            ``coordinator`` or the site's name.
        new : bool
            Require a new ledger (a study's coordinator ledger is never reused).
        details : mapping, optional
            Extra fields of a new header.

        Raises
        ------
        LedgerError
            If the file exists but is not a ledger, belongs to another role or
            owner, is signed with another key, or ``new`` and it has records.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        with _locked(path) as fd:
            if os.fstat(fd).st_size == 0:
                header, line = _seal(
                    key,
                    0,
                    HEADER,
                    jsonable(
                        {
                            **(details or {}),
                            "format": FORMAT,
                            "role": role,
                            "owner": owner,
                            "ledger_id": uuid.uuid4().hex,
                            "public_key": public_key_b64(key.public_key()),
                            "key_fingerprint": fingerprint(key.public_key()),
                        }
                    ),
                    GENESIS,
                )
                _write(fd, line, path)
            elif new:
                raise LedgerError(
                    f"ledger {str(path)!r} already has records; a study's coordinator ledger "
                    "is always new. Choose another results folder."
                )
            else:
                header = _read_header(fd, path)
        if created:
            flush_folder(path.parent)
        ledger = cls(path, key, header)
        ledger._check_header(role=role, owner=owner)
        return ledger

    def _check_header(self, *, role: str, owner: str) -> None:
        data = self.header.data
        expected = fingerprint(self._key.public_key())
        if data.get("key_fingerprint") != expected:
            raise LedgerError(
                f"ledger {str(self.path)!r} is signed with key {data.get('key_fingerprint')}, "
                f"not with the given key {expected}; use the owner's own key."
            )
        if data.get("role") != role or data.get("owner") != owner:
            raise LedgerError(
                f"ledger {str(self.path)!r} is the {data.get('role')} ledger of "
                f"{data.get('owner')!r}, not the {role} ledger of {owner!r}."
            )

    def append(self, kind: str, data: Mapping[str, Any]) -> Entry:
        """Append one signed record and make it durable (flush + fsync).

        Raises
        ------
        LedgerError
            If the ledger's last record is damaged (appending would hide it).
        """
        return self.append_many([(kind, data)])[0]

    def append_many(self, records: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
        """Append several records in order with one write and one fsync.

        What one event produces at once (the replies of a stage) costs one
        fsync instead of one each; a crash in the middle leaves a torn line,
        recovered as for :meth:`append`.

        Raises
        ------
        LedgerError
            If the ledger's last record is damaged (appending would hide it).
        """
        if any(kind == HEADER for kind, _ in records):
            raise ValueError(f"{HEADER!r} is the header's kind; it is written once, by open()")
        payloads = [(kind, jsonable(dict(data))) for kind, data in records]
        if not payloads:
            return []
        with _locked(self.path) as fd:
            last = self._last_entry(fd)
            entries, lines = [], []
            for kind, payload in payloads:
                last, line = _seal(self._key, last.seq + 1, kind, payload, last.hash)
                entries.append(last)
                lines.append(line)
            _write(fd, b"".join(lines), self.path)
            self._written = (_identity(fd), last)
        return entries

    def last(self) -> Entry:
        """The ledger's last record (checked against its hash and signature)."""
        with _locked(self.path) as fd:
            return self._last_entry(fd)

    def _last_entry(self, fd: int) -> Entry:
        """The last complete record, after recovering a torn tail if there is one."""
        if self._written is not None and self._written[0] == _identity(fd):
            return self._written[1]  # the file is as this object left it
        size = os.fstat(fd).st_size
        complete_end, last_raw = _tail(fd, size)
        if complete_end < size:
            torn = os.pread(fd, size - complete_end, complete_end)
            last = self._check_last(last_raw)
            completed = self._complete_torn(fd, torn, last)
            if completed is not None:
                return completed
            side = self.path.with_name(f"{self.path.name}.torn-after-{last.seq}")
            side.write_bytes(torn)
            os.ftruncate(fd, complete_end)
            os.fsync(fd)
            note, line = _seal(
                self._key,
                last.seq + 1,
                TORN_RECOVERED,
                {
                    "after_seq": last.seq,
                    "bytes": len(torn),
                    "sha256": hashlib.sha256(torn).hexdigest(),
                    "saved_as": side.name,
                },
                last.hash,
            )
            _write(fd, line)
            return note
        return self._check_last(last_raw)

    def _complete_torn(self, fd: int, torn: bytes, last: Entry) -> Entry | None:
        """A torn tail that is a whole valid record missing only its newline."""
        try:
            entry = parse_line(torn, 0)
        except ValueError:
            return None
        valid = (
            entry.seq == last.seq + 1
            and entry.prev_hash == last.hash
            and entry.content_matches_hash()
            and entry.signed_by(self._key.public_key())
        )
        if not valid:
            return None
        _write(fd, b"\n")
        return entry

    def _check_last(self, raw: bytes) -> Entry:
        try:
            entry = parse_line(raw, 0)
        except ValueError as exc:
            raise LedgerError(
                f"the last record of ledger {str(self.path)!r} is damaged ({exc}); appending "
                "would hide it. Check the ledger with `lhs-fed audit verify`."
            ) from exc
        if not (entry.content_matches_hash() and entry.signed_by(self._key.public_key())):
            raise LedgerError(
                f"the last record of ledger {str(self.path)!r} (seq {entry.seq}) does not match "
                "its hash or signature; appending would hide the damage. Check the ledger "
                "with `lhs-fed audit verify`."
            )
        return entry


def _identity(fd: int) -> tuple[int, int, int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    # 0600: the owner's record, not world-readable.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def _write(fd: int, data: bytes, path: Path | None = None) -> None:
    """Write all of ``data``; flush it now, or at the end of a batched-durability block."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    flush(fd, path)


def _tail(fd: int, size: int) -> tuple[int, bytes]:
    """The end offset of the last complete line, and that line (without newline).

    Reads backwards in chunks, so appending costs the same however long the
    ledger grows.
    """
    buffer = b""
    offset = size
    while True:
        start = max(0, offset - _CHUNK)
        buffer = os.pread(fd, offset - start, start) + buffer
        offset = start
        last_newline = buffer.rfind(b"\n")
        if last_newline >= 0:
            before = buffer.rfind(b"\n", 0, last_newline)
            if before >= 0 or offset == 0:
                complete_end = offset + last_newline + 1
                return complete_end, buffer[before + 1 : last_newline]
        if offset == 0:
            raise LedgerError(
                "the ledger holds no complete record, not even its header; it was cut "
                "short while being created. Move it aside and start a new one."
            )


def read_header(path: str | Path) -> Entry:
    """Record 0 of a ledger (its role, owner, id and public key), unverified.

    Reads only the first line, so it is cheap however long the ledger is.

    Raises
    ------
    LedgerError
        If the file is missing or does not start with a ledger header.
    """
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"ledger file {str(path)!r} does not exist (or is not a file).")
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_header(fd, path)
    finally:
        os.close(fd)


def _read_header(fd: int, path: Path) -> Entry:
    first = b""
    offset = 0
    while b"\n" not in first:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            break
        first += chunk
        offset += len(chunk)
    raw = first.split(b"\n", 1)[0]
    try:
        header = parse_line(raw, 1)
    except ValueError as exc:
        raise LedgerError(
            f"{str(path)!r} is not an lhs-federated ledger: line 1 is {exc}."
        ) from exc
    if header.seq != 0 or header.kind != HEADER or header.data.get("format") != FORMAT:
        raise LedgerError(
            f"{str(path)!r} is not an lhs-federated ledger: its first record is not a "
            f"{HEADER!r} header of format {FORMAT!r}."
        )
    return header
