"""Entry point of a site's launcher process (started by ``lhs-fed site start``).

    python -m lhs_federated.deploy.site_launcher --config site.toml --parent-pid PID

It opens the site's governance folder (approvals and ledger), reads the
task-claim secret shared with the site's SuperNode, and claims and runs the
site's tasks behind the gate until its parent (the site supervisor) exits.
"""

from __future__ import annotations

import argparse
import logging

from flwr.supercore.app_utils import start_parent_process_monitor

from lhs_federated.apps.client_site import LEDGER_FILE as PRIVACY_LEDGER
from lhs_federated.deploy.gate import SiteGate
from lhs_federated.deploy.launcher import run_launcher
from lhs_federated.deploy.site_node import SitePaths, open_site_folder
from lhs_federated.site_config import load_site_config


def main(argv: list[str] | None = None) -> None:
    """Run the launcher for the site named by ``--config``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the site's site.toml")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("lhs_federated")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False  # Flower configures the root logger its own way
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = load_site_config(args.config)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    paths = SitePaths(config.state_dir)
    run_launcher(
        f"127.0.0.1:{config.runtime.runtime_port}",
        paths.secret.read_bytes(),
        SiteGate(
            open_site_folder(config),
            privacy_ledger=config.state_dir / PRIVACY_LEDGER,
            require_secure_aggregation=config.policy.require_secure_aggregation,
            monitoring_rule=config.approval.monitoring_of_approved_releases,
        ),
        workers=config.runtime.workers,
    )


if __name__ == "__main__":
    main()
