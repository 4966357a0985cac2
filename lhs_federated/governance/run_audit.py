"""Auditing a whole run folder: every ledger, every cross-check, every result file.

:func:`audit_run` is what ``lhs-fed audit report`` shows. It verifies the
coordinator's ledger (anchored to the final hash in ``summary.json``), each
site ledger it can find with that site's public key, cross-checks each site
against the coordinator, and re-hashes the result files the ``study-finished``
record lists. The verdict is "intact" only if all of that holds.

Public keys come from the run folder unless given: an auditor should compare
the fingerprints the report prints with the ones the coordinator and the
sites published, since whoever could rewrite the folder could replace them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.crosscheck import CrossCheck, crosscheck
from lhs_federated.governance.keys import load_public_key
from lhs_federated.governance.ledger import Entry
from lhs_federated.governance.ledger_view import StudyView
from lhs_federated.governance.run_files import (
    COORDINATOR_LEDGER,
    COORDINATOR_PUBLIC_KEY,
    GOVERNANCE_DIR,
    SIMULATED_SITES_DIR,
)
from lhs_federated.governance.site_folder import LEDGER_FILE, PUBLIC_FILE
from lhs_federated.governance.verify import Anchor, Verification, verify_ledger


@dataclass
class LedgerCheck:
    """One ledger's verification (and, for a site, its cross-check).

    Attributes
    ----------
    owner : str
        ``coordinator`` or the site's name.
    path : Path
        The ledger file.
    key : str
        Which public key file verified it.
    verification : Verification or None
        None if it could not be verified (see ``error``).
    error : str or None
        Why it could not be verified (no ledger, no key, not a ledger).
    crosscheck : CrossCheck or None
        A site's agreement with the coordinator's ledger.
    """

    owner: str
    path: Path
    key: str
    verification: Verification | None = None
    error: str | None = None
    crosscheck: CrossCheck | None = None

    @property
    def ok(self) -> bool:
        """Verified intact and, for a site, consistent with the coordinator."""
        return (
            self.error is None
            and self.verification is not None
            and self.verification.ok
            and (self.crosscheck is None or self.crosscheck.ok)
        )


@dataclass
class RunAudit:
    """The audit of one run folder (see :func:`audit_run`).

    Attributes
    ----------
    run_dir : Path
        The run folder.
    coordinator : LedgerCheck
        The coordinator's ledger.
    segments : list of LedgerCheck
        Ledgers of earlier attempts of a resumed run, oldest first.
    sites : list of LedgerCheck
        The site ledgers found.
    view : StudyView or None
        The coordinator's ledger read as a study (None if it is not readable).
    files : dict
        Result file -> ``unchanged``, ``changed`` or ``missing``.
    problems : list of str
        Everything that is wrong; the run is intact when it is empty.
    notes : list of str
        What could not be checked here, and why.
    """

    run_dir: Path
    coordinator: LedgerCheck
    segments: list[LedgerCheck] = field(default_factory=list)
    sites: list[LedgerCheck] = field(default_factory=list)
    view: StudyView | None = None
    files: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems


def audit_run(run_dir: str | Path, *, public_key: str | Path | None = None) -> RunAudit:
    """Verify every ledger of a run folder and cross-check them.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (``lhs-fed simulate --out``, or a deployment's results).
    public_key : str or Path, optional
        The coordinator's public key; default: the one in the run folder.

    Raises
    ------
    ConfigError
        If the folder holds no coordinator ledger, or the given key cannot
        be read.
    """
    run_dir = Path(run_dir)
    governance = run_dir / GOVERNANCE_DIR
    ledger_path = governance / COORDINATOR_LEDGER
    if not ledger_path.is_file():
        raise ConfigError(
            f"{str(run_dir)!r} is not a run folder with a ledger (no "
            f"{GOVERNANCE_DIR}/{COORDINATOR_LEDGER}); pass the folder `lhs-fed simulate` wrote."
        )
    key_path = Path(public_key) if public_key else governance / COORDINATOR_PUBLIC_KEY
    key = load_public_key(key_path)  # a bad key given by the auditor is bad input
    summary = _read_summary(run_dir)
    audit = RunAudit(run_dir, LedgerCheck("coordinator", ledger_path, str(key_path)))
    anchor = _anchor(summary, audit)
    try:
        audit.coordinator.verification = verify_ledger(ledger_path, key, anchor=anchor)
    except LhsError as error:
        audit.coordinator.error = error.message
        audit.problems.append(f"coordinator ledger: {error.message}")
        return audit
    verification = audit.coordinator.verification
    if not verification.ok:
        audit.problems.append(f"coordinator ledger: {verification.problem.describe()}")
    earlier = _check_segments(governance, list(verification.entries), audit)
    try:
        audit.view = StudyView.from_entries(earlier + list(verification.entries))
    except ConfigError as error:
        audit.problems.append(f"coordinator ledger: {error.message}")
        return audit
    _check_summary(summary, audit.view, audit)
    _check_files(run_dir, audit.view, audit)
    _check_sites(run_dir, audit)
    return audit


def _check_segments(governance: Path, entries: list[Entry], audit: RunAudit) -> list[Entry]:
    """Verify the ledgers of the attempts a resumed run continued; return their records.

    Each resumed ledger's ``study-started`` names the earlier ledger's file, key
    and final record; each earlier ledger must verify with its key and end
    exactly there (a crash may leave it without a closing record).
    """
    earlier: list[Entry] = []
    while True:
        started = next((e for e in entries if e.kind == "study-started"), None)
        link = started.data.get("resumed_from") if started is not None else None
        if not link:
            return earlier
        path, key_path = governance / str(link["file"]), governance / str(link["public_key"])
        check = LedgerCheck(
            f"coordinator, before round {link['after_round'] + 1}", path, str(key_path)
        )
        audit.segments.insert(0, check)
        anchor = Anchor(int(link["final_seq"]), str(link["final_hash"]), "the resumed ledger")
        try:
            check.verification = verify_ledger(
                path, load_public_key(key_path), anchor=anchor, allow_open=True
            )
        except LhsError as error:
            check.error = error.message
            audit.problems.append(f"{check.owner}: {error.message}")
            return earlier
        if not check.verification.ok:
            audit.problems.append(f"{check.owner}: {check.verification.problem.describe()}")
        entries = list(check.verification.entries)
        earlier = entries + earlier


def _read_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}).") from exc


def _anchor(summary: dict | None, audit: RunAudit) -> Anchor | None:
    if summary is None:
        audit.notes.append(
            "no summary.json (the study did not complete): the ledger's end is checked "
            "against its closing record only"
        )
        return None
    ledger = summary.get("ledger")
    if not isinstance(ledger, dict) or "final_hash" not in ledger:
        audit.problems.append("summary.json names no final ledger hash")
        return None
    return Anchor(int(ledger["final_seq"]), str(ledger["final_hash"]), "summary.json")


def _check_summary(summary: dict | None, view: StudyView, audit: RunAudit) -> None:
    if summary is None:
        return
    if summary.get("study_hash") != view.study_hash:
        audit.problems.append(
            f"summary.json names study {summary.get('study_hash')}, the ledger {view.study_hash}"
        )
    model = summary.get("model", {}).get("arrays_sha256")
    if view.final_model_hash is not None and model != view.final_model_hash:
        audit.problems.append(
            f"summary.json names final model {model}, the ledger {view.final_model_hash}"
        )


def _check_files(run_dir: Path, view: StudyView, audit: RunAudit) -> None:
    for relative, expected in view.result_files.items():
        path = run_dir / relative
        if not path.is_file():
            audit.files[relative] = "missing"
            audit.problems.append(f"result file {relative} is missing")
            continue
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        audit.files[relative] = "unchanged" if actual == expected else "changed"
        if actual != expected:
            audit.problems.append(f"result file {relative} was changed after the study finished")


def _check_sites(run_dir: Path, audit: RunAudit) -> None:
    view = audit.view
    if view is None:
        return
    named = view.study.get("governance", {}).get("site_folders")
    folders = Path(named) if named else run_dir / GOVERNANCE_DIR / SIMULATED_SITES_DIR
    if not folders.is_dir():
        audit.notes.append(
            f"no site ledgers at {folders} (deployed sites keep their own): cross-check each "
            "with `lhs-fed audit crosscheck` at the site"
        )
        return
    coordinator = list(audit.coordinator.verification.entries)
    for site in view.participants:
        folder = folders / site
        check = LedgerCheck(site, folder / LEDGER_FILE, str(folder / PUBLIC_FILE))
        audit.sites.append(check)
        try:
            check.verification = verify_ledger(check.path, load_public_key(folder / PUBLIC_FILE))
        except LhsError as error:
            check.error = error.message
            audit.problems.append(f"site {site}: {error.message}")
            continue
        if not check.verification.ok:
            audit.problems.append(f"site {site} ledger: {check.verification.problem.describe()}")
        check.crosscheck = crosscheck(coordinator, list(check.verification.entries))
        audit.problems += [f"site {site}: {p}" for p in check.crosscheck.problems]
