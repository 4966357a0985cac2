"""A site's privacy ledger, held to its signed site ledger before every private round.

The privacy ledger (``privacy-ledger.json``) is what the budget check reads;
moving it away, or removing rounds from it, would reset the site's budget.
Every private round that left the site is also in the signed, hash-chained
site ledger: a ``message-sent`` record of a training reply with the study's
cumulative epsilon. :func:`check_privacy_ledger` compares the two before a
site trains a private study: the privacy ledger must hold at least the rounds
and the epsilon the signed ledger records for every study. A missing, shorter
or otherwise inconsistent privacy ledger makes the site refuse every private
study, naming both files, until its data steward restores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lhs_federated.errors import SiteRefusal
from lhs_federated.governance.ledger import parse_line
from lhs_federated.governance.site_folder import LEDGER_FILE, MESSAGE_SENT
from lhs_federated.privacy.ledger import LedgerError, PrivacyLedger

_TOLERANCE = 1e-9


@dataclass
class ReleasedSpend:
    """What the signed ledger says one study has spent: its private rounds released."""

    rounds: set[tuple[int, int]] = field(default_factory=set)  # (run id, round)
    epsilon: float = 0.0


def released_spends(ledger: Path, public_key: Ed25519PublicKey) -> dict[str, ReleasedSpend]:
    """Private training replies the site ledger records, by study hash.

    Only records carrying the site's signature count (a line that does not
    verify is reported by ``lhs-fed audit``, not trusted here).
    """
    spends: dict[str, ReleasedSpend] = {}
    kind = f'"kind":"{MESSAGE_SENT}"'.encode()
    for raw in ledger.read_bytes().splitlines():
        if kind not in raw or b'"epsilon":null' in raw:
            continue
        try:
            entry = parse_line(raw, 0)
        except ValueError:
            continue
        data = entry.data
        if data.get("epsilon") is None or data.get("status") != "ok":
            continue
        if not (entry.content_matches_hash() and entry.signed_by(public_key)):
            continue
        spend = spends.setdefault(str(data.get("study_hash")), ReleasedSpend())
        spend.rounds.add((int(data.get("run_id", 0)), int(data.get("server_round", 0))))
        spend.epsilon = max(spend.epsilon, float(data["epsilon"]))
    return spends


def check_privacy_ledger(
    site: str, folder: Path, public_key: Ed25519PublicKey, privacy_ledger: Path | None
) -> None:
    """Refuse unless the privacy ledger holds every private round the signed ledger records.

    Parameters
    ----------
    site : str
        The site's name.
    folder : Path
        The site's governance folder (its signed ``ledger.jsonl``).
    public_key : Ed25519PublicKey
        The site's public key.
    privacy_ledger : Path or None
        The site's privacy ledger file.

    Raises
    ------
    SiteRefusal
        If the privacy ledger is missing, unreadable, or holds fewer rounds or
        less epsilon for a study than the signed ledger records as released.
    """
    signed = folder / LEDGER_FILE
    spends = released_spends(signed, public_key)
    if not spends:
        return
    total = sum(len(s.rounds) for s in spends.values())
    if privacy_ledger is None or not privacy_ledger.is_file():
        raise SiteRefusal(
            site,
            f"its privacy ledger {str(privacy_ledger)!r} is missing, but its signed ledger "
            f"{str(signed)!r} records {total} private round(s) released; the budget they "
            "spent cannot be reset, so the site refuses every private study until its data "
            "steward restores the privacy ledger",
        )
    try:
        ledger = PrivacyLedger.load(privacy_ledger, site)
    except LedgerError as error:
        raise SiteRefusal(site, f"{error.message} Until then the site refuses to train.") from error
    for study_hash, spend in spends.items():
        recorded = ledger.studies.get(study_hash)
        rounds = len(recorded.rounds) if recorded is not None else 0
        epsilon = recorded.epsilon if recorded is not None else 0.0
        if rounds < len(spend.rounds) or epsilon + _TOLERANCE < spend.epsilon:
            raise SiteRefusal(
                site,
                f"its privacy ledger {str(privacy_ledger)!r} holds {rounds} round(s) of study "
                f"{study_hash[:12]}… (epsilon {epsilon:.4f}), but its signed ledger "
                f"{str(signed)!r} records {len(spend.rounds)} released (epsilon "
                f"{spend.epsilon:.4f}): the privacy ledger was replaced or edited; the site "
                "refuses every private study until its data steward restores it",
            )
