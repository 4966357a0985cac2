"""The coordinator's Flower ServerApp: run config in, :func:`run_study` out.

Run-config keys (``[tool.flwr.app.config]`` in pyproject.toml, overridable
with ``flwr run --run-config``):

- ``study``: a study TOML path, the study's canonical JSON, or empty for the
  built-in default study;
- ``out-dir``: the results folder (default ``runs/<study>-<time>``);
- ``engine``: a label recorded with the results;
- ``resume``: continue the run in ``out-dir`` from its last checkpoint;
- ``ledger-key``: the coordinator's private key file (``lhs-fed keys init``);
  empty: a key made for this run only, its public key written into the results;
- ``simulated-sites``: where simulated sites keep their governance folders
  (empty: ``<out-dir>/governance/sites``); deployed sites ignore it.

The study itself reaches the sites inside every message, checked against its
hash there; the run config only tells the coordinator which study to run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, UserConfig
from flwr.serverapp import Grid, ServerApp

import lhs_federated.apps.study_checks  # noqa: F401  (registers the study's checks)
from lhs_federated.apps.coordinator_audit import AuditOptions
from lhs_federated.apps.federation import run_study
from lhs_federated.apps.loop_tasks import run_loop_task
from lhs_federated.apps.preflight import ResultsFolderExists
from lhs_federated.apps.run_config import (
    DEPLOYMENT,
    ENGINE_KEY,
    EXPECTED_SITES_KEY,
    LOOP_TASK_KEY,
    OUT_DIR_KEY,
    RESUME_KEY,
    SERVER_STATE_ENV,
    SITE_NODES_FILE,
    STUDY_KEY,
    private_settings_name,
)
from lhs_federated.errors import StudyRunError
from lhs_federated.results.writer import write_failure
from lhs_federated.study import Study, check_study, load_study


def study_from_run_config(run_config: UserConfig) -> Study:
    """The study named (or carried) by a run config."""
    value = str(run_config.get(STUDY_KEY, "")).strip()
    if not value:
        return load_study(None)
    if value.startswith("{"):
        return check_study(
            Study.from_json(value, source="run config 'study'"), source="run config 'study'"
        )
    return load_study(value)


def default_out_dir(study: Study) -> Path:
    """``runs/<study>-<UTC time>``, made unique if that folder exists."""
    from lhs_federated.results.writer import utc_now

    stamp = utc_now().replace(":", "").replace("-", "").replace("+0000", "Z")
    base = Path("runs") / f"{study.name}-{stamp}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def with_site_state(study: Study, out_dir: Path) -> Study:
    """The study with its simulated sites' ledger folder made explicit.

    A sample-dp or distributed-dp study without ``sites.state_dir`` keeps the sites' privacy
    ledgers in ``<out_dir>/site-state``: budgets then hold within the run
    only. The folder becomes part of the resolved study (and so of its hash),
    which is what the sites receive and what the run folder records.
    """
    if not study.privacy.site_accounted or study.sites.state_dir is not None:
        return study
    state_dir = str((out_dir / "site-state").resolve())
    return dataclasses.replace(study, sites=dataclasses.replace(study.sites, state_dir=state_dir))


def run_from_config(config: UserConfig) -> tuple[Study, Path, str]:
    """The study to run, its results folder and the engine, from a run config.

    Simulated sites keep their privacy ledgers where the study says (see
    :func:`with_site_state`); deployed sites keep theirs where their own
    site.toml says, and receive the study exactly as submitted, whose hash is
    the one they approved.
    """
    study = study_from_run_config(config)
    out_dir = Path(str(config.get(OUT_DIR_KEY) or default_out_dir(study)))
    engine = str(config.get(ENGINE_KEY) or "flower")
    if engine != DEPLOYMENT:
        study = with_site_state(study, out_dir)
    return study, out_dir, engine


def coordinator_settings(state: Path, out_dir: Path) -> dict[str, str]:
    """A deployed run's coordinator-only settings (its ledger key), kept in the state folder."""
    path = state / "runs" / private_settings_name(out_dir.name)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def bound_site_nodes(state: Path) -> dict[int, str]:
    """Node id -> site, for the keys in server.toml (``sites.json`` of the last start).

    Raises
    ------
    StudyRunError
        If the file is missing: without it no node can be told from an outsider's.
    """
    path = state / SITE_NODES_FILE
    if not path.is_file():
        raise StudyRunError(
            f"{path} is missing: the coordinator records there which node each site's key "
            "was registered as; start the coordinator with `lhs-fed server start`."
        )
    registered = json.loads(path.read_text(encoding="utf-8"))
    return {int(node): site for site, node in registered.items() if str(node).isdigit()}


def build_server_app(
    run_config: UserConfig | None = None,
    *,
    write_results: Callable[[Path], None] | None = None,
) -> ServerApp:
    """A ServerApp whose run config is the engine's, updated with ``run_config``.

    Flower's Python simulation entry point starts the ServerApp with an empty
    run config; this is how a study reaches it there. ``write_results`` writes
    a simulation's further reader files before the ledger is sealed (see
    :func:`~lhs_federated.apps.federation.run_study`).
    """
    server_app = ServerApp()
    overrides = dict(run_config or {})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = {**context.run_config, **overrides}
        state = os.environ.get(SERVER_STATE_ENV)
        if state:  # under `lhs-fed server start`: deployed, whatever the run config says
            config[ENGINE_KEY] = DEPLOYMENT
        study, out_dir, engine = run_from_config(config)
        if state:  # a coordinator's deployment: its own settings (the ledger key)
            config = {**config, **coordinator_settings(Path(state), out_dir)}
        site_nodes = bound_site_nodes(Path(state)) if state else None
        try:
            if config.get(LOOP_TASK_KEY):  # a learning-loop study: monitor, gate, recalibrate
                run_loop_task(
                    grid,
                    study,
                    out_dir,
                    json.loads(str(config[LOOP_TASK_KEY])),
                    engine=engine,
                    audit_options=AuditOptions.from_run_config(config),
                    site_nodes=site_nodes,
                )
                return
            run_study(
                grid,
                study,
                out_dir,
                engine=engine,
                resume=bool(config.get(RESUME_KEY, False)),
                audit_options=AuditOptions.from_run_config(config),
                expected_sites=int(config.get(EXPECTED_SITES_KEY) or 0),
                write_results=write_results,
                site_nodes=site_nodes,
            )
        except ResultsFolderExists:
            raise  # the folder is someone else's: write nothing into it
        except Exception as error:
            write_failure(out_dir, error)
            raise

    return server_app


app = build_server_app()
