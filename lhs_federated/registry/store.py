"""A registry folder of model releases: one immutable folder per version, signed.

Layout (default root ``registry/``)::

    registry/ledger.jsonl             signed, hash-chained: every publication and decision
    registry/NAME/v1/                 one release, never changed once written:
        model/model.npz, model.json, model.pkl   the model in its exported forms
        study.resolved.toml                      the study that trained it
        reference.json                           training reference for drift, per-site metrics
        card.json, card.md                       the model card
        manifest.json                            every file's SHA-256, parent, hashes
        manifest.sig                             Ed25519 signature of manifest.json

A release is written to a hidden staging folder and renamed into place, so a
failure leaves nothing half written; its files are made read-only. The
manifest is signed with the coordinator's ledger key and its hash recorded in
the registry ledger; :func:`verify_release` checks every file against the
manifest, the signature against the ledger's key and the manifest against its
ledger record, and names the first file that differs. Which version is
*current* (promoted) or *rejected*, and why, lives in the ledger, since the
release folders never change.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.keys import fingerprint, public_key_from_b64
from lhs_federated.governance.ledger import Ledger, canonical_json
from lhs_federated.governance.verify import load_entries

LEDGER = "ledger.jsonl"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
PUBLISHED, PROMOTED, REJECTED = "release-published", "release-promoted", "release-rejected"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"v(\d+)")


class ReleaseVerificationError(LhsError):
    """A release that does not match its signed manifest (exit code 1)."""

    exit_code = 1


@dataclass(frozen=True)
class ReleaseRef:
    """``NAME@VERSION`` (``registry:NAME@VERSION`` in a study)."""

    name: str
    version: str

    @classmethod
    def parse(cls, text: str) -> ReleaseRef:
        """Parse ``NAME@vN`` (an optional ``registry:`` prefix is dropped).

        Raises
        ------
        ConfigError
            If the text is not of that form.
        """
        body = text.removeprefix("registry:")
        name, _, version = body.partition("@")
        if not _NAME.fullmatch(name) or not _VERSION.fullmatch(version):
            raise ConfigError(
                f"release {text!r} is not NAME@VERSION (like 'cvd-risk@v2'; "
                "in a study: 'registry:cvd-risk@v2')."
            )
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def check_name(name: str) -> str:
    """A release name: letters, digits, '.', '_' and '-' (it names a folder)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"release name {name!r}: use letters, digits, '.', '_' and '-'.")
    return name


