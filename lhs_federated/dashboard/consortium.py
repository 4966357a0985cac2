"""The consortium as a coordinator sees it: its sites, their studies and privacy spent.

Two sources, both read-only. The coordinator's ``server.toml`` and state
folder say which sites may connect and which node each registered as; the
running SuperLink (asked through Flower's own ``flwr supernode ls``, only
while the coordinator runs) says which are online and since when. The
ledgers of the runs say which studies each site approved (it trained, or
answered discovery) or refused and why, and the epsilon each reported. A
site's own budget is set and enforced at the site: the dashboard shows what is
left where the study declared the budget (simulated sites), and for each site
whose ``site.toml`` it is given (``--site``: a site's steward looking at their
own node, or a consortium on one machine), the approvals the site holds in
force (its signed registry) and its budget spent and left (its privacy
ledger). Ledger records are read here for display; the audit page verifies them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhs_federated.dashboard.runs import RunsFolder
from lhs_federated.errors import LhsError

#: Seconds a SuperLink status answer is reused (each asks Flower's CLI twice).
STATUS_TTL = 10.0


@dataclass
class StudyTaken:
    """One study a site answered, read from the coordinator's ledger."""

    run_id: str
    study: str
    study_hash: str
    status: str
    detail: str = ""
    epsilon: float | None = None
    budget: float | None = None
    simulated: bool = False

    @property
    def epsilon_left(self) -> float | None:
        """A simulated site's budget left after this study (its budget is per run)."""
        if self.budget is None:
            return None
        return self.budget - (self.epsilon or 0.0)


@dataclass
class HeldApproval:
    """An approval in force in a site's own registry."""

    study: str
    study_hash: str
    code_hash: str
    by: str
    at: str


@dataclass
class SiteBudget:
    """A site's own privacy budget, from its ``site.toml`` and its privacy ledger."""

    budget: float
    delta: float
    spent: float

    @property
    def left(self) -> float:
        """What the site can still spend (never below zero)."""
        return max(self.budget - self.spent, 0.0)


@dataclass
class SiteRow:
    """One site's line on the consortium page."""

    site: str
    node_id: str = "—"
    status: str = "unknown"
    last_seen: str | None = None
    studies: list[StudyTaken] = field(default_factory=list)
    held: list[HeldApproval] | None = None
    budget: SiteBudget | None = None

    @property
    def approved(self) -> list[StudyTaken]:
        """Studies the site approved (it answered and trained, or answered discovery)."""
        return [s for s in self.studies if s.status == "approved"]

    @property
    def refused(self) -> list[StudyTaken]:
        """Studies the site refused or failed, with the reason it gave."""
        return [s for s in self.studies if s.status != "approved"]

    @property
    def epsilon_spent(self) -> float | None:
        """Epsilon reported over every deployed study (a site's budget spans its studies).

        Simulated sites start each run with a fresh budget, so they are left out.
        """
        spent = [s.epsilon for s in self.studies if s.epsilon is not None and not s.simulated]
        return sum(spent) if spent else None


@dataclass
class Consortium:
    """What the consortium page shows."""

    coordinator: str | None
    server_state: str
    sites: list[SiteRow]
    notes: list[str] = field(default_factory=list)


