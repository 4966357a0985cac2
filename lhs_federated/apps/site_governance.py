"""The site's governance in the ClientApp: approval before any handler, a ledger of every reply.

:func:`site_governance_mod` is the ClientApp's outermost mod. For each message
it finds the site's governance folder, checks that the site approved the
study and the code running it (refusing with code ``SITE_REFUSED`` and the
reason otherwise, before any handler runs), and records in the site ledger
every reply that leaves the site: its hash and size, the epsilon it reports,
and the approval that allowed it. All the decisions are made by the
Flower-free :class:`~lhs_federated.governance.site_folder.SiteFolder`; this
module only reads Flower messages.

Where the governance folder is:

- a simulated site (``partition-id`` in its node config) uses the folder the
  coordinator's simulation names in the message's ``lhs-simulation`` record,
  or the study's ``governance.site_folders`` (see
  :mod:`lhs_federated.governance.simulated`); its code is the installed
  lhs-federated package;
- a deployed site uses the node config's ``site-folder`` and ``code-hash``
  (the FAB hash its launcher verified) and ignores ``lhs-simulation``.

After a study finishes, the coordinator sends each site a ``query.ledger_close``
message with its ledger's final hash, which the site records
(:func:`acknowledge_close` answers it).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict

from lhs_federated.apps import records
from lhs_federated.apps.client_site import PARTITION_ID, resolve_site
from lhs_federated.apps.reply_digest import digest_reply
from lhs_federated.errors import LhsError, SiteRefusal
from lhs_federated.governance.approval import Approval
from lhs_federated.governance.code import installed_code_hash
from lhs_federated.governance.simulated import simulated_site_folder
from lhs_federated.governance.site_folder import SentMessage, SiteFolder

#: Record the coordinator adds to messages for simulated sites, and its key.
SIMULATION = "lhs-simulation"
SITE_FOLDERS = "site-folders"
#: Node-config keys of a deployed site.
SITE_FOLDER_KEY = "site-folder"
CODE_HASH_KEY = "code-hash"
#: The message that tells a site a study's coordinator ledger is closed.
CLOSE_ACTION = "ledger_close"
CLOSE_TYPE = f"{MessageType.QUERY}.{CLOSE_ACTION}"
LEDGER_ID = "ledger-id"
FINAL_SEQ = "ledger-final-seq"
FINAL_HASH = "ledger-final-hash"
STUDY_STATUS = "study-status"
SIMULATED_REFUSAL_HINT = (
    " (in a simulation, a simulated site approves a study the study declares pre-approved "
    "([governance] preapproved = true), or the approvals in its own site folder "
    "([governance] site_folders))"
)


def site_governance_mod(message: Message, context: Context, call_next) -> Message:
    """Check approval before the handler; record the reply that leaves the site."""
    try:
        folder, code_hash, hint = governed_site(message, context)
        study_hash = str(message.content[records.CONFIG][records.STUDY_HASH])
    except SiteRefusal as refusal:
        return _error(message, records.SITE_REFUSED, refusal.message)
    except LhsError as error:  # the site's data or settings, as site_errors_mod reports them
        return _error(message, records.SITE_ERROR, error.message)
    except (KeyError, ValueError) as error:
        return _error(
            message, records.SITE_REFUSED, f"the message carries no valid study ({error})"
        )
    meta = message.metadata
    if meta.message_type == CLOSE_TYPE:
        config = message.content[records.CONFIG]
        folder.record_closed(
            run_id=meta.run_id,
            study_hash=study_hash,
            ledger_id=str(config[LEDGER_ID]),
            final_seq=int(config[FINAL_SEQ]),
            final_hash=str(config[FINAL_HASH]),
            status=str(config[STUDY_STATUS]),
        )
        return call_next(message, context)
    where = {
        "run_id": meta.run_id,
        "message_id": meta.message_id,
        "message_type": meta.message_type,
    }
    approval = None
    try:
        approval = folder.check(study_hash, code_hash, context=where)
    except SiteRefusal as refusal:
        reply = _error(message, records.SITE_REFUSED, refusal.message + hint)
    else:
        try:
            reply = call_next(message, context)
        except Exception as exc:
            folder.record_sent(
                _sent(message, study_hash, None, approval, crash=f"{type(exc).__name__}: {exc}")
            )
            raise
    folder.record_sent(_sent(message, study_hash, reply, approval))
    return reply


def acknowledge_close(message: Message, context: Context) -> Message:
    """Answer the coordinator's ledger-close message (the mod records it)."""
    return Message(RecordDict(), reply_to=message)


def governed_site(message: Message, context: Context) -> tuple[SiteFolder, str, str]:
    """The site folder that governs this node, the hash of its code, and a refusal hint.

    The hint tells a researcher how a simulated site comes to approve a study;
    it is empty for deployed sites, whose data stewards decide.

    Raises
    ------
    SiteRefusal
        If the node has no governance folder, or it cannot be opened: a site
        that cannot check approval refuses.
    LhsError
        If a simulated site cannot tell which site it is (its data).
    KeyError, ValueError
        If the message carries no valid study.
    """
    if PARTITION_ID in context.node_config:
        study = records.study_from_config(message.content[records.CONFIG])
        site = resolve_site(study, context).data.name
        simulation = message.content.get(SIMULATION)
        if not isinstance(simulation, ConfigRecord) or SITE_FOLDERS not in simulation:
            raise SiteRefusal(
                site,
                f"it was not told where its governance folder is (no {SIMULATION!r} record "
                "in the message); run simulations with lhs_federated.simulate() or "
                "`lhs-fed simulate`",
            )
        code_hash = installed_code_hash()
        try:
            folder = simulated_site_folder(
                Path(str(simulation[SITE_FOLDERS])), site, study, code_hash
            )
        except LhsError as error:
            raise SiteRefusal(site, error.message) from error
        hint = "" if study.governance.site_folders else SIMULATED_REFUSAL_HINT
        return folder, code_hash, hint
    folder_path = context.node_config.get(SITE_FOLDER_KEY)
    code_hash = context.node_config.get(CODE_HASH_KEY)
    node = f"node {context.node_id}"
    if not folder_path or not code_hash:
        raise SiteRefusal(
            node,
            f"no {SITE_FOLDER_KEY!r} and {CODE_HASH_KEY!r} in its node config: a deployed site "
            "runs ClientApps through its gated launcher, which sets both",
        )
    try:
        return SiteFolder.open(str(folder_path)), str(code_hash), ""
    except LhsError as error:
        raise SiteRefusal(node, error.message) from error


def _error(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


def _sent(
    message: Message,
    study_hash: str,
    reply: Message | None,
    approval: Approval | None,
    *,
    crash: str | None = None,
) -> SentMessage:
    meta = message.metadata
    config = message.content.get(records.CONFIG)
    server_round = int(config.get(records.ROUND, 0)) if isinstance(config, ConfigRecord) else 0
    common = {
        "run_id": meta.run_id,
        "reply_to": meta.message_id,
        "message_type": meta.message_type,
        "server_round": server_round,
        "study_hash": study_hash,
        "approval": approval.record_hash if approval is not None else None,
    }
    if reply is None:
        return SentMessage(**common, status="crashed", content_hash=None, size=None, detail=crash)
    digest = digest_reply(reply)
    return SentMessage(
        **common,
        status=digest.status,
        content_hash=digest.content_hash,
        size=digest.size,
        arrays_hash=digest.arrays_hash,
        error_code=digest.error_code,
        epsilon=digest.epsilon,
        detail=digest.detail,
    )
