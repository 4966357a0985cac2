"""A site's governance folder: its signing key, approvals registry and ledger.

A site folder holds::

    site.key         the site's Ed25519 private key (mode 0600)
    site.pub         its public key, for auditors
    approvals.jsonl  the approvals registry (studies and code the site agreed to run)
    ledger.jsonl     the site ledger: approvals, revocations, refusals, every
                     message the site sent (hash and size, epsilon if reported)
                     and the coordinator's final hash of every study it took part in

The site's runtime calls :meth:`SiteFolder.check` before any study code runs
(in deployment from the site's launcher, in simulation from the ClientApp's
governance mod) and :meth:`SiteFolder.record_sent` for every reply. None of
this imports Flower. In a site's launcher, for example::

    folder = SiteFolder.open(site_folder_path, site=config.site.name)
    gate = SiteGate(config.site.name, folder.check)      # refusals are recorded
    ...                                                   # after the reply is pushed:
    record_task(folder, message, reply)                   # lhs_federated.apps.site_governance
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lhs_federated.errors import ConfigError, SiteRefusal
from lhs_federated.governance.approval import (
    APPROVAL,
    REVOCATION,
    Approval,
    ApprovalRegistry,
    Revocation,
)
from lhs_federated.governance.approval import ROLE as APPROVALS_ROLE
from lhs_federated.governance.keys import (
    fingerprint,
    load_private_key,
    load_public_key,
    write_key_pair,
)
from lhs_federated.governance.ledger import (
    Entry,
    Ledger,
    canonical_json,
    parse_line,
    read_header,
)

KEY_FILE = "site.key"
PUBLIC_FILE = "site.pub"
APPROVALS_FILE = "approvals.jsonl"
LEDGER_FILE = "ledger.jsonl"
ROLE = "site"

# Kinds of site ledger records (approvals and revocations use the registry's kinds).
REFUSAL = "refusal"
MESSAGE_SENT = "message-sent"
STUDY_CLOSED = "study-closed"


@dataclass(frozen=True)
class SentMessage:
    """What a site sent in reply to one message: recorded in the site ledger.

    The coordinator records the same fields for the reply it received, so
    ``lhs-fed audit crosscheck`` can match the two records by ``reply_to``.

    Attributes
    ----------
    run_id : int
        Flower's run id.
    reply_to : str
        Id of the message this one answers.
    message_type : str
        ``query``, ``train``, ``evaluate`` (with an action suffix if any).
    server_round : int
        The round (0 for the discovery query).
    study_hash : str
        The study the message belonged to.
    status : str
        ``ok``, ``refused``, ``error`` (a deliberate error reply) or
        ``crashed`` (the ClientApp raised; Flower builds that reply).
    content_hash : str or None
        SHA-256 of the reply's content (or of its error), None if crashed.
    size : int or None
        Bytes of the serialised content (or of the error).
    arrays_hash : str or None
        Hash of the reply's model arrays, for replies that carry them.
    error_code : int or None
        The error code of an error reply.
    epsilon : float or None
        Privacy budget spent so far, when the reply reports it.
    approval : str or None
        Hash of the approval record that allowed the site to answer.
    detail : str or None
        The error reason (refusals, errors, crashes).
    coordinator_key : str or None
        Fingerprint of the key the coordinator says signs its ledger: pins the
        key an auditor must verify the coordinator's ledger with.
    received_arrays_hash : str or None
        Hash of the model arrays the message brought (the global model the
        coordinator sent this site), to show a site sent another model.
    """

    run_id: int
    reply_to: str
    message_type: str
    server_round: int
    study_hash: str
    status: str
    content_hash: str | None
    size: int | None
    arrays_hash: str | None = None
    error_code: int | None = None
    epsilon: float | None = None
    approval: str | None = None
    detail: str | None = None
    coordinator_key: str | None = None
    received_arrays_hash: str | None = None


_SENT_FIELDS = fields(SentMessage)


def error_digest(code: int, reason: str) -> tuple[str, int]:
    """Hash and size of an error reply, computed the same way at site and coordinator."""
    payload = canonical_json({"error": {"code": int(code), "reason": reason}})
    return hashlib.sha256(payload).hexdigest(), len(payload)


class SiteFolder:
    """One site's governance folder (see the module docstring).

    Use :meth:`init` to create one and :meth:`open` to use it.

    Attributes
    ----------
    folder : Path
        The folder.
    site : str
        The site's name, as its ledgers' headers state it.
    """

    def __init__(self, folder: Path, site: str, key: Ed25519PrivateKey | None) -> None:
        self.folder = folder
        self.site = site
        self._key = key
        self.public_key = load_public_key(folder / PUBLIC_FILE)
        self.registry = ApprovalRegistry(
            folder / APPROVALS_FILE, site=site, public_key=self.public_key, key=key
        )
        self._ledger: Ledger | None = None

    @classmethod
    def init(cls, folder: str | Path, site: str) -> SiteFolder:
        """Create a site folder: a new key pair and both ledgers.

        Raises
        ------
        ConfigError
            If ``site`` is not a valid name or the folder already holds a
            site's key or ledgers.
        """
        folder = Path(folder)
        if not site or not all(c.isalnum() or c in "-_." for c in site):
            raise ConfigError(
                f"a site name must be letters, digits, '-', '_' or '.'; got {site!r}."
            )
        names = (KEY_FILE, APPROVALS_FILE, LEDGER_FILE)
        taken = [name for name in names if (folder / name).exists()]
        if taken:
            raise ConfigError(
                f"{str(folder)!r} is already a site folder (it has {', '.join(taken)}); "
                "a site keeps one folder, and a new key would orphan its ledgers."
            )
        write_key_pair(folder / KEY_FILE)
        key = load_private_key(folder / KEY_FILE)
        Ledger.open(folder / APPROVALS_FILE, key, role=APPROVALS_ROLE, owner=site)
        Ledger.open(folder / LEDGER_FILE, key, role=ROLE, owner=site)
        return cls(folder, site, key)

    @classmethod
    def open(
        cls, folder: str | Path, *, site: str | None = None, with_key: bool = True
    ) -> SiteFolder:
        """Open an existing site folder.

        Parameters
        ----------
        folder : str or Path
            The site folder.
        site : str, optional
            The site it must belong to.
        with_key : bool
            Load the private key (needed to approve, revoke and record);
            auditing needs only the public key.

        Raises
        ------
        ConfigError
            If the folder is not a site folder, belongs to another site, or its
            key does not match its ledgers.
        """
        folder = Path(folder)
        if not (folder / LEDGER_FILE).is_file():
            raise ConfigError(
                f"{str(folder)!r} is not a site folder (no {LEDGER_FILE}); create one with "
                "`lhs-fed site init FOLDER --name SITE`."
            )
        header = read_header(folder / LEDGER_FILE).data
        owner = str(header.get("owner"))
        if site is not None and owner != site:
            raise ConfigError(
                f"site folder {str(folder)!r} belongs to site {owner!r}, not to {site!r}."
            )
        key = load_private_key(folder / KEY_FILE) if with_key else None
        opened = cls(folder, owner, key)
        if header.get("key_fingerprint") != fingerprint(opened.public_key):
            raise ConfigError(
                f"the site ledger in {str(folder)!r} is signed with key "
                f"{header.get('key_fingerprint')}, but {PUBLIC_FILE} holds "
                f"{fingerprint(opened.public_key)}; the folder's key was replaced."
            )
        return opened

    @property
    def ledger(self) -> Ledger:
        """The site ledger, open for appending."""
        if self._key is None:
            raise ConfigError(f"recording in site {self.site!r}'s ledger needs its private key.")
        if self._ledger is None:  # opened once: every append locks and checks the file anyway
            self._ledger = Ledger.open(
                self.folder / LEDGER_FILE, self._key, role=ROLE, owner=self.site
            )
        return self._ledger

    def approve(
        self,
        study_hash: str,
        code_hash: str,
        *,
        study_name: str,
        by: str,
        reason: str,
        preapproved: bool = False,
        coordinator_key: str | None = None,
        snapshot_hash: str | None = None,
    ) -> Approval:
        """Approve a study run by some code; recorded in the registry and the site ledger.

        ``coordinator_key`` (a key fingerprint) pins the coordinator: messages
        naming another ledger key are refused. ``snapshot_hash`` binds an OMOP
        study's approval to the site's cohort snapshot.
        """
        approval = self.registry.approve(
            study_hash,
            code_hash,
            study_name=study_name,
            by=by,
            reason=reason,
            preapproved=preapproved,
            site_ledger=self._head(),
            coordinator_key=coordinator_key,
            snapshot_hash=snapshot_hash,
        )
        self.ledger.append(
            APPROVAL, {**_approval_data(approval), "registry_record": approval.record_hash}
        )
        return approval

    def revoke(
        self, study_hash: str, *, code_hash: str | None = None, by: str, reason: str
    ) -> Revocation:
        """Withdraw an approval; recorded in the registry and the site ledger."""
        revocation = self.registry.revoke(
            study_hash, code_hash=code_hash, by=by, reason=reason, site_ledger=self._head()
        )
        self.ledger.append(
            REVOCATION,
            {
                "study_hash": study_hash,
                "code_hash": code_hash,
                "by": by,
                "reason": reason,
                "registry_record": revocation.record_hash,
            },
        )
        return revocation

    def check(
        self, study_hash: str, code_hash: str, *, context: Mapping[str, Any] | None = None
    ) -> Approval:
        """The approval that lets this site run ``study_hash`` with ``code_hash``.

        What a site runs before any study code. A refusal is recorded in the
        site ledger (with ``context``: run id, message id and type) before it
        is raised.

        Raises
        ------
        SiteRefusal
            If the study and code are not approved here (the reason says why).
        """
        try:
            lines = (self.folder / LEDGER_FILE).read_bytes().splitlines()  # read once for both
            approval = self.registry.check(
                study_hash, code_hash, anchor=self._registry_anchor(lines)
            )
            self._check_ledger_head(lines, self.registry.checked_head)
            _check_coordinator_key(self.site, approval, context)
            return approval
        except SiteRefusal as refusal:
            self.record_refusal(study_hash, code_hash, refusal.reason, context=context)
            raise

    def _head(self) -> dict[str, Any] | None:
        """The site ledger's last record, which the next approval or revocation names.

        None without the private key (the registry then refuses the change itself).
        """
        if self._key is None:
            return None
        last = self.ledger.last()
        return {"seq": last.seq, "hash": last.hash}

    def _check_ledger_head(self, lines: list[bytes], head: Mapping[str, Any] | None) -> None:
        """The site ledger (its ``lines``) must hold the record the registry's latest change names.

        ``head`` is that record (``seq`` and ``hash``) as the registry just checked names it.

        Raises
        ------
        SiteRefusal
            If the ledger is shorter, or holds another record there: it was
            rolled back to an older copy.
        """
        if head is None:
            return
        seq, digest = int(head["seq"]), str(head["hash"])
        path = self.folder / LEDGER_FILE
        found = _stored_hash(lines[seq]) if seq < len(lines) else None
        if found != digest:
            raise SiteRefusal(
                self.site,
                f"its signed ledger {str(path)!r} does not hold record {seq} "
                f"({digest[:16]}…), which the approvals registry "
                f"{str(self.folder / APPROVALS_FILE)!r} names as the ledger's last record when "
                "it last changed: the site ledger was rolled back to an older copy; the site "
                "refuses every study until its data steward restores it",
            )

    def _registry_anchor(self, lines: list[bytes]) -> tuple[str, str] | None:
        """The approval or revocation record the site ledger's ``lines`` last name, if any.

        The site ledger is the signed record of what the site decided; the
        registry it names must be at least that recent. Only lines of those
        two kinds are parsed, and the one used must carry the site's signature.
        """
        public_key = self.public_key.public_bytes_raw()
        for raw in reversed(lines):
            if _APPROVAL_MARK not in raw and _REVOCATION_MARK not in raw:
                continue
            found, record = _signed_registry_record(raw, public_key)
            if found:
                return (record, str(self.folder / LEDGER_FILE)) if record else None
        return None

    def record_refusal(
        self,
        study_hash: str,
        code_hash: str,
        reason: str,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Record a refusal decided elsewhere (a gate check other than approval).

        :meth:`check` records its own refusals; a site's launcher calls this
        for the others (an altered bundle, a run config that does not match).
        """
        return self.ledger.append(
            REFUSAL,
            {
                **dict(context or {}),
                "study_hash": study_hash,
                "code_hash": code_hash,
                "reason": reason,
            },
        )

    def is_approved(self, study_hash: str, code_hash: str) -> bool:
        """Whether an approval is in force (no refusal is recorded)."""
        try:
            self.registry.check(study_hash, code_hash)
        except SiteRefusal:
            return False
        return True

    def record_sent(self, sent: SentMessage) -> Entry:
        """Record a reply the site sent."""
        # Its fields are plain values: a shallow dict is asdict's without its deep copies.
        data = {field.name: getattr(sent, field.name) for field in _SENT_FIELDS}
        return self.ledger.append(MESSAGE_SENT, data)

    def record_closed(
        self,
        *,
        run_id: int,
        study_hash: str,
        ledger_id: str,
        final_seq: int,
        final_hash: str,
        status: str,
        coordinator_key: str | None = None,
    ) -> Entry:
        """Record the coordinator's final ledger hash of a study the site took part in.

        With it, cutting records off the end of the coordinator's ledger is
        caught by ``lhs-fed audit crosscheck`` even if the coordinator re-signs
        its ledger and rewrites its ``summary.json``.
        """
        return self.ledger.append(
            STUDY_CLOSED,
            {
                "run_id": run_id,
                "study_hash": study_hash,
                "coordinator_ledger": {
                    "ledger_id": ledger_id,
                    "final_seq": final_seq,
                    "final_hash": final_hash,
                    "status": status,
                    "key_fingerprint": coordinator_key,
                },
            },
        )


