"""Running a study on simulated sites: the researcher's entry point.

``simulate`` checks the study, the results folder, every simulated site's data
and whether the sites can run the study (:mod:`lhs_federated.apps.preflight`)
first, so bad input fails in seconds and before any results folder exists;
then it runs the real ServerApp and ClientApp on one of two engines:

- ``inprocess`` (default): :class:`~lhs_federated.apps.inprocess.InProcessGrid`,
  no Ray start-up, one process;
- ``ray``: the sites' ClientApps in Ray actors, on this machine's cores or on
  a Ray cluster when one machine is not enough.

The same seed gives identical results on both.
"""

from __future__ import annotations

from pathlib import Path

import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)
from lhs_federated.apps import server_app
from lhs_federated.apps.engines import run_inprocess, run_ray
from lhs_federated.apps.flower_logs import flower_lines_once
from lhs_federated.apps.preflight import check_out_dir, check_sites
from lhs_federated.apps.run_config import BACKENDS, EXPECTED_SITES_KEY, LEDGER_KEY, Backend
from lhs_federated.data.sources import load_sites
from lhs_federated.errors import ConfigError
from lhs_federated.governance.keys import load_private_key
from lhs_federated.learning.site import summarise_site
from lhs_federated.research.analysis import analyse_run
from lhs_federated.research.report import write_run_report
from lhs_federated.results.progress import ProgressEvent, report_progress
from lhs_federated.results.reader import RunResults, read_results
from lhs_federated.study import Study, load_study


def simulate(
    study: Study | str | Path | None = None,
    *,
    backend: Backend = "inprocess",
    out_dir: str | Path | None = None,
    coordinator_key: str | Path | None = None,
    report: bool = True,
    ray_address: str | None = None,
) -> RunResults:
    """Run a study on its simulated sites and return its results.

    After the federation, the run is analysed (:mod:`lhs_federated.research.analysis`:
    pooled and local-only baselines unless ``[baselines] enabled = false``,
    calibration) and, with ``report``, ``report.html`` is written; then the
    coordinator's ledger is sealed over every file of the run folder.

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
    ray_address : str, optional
        With ``backend="ray"``: the Ray cluster to run the sites on
        (``host:port`` of its head node, or ``ray://host:10001``); default:
        ``RAY_ADDRESS`` if set, else a Ray instance on this machine. The
        results folder must then be on storage every node shares.

    Returns
    -------
    RunResults
        Per-round, per-site metrics as DataFrames, the summary and the folder.

    Raises
    ------
    ConfigError, DataError
        For a bad study, an existing results folder or bad site data, before
        anything is written.
    StudyRunError
        If the sites cannot run the study (before anything is written: too few
        can train, see :func:`~lhs_federated.apps.preflight.check_sites`), or
        the federation cannot complete.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    if ray_address is not None and backend != "ray":
        raise ConfigError(
            f"ray_address={ray_address!r} names a Ray cluster, which only the ray backend "
            f"uses; got backend={backend!r}: pass backend='ray' or drop ray_address."
        )
    if not isinstance(study, Study):
        study = load_study(study)
    out = Path(out_dir) if out_dir is not None else server_app.default_out_dir(study)
    check_out_dir(out)
    sites = load_sites(study)
    # Warnings are the coordinator's to log (it runs the same check after discovery).
    min_cell_size = study.sites.min_cell_size
    check_sites(study, [summarise_site(s, study, min_cell_size=min_cell_size) for s in sites])
    n_sites = len(sites)
    run_config = {
        server_app.STUDY_KEY: study.to_json(),
        server_app.OUT_DIR_KEY: str(out),
        server_app.ENGINE_KEY: backend,
        # Ray starts its virtual nodes one by one: wait for all of them, or a
        # loaded machine runs the study on whichever had registered.
        EXPECTED_SITES_KEY: str(n_sites),
    }
    if coordinator_key is not None:
        load_private_key(coordinator_key)  # a bad key fails here, before anything is written
        run_config[LEDGER_KEY] = str(Path(coordinator_key).resolve())

    def write_results(run_dir: Path) -> None:
        """The analysis and report, written before the ledger is sealed over them."""
        baselines = "pooled and local-only baselines, " if study.baselines.enabled else ""
        report_progress(
            ProgressEvent(
                "step", f"analysing the run: {baselines}calibration", {"step": "analysis"}
            ),
            run_dir=run_dir,
        )
        analyse_run(study, run_dir)
        if report:
            report_progress(
                ProgressEvent("step", "writing report.html", {"step": "report"}), run_dir=run_dir
            )
            write_run_report(run_dir)

    with flower_lines_once():
        if backend == "inprocess":
            run_inprocess(run_config, n_sites, write_results=write_results)
        else:
            run_ray(run_config, n_sites, write_results=write_results, address=ray_address)
    return read_results(out)
