"""The site's privacy budget: checked before every round, recorded after it.

Before a site trains a round of a sample-dp or distributed-dp study it
projects what epsilon would be after the round, both for the study (at the
study's delta, against the study's target) and for the site (all studies ever
run there, composed with RDP at the site's own delta, against the site's total
budget; DP-SGD and distributed-dp rounds compose in one history). If
either would pass its limit the site refuses the round with the figures, and
the refusal travels to the coordinator as an error reply.

After training, the accountant's actual history is checked against the
projection and recorded in the ledger *before* the update may leave the site;
if the actual spend were over a limit (it cannot be, unless the plan and the
training disagree), the spend is still recorded and the update withheld.
The ledger stays locked (``flock``) from the check to the record, so two
studies running at the same site at once cannot both spend the last of the
budget.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from lhs_federated.errors import SiteRefusal
from lhs_federated.privacy.accounting import (
    SITE_ACCOUNTANT,
    DPPlan,
    History,
    epsilon_of,
    merge_history,
    plan_for,
)
from lhs_federated.privacy.ledger import LedgerError, PrivacyLedger, RoundSpend
from lhs_federated.results.writer import utc_now
from lhs_federated.study import Study


@dataclass(frozen=True)
class SitePrivacy:
    """A site's own privacy settings (from its site config, or the study's [sites] table).

    Attributes
    ----------
    site : str
        The site's name.
    epsilon_budget : float
        Total epsilon the site accepts over all studies.
    budget_delta : float
        Delta at which the site's total is stated.
    ledger_path : Path or None
        The site's privacy ledger file; ``None`` if the site keeps none (it then
        refuses sample-dp studies).
    seeded_noise : bool
        True for simulated sites (DP noise from the study seed: reproducible
        research); False for deployed sites (noise seeded by the operating system).
    """

    site: str
    epsilon_budget: float
    budget_delta: float
    ledger_path: Path | None
    seeded_noise: bool = False


@dataclass(frozen=True)
class RoundGrant:
    """Permission to train one round, with the figures it was granted on."""

    study_hash: str
    study_name: str
    plan: DPPlan
    history: History
    projected_epsilon: float
    projected_site_epsilon: float


def check_site_size(study: Study, site: str, n_train: int, *, min_cell_size: int) -> None:
    """Refuse to train on fewer rows than the study's minimum or the site's cell size.

    Raises
    ------
    SiteRefusal
        Naming the site's and the study's limits (not the exact count, which
        may itself be a small cell).
    """
    needed = study.privacy.rows_to_train(min_cell_size)
    if n_train < needed:
        raise SiteRefusal(
            site,
            f"it has fewer training rows than {needed} (the study's privacy.min_train_rows "
            f"is {study.privacy.min_train_rows}, the site's minimum cell size {min_cell_size}); "
            "small sites are not trained on, since their updates reveal too much about few "
            "patients.",
        )


class SiteBudget:
    """The site's ledger, locked for one round: ``grant`` then ``commit``.

    Use as a context manager::

        with SiteBudget(privacy) as budget:
            grant = budget.grant(study, n_train, server_round)
            ... train with grant.plan and grant.history ...
            budget.commit(grant, history_after, server_round)

    Raises
    ------
    SiteRefusal
        On entry if the ledger cannot be trusted, from :meth:`grant` if the round
        would exceed a limit, from :meth:`commit` if training spent other than granted.
    """

    def __init__(self, privacy: SitePrivacy) -> None:
        self.privacy = privacy
        self.ledger = PrivacyLedger(privacy.site)
        self._lock: IO[str] | None = None
        self._path = Path()

    def __enter__(self) -> SiteBudget:
        path = self.privacy.ledger_path
        if path is None:
            raise SiteRefusal(
                self.privacy.site,
                "the study asks for differential privacy accounted at the site (sample-dp "
                "or distributed-dp), but the site keeps no privacy ledger "
                "(set its ledger folder in the site config, or sites.state_dir in simulation).",
            )
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = path.with_name(f"{path.name}.lock").open("a", encoding="utf-8")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self.ledger = PrivacyLedger.load(path, self.privacy.site)
        except LedgerError as error:
            self._release()
            raise SiteRefusal(
                self.privacy.site, f"{error.message} Until then the site refuses to train."
            ) from error
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def grant(self, study: Study, n_train: int, server_round: int) -> RoundGrant:
        """Check that one more round of ``study`` fits both limits.

        Raises
        ------
        SiteRefusal
            If delta is not below 1/n, the ledger's plan for the study differs
            from the study's, or epsilon after the round would pass the study's
            target or the site's budget.
        """
        site, privacy = self.privacy.site, study.privacy
        for label, delta in (
            ("the study's privacy.delta", privacy.delta),
            ("the site's budget delta", self.privacy.budget_delta),
        ):
            if delta * n_train >= 1:
                raise SiteRefusal(
                    site,
                    f"{label} {delta:g} is not below 1/n for its training rows: a delta that "
                    "large allows releasing a patient's record outright. Use a delta well "
                    "below 1/n (e.g. 1e-5).",
                )
        try:
            plan = plan_for(study, n_train)
        except ValueError as error:
            raise SiteRefusal(
                site, f"no noise level reaches epsilon {privacy.epsilon:g} ({error})."
            ) from error
        recorded = self.ledger.studies.get(study.hash)
        if recorded is not None and recorded.plan != plan:
            raise SiteRefusal(
                site,
                f"its ledger holds a different noise plan for study {study.name!r} (its "
                "training rows or settings changed since the study started); the recorded "
                "accounting would no longer hold.",
            )
        history = self.ledger.study_history(study.hash)
        after = merge_history(history, plan.round_history())
        projected = epsilon_of(after, plan.target_delta, plan.accountant)
        site_after = merge_history(self.ledger.site_history(), plan.round_history())
        projected_site = epsilon_of(site_after, self.privacy.budget_delta, SITE_ACCOUNTANT)
        spent = epsilon_of(history, plan.target_delta, plan.accountant)
        if projected > plan.target_epsilon:
            raise SiteRefusal(
                site,
                f"round {server_round} would bring study {study.name!r} to epsilon "
                f"{projected:.4f}, above its target {plan.target_epsilon:g} (delta "
                f"{plan.target_delta:g}); it has spent {spent:.4f} in "
                f"{len(recorded.rounds) if recorded else 0} rounds.",
            )
        if projected_site > self.privacy.epsilon_budget:
            raise SiteRefusal(
                site,
                f"round {server_round} of study {study.name!r} would bring the site's total "
                f"over all studies to epsilon {projected_site:.4f}, above its budget "
                f"{self.privacy.epsilon_budget:g} (delta {self.privacy.budget_delta:g}); "
                f"spent so far: {self.ledger.site_epsilon(self.privacy.budget_delta):.4f}.",
            )
        return RoundGrant(study.hash, study.name, plan, history, projected, projected_site)

    def commit(self, grant: RoundGrant, history: History, server_round: int) -> RoundSpend:
        """Record what the round spent; refuse to release if it was not what was granted.

        Raises
        ------
        SiteRefusal
            If the accountant's history after training differs from the granted
            projection, or the recorded spend is over a limit.
        """
        ledger = self.ledger
        entry = ledger.record(
            grant.study_hash,
            grant.study_name,
            grant.plan,
            history,
            server_round=server_round,
            site_delta=self.privacy.budget_delta,
            at=utc_now(),
        )
        ledger.save(self._path)
        expected = merge_history(grant.history, grant.plan.round_history())
        over = (
            entry.epsilon > grant.plan.target_epsilon
            or entry.site_epsilon > self.privacy.epsilon_budget
        )
        if merge_history(history) != expected or over:
            raise SiteRefusal(
                self.privacy.site,
                f"round {server_round} spent epsilon {entry.epsilon:.4f} (site total "
                f"{entry.site_epsilon:.4f}), not the granted {grant.projected_epsilon:.4f} "
                f"({grant.projected_site_epsilon:.4f}); the spend is recorded and the update "
                "withheld.",
            )
        return entry
