"""Offline verification of a ledger with its owner's public key alone.

:func:`verify_ledger` walks the records in file order and stops at the first
one that is wrong, saying what is wrong with it:

- ``modified``: its content no longer matches its hash, or it does not chain
  to the record before it, or a line is not a record at all;
- ``bad signature``: the hash is not signed by the given public key (a forged
  or re-hashed record, or the wrong public key);
- ``deleted``: the record's sequence number skips some that are nowhere in
  the file;
- ``inserted``: a copy of a record already seen, a record after the closing
  record, or more records than the final hash named elsewhere allows;
- ``reordered``: a record comes before one that should precede it, which
  appears later in the file;
- ``truncated``: a coordinator ledger ends without its closing record, or
  before the final record named in ``summary.json`` or a site's ledger;
- ``torn last line``: the file ends in the middle of a record (a crash while
  appending, or a cut through a line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lhs_federated.governance.keys import fingerprint
from lhs_federated.governance.ledger import (
    CLOSING_KINDS,
    FORMAT,
    GENESIS,
    HEADER,
    Entry,
    LedgerError,
    parse_line,
)


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a ledger.

    Attributes
    ----------
    kind : str
        One of :data:`~lhs_federated.governance.ledger.PROBLEM_KINDS`.
    line : int
        The 1-based line of the bad record in the file (one past the last
        line for a missing end).
    seq : int or None
        The bad record's sequence number, when it has one.
    detail : str
        What exactly is wrong, in words.
    """

    kind: str
    line: int
    seq: int | None
    detail: str

    def describe(self) -> str:
        """``line L (record S): KIND: DETAIL``."""
        where = f"line {self.line}" + (f" (record {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class Anchor:
    """Where a ledger is known to end, according to another file.

    Attributes
    ----------
    seq : int
        The final record's sequence number.
    hash : str
        The final record's hash.
    source : str
        Which file says so (``summary.json``, a site's ledger), for messages.
    """

    seq: int
    hash: str
    source: str


@dataclass(frozen=True)
class Verification:
    """The result of :func:`verify_ledger`.

    Attributes
    ----------
    path : Path
        The ledger file.
    entries : tuple of Entry
        The records before the first problem (all of them when intact).
    problem : Problem or None
        The first problem, or ``None`` if the ledger is intact.
    key_fingerprint : str
        Fingerprint of the public key it was verified with.
    """

    path: Path
    entries: tuple[Entry, ...]
    problem: Problem | None
    key_fingerprint: str

    @property
    def ok(self) -> bool:
        """Whether the ledger is intact."""
        return self.problem is None

    @property
    def header(self) -> Entry | None:
        """Record 0, if it verified."""
        return self.entries[0] if self.entries else None

    @property
    def final(self) -> Entry | None:
        """The last record that verified."""
        return self.entries[-1] if self.entries else None

    def describe(self) -> str:
        """One paragraph: the verdict and either the final record or the problem."""
        if self.problem is not None:
            return f"{self.path}: NOT INTACT: {self.problem.describe()}"
        header, final = self.entries[0].data, self.entries[-1]
        return (
            f"{self.path}: intact: {len(self.entries)} records, the {header.get('role')} "
            f"ledger of {header.get('owner')!r}, every record signed by {self.key_fingerprint}; "
            f"final record {final.seq} ({final.kind}) has hash {final.hash}."
        )


@dataclass(frozen=True)
class _Unreadable:
    line: int
    reason: str


def read_records(path: str | Path) -> tuple[list[Entry | _Unreadable], bool]:
    """Every line of a ledger file, parsed where possible, and whether it ends torn.

    Raises
    ------
    LedgerError
        If the file is missing, empty, or its first line is not a ledger
        record (the file is not a ledger: exit 2 at the command line). A
        file holding only part of its first line is a ledger whose creation
        was cut short: its torn line is reported, not raised.
    """
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"ledger file {str(path)!r} does not exist (or is not a file).")
    data = path.read_bytes()
    if not data:
        raise LedgerError(
            f"ledger file {str(path)!r} is empty; a ledger starts with its header record."
        )
    torn = not data.endswith(b"\n")
    raws = data.split(b"\n")
    if not torn:
        raws.pop()
    items: list[Entry | _Unreadable] = []
    for number, raw in enumerate(raws, start=1):
        try:
            items.append(parse_line(raw, number))
        except ValueError as exc:
            items.append(_Unreadable(number, str(exc)))
    if isinstance(items[0], _Unreadable) and not (torn and len(items) == 1):
        raise LedgerError(
            f"{str(path)!r} is not an lhs-federated ledger (JSON Lines of signed records): "
            f"line 1 is {items[0].reason}."
        )
    return items, torn


