"""A site's governance around the ClientApp: approval before any handler, a ledger of replies.

For a **simulated** site, :func:`site_governance_mod` (the ClientApp's
outermost mod) does it all: it finds the site's governance folder, checks
that the site approved the study and the code running it (refusing with code
``SITE_REFUSED`` and the reason otherwise, before any handler runs), and
records in the site ledger every reply that leaves the site: its hash and
size, the epsilon it reports, and the approval that allowed it. The folder is
the one the coordinator's simulation names in the message's
``lhs-simulation`` record, or the study's ``governance.site_folders`` (see
:mod:`lhs_federated.governance.simulated`); the code is the installed
lhs-federated package.

A **deployed** site (``site-config`` in its node config) is governed outside
the ClientApp, by the site's own launcher: its gate checks approval before the
app bundle is installed or anything of it imported (which this mod, loaded
from the bundle's components, cannot do), refusals never reach the ClientApp,
and the launcher records each reply with :func:`record_task`. So for a
deployed node this mod steps aside rather than record everything twice.

After a study finishes, the coordinator sends each site a ``query.ledger_close``
message with its ledger's final hash; :func:`record_task` records it as
``study-closed`` and :func:`acknowledge_close` answers it. All decisions are
made by the Flower-free :class:`~lhs_federated.governance.site_folder.SiteFolder`;
this module only reads Flower messages.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict

from lhs_federated.apps import records
from lhs_federated.apps.client_site import (
    PARTITION_ID,
    SITE_CONFIG,
    resolve_site,
    simulated_privacy,
)
from lhs_federated.apps.reply_digest import digest_reply
from lhs_federated.errors import LhsError, SiteRefusal
from lhs_federated.governance.approval import Approval
from lhs_federated.governance.code import installed_code_hash
from lhs_federated.governance.ledger import Entry
from lhs_federated.governance.privacy_anchor import check_privacy_ledger
from lhs_federated.governance.simulated import simulated_site_folder
from lhs_federated.governance.site_folder import LEDGER_FILE, SentMessage, SiteFolder
from lhs_federated.study import Study

LOGGER = logging.getLogger("lhs_federated.site")

#: Record the coordinator adds to messages for simulated sites, and its key.
#: The message that tells a site a study's coordinator ledger is closed.
CLOSE_ACTION = records.LEDGER_CLOSE_ACTION
CLOSE_TYPE = records.LEDGER_CLOSE
LEDGER_ID = "ledger-id"
FINAL_SEQ = "ledger-final-seq"
FINAL_HASH = "ledger-final-hash"
STUDY_STATUS = "study-status"
#: Fingerprint of the coordinator's ledger key, in every message: each site records it.
COORDINATOR_KEY = "coordinator-ledger-key"
#: Messages whose handler trains on the site's rows (a private round is checked first).
TRAINING_TYPES = (MessageType.TRAIN, records.SECAGG_COLLECT_UPDATE)
SIMULATED_REFUSAL_HINT = (
    " (in a simulation, a simulated site approves a study the study declares pre-approved "
    "([governance] preapproved = true), or the approvals in its own site folder "
    "([governance] site_folders))"
)


def site_governance_mod(message: Message, context: Context, call_next) -> Message:
    """Check approval before the handler; record the reply that leaves the site."""
    if SITE_CONFIG in context.node_config:
        return call_next(message, context)  # deployed: the site's launcher governs
    try:
        folder, code_hash, hint = simulated_governance(message, context)
        study_hash = str(message.content[records.CONFIG][records.STUDY_HASH])
    except SiteRefusal as refusal:
        return _error(message, records.SITE_REFUSED, refusal.message)
    except LhsError as error:  # the site's data or settings, as site_errors_mod reports them
        return _error(message, records.SITE_ERROR, error.message)
    except (KeyError, ValueError) as error:
        return _error(
            message, records.SITE_REFUSED, f"the message carries no valid study ({error})"
        )
    approval = None
    if message.metadata.message_type != CLOSE_TYPE:  # a closing note asks for no work
        try:
            approval = folder.check(study_hash, code_hash, context=message_context(message))
        except SiteRefusal as refusal:
            reply = _error(message, records.SITE_REFUSED, refusal.message + hint)
            record_task(folder, message, reply)
            return reply
    if message.metadata.message_type in TRAINING_TYPES:
        study = records.study_from_config(message.content[records.CONFIG])
        ledger = simulated_privacy(study, folder.site).ledger_path
        try:
            check_private_round(folder, study, ledger)
        except SiteRefusal as refusal:
            folder.record_refusal(
                study_hash, code_hash, refusal.reason, context=message_context(message)
            )
            reply = _error(message, records.SITE_REFUSED, refusal.message)
            record_task(folder, message, reply)
            return reply
    try:
        reply = call_next(message, context)
    except Exception as exc:
        record_task(folder, message, None, approval=approval, crash=f"{type(exc).__name__}: {exc}")
        raise
    return record_or_withhold(folder, message, reply, approval=approval)


def record_or_withhold(
    folder: SiteFolder, message: Message, reply: Message, *, approval: Approval | None = None
) -> Message:
    """Record ``reply`` in the site ledger, then let it go; if it cannot be recorded, withhold it.

    A discovery reply also carries the site ledger's last record (added here,
    after the egress guard: it is governance, not data), which the coordinator
    records. A site fails closed: nothing leaves that its ledger does not hold. When
    the ledger cannot be written (a full disk, a damaged last record, a file
    made immutable), the reply is replaced by an error reply that carries no
    data and says why, so the coordinator records the site as failed at once
    instead of waiting out its timeout.
    """
    try:
        if message.metadata.message_type == MessageType.QUERY and not reply.has_error():
            reply.content[records.SITE_LEDGER] = _ledger_head(folder)
        record_task(folder, message, reply, approval=approval)
    except Exception as exc:  # whatever stops the record stops the reply
        reason = (
            f"site {folder.site!r} cannot record its reply in its ledger "
            f"{str(folder.folder / LEDGER_FILE)!r} ({type(exc).__name__}: {exc}); it sends "
            "nothing it has not recorded"
        )
        LOGGER.error("%s", reason)
        return _error(message, records.SITE_ERROR, reason)
    return reply


def check_private_round(folder: SiteFolder, study: Study, privacy_ledger: Path | None) -> None:
    """Before a private training round: the privacy ledger must hold what the site ledger does.

    Raises
    ------
    SiteRefusal
        If the study's sites account its epsilon (sample-dp, distributed-dp)
        and the site's privacy ledger is missing, shorter or inconsistent with
        its signed ledger.
    """
    if study.privacy.site_accounted:
        check_privacy_ledger(folder.site, folder.folder, folder.public_key, privacy_ledger)


def acknowledge_close(message: Message, context: Context) -> Message:
    """Answer the coordinator's ledger-close message (the site records it)."""
    return Message(RecordDict(), reply_to=message)


