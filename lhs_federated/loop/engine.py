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
in-process Grid; :class:`~lhs_federated.deploy.loop_engine.DeployedEngine`
(in the deploy layer, above this one) submits them to a running SuperLink
(``lhs-fed server start``), where each site's gate decides whether to answer:
a study the site approved, or a monitoring study its standing rule covers
(``[approval] monitoring_of_approved_releases``; see
:mod:`lhs_federated.deploy.standing_approval`). Both run the same ServerApp
and ClientApp; only the deployed engine cannot see the sites' data, so only
the in-process one can score models on pooled rows (``pooled_data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhs_federated.study import Study


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
