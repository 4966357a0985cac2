"""A site's approvals registry: which studies, with which code, the site agreed to run.

The registry is a ledger (role ``approvals``) the site owns and signs with its
own key, so an approval cannot be added or a revocation removed without the
site's key, and the file's history cannot be rewritten unnoticed. Each
approval names:

- the study hash (the SHA-256 of the resolved study, ``lhs-fed study hash``);
- the code hash: in deployment the SHA-256 of the Flower App bundle (FAB) that
  will run the study, in simulation the hash of the installed lhs-federated
  package (:func:`~lhs_federated.governance.code.installed_code_hash`);
- who approved it, when and why.

A revocation withdraws the approval of a study (for one code version or for
all). :meth:`ApprovalRegistry.check` is what a site runs before any study
code: it verifies the registry with the site's public key, replays it, and
either returns the approval in force or raises
:class:`~lhs_federated.errors.SiteRefusal` with a reason the coordinator can
act on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lhs_federated.errors import ConfigError, SiteRefusal
from lhs_federated.governance.ledger import Entry, Ledger
from lhs_federated.governance.verify import verify_ledger

APPROVAL = "approval"
REVOCATION = "revocation"
ROLE = "approvals"

# Registries verified by this process: (public key, site, SHA-256 of the file's bytes)
# -> (state, record hashes, ledger head); see _replay.
_VERIFIED: dict[
    tuple[bytes, str, bytes],
    tuple[dict[tuple[str, str], Any], frozenset[str], dict[str, Any] | None],
] = {}
_VERIFIED_MAX = 100_000


@dataclass(frozen=True)
class Approval:
    """An approval in force at a site.

    Attributes
    ----------
    site : str
        The approving site.
    study_hash, code_hash : str
        What was approved: this study, run by this code.
    study_name : str
        The study's name, for people reading the registry.
    approved_by, approved_at, reason : str
        Who approved it, when (UTC) and why.
    preapproved : bool
        Whether a simulated site approved it because the study declared its
        simulated sites pre-approved (``[governance] preapproved = true``).
    record_hash : str
        Hash of the approval record in the registry; site ledger records cite it.
    coordinator_key : str or None
        Fingerprint of the only coordinator ledger key the site accepts for
        this study (``lhs-fed site approve --coordinator-key``); None: any,
        each recorded as it comes.
    snapshot_hash : str or None
        An OMOP study: the SHA-256 of the site's frozen cohort snapshot the
        approval covers (:mod:`lhs_federated.data.omop.snapshot`); a run on
        any other snapshot is refused.
    """

    site: str
    study_hash: str
    code_hash: str
    study_name: str
    approved_by: str
    approved_at: str
    reason: str
    preapproved: bool
    record_hash: str
    coordinator_key: str | None = None
    snapshot_hash: str | None = None

    @classmethod
    def from_entry(cls, site: str, entry: Entry) -> Approval:
        """The approval an ``approval`` record states."""
        data = entry.data
        return cls(
            site=site,
            study_hash=str(data["study_hash"]),
            code_hash=str(data["code_hash"]),
            study_name=str(data.get("study_name", "")),
            approved_by=str(data["by"]),
            approved_at=entry.time,
            reason=str(data["reason"]),
            preapproved=bool(data.get("preapproved", False)),
            record_hash=entry.hash,
            coordinator_key=data.get("coordinator_key"),
            snapshot_hash=data.get("snapshot_hash"),
        )


@dataclass(frozen=True)
class Revocation:
    """A withdrawn approval: of one code version, or of every version (``code_hash`` None)."""

    study_hash: str
    code_hash: str | None
    revoked_by: str
    revoked_at: str
    reason: str
    record_hash: str


class ApprovalRegistry:
    """One site's approvals, stored in a ledger signed by the site's key.

    Parameters
    ----------
    path : Path
        The registry file (``approvals.jsonl`` in a site folder).
    site : str
        The site's name; the registry's header must name it.
    public_key : Ed25519PublicKey
        The site's public key; checks trust nothing else.
    key : Ed25519PrivateKey, optional
        The site's private key, needed only to approve or revoke.
    """

    def __init__(
        self,
        path: Path,
        *,
        site: str,
        public_key: Ed25519PublicKey,
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.path = Path(path)
        self.site = site
        self.public_key = public_key
        self._key = key
        self._hashes: frozenset[str] = frozenset()
        self._head: dict[str, Any] | None = None

    def approve(
        self,
        study_hash: str,
        code_hash: str,
        *,
        study_name: str,
        by: str,
        reason: str,
        preapproved: bool = False,
        site_ledger: Mapping[str, Any] | None = None,
        coordinator_key: str | None = None,
        snapshot_hash: str | None = None,
    ) -> Approval:
        """Record that the site approves ``study_hash`` run by ``code_hash``.

        ``site_ledger`` names the site ledger's last record (``seq``, ``hash``)
        at the time: the registry then anchors the ledger, so a site ledger
        rolled back to before it is detected. ``snapshot_hash`` binds the
        approval to the site's snapshot of an OMOP study's cohort.

        Raises
        ------
        ConfigError
            If a hash is not 64 hex digits, ``by`` or ``reason`` is empty, or
            the registry is not intact (approving on top of a damaged registry
            would hide the damage).
        """
        _check_hash(study_hash, "study hash")
        _check_hash(code_hash, "code hash")
        if snapshot_hash is not None:
            _check_hash(snapshot_hash, "snapshot hash")
        for name, value in (("by", by), ("reason", reason)):
            if not value.strip():
                raise ConfigError(f"an approval needs a non-empty {name!r}: who approves, and why.")
        if self.path.is_file():
            self._replay()  # never approve on top of a damaged registry
        entry = self._ledger().append(
            APPROVAL,
            {
                "study_hash": study_hash,
                "code_hash": code_hash,
                "study_name": study_name,
                "by": by,
                "reason": reason,
                "preapproved": preapproved,
                **({"site_ledger": dict(site_ledger)} if site_ledger else {}),
                **({"coordinator_key": coordinator_key} if coordinator_key else {}),
                **({"snapshot_hash": snapshot_hash} if snapshot_hash else {}),
            },
        )
        return Approval.from_entry(self.site, entry)

    def revoke(
        self,
        study_hash: str,
        *,
        code_hash: str | None = None,
        by: str,
        reason: str,
        site_ledger: Mapping[str, Any] | None = None,
    ) -> Revocation:
        """Withdraw the approval of ``study_hash`` (one code version, or all).

        ``site_ledger`` anchors the site ledger as for :meth:`approve`.

        Raises
        ------
        ConfigError
            If no approval of that study (and code) is in force.
        """
        state = self._replay()
        in_force = [
            approval
            for (study, code), approval in state.items()
            if study == study_hash and isinstance(approval, Approval) and code_hash in (None, code)
        ]
        if not in_force:
            which = "" if code_hash is None else f" with code {code_hash[:12]}…"
            raise ConfigError(
                f"site {self.site!r} has no approval of study {study_hash[:12]}…{which} in force "
                f"({self.path}); `lhs-fed site approvals` lists those that are."
            )
        if not by.strip() or not reason.strip():
            raise ConfigError("a revocation needs a non-empty 'by' and 'reason'.")
        entry = self._ledger().append(
            REVOCATION,
            {
                "study_hash": study_hash,
                "code_hash": code_hash,
                "by": by,
                "reason": reason,
                **({"site_ledger": dict(site_ledger)} if site_ledger else {}),
            },
        )
        return Revocation(study_hash, code_hash, by, entry.time, reason, entry.hash)

    def site_ledger_head(self) -> dict[str, Any] | None:
        """The site ledger's last record as the registry's latest anchoring record names it."""
        self._replay()
        return self._head

    @property
    def checked_head(self) -> dict[str, Any] | None:
        """:meth:`site_ledger_head` of the registry as the last :meth:`check` read it.

        A site's check reads the registry once and tests both its approval and
        its anchor of the site ledger against that one reading.
        """
        return self._head

    def approvals(self) -> list[Approval]:
        """The approvals in force, oldest first."""
        return [value for value in self._replay().values() if isinstance(value, Approval)]

    def check(
        self, study_hash: str, code_hash: str, *, anchor: tuple[str, str] | None = None
    ) -> Approval:
        """The approval of ``study_hash`` run by ``code_hash`` in force at this site.

        Parameters
        ----------
        study_hash, code_hash : str
            The study and the code that would run it.
        anchor : (str, str), optional
            The registry record the site's signed ledger names as its latest
            approval or revocation, and that ledger's path: the registry must
            hold it, or it is an older copy (a restored file that would undo a
            revocation).

        Raises
        ------
        SiteRefusal
            If the registry is missing or not intact, older than the site
            ledger, or the study is not approved, was approved for other code,
            or was revoked. The reason says which, and what the site's data
            steward can do.
        """
        try:
            state = self._replay()
        except ConfigError as error:
            raise SiteRefusal(self.site, error.message) from error
        if anchor is not None and anchor[0] not in self._hashes:
            raise SiteRefusal(
                self.site,
                f"the approvals registry {str(self.path)!r} lacks record {anchor[0][:16]}…, "
                f"which the site's signed ledger {anchor[1]!r} names as its latest approval or "
                "revocation: the registry is an older copy (restored from a backup?), and "
                "obeying it could undo a revocation; the site refuses every study until its "
                "data steward restores the current registry",
            )
        found = state.get((study_hash, code_hash))
        if isinstance(found, Approval):
            return found
        if isinstance(found, Revocation):
            raise SiteRefusal(
                self.site,
                f"the approval of study {study_hash[:12]}… was revoked at {found.revoked_at} "
                f"by {found.revoked_by}: {found.reason}",
            )
        other_code = [
            code
            for (study, code), value in state.items()
            if study == study_hash and isinstance(value, Approval)
        ]
        if other_code:
            raise SiteRefusal(
                self.site,
                f"study {study_hash[:12]}… is approved here only with code "
                f"{', '.join(c[:12] + '…' for c in other_code)}, not with the code "
                f"{code_hash[:12]}… that would run it; the site must approve that code first",
            )
        raise SiteRefusal(
            self.site,
            f"study {study_hash[:12]}… (code {code_hash[:12]}…) is not approved at this site; "
            "its data steward approves a study with `lhs-fed site approve STUDY.toml`",
        )

    def _replay(self) -> dict[tuple[str, str], Approval | Revocation]:
        """The registry's state: the last word on each (study, code) pair.

        Raises
        ------
        ConfigError
            If the registry does not exist or does not verify.
        """
        try:
            content = self.path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ConfigError(
                f"no study is approved at site {self.site!r} yet: there is no approvals "
                f"registry at {str(self.path)!r}"
            ) from None
        # A state verified earlier in this process is reused for the same bytes (by
        # their SHA-256), the same site and the same public key: verification depends
        # on nothing else, so the cache can never grant what the file does not. Any
        # change to the file (an approval, a revocation, a restored copy) is a new
        # verification.
        key = (self.public_key.public_bytes_raw(), self.site, hashlib.sha256(content).digest())
        cached = _VERIFIED.get(key)
        if cached is None:
            state = self._verified_state()
            if self.path.read_bytes() != content:  # changed while verifying: verified, not kept
                return state
            if len(_VERIFIED) >= _VERIFIED_MAX:
                _VERIFIED.clear()
            cached = _VERIFIED[key] = (dict(state), self._hashes, self._head)
        self._hashes, self._head = cached[1], cached[2]
        return dict(cached[0])

    def _verified_state(self) -> dict[tuple[str, str], Approval | Revocation]:
        verification = verify_ledger(self.path, self.public_key)
        if not verification.ok:
            raise ConfigError(
                f"the approvals registry {str(self.path)!r} of site {self.site!r} failed "
                f"verification ({verification.problem.describe()}); the site refuses every "
                "study until its data steward restores it"
            )
        header = verification.entries[0].data
        if header.get("role") != ROLE or header.get("owner") != self.site:
            raise ConfigError(
                f"{str(self.path)!r} is the {header.get('role')} ledger of "
                f"{header.get('owner')!r}, not the approvals registry of site {self.site!r}"
            )
        state: dict[tuple[str, str], Approval | Revocation] = {}
        self._hashes = frozenset(entry.hash for entry in verification.entries)
        heads = [e.data["site_ledger"] for e in verification.entries if "site_ledger" in e.data]
        self._head = dict(heads[-1]) if heads else None
        for entry in verification.entries[1:]:
            data = entry.data
            if entry.kind == APPROVAL:
                state[(data["study_hash"], data["code_hash"])] = Approval.from_entry(
                    self.site, entry
                )
            elif entry.kind == REVOCATION:
                revocation = Revocation(
                    data["study_hash"],
                    data.get("code_hash"),
                    str(data["by"]),
                    entry.time,
                    str(data["reason"]),
                    entry.hash,
                )
                for study, code in list(state):
                    if study == revocation.study_hash and revocation.code_hash in (None, code):
                        state[(study, code)] = revocation
        return state

    def _ledger(self) -> Ledger:
        if self._key is None:
            raise ConfigError(
                f"changing the approvals of site {self.site!r} needs the site's private key."
            )
        return Ledger.open(self.path, self._key, role=ROLE, owner=self.site)


def check_snapshot_binding(
    approvals: list[Approval], study_hash: str, snapshot_hash: str, *, site: str
) -> Approval:
    """The approval of ``study_hash`` in force that binds the snapshot ``snapshot_hash``.

    Raises
    ------
    SiteRefusal
        If the study is approved only for another snapshot (the site
        re-extracted it since), or for none; naming the hashes.
    """
    of_study = [a for a in approvals if a.study_hash == study_hash]
    for approval in of_study:
        if approval.snapshot_hash == snapshot_hash:
            return approval
    bound = sorted({a.snapshot_hash for a in of_study if a.snapshot_hash})
    if bound:
        why = (
            f"its approval binds snapshot {', '.join(bound)}, but the snapshot in force is "
            f"{snapshot_hash} (the site re-extracted the study since)"
        )
    else:
        why = (
            f"no approval of it in force binds a cohort snapshot (the snapshot in force is "
            f"{snapshot_hash})"
        )
    raise SiteRefusal(
        site,
        f"study {study_hash[:12]}… reads the site's OMOP snapshot, and {why}; the site's data "
        "steward approves it again with `lhs-fed site approve STUDY.toml --config site.toml`",
    )


def _check_hash(value: str, what: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"the {what} must be 64 lowercase hex digits (a SHA-256); got {value!r}.")
