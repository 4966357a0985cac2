"""The site's privacy ledger: what every study has spent at this site, on disk.

One JSON file per site, kept across studies. For each study (by hash) it holds
the study's noise plan, its Opacus accountant history and one entry per
training round (the study's cumulative epsilon and the site's total after it).
The file is written atomically (temporary file, fsync, rename, fsync of the
folder), so a crash leaves either the old or the new ledger, never half of one.

Loading validates everything: the format, a SHA-256 digest over the content
(catching corruption and edits made outside lhs-federated), and consistency
(every recorded epsilon is recomputed from the histories). A ledger that fails
any check raises :class:`LedgerError`, and the site refuses to train rather
than guess what it has spent. The digest is an integrity check, not a
signature: tamper evidence against a determined insider is the governance
ledger's job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhs_federated.errors import LhsError
from lhs_federated.privacy.accounting import (
    SITE_ACCOUNTANT,
    DPPlan,
    History,
    epsilon_of,
    merge_history,
)

LEDGER_FORMAT = "lhs-federated privacy ledger"
LEDGER_VERSION = 1
_TOLERANCE = 1e-9


class LedgerError(LhsError):
    """A privacy ledger is corrupt, inconsistent or belongs to another site."""


@dataclass(frozen=True)
class RoundSpend:
    """One training round a study ran at the site.

    Attributes
    ----------
    seq : int
        Position of the round among all rounds the site ran (all studies).
    round : int
        The study's round number, as the coordinator sent it.
    steps : int
        Private optimiser steps taken.
    epsilon : float
        The study's cumulative epsilon at its delta after this round.
    site_epsilon : float
        The site's total over all studies at ``site_delta`` after this round.
    site_delta : float
        The site's budget delta at the time.
    at : str
        UTC time the spend was recorded.
    """

    seq: int
    round: int
    steps: int
    epsilon: float
    site_epsilon: float
    site_delta: float
    at: str


@dataclass
class StudySpend:
    """Everything one study spent at the site."""

    name: str
    plan: DPPlan
    history: History = ()
    rounds: list[RoundSpend] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        """The study's cumulative epsilon at its own delta."""
        return epsilon_of(self.history, self.plan.target_delta, self.plan.accountant)