def load_entries(path: str | Path) -> list[Entry]:
    """The readable records of a ledger, without checking hashes or signatures.

    For displays (``lhs-fed audit show``); verify first to trust them.

    Raises
    ------
    LedgerError
        If the file is not a ledger.
    """
    items, _ = read_records(path)
    return [item for item in items if isinstance(item, Entry)]


def verify_ledger(
    path: str | Path,
    public_key: Ed25519PublicKey,
    *,
    anchor: Anchor | None = None,
    allow_open: bool = False,
) -> Verification:
    """Check every record's hash, signature and place in the chain.

    Parameters
    ----------
    path : str or Path
        The ledger file.
    public_key : Ed25519PublicKey
        The owner's public key; nothing else is trusted.
    anchor : Anchor, optional
        The final record as another file names it; catches truncation (and
        appended records) even by someone holding the private key.
    allow_open : bool
        Accept a coordinator ledger without its closing record (a study that
        is still running).

    Returns
    -------
    Verification
        The verdict, the intact records and the first problem.

    Raises
    ------
    LedgerError
        If the file is not a ledger at all.
    """
    path = Path(path)
    items, torn = read_records(path)
    entries: list[Entry] = []
    problem = _walk(items, torn, public_key, entries)
    if problem is None:
        problem = _check_end(entries, anchor, allow_open=allow_open)
    return Verification(path, tuple(entries), problem, fingerprint(public_key))


def _walk(
    items: list[Entry | _Unreadable],
    torn: bool,
    public_key: Ed25519PublicKey,
    entries: list[Entry],
) -> Problem | None:
    positions: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, Entry):
            positions.setdefault(item.seq, []).append(index)
    previous = GENESIS
    for index, item in enumerate(items):
        checked = _check_record(item, items, index, public_key, entries, previous, positions)
        if isinstance(checked, Problem):
            if torn and index == len(items) - 1:
                return Problem(
                    "torn last line",
                    checked.line,
                    None,
                    "the file ends in the middle of a record (an append cut short by a crash, "
                    f"or the file was cut); the {len(entries)} records before it are intact.",
                )
            return checked
        entries.append(checked)
        previous = checked.hash
    return None


def _check_record(
    item: Entry | _Unreadable,
    items: list[Entry | _Unreadable],
    index: int,
    public_key: Ed25519PublicKey,
    entries: list[Entry],
    previous: str,
    positions: dict[int, list[int]],
) -> Problem | Entry:
    """The problem with ``item``, or ``item`` itself if it is the next good record."""
    expected = len(entries)
    if isinstance(item, _Unreadable):
        return Problem("modified", item.line, None, f"the line is not a record: {item.reason}")
    if not item.content_matches_hash():
        return Problem("modified", item.line, item.seq, "its content no longer matches its hash")
    if not item.signed_by(public_key):
        detail = "its hash is not signed by the given public key"
        if expected == 0:
            named = item.data.get("key_fingerprint")
            detail += (
                f" ({fingerprint(public_key)}); the ledger names key {named}: "
                "wrong public key, or a forged ledger"
            )
        return Problem("bad signature", item.line, item.seq, detail)
    if entries and entries[-1].kind in _closing_kinds(entries):
        return Problem(
            "inserted",
            item.line,
            item.seq,
            f"it comes after the closing record {entries[-1].seq} ({entries[-1].kind})",
        )
    if item.seq != expected or item.prev_hash != previous:
        return _misplaced(item, items, index, entries, previous, positions)
    if expected == 0 and (item.kind != HEADER or item.data.get("format") != FORMAT):
        return Problem("modified", item.line, 0, f"record 0 is not a {HEADER!r} header of {FORMAT}")
    return item


