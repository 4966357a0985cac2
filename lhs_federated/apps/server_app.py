"""The coordinator's Flower ServerApp: run config in, :func:`run_study` out.

Run-config keys (``[tool.flwr.app.config]`` in pyproject.toml, overridable
with ``flwr run --run-config``):

- ``study``: a study TOML path, the study's canonical JSON, or empty for the
  built-in default study;
- ``out-dir``: the results folder (default ``runs/<study>-<time>``);
- ``engine``: a label recorded with the results;
- ``resume``: continue the run in ``out-dir`` from its last checkpoint.

The study itself reaches the sites inside every message, checked against its
hash there; the run config only tells the coordinator which study to run.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, UserConfig
from flwr.serverapp import Grid, ServerApp

from lhs_federated.apps.federation import run_study
from lhs_federated.study import Study, check_study, load_study

STUDY_KEY = "study"
OUT_DIR_KEY = "out-dir"
ENGINE_KEY = "engine"
RESUME_KEY = "resume"


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
    from lhs_federated.results import utc_now

    stamp = utc_now().replace(":", "").replace("-", "").replace("+0000", "Z")
    base = Path("runs") / f"{study.name}-{stamp}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def build_server_app(run_config: UserConfig | None = None) -> ServerApp:
    """A ServerApp whose run config is the engine's, updated with ``run_config``.

    Flower's Python simulation entry point starts the ServerApp with an empty
    run config; this is how a study reaches it there.
    """
    server_app = ServerApp()
    overrides = dict(run_config or {})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = {**context.run_config, **overrides}
        study = study_from_run_config(config)
        out_dir = Path(str(config.get(OUT_DIR_KEY) or default_out_dir(study)))
        run_study(
            grid,
            study,
            out_dir,
            engine=str(config.get(ENGINE_KEY) or "flower"),
            resume=bool(config.get(RESUME_KEY, False)),
        )

    return server_app


app = build_server_app()