def message_context(message: Message) -> dict[str, object]:
    """Run id, message id and type, the coordinator key named: what a refusal record cites."""
    meta = message.metadata
    config = message.content.get(records.CONFIG)
    named = config.get(COORDINATOR_KEY) if isinstance(config, ConfigRecord) else None
    return {
        "run_id": meta.run_id,
        "message_id": meta.message_id,
        "message_type": meta.message_type,
        "coordinator_key": None if named is None else str(named),
    }


def record_task(
    folder: SiteFolder,
    message: Message,
    reply: Message | None,
    *,
    approval: Approval | None = None,
    crash: str | None = None,
) -> Entry:
    """Record in the site ledger what the site sent in answer to ``message``.

    The one call a site's runtime makes per task, in simulation (from the mod)
    and in deployment (from the launcher), before the reply is pushed
    (:func:`record_or_withhold`): a
    ``query.ledger_close`` message becomes a ``study-closed`` record with the
    coordinator's final ledger hash; anything else a ``message-sent`` record.

    Parameters
    ----------
    folder : SiteFolder
        The site's governance folder.
    message : Message
        The message the site answered.
    reply : Message or None
        The reply it sent; None if the ClientApp raised (see ``crash``).
    approval : Approval, optional
        The approval that allowed the site to answer.
    crash : str, optional
        What the ClientApp raised, when Flower built the error reply.
    """
    meta = message.metadata
    config = message.content.get(records.CONFIG)
    config = config if isinstance(config, ConfigRecord) else ConfigRecord()
    study_hash = str(config.get(records.STUDY_HASH, ""))
    coordinator_key = str(config[COORDINATOR_KEY]) if COORDINATOR_KEY in config else None
    if meta.message_type == CLOSE_TYPE:
        return folder.record_closed(
            run_id=meta.run_id,
            study_hash=study_hash,
            ledger_id=str(config[LEDGER_ID]),
            final_seq=int(config[FINAL_SEQ]),
            final_hash=str(config[FINAL_HASH]),
            status=str(config[STUDY_STATUS]),
            coordinator_key=coordinator_key,
        )
    common = {
        "run_id": meta.run_id,
        "reply_to": meta.message_id,
        "message_type": meta.message_type,
        "server_round": int(config.get(records.ROUND, 0)),
        "study_hash": study_hash,
        "approval": approval.record_hash if approval is not None else None,
        "coordinator_key": coordinator_key,
        "received_arrays_hash": _arrays_hash(message),
    }
    if reply is None:
        sent = SentMessage(**common, status="crashed", content_hash=None, size=None, detail=crash)
        return folder.record_sent(sent)
    digest = digest_reply(reply)
    return folder.record_sent(
        SentMessage(
            **common,
            status=digest.status,
            content_hash=digest.content_hash,
            size=digest.size,
            arrays_hash=digest.arrays_hash,
            error_code=digest.error_code,
            epsilon=digest.epsilon,
            detail=digest.detail,
        )
    )


