"""The simulation engines: the ServerApp and ClientApp on simulated sites in one machine.

- :func:`run_inprocess`: an :class:`~lhs_federated.apps.inprocess.InProcessGrid`
  that calls the ClientApp directly, with no Ray start-up, in this process;
- :func:`run_ray`: Flower's simulation engine, the way to a Ray cluster when
  one machine is not enough.

The researcher's entry point, :func:`lhs_federated.research.simulation.simulate`,
chooses one; both run the same apps, and the same seed gives identical results.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp

from lhs_federated.apps import client_app, server_app
from lhs_federated.apps.inprocess import InProcessGrid


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
    from flwr.supercore.task_identity import TaskIdentity

    run_id = random.getrandbits(63)
    # Flower's Message constructor reads the run from the task identity, which
    # its own engines set; this engine is the task.
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1
    grid = InProcessGrid(
        client or client_app.app, n_sites, run_id=run_id, batch_durability=batch_durability
    )
    context = Context(
        run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app.build_server_app(write_results=write_results)(grid, context)


#: Ray actors (simulated-site workers) per CPU core: a site's round is milliseconds of
#: work, so one actor per core leaves cores idle while Ray schedules the next message.
ACTORS_PER_CORE = 4


def run_ray(
    run_config: dict[str, str],
    n_sites: int,
    *,
    write_results: Callable[[Path], None] | None = None,
    actors_per_core: int = ACTORS_PER_CORE,
) -> None:
    """Run the ServerApp and ``n_sites`` ClientApps on Flower's simulation engine (Ray).

    Ray starts on this machine with every core, unless it is already running
    in this process (``ray.init(address=...)`` called first) or ``RAY_ADDRESS``
    names a cluster: then the simulation runs on that cluster. Each core runs
    ``actors_per_core`` ClientApp actors.
    """
    from flwr.simulation import run_simulation

    init_args: dict[str, object] = {"include_dashboard": False}
    if not os.environ.get("RAY_ADDRESS"):  # a cluster decides its own resources
        init_args["num_cpus"] = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": 1 / actors_per_core, "num_gpus": 0.0},
        "init_args": init_args,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app.build_server_app(run_config, write_results=write_results),
            client_app=client_app.app,
            num_supernodes=n_sites,
            backend_config=backend_config,
        )