class Registry:
    """One registry folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, ref: ReleaseRef) -> Path:
        """Where a release lives."""
        return self.root / ref.name / ref.version

    def versions(self, name: str) -> list[str]:
        """A release name's versions, oldest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if _VERSION.fullmatch(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def names(self) -> list[str]:
        """Every release name in the registry."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def require(self, ref: ReleaseRef) -> Path:
        """The folder of an existing release.

        Raises
        ------
        ConfigError
            If it does not exist, naming the versions that do.
        """
        folder = self.folder(ref)
        if not (folder / MANIFEST).is_file():
            have = ", ".join(self.versions(ref.name)) or "none"
            raise ConfigError(
                f"no release {ref} in registry {str(self.root)!r} (versions of "
                f"{ref.name!r}: {have})."
            )
        return folder

    def next_version(self, name: str) -> str:
        """The version a new release of ``name`` gets."""
        versions = self.versions(name)
        return f"v{int(versions[-1][1:]) + 1}" if versions else "v1"

    def publish(
        self,
        ref: ReleaseRef,
        files: Mapping[str, Path | bytes],
        *,
        metadata: dict[str, Any],
        key: Ed25519PrivateKey,
    ) -> dict[str, Any]:
        """Write a release atomically, sign its manifest and record it in the ledger.

        ``files`` maps paths inside the release to source files or contents.

        Raises
        ------
        ConfigError
            If the version exists already (releases are immutable).
        """
        target = self.folder(ref)
        if target.exists():
            raise ConfigError(
                f"release {ref} exists already in {str(self.root)!r}; releases are "
                f"immutable: publish {self.next_version(ref.name)} instead."
            )
        staging = target.with_name(f".{ref.version}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for relative, source in files.items():
                path = staging / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, bytes):
                    path.write_bytes(source)
                else:
                    shutil.copyfile(source, path)
            hashes = {
                p.relative_to(staging).as_posix(): _sha256(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "name": ref.name,
                "version": ref.version,
                **metadata,
                "files": hashes,
                "signer": fingerprint(key.public_key()),
            }
            body = canonical_json(manifest)
            (staging / MANIFEST).write_bytes(body)
            (staging / SIGNATURE).write_text(
                base64.b64encode(key.sign(body)).decode("ascii") + "\n", encoding="ascii"
            )
            for path in staging.rglob("*"):
                if path.is_file():
                    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            ledger = self.ledger(key)
            os.replace(staging, target)
        except BaseException:
            _remove(staging)
            raise
        entry = ledger.append(
            PUBLISHED,
            {
                "release": str(ref),
                "manifest_sha256": hashlib.sha256(body).hexdigest(),
                **{k: metadata.get(k) for k in ("parent", "study_hash", "run_ledger_hash")},
            },
        )
        return {"folder": str(target), "manifest": manifest, "ledger_hash": entry.hash}

    def ledger(self, key: Ed25519PrivateKey) -> Ledger:
        """The registry's ledger, for appending with the coordinator's key."""
        return Ledger.open(self.root / LEDGER, key, role="coordinator", owner="coordinator")

    def decide(self, ref: ReleaseRef, *, promoted: bool, reason: str, key: Ed25519PrivateKey,
               evidence: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Record that a release is promoted (current) or rejected, and why."""
        self.require(ref)
        self.ledger(key).append(
            PROMOTED if promoted else REJECTED,
            {"release": str(ref), "reason": reason, **({"evidence": evidence} if evidence else {})},
        )

    def records(self) -> list[dict[str, Any]]:
        """The ledger's records (kind, data), oldest first."""
        if not (self.root / LEDGER).is_file():
            return []
        return [{"kind": e.kind, **e.data} for e in load_entries(self.root / LEDGER)[1:]]

    def status(self, name: str) -> dict[str, dict[str, str]]:
        """Each version's status (published, current, superseded, rejected) and reason."""
        found: dict[str, dict[str, str]] = {}
        current = None
        for record in self.records():
            ref = str(record.get("release", ""))
            if not ref.startswith(f"{name}@"):
                continue
            version = ref.split("@", 1)[1]
            if record["kind"] == PUBLISHED:
                found[version] = {"status": "published", "reason": ""}
            elif record["kind"] == PROMOTED:
                if current is not None:
                    found[current] = {"status": "superseded", "reason": f"by {version}"}
                current = version
                found[version] = {"status": "current", "reason": record.get("reason", "")}
            elif record["kind"] == REJECTED:
                found[version] = {"status": "rejected", "reason": record.get("reason", "")}
        return found

    def current(self, name: str) -> ReleaseRef | None:
        """The promoted version of ``name``, if any."""
        for version, state in self.status(name).items():
            if state["status"] == "current":
                return ReleaseRef(name, version)
        return None

    def manifest(self, ref: ReleaseRef) -> dict[str, Any]:
        """A release's manifest."""
        return json.loads((self.require(ref) / MANIFEST).read_text(encoding="utf-8"))

    def verify(self, ref: ReleaseRef) -> dict[str, Any]:
        """Check a release against its signed manifest and the ledger.

        Raises
        ------
        ReleaseVerificationError
            (exit code 1) Naming the file that was changed, added or removed,
            or the manifest whose signature or ledger record does not match.
        """
        folder = self.require(ref)
        body = (folder / MANIFEST).read_bytes()
        published = [
            r for r in self.records() if r["kind"] == PUBLISHED and r.get("release") == str(ref)
        ]
        if not published:
            raise ReleaseVerificationError(f"{ref}: no publication record in {self.root / LEDGER}.")
        if hashlib.sha256(body).hexdigest() != published[-1]["manifest_sha256"]:
            raise ReleaseVerificationError(
                f"{ref}: {folder / MANIFEST} was changed: its hash differs from the one "
                "the registry ledger recorded at publication."
            )
        header = load_entries(self.root / LEDGER)[0]
        public = public_key_from_b64(str(header.data["public_key"]))
        try:
            public.verify(base64.b64decode((folder / SIGNATURE).read_text()), body)
        except (InvalidSignature, ValueError, OSError) as error:
            raise ReleaseVerificationError(
                f"{ref}: {folder / SIGNATURE} is not the registry key's signature of "
                f"the manifest ({type(error).__name__})."
            ) from error
        manifest = json.loads(body)
        expected: dict[str, str] = manifest["files"]
        present = {
            p.relative_to(folder).as_posix(): p
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
        }
        for relative, digest in expected.items():
            if relative not in present:
                raise ReleaseVerificationError(f"{ref}: {folder / relative} is missing.")
            if _sha256(present[relative]) != digest:
                raise ReleaseVerificationError(
                    f"{ref}: {folder / relative} was changed after the release was signed."
                )
        extra = sorted(set(present) - set(expected))
        if extra:
            raise ReleaseVerificationError(
                f"{ref}: {folder / extra[0]} is not in the signed manifest."
            )
        return {"release": str(ref), "files": len(expected), "signer": manifest["signer"]}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove(folder: Path) -> None:
    if not folder.exists():
        return
    for path in folder.rglob("*"):
        path.chmod(stat.S_IRWXU)
    shutil.rmtree(folder, ignore_errors=True)