def simulated_governance(message: Message, context: Context) -> tuple[SiteFolder, str, str]:
    """A simulated site's governance folder, the hash of its code, and a refusal hint.

    The hint tells a researcher how a simulated site with a folder made for
    the run comes to approve a study (empty when the study names site folders,
    whose data stewards decide).

    Raises
    ------
    SiteRefusal
        If the node is not a simulated site, or its folder is unknown or
        cannot be opened: a site that cannot check approval refuses.
    LhsError
        If the simulated site cannot tell which site it is (its data).
    KeyError, ValueError
        If the message carries no valid study.
    """
    if PARTITION_ID not in context.node_config:
        raise SiteRefusal(
            f"node {context.node_id}",
            f"it is neither a simulated site ({PARTITION_ID!r}) nor a deployed one "
            f"({SITE_CONFIG!r}) in its node config, so it cannot check approvals",
        )
    study = records.study_from_config(message.content[records.CONFIG])
    site = resolve_site(study, context).data.name
    folders = message.content[records.CONFIG].get(records.SIMULATED_SITE_FOLDERS)
    if not folders:
        raise SiteRefusal(
            site,
            f"it was not told where its governance folder is (no "
            f"{records.SIMULATED_SITE_FOLDERS!r} in the message); run simulations with "
            "lhs_federated.simulate() or `lhs-fed simulate`",
        )
    code_hash = installed_code_hash()
    try:
        folder = simulated_site_folder(Path(str(folders)), site, study, code_hash)
    except LhsError as error:
        raise SiteRefusal(site, error.message) from error
    return folder, code_hash, "" if study.governance.site_folders else SIMULATED_REFUSAL_HINT


def _ledger_head(folder: SiteFolder) -> ConfigRecord:
    """The site ledger's last record, for the coordinator to record at a run's start.

    With it the coordinator's ledger anchors the site's: a site ledger later
    rolled back to before it is caught by ``lhs-fed audit crosscheck``.
    """
    last = folder.ledger.last()
    return ConfigRecord({"seq": last.seq, "hash": last.hash})


def _arrays_hash(message: Message) -> str | None:
    """Hash of the model a message brought, as the coordinator hashes what it sent."""
    arrays = message.content.get(records.ARRAYS)
    if not isinstance(arrays, ArrayRecord):
        return None
    return records.hash_array_record(arrays)


def _error(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)
