"""Which site a ClientApp is, from its node's configuration.

In simulation, Flower gives each virtual node a ``partition-id``; the site is
that entry of the study's simulated sites, with the study's ``[sites]``
settings. A deployed site's SuperNode is started with ``site-config`` in its
node config instead: the path of the site's own ``site.toml``, which names its
table and its policy. Either way the site's rows go through the same
validation, encoding and split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from lhs_federated.data.io import read_table
from lhs_federated.data.omop.snapshot import read_snapshot
from lhs_federated.data.sources import RawSite, SiteData, loaded_sites, prepare_site
from lhs_federated.errors import ConfigError, DataError
from lhs_federated.governance.approval import check_snapshot_binding
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.privacy.budget import SitePrivacy
from lhs_federated.site_config import SiteConfig, load_site_config
from lhs_federated.study import Study

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
SITE_CONFIG = "site-config"
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
    config : SiteConfig or None
        A deployed site's own configuration (None in simulation).
    """

    data: SiteData
    min_cell_size: int
    threads: int
    privacy: SitePrivacy
    config: SiteConfig | None = None


def resolve_site(study: Study, context: Context) -> SiteRuntime:
    """The site this node is for ``study``.

    Raises
    ------
    ConfigError
        If the node is neither a simulated site (``partition-id``) nor a
        deployed one (``site-config``), or its partition is outside the study.
    DataError
        If a deployed site's table does not meet the study's contract.
    """
    if SITE_CONFIG in context.node_config:
        return deployed_site(str(context.node_config[SITE_CONFIG]), study)
    partition = context.node_config.get(PARTITION_ID)
    if partition is None:
        raise ConfigError(
            f"node {context.node_id} has neither {SITE_CONFIG!r} (a deployed site's config) "
            f"nor {PARTITION_ID!r} (a simulated site) in its node config."
        )
    key = (partition, context.node_config.get(NUM_PARTITIONS))
    known = _SIMULATED.setdefault(study.hash, {}).get(key)
    if known is not None:  # every mod of every message asks; the answer stays the same
        return known
    sites = loaded_sites(study)
    n_nodes = int(context.node_config.get(NUM_PARTITIONS, len(sites)))
    if n_nodes != len(sites) or not 0 <= int(partition) < len(sites):
        raise ConfigError(
            f"study {study.name!r} has {len(sites)} simulated sites but the simulation "
            f"started {n_nodes} nodes (this is partition {partition}); start it with "
            f"{len(sites)} nodes (flwr: options.num-supernodes = {len(sites)})."
        )
    data = sites[int(partition)]
    runtime = SiteRuntime(
        data, study.sites.min_cell_size, threads=1, privacy=simulated_privacy(study, data.name)
    )
    if len(_SIMULATED) > _SIMULATED_STUDIES:  # as many studies as load_sites keeps
        _SIMULATED.clear()
        _SIMULATED[study.hash] = {}
    _SIMULATED[study.hash][key] = runtime
    return runtime


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


def deployed_site(config_path: str, study: Study) -> SiteRuntime:
    """A deployed site: its own config, table and budget, prepared for ``study``.

    Its privacy ledger lives in its state folder and persists across studies;
    its DP noise is never seeded (a known seed would let anyone remove it).
    """
    config = load_site_config(config_path)
    omop_study = study.data.source == "omop"
    if omop_study != (config.data.database is not None):
        held = "an OMOP database" if config.data.database is not None else "a table file"
        raise DataError(
            f"site {config.site.name!r} holds {held} ({config.path}: [data]), but study "
            f"{study.name!r} reads data.source = {study.data.source!r}: an OMOP study runs "
            "on a site's database snapshot, any other study on a site's table file."
        )
    if omop_study:
        key, raw = _snapshot_site(config, study)
    else:
        table_path = Path(config.resolve(config.data.file) or str(config.data.file))
        # Keyed on the file's modification time: a site that updates its table is re-read.
        key = (str(table_path), table_path.stat().st_mtime_ns, config.site.name, study.hash)
        raw = None
    if key not in _PREPARED:
        if raw is None:
            table = read_table(
                table_path,
                na_values=study.contract.na_values,
                separator=config.data.csv_separator,
                decimal=config.data.csv_decimal,
            )
            raw = RawSite(config.site.name, table, str(table_path))
        _PREPARED.clear()  # one site, one study at a time: keep memory flat
        _PREPARED[key] = prepare_site(raw, study)
    privacy = SitePrivacy(
        site=config.site.name,
        epsilon_budget=config.policy.epsilon_budget,
        budget_delta=config.policy.budget_delta,
        ledger_path=config.state_dir / LEDGER_FILE,
        seeded_noise=False,
    )
    return SiteRuntime(
        _PREPARED[key], config.policy.min_cell_size, config.runtime.threads, privacy, config
    )


def _snapshot_site(config: SiteConfig, study: Study) -> tuple[tuple[str, int, str, str], RawSite]:
    """A database site's frozen snapshot of ``study``, checked against its approval.

    Read on every call (hashing a snapshot is cheap beside training on it), so
    a snapshot changed or re-extracted since the last round is refused.

    Raises
    ------
    DataError
        If the site has no snapshot of the study or its file changed.
    SiteRefusal
        If no approval in force binds the snapshot.
    """
    snapshot, table = read_snapshot(config, study)
    folder = SiteFolder.open(config.governance_dir, site=config.site.name, with_key=False)
    check_snapshot_binding(
        folder.registry.approvals(), study.hash, snapshot.snapshot_hash, site=config.site.name
    )
    raw = RawSite(config.site.name, table, f"snapshot {snapshot.snapshot_hash[:12]}…")
    return (snapshot.snapshot_hash, snapshot.rows, config.site.name, study.hash), raw


_PREPARED: dict[tuple[str, int, str, str], SiteData] = {}
#: Simulated sites resolved in this process: study hash -> (partition, nodes) -> site.
#: A site's data and settings follow from the study (its hash) and its partition alone.
_SIMULATED: dict[str, dict[tuple[object, object], SiteRuntime]] = {}
_SIMULATED_STUDIES = 4
