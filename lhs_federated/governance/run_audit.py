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

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.crosscheck import CrossCheck, crosscheck
from lhs_federated.governance.keys import load_public_key
from lhs_federated.governance.ledger import Entry, read_header
from lhs_federated.governance.ledger_view import StudyView
from lhs_federated.governance.run_files import (
    COORDINATOR_LEDGER,
    COORDINATOR_PUBLIC_KEY,
    GOVERNANCE_DIR,
    SEAL,
    SIMULATED_SITES_DIR,
    compare_files,
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
    key_given : bool
        The auditor gave the coordinator's public key (``--public-key``).
    key_trust : str
        Which coordinator key the audit trusted, and why.
    """

    run_dir: Path
    coordinator: LedgerCheck
    segments: list[LedgerCheck] = field(default_factory=list)
    sites: list[LedgerCheck] = field(default_factory=list)
    view: StudyView | None = None
    files: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    key_given: bool = False
    key_trust: str = ""

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems


def audit_run(
    run_dir: str | Path,
    *,
    public_key: str | Path | None = None,
    site_ledgers: Sequence[Path] = (),
) -> RunAudit:
    """Verify every ledger of a run folder, cross-check them, re-hash every file.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (``lhs-fed simulate --out``, or a deployment's results).
    public_key : str or Path, optional
        The coordinator's public key (pinned); default: the one in the run
        folder, checked against the key the sites' ledgers record.
    site_ledgers : sequence of Path
        Site ledgers kept outside the run folder (deployed sites'), each with
        its ``site.pub`` beside it.

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
    audit = RunAudit(run_dir, LedgerCheck("coordinator", ledger_path, str(key_path)))
    audit.key_given = public_key is not None
    try:
        verification = verify_ledger(ledger_path, key)
    except LhsError as error:
        audit.coordinator.error = error.message
        audit.problems.append(f"coordinator ledger: {error.message}")
        return audit
    summary = _read_summary(run_dir, audit)
    sealed = any(e.kind == SEAL for e in verification.entries)
    anchor = _anchor(summary, audit) if summary is not None and not sealed else None
    if anchor is not None:  # no seal: summary.json says where the ledger ends
        verification = verify_ledger(ledger_path, key, anchor=anchor)
    audit.coordinator.verification = verification
    audit.problems += [f"coordinator ledger: {p.describe()}" for p in verification.problems]
    earlier = _check_segments(governance, list(verification.entries), audit)
    try:
        audit.view = StudyView.from_entries(earlier + list(verification.entries))
    except ConfigError as error:
        audit.notes.append(f"the study cannot be read from the coordinator ledger: {error.message}")
        return audit
    _check_files(run_dir, audit.view, audit)
    _check_models(audit.view, audit)
    if summary is not None and audit.files.get("summary.json") in (None, "unchanged"):
        _check_summary(summary, audit.view, verification, audit)
    _check_sites(run_dir, audit, site_ledgers)
    if not audit.sites and not audit.key_given:
        _check_key(audit)
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
        audit.problems += [f"{check.owner}: {p.describe()}" for p in check.verification.problems]
        entries = list(check.verification.entries)
        earlier = entries + earlier


def _read_summary(run_dir: Path, audit: RunAudit) -> dict | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        audit.notes.append(f"summary.json is not valid JSON ({exc}); its claims are not used")
        return None
    return summary if isinstance(summary, dict) else None


def _anchor(summary: dict, audit: RunAudit) -> Anchor | None:
    """Where ``summary.json`` says the ledger ends (its study-finished record, then the seal)."""
    ledger = summary.get("ledger")
    try:
        if "finished_hash" in ledger:
            seq = int(ledger["finished_seq"])
            return Anchor(
                seq, str(ledger["finished_hash"]), "summary.json", int(ledger["sealed_seq"]) - seq
            )
        return Anchor(int(ledger["final_seq"]), str(ledger["final_hash"]), "summary.json")
    except (KeyError, TypeError, ValueError):
        audit.problems.append("summary.json names no study-finished record of the ledger")
        return None


def _check_summary(
    summary: dict, view: StudyView, verification: Verification, audit: RunAudit
) -> None:
    """What ``summary.json`` claims against the ledger (a coordinator that contradicts itself)."""
    if summary.get("study_hash") != view.study_hash:
        audit.problems.append(
            f"summary.json names study {summary.get('study_hash')}, the ledger {view.study_hash}"
        )
    model = (summary.get("model") or {}).get("arrays_sha256")
    if view.final_model_hash is not None and model != view.final_model_hash:
        audit.problems.append(
            f"summary.json names final model {model}, the ledger {view.final_model_hash}"
        )
    anchor = _anchor(summary, audit) if view.sealed else None
    if anchor is None:
        return
    named = next((e for e in verification.entries if e.seq == anchor.seq), None)
    if named is not None and named.hash != anchor.hash:
        audit.problems.append(
            f"coordinator ledger: summary.json names hash {anchor.hash[:16]}… for record "
            f"{anchor.seq} (study-finished), the ledger has {named.hash[:16]}…: the ledger was "
            "rewritten and re-signed"
        )


def _check_models(view: StudyView, audit: RunAudit) -> None:
    """Every site of a stage must have been sent the same global model (the ledger says which)."""
    for current in view.rounds:
        for stage, replies in (("train", current.train), ("evaluate", current.evaluate)):
            groups: dict[str, list[str]] = {}
            for site, reply in sorted(replies.items()):
                if reply.sent_arrays_hash:
                    groups.setdefault(reply.sent_arrays_hash, []).append(site)
            if len(groups) < 2:
                continue
            ranked = sorted(groups.items(), key=lambda item: -len(item[1]))
            majority = ranked[0] if len(ranked[0][1]) > len(ranked[1][1]) else None
            for digest, sites in ranked:
                if majority is not None and digest == majority[0]:
                    continue
                others = (
                    f"the model {majority[0][:16]}… the other sites were sent"
                    if majority is not None
                    else "the model the other sites were sent"
                )
                audit.problems.append(
                    f"round {current.round} ({stage}): {', '.join(sites)} "
                    f"{'was' if len(sites) == 1 else 'were'} sent model {digest[:16]}…, not "
                    f"{others}: the coordinator sent sites different models"
                )


def _check_files(run_dir: Path, view: StudyView, audit: RunAudit) -> None:
    """Re-hash every file against the closing record (or, without one, study-finished)."""
    if view.sealed_files is not None:
        record = "the ledger's closing record" if view.sealed else "the study-failed record"
        findings = compare_files(run_dir, view.sealed_files, view.sealed_logs, complete=True)
    elif view.result_files:
        record = "the study-finished record"
        findings = compare_files(run_dir, view.result_files, complete=False)
        audit.notes.append(
            "no closing record hashes the files written after study-finished "
            "(summary.json, analysis, report): they are not covered"
        )
    else:
        audit.notes.append("the ledger lists no result files (the study did not finish)")
        return
    for finding in findings:
        audit.files[finding.name] = finding.state
        if not finding.ok:
            audit.problems.append(finding.describe(record))
        elif finding.state == "appended":
            audit.notes.append(finding.describe(record))


def _check_sites(run_dir: Path, audit: RunAudit, site_ledgers: Sequence[Path]) -> None:
    """Verify each site ledger found with its own key; cross-check it with the coordinator's."""
    view = audit.view
    if view is None:
        return
    named = view.study.get("governance", {}).get("site_folders")
    folders = Path(named) if named else run_dir / GOVERNANCE_DIR / SIMULATED_SITES_DIR
    ledgers = {}
    if folders.is_dir():
        ledgers = {site: folders / site / LEDGER_FILE for site in view.participants}
    for path in site_ledgers:
        ledgers[str(read_header(path).data.get("owner"))] = Path(path)
    if not ledgers:
        audit.notes.append(
            f"no site ledgers at {folders} (deployed sites keep their own): pass them with "
            "--site-ledger, or cross-check each with `lhs-fed audit crosscheck` at the site"
        )
        return
    coordinator = audit.coordinator.verification
    lost = any(p.kind in ("deleted", "modified") for p in coordinator.problems)
    for site, path in ledgers.items():
        check = LedgerCheck(site, path, str(path.parent / PUBLIC_FILE))
        audit.sites.append(check)
        try:
            check.verification = verify_ledger(path, load_public_key(path.parent / PUBLIC_FILE))
        except LhsError as error:
            check.error = error.message
            audit.problems.append(f"site {site}: {error.message}")
            continue
        audit.problems += [
            f"site {site} ledger: {p.describe()}" for p in check.verification.problems
        ]
        check.crosscheck = crosscheck(
            list(coordinator.entries),
            list(check.verification.entries),
            unverified=list(coordinator.unverified),
            site_unverified=list(check.verification.unverified),
            coordinator_lost=lost,
            site_lost=any(p.kind in ("deleted", "modified") for p in check.verification.problems),
        )
        for problem in check.crosscheck.problems:
            if coordinator.ok or problem not in check.crosscheck.end_problems:
                audit.problems.append(f"site {site}: {problem}")
            else:  # the coordinator ledger's own check already says so
                audit.notes.append(f"site {site} confirms: {problem}")
    _check_key(audit)


def _check_key(audit: RunAudit) -> None:
    """Say which coordinator key the audit trusted, and whether the sites saw that key."""
    used = audit.coordinator.verification.key_fingerprint
    checks = [c.crosscheck for c in audit.sites if c.crosscheck is not None]
    seen = set().union(*(c.keys_seen for c in checks)) if checks else set()
    mismatched = [c for c in checks if c.key_mismatch]
    if seen and used not in seen:
        audit.problems = [p for p in audit.problems if "it is not the ledger the site" not in p]
        audit.problems.append(
            f"coordinator key: the run folder's ledger is verified with key {used}, but the "
            f"sites' ledgers ({', '.join(sorted(c.site for c in mismatched))}) record key "
            f"{', '.join(sorted(seen))}: the coordinator ledger was replaced and re-signed "
            "with another key, or the wrong public key was given"
        )
        audit.key_trust = f"not trusted: the sites saw {', '.join(sorted(seen))}"
    elif seen:
        audit.key_trust = f"{used}, the key the sites' ledgers record"
    elif audit.key_given:
        audit.key_trust = f"{used}, the key given with --public-key"
    if not seen and not audit.key_given:
        audit.key_trust = f"{used}, found only in the run folder"
        audit.notes.append(
            f"the coordinator key {used} was found only in the run folder, which whoever could "
            "rewrite the folder could replace: pass the published key with --public-key, or "
            "the site ledgers (--site-ledger), whose records pin it"
        )