def _misplaced(
    item: Entry,
    items: list[Entry | _Unreadable],
    index: int,
    entries: list[Entry],
    previous: str,
    positions: dict[int, list[int]],
) -> Problem:
    """Say what a validly signed record in the wrong place is doing there."""
    seq, line, expected = item.seq, item.line, len(entries)
    foreign = (
        "it does not chain to any record of this ledger: a record of another ledger "
        "signed with the same key"
    )
    if seq < expected:
        original = entries[max(seq, 0)]
        if original.hash == item.hash:
            return Problem(
                "inserted", line, seq, f"a second copy of record {seq} (line {original.line})"
            )
        return Problem(
            "inserted",
            line,
            seq,
            f"record {seq} is already at line {original.line}; this one belongs to another "
            "ledger signed with the same key",
        )
    if seq == expected:  # right number, wrong chain
        following = items[index + 1] if index + 1 < len(items) else None
        if (
            isinstance(following, Entry)
            and following.seq == expected
            and following.prev_hash == previous
        ):
            return Problem("inserted", line, seq, f"{foreign}, before the genuine record {seq}")
        return Problem(
            "modified",
            line,
            seq,
            f"record {seq} was replaced: this one does not chain to record {expected - 1} "
            "(a record of another ledger signed with the same key)",
        )
    copies = [i for i in positions[seq] if i != index and _hash_of(items[i]) == item.hash]
    if copies:
        return Problem(
            "inserted",
            line,
            seq,
            f"a copy of record {seq}, which also appears at line {items[copies[0]].line}",
        )
    later = [i for i in positions.get(expected, []) if i > index]
    chains = any(_hash_of(items[i]) == item.prev_hash for i in positions.get(seq - 1, []))
    if later and not chains:
        return Problem("inserted", line, seq, foreign)
    if later:
        return Problem(
            "reordered",
            line,
            seq,
            f"record {seq} stands where record {expected} belongs; record {expected} is "
            f"further down, at line {items[later[0]].line}",
        )
    if seq == expected + 1:
        missing = f"record {expected} is"
    else:
        missing = f"records {expected}-{seq - 1} are"
    return Problem("deleted", line, seq, f"{missing} missing before it")


def _hash_of(item: Entry | _Unreadable) -> str | None:
    return item.hash if isinstance(item, Entry) else None


def _closing_kinds(entries: list[Entry]) -> tuple[str, ...]:
    return CLOSING_KINDS.get(str(entries[0].data.get("role")), ())


def _check_end(entries: list[Entry], anchor: Anchor | None, *, allow_open: bool) -> Problem | None:
    last = entries[-1]
    if anchor is not None:
        if last.seq == anchor.seq and last.hash == anchor.hash:
            return None
        if anchor.seq < len(entries) and entries[anchor.seq].hash == anchor.hash:
            extra = entries[anchor.seq + 1]
            return Problem(
                "inserted",
                extra.line,
                extra.seq,
                f"{len(entries) - 1 - anchor.seq} record(s) follow record {anchor.seq}, "
                f"which {anchor.source} names as the final record",
            )
        if last.seq < anchor.seq:
            return Problem(
                "truncated",
                last.line + 1,
                None,
                f"the ledger ends at record {last.seq}, but {anchor.source} names record "
                f"{anchor.seq} (hash {anchor.hash[:16]}…) as its final record: records were "
                "cut off the end",
            )
        found = entries[anchor.seq]
        return Problem(
            "modified",
            found.line,
            found.seq,
            f"{anchor.source} names hash {anchor.hash[:16]}… for record {anchor.seq}, the ledger "
            f"has {found.hash[:16]}…: the ledger was rewritten and re-signed",
        )
    closing = _closing_kinds(entries)
    if closing and last.kind not in closing and not allow_open:
        return Problem(
            "truncated",
            last.line + 1,
            None,
            f"the ledger ends at record {last.seq} ({last.kind}) without a closing record "
            f"({' or '.join(closing)}): its end was cut off, or the coordinator stopped "
            "without closing it (use --allow-open for a study still running)",
        )
    return None
