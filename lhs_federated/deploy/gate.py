"""The site gate: what a site checks before any study code is written or imported.

The gate runs in the site's own launcher, right after Flower's runner has
pulled a task's input (message, context, run, app bundle) and before the bundle
is installed or its ClientApp imported. It refuses, with a reason, unless:

1. the bundle's bytes hash to the hash the run states (the bundle is intact);
2. the run config equals the bundle's own defaults plus the run's overrides
   (recomputed here, never trusted from the context alone);
3. the study in the message matches its own hash and the study in the run
   config;
4. the site has approved this study hash together with this bundle hash (the
   code that will run it), or, if the site set the standing rule, the study
   is a monitoring study of a release the site approved
   (:mod:`lhs_federated.deploy.standing_approval`).

A refusal becomes an error reply with code ``SITE_REFUSED``, so the
coordinator records it at once instead of waiting for a timeout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.common.config import get_fused_config_from_fab
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run

from lhs_federated.apps import records
from lhs_federated.apps.site_governance import (
    TRAINING_TYPES,
    check_private_round,
    message_context,
)
from lhs_federated.deploy.standing_approval import record_gate_models, standing_approval
from lhs_federated.errors import SiteRefusal
from lhs_federated.governance.approval import Approval
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.study import Study


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided about one task."""

    study_hash: str
    bundle_hash: str
    approval: Approval | None = None
    refusal: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the task may run."""
        return self.refusal is None


@dataclass(frozen=True)
class SiteGate:
    """The checks one site applies to every task, against its governance folder.

    Every refusal is recorded in the site's ledger: approval refusals by the
    folder's own check, the others (an altered bundle, a run config or study
    that does not match, a privacy ledger that does not match the site
    ledger before a private round) here.

    Attributes
    ----------
    folder : SiteFolder
        The site's governance folder.
    privacy_ledger : Path or None
        The site's privacy ledger (``<state_dir>/privacy-ledger.json``).
    require_secure_aggregation : bool
        The site's ``[policy] require_secure_aggregation``: refuse every study
        whose coordinator would see the site's own update or column sums.
    monitoring_rule : bool
        ``[approval] monitoring_of_approved_releases`` of the site's config.
    """

    folder: SiteFolder
    privacy_ledger: Path | None = None
    require_secure_aggregation: bool = False
    monitoring_rule: bool = False

    def decide(self, message: Message, context: Context, run: Run, fab: Fab) -> GateDecision:
        """Check one task; never raises for a refusal, returns it instead."""
        bundle_hash = hashlib.sha256(fab.content).hexdigest()
        where: dict[str, Any] = {**message_context(message), "run_id": run.run_id}
        study_hash = ""
        try:
            study = self._check_integrity(message, context, run, fab, bundle_hash)
            study_hash = study.hash
        except SiteRefusal as refusal:
            self.folder.record_refusal(study_hash, bundle_hash, refusal.reason, context=where)
            return GateDecision(study_hash, bundle_hash, refusal=refusal.message)
        if self.require_secure_aggregation and not study.privacy.secure:
            reason = (
                "the site requires secure aggregation (site.toml [policy] "
                "require_secure_aggregation = true), but the study has "
                "privacy.secure_aggregation = 'none'"
            )
            self.folder.record_refusal(study_hash, bundle_hash, reason, context=where)
            return GateDecision(
                study_hash, bundle_hash, refusal=SiteRefusal(self.folder.site, reason).message
            )
        if self.monitoring_rule and not self.folder.is_approved(study_hash, bundle_hash):
            try:
                standing = standing_approval(
                    self.folder, message, context, study, bundle_hash, where
                )
            except SiteRefusal as refusal:
                self.folder.record_refusal(study_hash, bundle_hash, refusal.reason, context=where)
                return GateDecision(study_hash, bundle_hash, refusal=refusal.message)
            if standing is not None:
                return GateDecision(study_hash, bundle_hash, approval=standing)
        try:
            approval = self.folder.check(study_hash, bundle_hash, context=where)
        except SiteRefusal as refusal:  # the folder recorded it
            return GateDecision(study_hash, bundle_hash, refusal=refusal.message)
        if message.metadata.message_type == records.GATE:  # what the standing rule may cite
            record_gate_models(self.folder, message, approval, where)
        if message.metadata.message_type in TRAINING_TYPES:
            try:
                check_private_round(self.folder, study, self.privacy_ledger)
            except SiteRefusal as refusal:
                self.folder.record_refusal(study_hash, bundle_hash, refusal.reason, context=where)
                return GateDecision(study_hash, bundle_hash, refusal=refusal.message)
        return GateDecision(study_hash, bundle_hash, approval=approval)

    def _check_integrity(
        self, message: Message, context: Context, run: Run, fab: Fab, bundle_hash: str
    ) -> Study:
        """Checks 1-3 of the module docstring; return the study."""
        site = self.folder.site
        if bundle_hash != fab.hash_str or bundle_hash != run.fab_hash:
            raise SiteRefusal(
                site,
                f"the app bundle's bytes hash to {bundle_hash}, not the stated "
                f"{run.fab_hash or fab.hash_str}: it was altered in transit or storage",
            )
        expected = get_fused_config_from_fab(fab.content, run)
        if dict(context.run_config) != dict(expected):
            changed = sorted(
                k
                for k in set(expected) | set(context.run_config)
                if expected.get(k) != context.run_config.get(k)
            )
            raise SiteRefusal(
                site,
                "the run config differs from the app bundle's defaults plus the run's "
                f"overrides (keys {', '.join(changed)})",
            )
        try:
            study = records.study_from_config(message.content[records.CONFIG])
        except (KeyError, ValueError) as exc:
            raise SiteRefusal(site, f"the message's study is not valid: {exc}") from exc
        in_run = str(context.run_config.get("study", ""))
        if in_run.startswith("{") and hashlib.sha256(in_run.encode()).hexdigest() != study.hash:
            raise SiteRefusal(
                site, "the study in the message is not the study the run was started with"
            )
        return study
