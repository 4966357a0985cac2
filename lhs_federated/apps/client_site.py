"""Which site a ClientApp is, from its node's configuration.

In simulation, Flower gives each virtual node a ``partition-id``; the site is
that entry of the study's simulated sites, with the study's ``[sites]``
settings. Deployed sites name their own data and settings in their site
config instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from lhs_federated.data.sources import SiteData, load_sites
from lhs_federated.errors import ConfigError
from lhs_federated.privacy.budget import SitePrivacy
from lhs_federated.study import Study

PARTITION_ID = "partition-id"
LEDGER_FILE = "privacy-ledger.json"


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
    privacy : SitePrivacy
        The site's privacy budget and ledger.
    """

    data: SiteData
    min_cell_size: int
    threads: int
    privacy: SitePrivacy


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
    if not 0 <= int(partition) < len(sites):
        raise ConfigError(
            f"node {context.node_id} is partition {partition}, but study {study.name!r} "
            f"has {len(sites)} sites; start the simulation with {len(sites)} nodes."
        )
    data = sites[int(partition)]
    return SiteRuntime(
        data, study.sites.min_cell_size, threads=1, privacy=simulated_privacy(study, data.name)
    )


def simulated_privacy(study: Study, site: str) -> SitePrivacy:
    """A simulated site's privacy settings, from the study's ``[sites]`` table.

    Its ledger is ``<sites.state_dir>/<site>/privacy-ledger.json``; its DP
    noise is seeded from the study, so research runs are reproducible.
    """
    state_dir = study.sites.state_dir
    return SitePrivacy(
        site=site,
        epsilon_budget=study.sites.epsilon_budget,
        budget_delta=study.sites.budget_delta,
        ledger_path=Path(state_dir) / site / LEDGER_FILE if state_dir else None,
        seeded_noise=True,
    )
