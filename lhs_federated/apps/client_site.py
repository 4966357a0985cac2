"""Which site a ClientApp is, from its node's configuration.

In simulation, Flower gives each virtual node a ``partition-id``; the site is
that entry of the study's simulated sites, with the study's ``[sites]``
settings. Deployed sites name their own data and settings in their site
config instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context

from lhs_federated.data.sources import SiteData, load_sites
from lhs_federated.errors import ConfigError
from lhs_federated.study import Study

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


@dataclass(frozen=True)
class SiteRuntime:
    """A site's data and its own settings.

    Attributes
    ----------
    data : SiteData
        The site's split, encoded rows.
    min_cell_size : int
        Smallest count of people the site reports.
    threads : int
        Torch threads for local training (1 per simulated site, so sites
        sharing a machine do not fight over cores).
    """

    data: SiteData
    min_cell_size: int
    threads: int


def resolve_site(study: Study, context: Context) -> SiteRuntime:
    """The site this node is for ``study``.

    Raises
    ------
    ConfigError
        If the node has no partition id or it is outside the study's sites.
    """
    partition = context.node_config.get(PARTITION_ID)
    if partition is None:
        raise ConfigError(
            f"node {context.node_id} has no {PARTITION_ID!r} in its node config: "
            "simulated sites are numbered by Flower's simulation engine."
        )
    sites = load_sites(study)
    n_nodes = int(context.node_config.get(NUM_PARTITIONS, len(sites)))
    if n_nodes != len(sites) or not 0 <= int(partition) < len(sites):
        raise ConfigError(
            f"study {study.name!r} has {len(sites)} simulated sites but the simulation "
            f"started {n_nodes} nodes (this is partition {partition}); start it with "
            f"{len(sites)} nodes (flwr: options.num-supernodes = {len(sites)})."
        )
    return SiteRuntime(sites[int(partition)], study.sites.min_cell_size, threads=1)
