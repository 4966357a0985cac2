"""The keys of a run's config (``[tool.flwr.app.config]``), in a module that imports nothing.

The coordinator writes them when it submits a study, the app bundle declares
them, and the ServerApp reads them; the coordinator's command line must not
pay for importing the ServerApp (PyTorch, scikit-learn) to know their names.
"""

from typing import Literal

STUDY_KEY = "study"
OUT_DIR_KEY = "out-dir"
ENGINE_KEY = "engine"
RESUME_KEY = "resume"
EXPECTED_SITES_KEY = "expected-sites"
#: The coordinator's ledger signing key; read by ``AuditOptions.from_run_config``.
LEDGER_KEY = "ledger-key"
#: Where simulated sites keep their governance folders.
SIMULATED_SITES = "simulated-sites"
#: The engine name the coordinator puts in the run config of a deployed study.
DEPLOYMENT = "deployment"

#: Set by ``lhs-fed server start`` in the SuperLink's environment (so in the
#: ServerApp's): the coordinator's state folder. What must not travel in the run
#: config, which every site receives, is read from there: the node id each
#: site's key was registered as (``sites.json``, the binding the ServerApp
#: enforces) and, per run, the ledger key's path (``runs/.<run>.private.json``).
SERVER_STATE_ENV = "LHS_FED_SERVER_STATE"
SITE_NODES_FILE = "sites.json"


def private_settings_name(out_dir_name: str) -> str:
    """File name, in the state folder's ``runs/``, of a run's coordinator-only settings."""
    return f".{out_dir_name}.private.json"


#: The simulation engines (``lhs-fed simulate --backend``).
Backend = Literal["inprocess", "ray"]
BACKENDS: tuple[Backend, ...] = ("inprocess", "ray")
#: A learning-loop study (monitor, gate, recalibrate): its task as JSON, and the
#: file its result is written to (see lhs_federated.apps.loop_tasks).
LOOP_TASK_KEY = "loop-task"
LOOP_RESULT_FILE = "loop-task.json"
