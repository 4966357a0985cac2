"""Running a study on simulated sites: the researcher's entry point.

``simulate`` checks the study and every simulated site's data first (so bad
input fails before any results folder exists), then runs the real ServerApp
and ClientApp on one of two engines:

- ``inprocess`` (default): :class:`~lhs_federated.apps.inprocess.InProcessGrid`,
  no Ray start-up, one process;
- ``ray``: Flower's simulation engine, the way to a Ray cluster when one
  machine is not enough.

The same seed gives identical results on both.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp

from lhs_federated.analysis import analyse_run
from lhs_federated.apps import client_app, server_app
from lhs_federated.apps.inprocess import InProcessGrid
from lhs_federated.apps.run_config import BACKENDS, LEDGER_KEY, Backend
from lhs_federated.data.sources import load_sites
from lhs_federated.errors import ConfigError
from lhs_federated.governance.keys import load_private_key
from lhs_federated.report import write_run_report
from lhs_federated.results import RunResults, read_results
from lhs_federated.study import Study, load_study


def simulate(
    study: Study | str | Path | None = None,
    *,
    backend: Backend = "inprocess",
    out_dir: str | Path | None = None,
    coordinator_key: str | Path | None = None,
    report: bool = True,
) -> RunResults:
    """Run a study on its simulated sites and return its results.

    After the federation, the run is analysed (:mod:`lhs_federated.analysis`:
    pooled and local-only baselines unless ``[baselines] enabled = false``,
    calibration) and, with ``report``, ``report.html`` is written.

    Parameters
    ----------
    study : Study, str, Path or None
        A study object, a study TOML path, or ``None`` for the default study.
    backend : {"inprocess", "ray"}
        The engine.
    out_dir : str or Path, optional
        Results folder (default ``runs/<study>-<time>``); must not exist or be
        empty.
    coordinator_key : str or Path, optional
        The coordinator's private key file (``lhs-fed keys init``) signing the
        run's ledger; default: a key made for this run only (its public key
        is written into the results, the private key is never stored).
    report : bool
        Write the HTML report (sweeps skip it per run and report the sweep).

    Returns
    -------
    RunResults
        Per-round, per-site metrics as DataFrames, the summary and the folder.

    Raises
    ------
    ConfigError, DataError
        For a bad study or bad site data, before anything is written.
    StudyRunError
        If the federation cannot complete (too few sites return updates).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    if not isinstance(study, Study):
        study = load_study(study)
    n_sites = len(load_sites(study))
    out = Path(out_dir) if out_dir is not None else server_app.default_out_dir(study)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"results folder {str(out)!r} already exists and is not empty; choose another."
        )
    run_config = {
        server_app.STUDY_KEY: study.to_json(),
        server_app.OUT_DIR_KEY: str(out),
        server_app.ENGINE_KEY: backend,
    }
    if coordinator_key is not None:
        load_private_key(coordinator_key)  # a bad key fails here, before anything is written
        run_config[LEDGER_KEY] = str(Path(coordinator_key).resolve())
    if backend == "inprocess":
        run_inprocess(run_config, n_sites)
    else:
        _run_ray(run_config, n_sites)
    analyse_run(study, out)
    if report:
        write_run_report(out)
    return read_results(out)


def run_inprocess(
    run_config: dict[str, str], n_sites: int, *, client: ClientApp | None = None
) -> None:
    """Run the ServerApp on an :class:`InProcessGrid` of ``n_sites`` nodes.

    ``client`` replaces the site ClientApp (fault-injection tests use it).
    """
    from flwr.supercore.task_identity import TaskIdentity

    run_id = random.getrandbits(63)
    # Flower's Message constructor reads the run from the task identity, which
    # its own engines set; this engine is the task.
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    grid = InProcessGrid(client or client_app.app, n_sites, run_id=run_id)
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app.app(grid, context)


def _run_ray(run_config: dict[str, str], n_sites: int) -> None:
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app.build_server_app(run_config),
            client_app=client_app.app,
            num_supernodes=n_sites,
            backend_config=backend_config,
        )
