"""Running one learning-loop study on the simulated sites, through the real apps.

Every step of the loop is a study the sites approve, run by the same ServerApp
and ClientApp as any other (:mod:`lhs_federated.apps.loop_tasks`); here the
engine is the in-process one. A loop keeps its simulated sites' governance
folders in one place (``simulated_sites``), so each site's ledger holds every
step it took part in, verdicts included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)
from lhs_federated.apps import server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.run_config import (
    LEDGER_KEY,
    LOOP_RESULT_FILE,
    LOOP_TASK_KEY,
    SIMULATED_SITES,
)
from lhs_federated.data.sources import raw_sites
from lhs_federated.errors import StudyRunError
from lhs_federated.study import Study


def run_task(
    study: Study,
    out_dir: Path,
    task: dict[str, Any],
    *,
    key_path: Path | None = None,
    simulated_sites: Path | None = None,
) -> dict[str, Any]:
    """Run a loop task (monitor, gate, recalibrate) on ``study``'s simulated sites.

    Returns
    -------
    dict
        The task's ``loop-task.json``: kind, study hash, result, failures.
    """
    n_sites = len(raw_sites(study))
    config = {
        server_app.STUDY_KEY: study.to_json(),
        server_app.OUT_DIR_KEY: str(out_dir),
        server_app.ENGINE_KEY: "inprocess",
        LOOP_TASK_KEY: json.dumps(task),
    }
    if key_path is not None:
        config[LEDGER_KEY] = str(Path(key_path).resolve())
    if simulated_sites is not None:
        config[SIMULATED_SITES] = str(Path(simulated_sites).resolve())
    run_inprocess(config, n_sites)
    result = Path(out_dir) / LOOP_RESULT_FILE
    if not result.is_file():
        raise StudyRunError(
            f"the {task.get('kind')} study wrote no {LOOP_RESULT_FILE} in {out_dir}."
        )
    return json.loads(result.read_text(encoding="utf-8"))
