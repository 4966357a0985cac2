"""When governance files reach the disk: at once, or together at the end of a block.

Every ledger append and every key file is flushed to disk before the call
returns (``fsync``), so a machine crash loses nothing that was recorded. A
simulation writes the same records for hundreds of simulated sites at once;
inside :func:`batched_durability` the writes still happen at once (other
processes and readers see them), but the flush waits for the block's end and is
one ``syncfs`` per file system instead of one ``fsync`` per file. The in-process
engine wraps each stage of a round (one round's training or evaluation at every
site) in one block, and a simulation's coordinator each whole round (its own
ledger's records of the round with the sites'), which ends before the round's
checkpoint is written.

This module has no dependency on the rest of the package, so the key and ledger
modules can both use it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_batch = threading.local()


def flush(fd: int, path: Path | None = None) -> None:
    """Make what was written to ``fd`` durable: now, or at the end of the current block.

    ``path`` names the file (its final name, if it is renamed before the block
    ends), so the block's end knows which file system to flush; without it the
    flush happens now.
    """
    pending = getattr(_batch, "pending", None)
    if pending is None or path is None:
        os.fsync(fd)
    else:
        pending.add(path)


def flush_folder(folder: Path) -> None:
    """Make a folder's entries (a file created or renamed in it) durable."""
    pending = getattr(_batch, "pending", None)
    if pending is not None:
        pending.add(folder)
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_batch() -> bool:
    """Whether this thread is inside a :func:`batched_durability` block."""
    return getattr(_batch, "pending", None) is not None


@contextmanager
def batched_durability() -> Iterator[None]:
    """Make the flushes inside the block happen together, when it ends.

    Every write still happens at once, so other appenders and readers see it
    and a crash of this process loses nothing; only the flush to disk waits
    for the end of the block. A crash of the machine inside the block can lose
    the block's writes (whole ledger records: a torn line is recovered as for
    any append), so a block must be a unit that is repeated on resume, as a
    simulation's round stage is. The bytes written are the same as without the
    block. Nested blocks flush with the outermost.
    """
    if in_batch():
        yield
        return
    _batch.pending = set()
    try:
        yield
    finally:
        paths, _batch.pending = _batch.pending, None
        sync_paths(paths)


@contextmanager
def immediate_durability() -> Iterator[None]:
    """Make every flush inside the block happen at once, even inside a batched block.

    For a caller that must sync each record as it is written whatever its
    caller batches (the in-process engine's ``batch_durability=False``).
    """
    pending = getattr(_batch, "pending", None)
    _batch.pending = None
    try:
        yield
    finally:
        _batch.pending = pending


def sync_paths(paths: set[Path]) -> None:
    """Flush ``paths`` (files and folders) to disk: one ``syncfs`` per file system."""
    by_device: dict[int, list[Path]] = {}
    for path in paths:
        try:
            by_device.setdefault(os.stat(path).st_dev, []).append(path)
        except FileNotFoundError:
            continue  # moved away since (a torn tail's side file); nothing to flush
    for group in by_device.values():
        if not _syncfs(group[0]):
            for path in group:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _syncfs(path: Path) -> bool:
    """Linux ``syncfs(2)`` on the file system holding ``path``; False where unavailable."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return syncfs(fd) == 0
    finally:
        os.close(fd)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # no C library to load symbols from: fsync each file instead
    _LIBC = None
