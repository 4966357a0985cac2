"""Where the learning loop's studies run: simulated sites, or a deployed consortium.

The loop (:mod:`lhs_federated.loop.simulation`) is one driver; what differs
between a simulation and a deployment is only how one of its studies is run,
so that is all an engine does:

- :meth:`LoopEngine.train` runs a training study (the first release, a refit)
  to a run folder;
- :meth:`LoopEngine.task` runs a learning-loop study (``monitor``, ``gate``,
  ``recalibrate``; :mod:`lhs_federated.apps.loop_tasks`) and returns its
  ``loop-task.json``.

:class:`InProcessEngine` runs them on the study's simulated sites through the
in-process Grid; :class:`DeployedEngine` submits them to a running SuperLink
(``lhs-fed server start``), where each site's gate decides whether to answer:
a study the site approved, or a monitoring study its standing rule covers
(``[approval] monitoring_of_approved_releases``; see
:mod:`lhs_federated.deploy.standing_approval`). Both run the same ServerApp
and ClientApp; only the deployed engine cannot see the sites' data, so only
the in-process one can score models on pooled rows (``pooled_data``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhs_federated.errors import ConfigError, StudyRunError
from lhs_federated.study import Study, write_study


class LoopEngine:
    """The seam between the loop driver and the engine running its studies."""

    #: The engine's name, as a run's ``versions.json`` records it.
    name: str = ""
    #: Whether the driver can read the sites' rows (simulation: oracle and pooled scoring).
    pooled_data: bool = False
    #: The key the registry and the loop's ledgers are signed with.
    key_path: Path

    def train(self, study: Study, out_dir: Path) -> None:
        """Run a training study to ``out_dir`` (a completed run folder)."""
        raise NotImplementedError

    def task(self, study: Study, out_dir: Path, task: dict[str, Any]) -> dict[str, Any]:
        """Run a loop task; return its ``loop-task.json`` (kind, study hash, result, failed)."""
        raise NotImplementedError


@dataclass
class InProcessEngine(LoopEngine):
    """The study's simulated sites, each with one governance folder for the whole loop."""

    key_path: Path
    simulated_sites: Path | None = None
    name = "inprocess"
    pooled_data = True

    def train(self, study: Study, out_dir: Path) -> None:  # noqa: D102
        from lhs_federated.research.simulation import simulate

        simulate(study, out_dir=out_dir, report=False)

    def task(self, study: Study, out_dir: Path, task: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        from lhs_federated.loop.tasks import run_task

        return run_task(
            study, out_dir, task, key_path=self.key_path, simulated_sites=self.simulated_sites
        )


@dataclass
class DeployedEngine(LoopEngine):
    """A running coordinator's SuperLink and the sites connected to it.

    Each step is submitted as its own run (``flwr run`` of the lhs-federated
    bundle with the study, and the loop task, in its run config) and waited
    for; the run folder is the one named, in the coordinator's state. The
    sites decide at their gates; a refusal fails the step with each site's
    reason. ``approve`` (tests and ``lhs-fed demo``-style consortia on one
    machine only) is called with each study before it is submitted; in a
    real consortium each site's data steward approves the loop's studies
    (``lhs-fed site approve``) or sets the standing monitoring rule.
    """

    server: Any  # ServerConfig (deploy layer, imported when used)
    approve: Callable[[Study], None] | None = None
    timeout: float = 900.0
    name = "deployment"

    def __post_init__(self) -> None:
        key = self.server.resolve(self.server.ledger.signing_key)
        if key is None:
            raise ConfigError(
                f"{self.server.path}: the loop in deployment signs its releases with the "
                "coordinator's ledger key; set [ledger] signing_key (`lhs-fed keys init`)."
            )
        self.key_path = Path(key)

    def _run(
        self, study: Study, out_dir: Path, task: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Submit one step and wait for it; a failure names the study the sites must approve."""
        from lhs_federated.deploy import coordinator

        out_dir = Path(out_dir)
        study_file = out_dir.parent / f"{out_dir.name}.study.toml"  # what a steward approves
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        write_study(study, study_file)
        if self.approve is not None:
            self.approve(study)
        submitted = coordinator.submit_study(self.server, study, out_dir=out_dir, loop_task=task)
        try:
            return coordinator.wait_for_run(self.server, submitted, timeout=self.timeout)
        except StudyRunError as error:
            raise StudyRunError(
                f"{error.message} The step's study is {study_file} (hash {study.hash[:12]}…); "
                f"a site approves it with `lhs-fed site approve {study_file} --deployment "
                "--site-folder GOVERNANCE --reason ...`."
            ) from error

    def train(self, study: Study, out_dir: Path) -> None:  # noqa: D102
        self._run(study, out_dir)

    def task(self, study: Study, out_dir: Path, task: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        return self._run(study, out_dir, task)
