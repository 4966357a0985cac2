"""The simulation engines: the ServerApp and ClientApp on simulated sites in one machine.

- :func:`run_inprocess`: an :class:`~lhs_federated.apps.inprocess.InProcessGrid`
  that calls the ClientApp directly, with no Ray start-up, in this process;
- :func:`run_ray`: the same ServerApp here, the sites' ClientApps in Ray actors
  (:class:`~lhs_federated.apps.ray_grid.RayGrid`), on this machine's cores or
  on a Ray cluster when one machine is not enough.

The researcher's entry point, :func:`lhs_federated.research.simulation.simulate`,
chooses one; both run the same apps, and the same seed gives identical results.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from lhs_federated.apps import client_app, server_app
from lhs_federated.apps.inprocess import InProcessGrid
from lhs_federated.data.sources import load_sites
from lhs_federated.study import Study

_log = logging.getLogger(__name__)


def run_inprocess(
    run_config: dict[str, str],
    n_sites: int,
    *,
    client: ClientApp | None = None,
    write_results: Callable[[Path], None] | None = None,
    batch_durability: bool = True,
) -> None:
    """Run the ServerApp on an :class:`InProcessGrid` of ``n_sites`` nodes.

    ``client`` replaces the site ClientApp (fault-injection tests use it);
    ``write_results`` writes further reader files before the ledger is sealed;
    ``batch_durability=False`` syncs each site ledger record on its own (see
    :class:`InProcessGrid`).
    """
    run_id = _enter_run()
    grid = InProcessGrid(
        client or client_app.app, n_sites, run_id=run_id, batch_durability=batch_durability
    )
    _run_server_app(grid, run_id, run_config, write_results)


def _enter_run() -> int:
    """A new run's id, set as this process's task identity.

    Flower's Message constructor reads the run from the task identity, which
    its own engines set; these engines are the task.
    """
    from flwr.supercore.task_identity import TaskIdentity

    run_id = random.getrandbits(63)
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    return run_id


def _run_server_app(
    grid: Grid,
    run_id: int,
    run_config: dict[str, str],
    write_results: Callable[[Path], None] | None,
) -> None:
    """Run the study's ServerApp on ``grid`` in this process."""
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app.build_server_app(write_results=write_results)(grid, context)


#: Ray actors (simulated-site workers) per CPU core. Each actor takes a whole
#: stage's messages for its sites at once, so one per core keeps the cores busy;
#: more only add processes that import PyTorch and compete for the same cores.
ACTORS_PER_CORE = 1


def run_ray(
    run_config: dict[str, str],
    n_sites: int,
    *,
    write_results: Callable[[Path], None] | None = None,
    address: str | None = None,
    actors_per_core: float | None = None,
) -> None:
    """Run the ServerApp here and ``n_sites`` ClientApps in Ray actors (:class:`RayGrid`).

    Ray runs where :func:`ray_cluster` says: a cluster named by ``address`` or
    ``RAY_ADDRESS``, one this process is already connected to, or else a
    private Ray instance on this machine with every core. Each CPU of the
    cluster runs ``actors_per_core`` actors (default :data:`ACTORS_PER_CORE`).
    """
    import ray

    from lhs_federated.apps.ray_grid import RayGrid

    study = Study.from_json(run_config[server_app.STUDY_KEY], source="the run config")
    run_id = _enter_run()
    actors_per_core = actors_per_core or ACTORS_PER_CORE
    with ray_cluster(address) as cpus:
        n_actors = max(1, round(cpus * actors_per_core))
        grid = RayGrid(
            client_app.app,
            n_sites,
            run_id=run_id,
            study_hash=study.hash,
            sites=load_sites(study),
            n_actors=n_actors,
            cpus_per_actor=min(1.0, 1 / actors_per_core),
        )
        _log.info(
            "Ray cluster at %s: %g CPUs, %d site actors",
            ray.get_runtime_context().gcs_address,
            cpus,
            grid.n_actors,
        )
        try:
            _run_server_app(grid, run_id, run_config, write_results)
        finally:
            grid.close()


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[float]:
    """Connect to Ray for the block; yields the cluster's CPUs.

    ``address`` (``host:port`` of a head node or ``ray://host:10001``) or else
    the ``RAY_ADDRESS`` environment variable names an existing cluster. Without
    either, a private Ray instance starts on this machine with every core: not
    Ray's own default, which joins the cluster last started with ``ray start``
    on this machine, whoever started it. A Ray this process had already
    connected to (``ray.init`` called first) is used as it is and left
    connected; any other is shut down when the block ends.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        named = address or os.environ.get("RAY_ADDRESS")
        if named:
            ray.init(address=named)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    try:
        yield float(ray.cluster_resources().get("CPU", 1.0))
    finally:
        if started:
            ray.shutdown()
