"""A site's standing approval rule: monitoring studies of releases it approved.

A learning loop monitors its release every period, each time as a new
study (new periods, new hash). A site's data steward can approve each, or set
one rule in ``site.toml``::

    [approval]
    monitoring_of_approved_releases = true

Under the rule the site's gate answers a study it has not approved when all
of this holds, checked at the site against its own signed ledger, never on
the coordinator's word:

1. the run is a monitoring task (its run config, which the gate has checked
   against the app bundle, names ``kind = "monitor"`` and no training-row
   reference) of a study that selects evaluation periods only (no training
   rows);
2. the task names the release's model by the hash of its arrays, and every
   ``evaluate.monitor`` message brings exactly those arrays;
3. that hash is of a model the site itself evaluated in a study it approved
   explicitly: the ``received_arrays_hash`` of an evaluation it answered under
   an approval in force (the final model of a training or refit study, a
   release monitored under approval), or the champion or challenger of a
   gate it answered under one (the gate records their hashes as
   ``models-evaluated``, since its message carries both). Records the rule
   itself allowed do not count: the rule cannot grow its own reach;
4. the code (app bundle) is the one that approval names, and if it pins the
   coordinator's ledger key, the message names it;
5. only the messages a monitoring study sends are answered: the discovery
   query, ``evaluate.monitor`` and the ledger's closing note.

So a coordinator cannot use the rule to have a site evaluate a model the site
never saw under its own approval: a crafted model, a model of another
consortium, a copy with one weight changed all fail at 3. What the rule
grants is the same model on newer rows. Each message it allows is recorded
first as a ``standing-approval`` record (the rule, the release, the study it
traces to), and the reply's ``approval`` field cites that record. A site's
own recalibration of a per-site release (two numbers applied to the
approved model's score) travels in the message's config and is not part of
the hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType

from lhs_federated.apps import loop_messages, records
from lhs_federated.apps.run_config import LOOP_TASK_KEY
from lhs_federated.errors import SiteRefusal
from lhs_federated.governance.approval import Approval
from lhs_federated.governance.ledger import parse_line
from lhs_federated.governance.site_folder import LEDGER_FILE, MESSAGE_SENT, SiteFolder
from lhs_federated.results.writer import utc_now
from lhs_federated.study import Study

RULE = "monitoring_of_approved_releases"
STANDING_APPROVAL = "standing-approval"
MODELS_EVALUATED = "models-evaluated"
#: Messages that carry a model the site evaluates (the reply's metrics are of it).
EVALUATING = (MessageType.EVALUATE, records.MONITOR)
#: Messages a monitoring study sends (under secure aggregation, the drift sum's stages too).
MONITORING = (
    MessageType.QUERY,
    records.MONITOR,
    records.LEDGER_CLOSE,
    records.SECAGG_SETUP,
    records.SECAGG_SHARE,
    records.SECAGG_COLLECT_STATISTICS,
    records.SECAGG_UNMASK,
)


@dataclass(frozen=True)
class Evaluated:
    """A model the site evaluated under an explicit approval."""

    study_hash: str
    approval: Approval


def record_gate_models(
    folder: SiteFolder, message: Message, approval: Approval, where: Mapping[str, Any]
) -> None:
    """Record the hashes of the champion and challenger an approved gate message brings."""
    arrays = message.content.get(records.ARRAYS)
    if not isinstance(arrays, ArrayRecord):
        return
    named = records.from_array_record(arrays)
    models = {
        role: records.hash_arrays(
            {k[len(prefix) :]: v for k, v in named.items() if k.startswith(prefix)}
        )
        for role, prefix in (
            ("champion", loop_messages.CHAMPION),
            ("challenger", loop_messages.CHALLENGER),
        )
    }
    folder.ledger.append(
        MODELS_EVALUATED,
        {
            **dict(where),
            "study_hash": approval.study_hash,
            "approval": approval.record_hash,
            **models,
        },
    )


def evaluated_models(folder: SiteFolder) -> dict[str, Evaluated]:
    """Arrays hash -> the approved study under which this site evaluated that model.

    Read from the site's own ledger, each record's hash and signature
    checked; only records citing an approval in force count (a revoked
    approval takes its models with it; the rule's own records cite none).
    """
    explicit = {a.record_hash: a for a in folder.registry.approvals()}
    found: dict[str, Evaluated] = {}
    marks = (f'"kind":"{MESSAGE_SENT}"'.encode(), f'"kind":"{MODELS_EVALUATED}"'.encode())
    for number, raw in enumerate((folder.folder / LEDGER_FILE).read_bytes().splitlines()):
        if not any(mark in raw for mark in marks):
            continue
        try:
            entry = parse_line(raw, number + 1)
        except ValueError:
            continue
        if not (entry.content_matches_hash() and entry.signed_by(folder.public_key)):
            continue
        data = entry.data
        approval = explicit.get(str(data.get("approval")))
        if approval is None:
            continue
        if entry.kind == MODELS_EVALUATED:
            hashes = [data.get("champion"), data.get("challenger")]
        elif data.get("status") == "ok" and data.get("message_type") in EVALUATING:
            hashes = [data.get("received_arrays_hash")]
        else:
            continue
        for digest in hashes:
            if digest:
                found.setdefault(str(digest), Evaluated(str(data.get("study_hash")), approval))
    return found


def monitoring_task(context: Context) -> dict[str, Any] | None:
    """The run's loop task if it is a monitoring task, else None."""
    raw = str(context.run_config.get(LOOP_TASK_KEY, "") or "")
    if not raw:
        return None
    try:
        task = json.loads(raw)
    except ValueError:
        return None
    return task if isinstance(task, dict) and task.get("kind") == "monitor" else None


def standing_approval(
    folder: SiteFolder,
    message: Message,
    context: Context,
    study: Study,
    code_hash: str,
    where: Mapping[str, Any],
) -> Approval | None:
    """The rule's approval of this message, recorded; None if the run is no monitoring task.

    Raises
    ------
    SiteRefusal
        If the run is a monitoring task that the rule does not cover (the
        reason names the condition of the module docstring that failed).
    """
    task = monitoring_task(context)
    if task is None:
        return None
    site = folder.site
    kind = message.metadata.message_type
    if kind not in MONITORING:
        raise SiteRefusal(site, f"the standing rule {RULE} covers monitoring messages, not {kind}")
    if task.get("with_reference") or study.data.train_periods is not None:
        raise SiteRefusal(
            site,
            f"the standing rule {RULE} covers monitoring of evaluation periods only; this "
            "study also reads training rows (a release's reference needs the study's approval)",
        )
    if study.data.evaluate_periods is None:
        raise SiteRefusal(site, f"the standing rule {RULE} needs a study of evaluation periods")
    release = task.get("release") or {}
    named = str(release.get("arrays_hash") or "")
    if kind == records.MONITOR:
        arrays = message.content.get(records.ARRAYS)
        brought = (
            records.hash_arrays(records.from_array_record(arrays))
            if isinstance(arrays, ArrayRecord)
            else ""
        )
        if brought != named:
            raise SiteRefusal(
                site,
                f"the monitoring message brings model {brought[:12] or 'none'}…, not the "
                f"release {named[:12] or 'none'}… its run names (standing rule {RULE})",
            )
        config = message.content.get(records.CONFIG)
        if isinstance(config, ConfigRecord) and bool(config.get(loop_messages.WITH_REFERENCE)):
            raise SiteRefusal(site, f"the standing rule {RULE} does not cover training rows")
    origin = evaluated_models(folder).get(named)
    if origin is None:
        raise SiteRefusal(
            site,
            f"release {release.get('name', '?')} (arrays {named[:12] or 'none'}…) is not a "
            f"model this site evaluated in a study it approved, so the standing rule {RULE} "
            "does not cover its monitoring; the site's data steward approves the study itself",
        )
    if origin.approval.code_hash != code_hash:
        raise SiteRefusal(
            site,
            f"the release was approved to run with code {origin.approval.code_hash[:12]}…, and "
            f"this study comes with code {code_hash[:12]}… (standing rule {RULE})",
        )
    pinned = origin.approval.coordinator_key
    if pinned is not None and where.get("coordinator_key") != pinned:
        raise SiteRefusal(
            site,
            f"the release was approved with coordinator key {pinned} only, and this message "
            f"names {where.get('coordinator_key') or 'none'} (standing rule {RULE})",
        )
    entry = folder.ledger.append(
        STANDING_APPROVAL,
        {
            **dict(where),
            "rule": RULE,
            "study_hash": study.hash,
            "code_hash": code_hash,
            "release": release.get("name"),
            "arrays_hash": named,
            "evaluated_under": {
                "study_hash": origin.study_hash,
                "approval": origin.approval.record_hash,
            },
        },
    )
    return Approval(
        site=site,
        study_hash=study.hash,
        code_hash=code_hash,
        study_name=study.name,
        approved_by=f"standing rule {RULE}",
        approved_at=utc_now(),
        reason=f"monitoring of {release.get('name', 'a release')} approved under study "
        f"{origin.study_hash[:12]}…",
        preapproved=False,
        record_hash=entry.hash,
        coordinator_key=pinned,
    )
