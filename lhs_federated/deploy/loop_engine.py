"""The learning loop's deployed engine: each step a study at a running coordinator's sites.

See :mod:`lhs_federated.loop.engine` for the seam; the loop driver
(:func:`lhs_federated.loop.simulation.run_loop`) is the same for both engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhs_federated.deploy import coordinator
from lhs_federated.deploy.server_config import ServerConfig
from lhs_federated.errors import ConfigError, StudyRunError
from lhs_federated.loop.engine import LoopEngine
from lhs_federated.study import Study, write_study


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

    server: ServerConfig
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