class ConsortiumReader:
    """Reads the consortium from a server config (optional) and a runs folder.

    Parameters
    ----------
    runs : RunsFolder
        The runs whose ledgers name the sites.
    server_config : Path, optional
        The coordinator's ``server.toml``.
    """

    def __init__(
        self,
        runs: RunsFolder,
        server_config: Path | None = None,
        site_configs: list[Path] | None = None,
    ) -> None:
        self.runs = runs
        self.config = None
        if server_config is not None:
            from lhs_federated.deploy.server_config import load_server_config

            self.config = load_server_config(server_config)
        from lhs_federated.site_config import load_site_config

        self.site_configs = [load_site_config(path) for path in site_configs or []]
        self._status: tuple[float, dict[str, Any] | None, str] = (0.0, None, "")

    def read(self) -> Consortium:
        """The consortium as it stands now."""
        rows: dict[str, SiteRow] = {}
        notes: list[str] = []
        state = "no server.toml given (sites are those named by the runs' ledgers)"
        coordinator = None
        if self.config is not None:
            coordinator = self.config.server.name
            state = self._server_state(rows, notes)
        for run_id in self.runs.run_ids():
            self._read_ledger(run_id, rows, notes)
        for site in self.site_configs:
            self._read_site(site, rows, notes)
        return Consortium(coordinator, state, sorted(rows.values(), key=lambda r: r.site), notes)

    def _server_state(self, rows: dict[str, SiteRow], notes: list[str]) -> str:
        from lhs_federated.deploy import processes
        from lhs_federated.deploy.coordinator import ServerPaths

        paths = ServerPaths(self.config.state_dir)
        for name in self.config.sites:
            rows[name] = SiteRow(name, status="listed in server.toml")
        try:
            registered = json.loads((paths.state / "sites.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            registered = {}
        for name, node in registered.items():
            rows.setdefault(name, SiteRow(name)).node_id = str(node)
            rows[name].status = "registered"
        pid = processes.read_pid_file(paths.pid)
        if pid is None:
            return f"not running (no live pid in {paths.pid})"
        status, error = self._superlink_status()
        if status is None:
            notes.append(f"the SuperLink did not answer: {error}")
            return f"running (pid {pid}); SuperLink status unavailable"
        by_node = {str(node): name for name, node in registered.items()}
        for node in status.get("nodes", []):
            name = by_node.get(str(node.get("node-id")))
            if name is None:
                continue
            row = rows.setdefault(name, SiteRow(name))
            row.status = str(node.get("status", "unknown"))
            row.last_seen = node.get("online-at") if row.status == "online" else None
            row.last_seen = row.last_seen or node.get("offline-at")
        online = sum(1 for r in rows.values() if r.status == "online")
        return f"running (pid {pid}): {online}/{len(self.config.sites)} sites online"

    def _superlink_status(self) -> tuple[dict[str, Any] | None, str]:
        at, status, error = self._status
        if time.monotonic() - at < STATUS_TTL:
            return status, error
        from lhs_federated.deploy.coordinator import server_status

        try:
            status, error = server_status(self.config), ""
        except (LhsError, OSError) as exc:
            status, error = None, getattr(exc, "message", str(exc))
        self._status = (time.monotonic(), status, error)
        return status, error

    def _read_ledger(self, run_id: str, rows: dict[str, SiteRow], notes: list[str]) -> None:
        from lhs_federated.governance.ledger_view import StudyView
        from lhs_federated.governance.verify import load_entries

        run = self.runs.read(run_id)
        ledger = run.path / "governance" / "coordinator.jsonl"
        if not ledger.is_file():
            return
        try:
            view = StudyView.from_entries(load_entries(ledger))
        except LhsError as error:
            notes.append(f"run {run_id}: ledger not readable ({error.message})")
            return
        spent = {site: eps[max(eps)] for site, eps in view.epsilon().items() if eps}
        for site in view.participants:
            row = rows.setdefault(site, SiteRow(site, status="simulated"))
            taken = self._taken(run_id, view, site, spent.get(site))
            taken.simulated = view.engine != "deployment"
            if taken.simulated and run.epsilon_budget is not None:
                taken.budget = float(run.epsilon_budget)
            row.studies.append(taken)

    @staticmethod
    def _read_site(site: Any, rows: dict[str, SiteRow], notes: list[str]) -> None:
        """A site's own files: its approvals in force and its privacy budget."""
        from lhs_federated.apps.client_site import LEDGER_FILE
        from lhs_federated.governance.site_folder import SiteFolder
        from lhs_federated.privacy.ledger import PrivacyLedger

        name = site.site.name
        row = rows.setdefault(name, SiteRow(name, status="site files given"))
        try:
            folder = SiteFolder.open(site.governance_dir, site=name, with_key=False)
            approvals = folder.registry.approvals() if folder.registry.path.is_file() else []
            row.held = [
                HeldApproval(a.study_name, a.study_hash, a.code_hash, a.approved_by, a.approved_at)
                for a in approvals
            ]
        except LhsError as error:
            notes.append(f"site {name}: approvals not readable ({error.message})")
        policy = site.policy
        ledger_path = site.state_dir / LEDGER_FILE
        try:
            spent = (
                PrivacyLedger.load(ledger_path, name).site_epsilon(policy.budget_delta)
                if ledger_path.is_file()
                else 0.0
            )
        except LhsError as error:
            notes.append(f"site {name}: privacy ledger not readable ({error.message})")
            return
        row.budget = SiteBudget(policy.epsilon_budget, policy.budget_delta, spent)

    @staticmethod
    def _taken(run_id: str, view: Any, site: str, epsilon: float | None) -> StudyTaken:
        replies = [view.discovery.get(site)] + [r.train.get(site) for r in view.rounds]
        replies = [r for r in replies if r is not None]
        refused = next((r for r in replies if r.status != "ok"), None)
        if any(r.status == "ok" and r.stage == "train" for r in replies) or (
            replies and refused is None
        ):
            status, detail = "approved", ""
        elif refused is not None:
            status, detail = refused.status, refused.detail or ""
        else:
            status, detail = "no reply", ""
        return StudyTaken(run_id, view.study_name, view.study_hash, status, detail, epsilon)
