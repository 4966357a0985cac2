"""A coordinator ledger read back as a study: rounds, participants, privacy, lineage.

``lhs-fed audit show`` prints it as tables and ``lhs-fed audit report`` turns
it into the governance report. It reads records only; whether they can be
trusted is :func:`~lhs_federated.governance.verify.verify_ledger`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lhs_federated.errors import ConfigError
from lhs_federated.governance.ledger import Entry
from lhs_federated.governance.run_files import SEAL


@dataclass(frozen=True)
class SiteReply:
    """One ``site-reply`` record."""

    site: str
    stage: str
    round: int
    status: str
    examples: int | None
    arrays_hash: str | None
    sent_arrays_hash: str | None
    update_norm: float | None
    epsilon: float | None
    content_hash: str
    size: int
    detail: str | None

    @classmethod
    def from_entry(cls, entry: Entry) -> SiteReply:
        """Read a ``site-reply`` record."""
        data = entry.data
        return cls(
            site=str(data.get("site")),
            stage=str(data.get("stage")),
            round=int(data.get("round", 0)),
            status=str(data.get("status")),
            examples=data.get("examples"),
            arrays_hash=data.get("arrays_hash"),
            sent_arrays_hash=data.get("sent_arrays_hash"),
            update_norm=data.get("update_norm"),
            epsilon=data.get("epsilon"),
            content_hash=str(data.get("content_hash")),
            size=int(data.get("size") or 0),
            detail=data.get("detail"),
        )


@dataclass
class RoundView:
    """Everything the ledger says about one round."""

    round: int
    sampled: list[str] = field(default_factory=list)
    sent_arrays_hash: str | None = None
    config_hash: str | None = None
    train: dict[str, SiteReply] = field(default_factory=dict)
    evaluate: dict[str, SiteReply] = field(default_factory=dict)
    aggregated_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    contributors: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation_failed: dict[str, str] = field(default_factory=dict)

    def status_of(self, site: str) -> str:
        """``trained``, ``refused``, ``failed``, ``no reply`` or ``not sampled``."""
        reply = self.train.get(site)
        if reply is not None:
            return "trained" if reply.status == "ok" else reply.status
        if site in self.failed:
            return "no reply" if "no reply" in self.failed[site] else "failed"
        return "not sampled" if site not in self.sampled else "no reply"


@dataclass
class StudyView:
    """A coordinator ledger as a study (see the module docstring).

    ``sealed_files`` and ``sealed_logs`` are what the closing record
    (``results-sealed``, or ``study-failed``) hashes: every reader's file.
    """

    study_name: str
    study_hash: str
    code: dict[str, str]
    versions: dict[str, Any]
    engine: str
    run_id: int
    participants: list[str]
    key_fingerprint: str
    started_at: str
    study: dict[str, Any]
    discovery: dict[str, SiteReply] = field(default_factory=dict)
    rounds: list[RoundView] = field(default_factory=list)
    status: str = "open"
    finished_at: str | None = None
    error: str | None = None
    final_model_hash: str | None = None
    result_files: dict[str, str] = field(default_factory=dict)
    sealed: bool = False
    sealed_files: dict[str, str] | None = None
    sealed_logs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> StudyView:
        """Build the view from a coordinator ledger's records.

        Raises
        ------
        ConfigError
            If the records are not a coordinator ledger with a ``study-started`` record.
        """
        if not entries or entries[0].data.get("role") != "coordinator":
            raise ConfigError("not a coordinator ledger: its header names another role.")
        started = next((e for e in entries if e.kind == "study-started"), None)
        if started is None:
            raise ConfigError("the coordinator ledger has no 'study-started' record.")
        data = started.data
        view = cls(
            study_name=str(data["study_name"]),
            study_hash=str(data["study_hash"]),
            code=dict(data.get("code", {})),
            versions=dict(data.get("versions", {})),
            engine=str(data.get("engine")),
            run_id=int(data["run_id"]),
            participants=[str(p["site"]) for p in data.get("participants", [])],
            key_fingerprint=str(data.get("key", {}).get("fingerprint")),
            started_at=started.time,
            study=dict(data.get("study", {})),
        )
        for entry in entries:
            view._read(entry)
        return view

    def _round(self, number: int) -> RoundView:
        for existing in self.rounds:
            if existing.round == number:
                return existing
        created = RoundView(number)
        self.rounds.append(created)
        return created

    def _read(self, entry: Entry) -> None:
        data = entry.data
        if entry.kind == "site-reply":
            reply = SiteReply.from_entry(entry)
            if reply.stage == "discovery":
                self.discovery[reply.site] = reply
            elif reply.stage == "train":
                self._round(reply.round).train[reply.site] = reply
            else:
                self._round(reply.round).evaluate[reply.site] = reply
        elif entry.kind == "round-started":
            current = self._round(int(data["round"]))
            current.sampled = list(data.get("sampled_sites", []))
            current.sent_arrays_hash = data.get("arrays_hash")
            current.config_hash = data.get("config_hash")
        elif entry.kind == "round-aggregated":
            current = self._round(int(data["round"]))
            current.aggregated_hash = data.get("arrays_hash")
            current.metrics = dict(data.get("metrics", {}))
            current.contributors = list(data.get("contributors", []))
            current.failed = dict(data.get("failed", {}))
        elif entry.kind == "evaluation":
            current = self._round(int(data["round"]))
            current.evaluation = dict(data.get("per_site", {}))
            current.evaluation_failed = dict(data.get("failed", {}))
        elif entry.kind in ("study-finished", "study-failed"):
            self.status = str(data.get("status", entry.kind))
            self.finished_at = entry.time
            self.error = data.get("error")
            self.final_model_hash = data.get("final_model_hash", self.final_model_hash)
            self.result_files = dict(data.get("result_files", self.result_files))
        if entry.kind in (SEAL, "study-failed") and "files" in data:
            self.sealed = entry.kind == SEAL
            self.sealed_files = {str(k): str(v) for k, v in dict(data["files"]).items()}
            self.sealed_logs = dict(data.get("logs", {}))

    def epsilon(self) -> dict[str, dict[int, float]]:
        """Privacy budget spent so far, by site and round, as the sites reported it."""
        spent: dict[str, dict[int, float]] = {site: {} for site in self.participants}
        for current in self.rounds:
            for site, reply in current.train.items():
                if reply.epsilon is not None:
                    spent.setdefault(site, {})[current.round] = reply.epsilon
        return spent