def _check_coordinator_key(
    site: str, approval: Approval, context: Mapping[str, Any] | None
) -> None:
    """An approval that pins the coordinator's key refuses messages naming another."""
    if approval.coordinator_key is None:
        return
    named = (context or {}).get("coordinator_key")
    if named != approval.coordinator_key:
        raise SiteRefusal(
            site,
            f"the approval of study {approval.study_hash[:12]}… accepts only coordinator key "
            f"{approval.coordinator_key}, and this message names {named or 'none'}: another "
            "coordinator, or one that changed its key (approve the study again with its new key)",
        )


_APPROVAL_MARK = f'"kind":"{APPROVAL}"'.encode()
_REVOCATION_MARK = f'"kind":"{REVOCATION}"'.encode()


@functools.lru_cache(maxsize=65_536)
def _stored_hash(raw: bytes) -> str | None:
    """The ``hash`` field of one stored ledger line (None if it is not a record).

    Once per line's bytes: a site checks the same record of its ledger with
    every message.
    """
    try:
        return parse_line(raw, 0).hash
    except ValueError:
        return None


@functools.lru_cache(maxsize=65_536)
def _signed_registry_record(raw: bytes, public_key: bytes) -> tuple[bool, str | None]:
    """Whether a stored line is a record signed by ``public_key``, and the registry record it names.

    A pure function of the line's bytes and the key, so each line is parsed and
    checked once per process however many messages check it.
    """
    try:
        entry = parse_line(raw, 0)
    except ValueError:
        return False, None
    key = Ed25519PublicKey.from_public_bytes(public_key)
    if not (entry.content_matches_hash() and entry.signed_by(key)):
        return False, None
    record = entry.data.get("registry_record")
    return True, str(record) if record else None


def _approval_data(approval: Approval) -> dict[str, Any]:
    return {
        "study_hash": approval.study_hash,
        "code_hash": approval.code_hash,
        "study_name": approval.study_name,
        "by": approval.approved_by,
        "reason": approval.reason,
        "preapproved": approval.preapproved,
        "coordinator_key": approval.coordinator_key,
        **({"snapshot_hash": approval.snapshot_hash} if approval.snapshot_hash else {}),
    }
