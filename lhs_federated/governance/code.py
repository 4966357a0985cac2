"""Hashes of the code that runs a study, as sites approve it.

In deployment the code is the Flower App bundle (FAB) the SuperLink ships:
its hash is the SHA-256 of the ``.fab`` file, as Flower itself computes it.
In simulation the code is the installed lhs-federated package, hashed file
by file, so a site's approval (and a ledger's record) names exactly the code
that ran.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from lhs_federated.errors import ConfigError

#: How a ledger names each kind of code.
FAB = "fab"
INSTALLED = "installed-package"


def fab_hash(path: str | Path) -> str:
    """SHA-256 of a FAB file's bytes (what ``flwr build`` and the SuperLink compute).

    Raises
    ------
    ConfigError
        If the file does not exist or is not a FAB (a zip archive).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"FAB file {str(path)!r} does not exist; build the study's app with `flwr build`."
        )
    data = path.read_bytes()
    if not data.startswith(b"PK\x03\x04"):
        raise ConfigError(
            f"{str(path)!r} is not a Flower App bundle (a .fab is a zip archive); build one "
            "with `flwr build`."
        )
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def installed_code_hash() -> str:
    """SHA-256 over every source file of the installed lhs-federated package.

    Each file contributes its path relative to the package and its own
    SHA-256, in sorted order, so the hash changes when any file changes and
    not when files are merely touched. Cached: the code does not change while
    a process runs.
    """
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        relative = path.relative_to(package).as_posix()
        digest.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()
