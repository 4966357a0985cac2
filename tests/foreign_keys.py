"""Key files of the wrong kind, for tests of clear key errors."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization


def write_foreign_key(path: Path, key, *, private: bool) -> Path:
    """Write ``key`` (or its public half) as PEM, mode 0600."""
    if private:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        data = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path
