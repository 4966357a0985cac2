"""Offline verification of a ledger with its owner's public key alone.

:func:`verify_ledger` checks every record on its own (its content against its
hash, its hash against its signature), then rebuilds the chain from the
records that verify, and names each thing that is wrong, and only that:

- ``modified``: a record's content no longer matches its hash, or a line is
  not a record at all;
- ``bad signature``: the hash is not signed by the given public key (a forged
  or re-hashed record; every record: the wrong public key or a forged
  ledger), or the header names another key than the one that signed it;
- ``deleted``: sequence numbers skip records that are nowhere in the file;
- ``inserted``: a copy of a record, a record of another ledger signed with the
  same key, a record after the closing record, or records after the final
  record another file names;
- ``reordered``: records stand out of their order in the file;
- ``truncated``: a coordinator ledger ends without its closing record, or
  before the final record named in ``summary.json`` or a site's ledger;
- ``torn last line``: the file ends in the middle of a record (a crash while
  appending, or a cut through a line).

One bad record does not hide the rest: its successors still verify against
their own hashes and signatures and chain through its stored hash, so an
edit of record 11 is reported as exactly that, with records 12 onwards
intact, and never as deletions or truncation that did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lhs_federated.governance.keys import fingerprint
from lhs_federated.governance.ledger import (
    CLOSING_KINDS,
    FORMAT,
    HEADER,
    Entry,
    LedgerError,
    parse_line,
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a ledger.

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
    """A record of a ledger as another file names it, and where the ledger ends after it.

    Attributes
    ----------
    seq : int
        The named record's sequence number.
    hash : str
        The named record's hash.
    source : str
        Which file says so (``summary.json``, a site's ledger), for messages.
    then : int
        How many records follow it (``summary.json`` names ``study-finished``,
        which the seal follows: 1; a site names the final record: 0).
    """

    seq: int
    hash: str
    source: str
    then: int = 0


@dataclass(frozen=True)
class Verification:
    """The result of :func:`verify_ledger`.

    Attributes
    ----------
    path : Path
        The ledger file.
    entries : tuple of Entry
        The records that verify, in chain order (all of them when intact).
    problems : tuple of Problem
        Everything wrong, in file order; empty when the ledger is intact.
    key_fingerprint : str
        Fingerprint of the public key it was verified with.
    unverified : tuple of Entry
        Records that are readable but do not verify (modified, badly signed):
        what they claim, for a cross-check to leave aside rather than count
        as missing.
    """

    path: Path
    entries: tuple[Entry, ...]
    problems: tuple[Problem, ...]
    key_fingerprint: str
    unverified: tuple[Entry, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the ledger is intact."""
        return not self.problems

    @property
    def problem(self) -> Problem | None:
        """The first problem in the file, or None."""
        return self.problems[0] if self.problems else None

    @property
    def header(self) -> Entry | None:
        """Record 0, if it verified."""
        return self.entries[0] if self.entries and self.entries[0].seq == 0 else None

    @property
    def final(self) -> Entry | None:
        """The last record that verified."""
        return self.entries[-1] if self.entries else None

    def describe(self) -> str:
        """One paragraph: the verdict and either the final record or every problem."""
        if self.problems:
            found = "; ".join(problem.describe() for problem in self.problems)
            return (
                f"{self.path}: NOT INTACT: {len(self.problems)} problem(s): {found}. "
                f"The other {len(self.entries)} records verify (hash, signature, chain)."
            )
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
        A record as another file names it, and how many records follow it;
        catches truncation (and appended records) even by someone holding
        the private key.
    allow_open : bool
        Accept a coordinator ledger without its closing record (a study that
        is still running).

    Returns
    -------
    Verification
        The verdict, the records that verify and every problem.

    Raises
    ------
    LedgerError
        If the file is not a ledger at all.
    """
    path = Path(path)
    items, torn = read_records(path)
    walk = _Walk(items, torn, public_key)
    problems = walk.run(anchor, allow_open=allow_open)
    problems.sort(key=lambda problem: (problem.line, problem.seq or 0))
    return Verification(
        path,
        tuple(walk.chain[seq] for seq in sorted(walk.chain)),
        tuple(problems),
        fingerprint(public_key),
        tuple(walk.unverified),
    )


class _Walk:
    """One verification: classify each line, rebuild the chain, check its end."""

    def __init__(
        self, items: list[Entry | _Unreadable], torn: bool, public_key: Ed25519PublicKey
    ) -> None:
        self.items = items
        self.torn = torn
        self.key = public_key
        self.problems: list[Problem] = []
        self.good: list[tuple[int, Entry]] = []  # (file index, record) that verify
        self.bad: dict[int, int | None] = {}  # file index -> claimed (or inferred) seq
        self.unverified: list[Entry] = []
        self.chain: dict[int, Entry] = {}
        self.position: dict[int, int] = {}  # seq -> file index of the chain's record

    def run(self, anchor: Anchor | None, *, allow_open: bool) -> list[Problem]:
        self._classify()
        if not self.good and len(self.unverified) == len(self.items):
            return self.problems  # nothing verifies: one finding says so
        self._build_chain()
        self._check_order()
        self._check_gaps()
        self._check_header()
        self._check_end(anchor, allow_open=allow_open)
        return self.problems

    def _classify(self) -> None:
        last_seq = -1
        signature_failures = []
        for index, item in enumerate(self.items):
            torn_tail = self.torn and index == len(self.items) - 1
            if isinstance(item, _Unreadable):
                self.bad[index] = last_seq + 1
                last_seq += 1
                if torn_tail:
                    self.problems.append(_torn(item.line, len(self.items) - 1))
                else:
                    self.problems.append(
                        Problem(
                            "modified", item.line, None, f"the line is not a record: {item.reason}"
                        )
                    )
                continue
            last_seq = item.seq
            if not item.content_matches_hash():
                self.bad[index] = item.seq
                self.unverified.append(item)
                self.problems.append(
                    Problem("modified", item.line, item.seq, _modified_detail(item, self.items))
                )
            elif not item.signed_by(self.key):
                self.bad[index] = item.seq
                self.unverified.append(item)
                signature_failures.append(item)
                self.problems.append(
                    Problem(
                        "bad signature",
                        item.line,
                        item.seq,
                        "its hash is not signed by the given public key "
                        f"({fingerprint(self.key)}): a forged or re-hashed record",
                    )
                )
            else:
                self.good.append((index, item))
        if signature_failures and len(signature_failures) == len(self.items):
            named = signature_failures[0].data.get("key_fingerprint")
            self.problems = [
                Problem(
                    "bad signature",
                    signature_failures[0].line,
                    signature_failures[0].seq,
                    f"none of its {len(self.items)} records is signed by the given public key "
                    f"({fingerprint(self.key)}); the ledger names key {named}: wrong public "
                    "key, or a forged ledger",
                )
            ]

    def _build_chain(self) -> None:
        """Pick, for each sequence number, the record that belongs to this ledger."""
        by_seq: dict[int, list[tuple[int, Entry]]] = {}
        for index, entry in self.good:
            by_seq.setdefault(entry.seq, []).append((index, entry))
        next_links = {entry.prev_hash for _, entry in self.good}
        for seq in sorted(by_seq):
            candidates = by_seq[seq]
            chosen = self._choose(seq, candidates, next_links)
            self.chain[seq], self.position[seq] = chosen[1], chosen[0]
            for index, entry in candidates:
                if index != chosen[0]:
                    self.problems.append(self._extra(entry, chosen))
        for seq in sorted(self.chain):
            before = self.chain.get(seq - 1)
            entry = self.chain[seq]
            if before is not None and entry.prev_hash != before.hash:
                self.problems.append(
                    Problem(
                        "inserted",
                        entry.line,
                        seq,
                        f"it does not chain to record {seq - 1} (line {before.line}): a record "
                        "of another ledger signed with the same key, in place of the genuine "
                        f"record {seq}",
                    )
                )
                del self.chain[seq]
                del self.position[seq]

    def _choose(
        self, seq: int, candidates: list[tuple[int, Entry]], next_links: set[str]
    ) -> tuple[int, Entry]:
        if len(candidates) == 1:
            return candidates[0]
        before = self.chain.get(seq - 1)
        hashes = {entry.hash for _, entry in candidates}
        if len(hashes) > 1:  # different records claim this place: the one that chains
            linked = [
                c
                for c in candidates
                if (before is None or c[1].prev_hash == before.hash) and c[1].hash in next_links
            ]
            linked = linked or [
                c for c in candidates if before is not None and c[1].prev_hash == before.hash
            ]
            return (linked or candidates)[0]
        after = self.position.get(seq - 1, -1)  # copies: the one in its place in the file
        in_place = [c for c in candidates if c[0] > after]
        return (in_place or candidates)[0]

    def _extra(self, entry: Entry, chosen: tuple[int, Entry]) -> Problem:
        if entry.hash == chosen[1].hash:
            return Problem(
                "inserted",
                entry.line,
                entry.seq,
                f"a second copy of record {entry.seq} (line {chosen[1].line})",
            )
        return Problem(
            "inserted",
            entry.line,
            entry.seq,
            f"record {entry.seq} is already at line {chosen[1].line}; this one belongs to "
            "another ledger signed with the same key",
        )

    def _check_order(self) -> None:
        order = sorted(self.chain, key=lambda seq: self.position[seq])
        expected = sorted(order)
        if order == expected:
            return
        differ = [i for i, (a, b) in enumerate(zip(order, expected, strict=True)) if a != b]
        if len(differ) == 2:
            first, second = (self.chain[order[i]] for i in differ)
            self.problems.append(
                Problem(
                    "reordered",
                    first.line,
                    first.seq,
                    f"records {second.seq} and {first.seq} are swapped: record {first.seq} "
                    f"stands at line {first.line}, record {second.seq} at line {second.line}",
                )
            )
            return
        for seq in _out_of_order(order):
            entry = self.chain[seq]
            self.problems.append(
                Problem(
                    "reordered",
                    entry.line,
                    seq,
                    f"record {seq} stands at line {entry.line}, out of its place in the file",
                )
            )

    def _check_gaps(self) -> None:
        claimed = {seq for seq in self.bad.values() if seq is not None}
        present = set(self.chain) | claimed
        for seq in sorted(self.chain):
            missing = [s for s in range(_previous(present, seq) + 1, seq) if s not in present]
            if not missing:
                continue
            entry = self.chain[seq]
            span = (
                f"record {missing[0]} is"
                if len(missing) == 1
                else (f"records {missing[0]}-{missing[-1]} are")
            )
            self.problems.append(Problem("deleted", entry.line, seq, f"{span} missing before it"))

    def _check_header(self) -> None:
        header = self.chain.get(0)
        if header is None:
            return
        if header.kind != HEADER or header.data.get("format") != FORMAT:
            self.problems.append(
                Problem(
                    "modified", header.line, 0, f"record 0 is not a {HEADER!r} header of {FORMAT}"
                )
            )
            return
        named = header.data.get("key_fingerprint")
        if named != fingerprint(self.key):
            self.problems.append(
                Problem(
                    "bad signature",
                    header.line,
                    0,
                    f"the header names key {named}, but the records are signed by "
                    f"{fingerprint(self.key)}: the ledger was re-signed with another key",
                )
            )

    def _check_end(self, anchor: Anchor | None, *, allow_open: bool) -> None:
        if not self.chain:
            return
        last_seq = max(self.chain)
        last = self.chain[last_seq]
        # A bad record right after the last good one may be the modified end of the ledger.
        tail = max((s for s in self.bad.values() if s is not None), default=-1)
        ends_at = max(last_seq, tail)
        if anchor is not None:
            final = anchor.seq + anchor.then
            if ends_at < final:
                self.problems.append(
                    Problem(
                        "truncated",
                        len(self.items) + 1,
                        None,
                        f"the ledger ends at record {ends_at}, but {anchor.source} names record "
                        f"{final} as its final record: records were cut off the end",
                    )
                )
                return
            named = self.chain.get(anchor.seq)
            if named is not None and named.hash != anchor.hash:
                self.problems.append(
                    Problem(
                        "modified",
                        named.line,
                        named.seq,
                        f"{anchor.source} names hash {anchor.hash[:16]}… for record "
                        f"{anchor.seq}, the ledger has {named.hash[:16]}…: the ledger was "
                        "rewritten and re-signed",
                    )
                )
            extra = [s for s in sorted(self.chain) if s > final]
            if extra:
                first = self.chain[extra[0]]
                self.problems.append(
                    Problem(
                        "inserted",
                        first.line,
                        first.seq,
                        f"{len(extra)} record(s) follow record {final}, which {anchor.source} "
                        "names as the final record",
                    )
                )
                for seq in extra:
                    del self.chain[seq]
            return
        closing = CLOSING_KINDS.get(str(self._role()), ())
        if not closing:
            return
        closed_at = next((s for s in sorted(self.chain) if self.chain[s].kind in closing), None)
        if closed_at is not None:
            extra = [s for s in sorted(self.chain) if s > closed_at]
            for seq in extra:
                entry = self.chain.pop(seq)
                closer = self.chain[closed_at]
                self.problems.append(
                    Problem(
                        "inserted",
                        entry.line,
                        seq,
                        f"it comes after the closing record {closer.seq} ({closer.kind})",
                    )
                )
            return
        if tail > last_seq or allow_open or (self.torn and self.bad):
            return  # the end is there but damaged (already reported), or still open
        self.problems.append(
            Problem(
                "truncated",
                last.line + 1,
                None,
                f"the ledger ends at record {last.seq} ({last.kind}) without a closing record "
                f"({' or '.join(closing)}): its end was cut off, or the coordinator stopped "
                "without closing it (use --allow-open for a study still running)",
            )
        )

    def _role(self) -> object:
        header = self.chain.get(0)
        if header is not None:
            return header.data.get("role")
        claimed = next((e for e in self.unverified if e.seq == 0), None)
        return claimed.data.get("role") if claimed is not None else None


def _torn(line: int, intact: int) -> Problem:
    return Problem(
        "torn last line",
        line,
        None,
        "the file ends in the middle of a record (an append cut short by a crash, "
        f"or the file was cut); the {intact} records before it are intact.",
    )


def _modified_detail(entry: Entry, items: list[Entry | _Unreadable]) -> str:
    follows = any(isinstance(i, Entry) and i.prev_hash == entry.hash for i in items)
    return "its content no longer matches its hash" + (
        " (the next record still chains to its stored hash: edited in place)" if follows else ""
    )


def _previous(present: set[int], seq: int) -> int:
    return max((s for s in present if s < seq), default=-1)


def _out_of_order(order: list[int]) -> list[int]:
    """The records outside a longest increasing run of ``order`` (those that moved)."""
    tails: list[int] = []
    tail_index: list[int] = []
    parent = [-1] * len(order)
    for i, value in enumerate(order):
        low, high = 0, len(tails)
        while low < high:
            middle = (low + high) // 2
            if tails[middle] < value:
                low = middle + 1
            else:
                high = middle
        if low == len(tails):
            tails.append(value)
            tail_index.append(i)
        else:
            tails[low], tail_index[low] = value, i
        parent[i] = tail_index[low - 1] if low > 0 else -1
    kept, i = set(), tail_index[-1] if tail_index else -1
    while i >= 0:
        kept.add(order[i])
        i = parent[i]
    return [value for value in order if value not in kept]