class PrivacyLedger:
    """A site's spend across studies, with validated state round trips.

    Parameters
    ----------
    site : str
        The site the ledger belongs to.
    """

    def __init__(self, site: str) -> None:
        self.site = site
        self.studies: dict[str, StudySpend] = {}

    # --- figures -----------------------------------------------------------------

    def study_history(self, study_hash: str) -> History:
        """The accountant history of one study (empty if it never trained here)."""
        spend = self.studies.get(study_hash)
        return spend.history if spend else ()

    def site_history(self) -> History:
        """Every study's history, composed: the site's total spend."""
        return merge_history(*(spend.history for spend in self.studies.values()))

    def site_epsilon(self, delta: float) -> float:
        """The site's total epsilon over all studies at ``delta`` (RDP composition)."""
        return epsilon_of(self.site_history(), delta, SITE_ACCOUNTANT)

    def record(
        self,
        study_hash: str,
        name: str,
        plan: DPPlan,
        history: History,
        *,
        server_round: int,
        site_delta: float,
        at: str,
    ) -> RoundSpend:
        """Add one round's spend (``history`` is the study's history after it)."""
        spend = self.studies.setdefault(study_hash, StudySpend(name, plan))
        spend.history = merge_history(history)
        seq = 1 + max((r.seq for s in self.studies.values() for r in s.rounds), default=0)
        entry = RoundSpend(
            seq=seq,
            round=server_round,
            steps=plan.steps_per_round,
            epsilon=spend.epsilon,
            site_epsilon=self.site_epsilon(site_delta),
            site_delta=site_delta,
            at=at,
        )
        spend.rounds.append(entry)
        return entry

    # --- state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The ledger as plain JSON-ready data, with its digest."""
        body = {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "site": self.site,
            "studies": {
                key: {
                    "name": spend.name,
                    "plan": spend.plan.to_dict(),
                    "history": [list(entry) for entry in spend.history],
                    "rounds": [vars(r).copy() for r in spend.rounds],
                }
                for key, spend in self.studies.items()
            },
        }
        return {**body, "digest": _digest(body)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the ledger's content with ``state``, after validating all of it.

        Raises
        ------
        LedgerError
            If the state is malformed, its digest does not match, it belongs to
            another site, or a recorded figure disagrees with its histories.
        """
        studies = _parse(state, self.site)
        _check_consistency(studies)
        self.studies = studies

    @classmethod
    def load(cls, path: Path, site: str) -> PrivacyLedger:
        """The ledger at ``path`` (a new, empty one if the file does not exist).

        Raises
        ------
        LedgerError
            If the file cannot be read or fails validation; the message names it.
        """
        ledger = cls(site)
        if not path.exists():
            return ledger
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"privacy ledger {str(path)!r} is corrupt: {exc}.") from exc
        try:
            ledger.load_state_dict(state)
        except LedgerError as exc:
            raise LedgerError(f"privacy ledger {str(path)!r}: {exc.message}") from exc
        return ledger

    def save(self, path: Path) -> None:
        """Write the ledger atomically and durably."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never world-readable
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self.state_dict(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _digest(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse(state: Any, site: str) -> dict[str, StudySpend]:
    """Check the shape and digest of a ledger state; build its studies."""
    if not isinstance(state, dict):
        raise LedgerError(f"expected a JSON object; got {type(state).__name__}.")
    if state.get("format") != LEDGER_FORMAT or state.get("version") != LEDGER_VERSION:
        raise LedgerError(
            f"not a version-{LEDGER_VERSION} privacy ledger (format {state.get('format')!r}, "
            f"version {state.get('version')!r})."
        )
    body = {k: v for k, v in state.items() if k != "digest"}
    if set(body) != {"format", "version", "site", "studies"}:
        raise LedgerError(f"unexpected keys {sorted(body)}.")
    if state.get("digest") != _digest(body):
        raise LedgerError(
            "its digest does not match its content: the file was changed outside "
            "lhs-federated or damaged. Restore it from a backup."
        )
    if body["site"] != site:
        raise LedgerError(f"it belongs to site {body['site']!r}, not {site!r}.")
    if not isinstance(body["studies"], dict):
        raise LedgerError("'studies' must be an object.")
    studies = {}
    for key, raw in body["studies"].items():
        try:
            studies[key] = StudySpend(
                name=str(raw["name"]),
                plan=DPPlan.from_dict(raw["plan"]),
                history=tuple(
                    (float(sigma), float(rate), int(steps)) for sigma, rate, steps in raw["history"]
                ),
                rounds=[_round_from(entry) for entry in raw["rounds"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"study {key[:12]}: malformed entry ({exc}).") from exc
    return studies


def _round_from(entry: Any) -> RoundSpend:
    spend = RoundSpend(**entry)
    for name in ("seq", "round", "steps"):
        value = getattr(spend, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"round field {name!r} must be a positive integer; got {value!r}")
    return spend


def _check_consistency(studies: dict[str, StudySpend]) -> None:
    """Recompute every recorded figure from the histories."""
    seqs = sorted(r.seq for s in studies.values() for r in s.rounds)
    if seqs != list(range(1, len(seqs) + 1)):
        raise LedgerError(f"round sequence numbers {seqs} are not 1..{len(seqs)}.")
    for key, spend in studies.items():
        plan = spend.plan
        if any(
            (sigma, rate) != (plan.noise_multiplier, plan.sample_rate)
            for sigma, rate, _ in spend.history
        ):
            raise LedgerError(f"study {key[:12]}: its history uses noise other than its plan's.")
        steps = sum(entry[2] for entry in spend.history)
        if steps != plan.steps_per_round * len(spend.rounds) or any(
            r.steps != plan.steps_per_round for r in spend.rounds
        ):
            raise LedgerError(
                f"study {key[:12]}: {len(spend.rounds)} rounds of {plan.steps_per_round} "
                f"steps recorded, but its history holds {steps} steps."
            )
    # Replay all rounds in order, recomputing the study's and the site's epsilon.
    replayed: dict[str, int] = dict.fromkeys(studies, 0)
    order = sorted((r.seq, key, r) for key, s in studies.items() for r in s.rounds)
    for _, key, entry in order:
        replayed[key] += 1
        plan = studies[key].plan
        steps = plan.steps_per_round * replayed[key]
        study_now = ((plan.noise_multiplier, plan.sample_rate, steps),)
        site_now = merge_history(
            *(
                ((s.plan.noise_multiplier, s.plan.sample_rate, s.plan.steps_per_round * n),)
                for k, s in studies.items()
                if (n := replayed[k]) > 0
            )
        )
        expected = epsilon_of(study_now, plan.target_delta, plan.accountant)
        expected_site = epsilon_of(site_now, entry.site_delta, SITE_ACCOUNTANT)
        if not (_close(entry.epsilon, expected) and _close(entry.site_epsilon, expected_site)):
            raise LedgerError(
                f"round {entry.round} of study {key[:12]} records epsilon {entry.epsilon!r} "
                f"(site total {entry.site_epsilon!r}), but its history gives {expected!r} "
                f"({expected_site!r})."
            )


def _close(recorded: Any, expected: float) -> bool:
    return (
        isinstance(recorded, (int, float))
        and math.isfinite(recorded)
        and math.isclose(recorded, expected, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)
    )
