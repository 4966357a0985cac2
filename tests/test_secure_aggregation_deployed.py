"""SecAgg+ on real processes: a SuperLink and three SuperNodes on loopback, one site killed.

The site is killed once the coordinator holds its encrypted key shares of
round 1 and before it can send its masked update: the other two sites'
shares rebuild its mask key, the round's sum is theirs, and the model is the
one a simulation gives when that site fails the same stage, within the
quantisation bound.

"Before it can send its masked update" is made certain, not left to the
SuperNode's poll gap: a site sends nothing its ledger does not hold, and every
append takes the ledger's ``flock``. The test takes that lock as soon as the
site's ledger holds its share-stage reply, so the site's next reply (the masked
update) waits on it until the site is killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_secure_aggregation_study import SECURE, DropAt, _ledger, _model

from lhs_federated import load_study
from lhs_federated.apps import records, server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.secagg_payloads import Quantiser, update_error_bound
from lhs_federated.cli import main
from lhs_federated.deploy import coordinator, processes, site_node
from lhs_federated.deploy.loopback import build_loopback
from lhs_federated.governance.verify import load_entries

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("secagg-consortium")
    args = ["data", "synth", "--sites", "3", "--rows-per-site", "200", "--out", str(root / "data")]
    assert main(args) == 0
    tables = {p.stem: p for p in sorted((root / "data").glob("site-*.csv"))}
    consortium = build_loopback(root / "deploy", tables)
    site_toml = Path(consortium.sites["site-01"].path)  # site-01 joins secure studies only
    text = site_toml.read_text(encoding="utf-8")
    site_toml.write_text(
        text.replace("[policy]\n", "[policy]\nrequire_secure_aggregation = true\n", 1),
        encoding="utf-8",
    )
    consortium.start()
    yield consortium
    consortium.stop()
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", f"processes left running: {leftovers}"


def _wait_for_reply(run_dir: Path, site: str, stage: str, server_round: int) -> None:
    """Wait (polling fast) until the coordinator's ledger holds ``site``'s reply of a stage."""
    ledger = run_dir / "governance" / "coordinator.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if ledger.is_file():
            for line in ledger.read_text().splitlines():
                data = json.loads(line)["data"] if line else {}
                if (data.get("site"), data.get("stage"), data.get("round")) == (
                    site,
                    stage,
                    server_round,
                ) and data.get("status") == "ok":
                    return
        time.sleep(0.05)
    raise AssertionError(f"{ledger} has no {stage} reply of {site} in round {server_round}")


@contextmanager
def _ledger_held_after(ledger: Path, message_type: str, server_round: int) -> Iterator[None]:
    """Hold a site ledger's lock from the moment it records its reply of a stage.

    Reads the ledger only under the lock, so once the reply is seen there the
    site can record (hence send) nothing more until the block ends.
    """
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        fd = os.open(ledger, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            sent = [
                (e.data.get("message_type"), e.data.get("server_round"), e.data.get("status"))
                for e in load_entries(ledger)
            ]
            if (message_type, server_round, "ok") in sent:
                yield
                return
        finally:
            os.close(fd)  # releases the lock
        time.sleep(0.02)
    raise AssertionError(f"{ledger} records no {message_type} reply of round {server_round}")


def test_a_deployed_site_killed_after_key_sharing_is_recovered(consortium, tmp_path):
    study = load_study(None).with_overrides(
        {
            **SECURE,
            "name": "secure-deployed",
            "rounds": 1,
            "data.source": "folder",
            "data.path": str(consortium.root.parent / "data"),
            "federation.min_sites": 2,
            "federation.round_timeout": 12.0,
            "federation.connect_timeout": 60.0,
            "sites.min_cell_size": 1,  # no column withheld: compare with the simulation
        }
    )
    consortium.approve(study)
    submitted = coordinator.submit_study(consortium.server, study)
    site = consortium.sites["site-03"]
    with _ledger_held_after(site.governance_dir / "ledger.jsonl", records.SECAGG_SHARE, 1):
        _wait_for_reply(submitted.out_dir, "site-03", records.SECAGG_SHARE, 1)
        pid = processes.read_pid_file(site_node.SitePaths(site.state_dir).pid)
        os.killpg(pid, signal.SIGKILL)
    site_node.SitePaths(site.state_dir).pid.unlink(missing_ok=True)
    consortium.running.remove("site-03")
    coordinator.wait_for_run(consortium.server, submitted, timeout=300)

    rounds = pd.read_csv(submitted.out_dir / "rounds.csv", keep_default_na=False)
    assert rounds["trained"].tolist() == ["site-01 site-02"]
    assert re.search(r"site-03: collect masked vectors: no reply within 12 s", rounds["failed"][0])
    model_sum = [e.data for e in _ledger(submitted.out_dir) if e.data.get("kind") == "model"]
    assert model_sum[0]["recovered_after_dropout"] == ["site-03"]
    assert model_sum[0]["contributors"] == ["site-01", "site-02"]
    coordinator_ledger = submitted.out_dir / "governance" / "coordinator.jsonl"
    for name in ("site-01", "site-02"):
        ledger = consortium.sites[name].governance_dir / "ledger.jsonl"
        assert main(["audit", "crosscheck", str(coordinator_ledger), str(ledger)]) == 0
    killed = load_entries(consortium.sites["site-03"].governance_dir / "ledger.jsonl")
    assert records.SECAGG_SHARE in [e.data.get("message_type") for e in killed]

    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(tmp_path / "sim")}
    run_inprocess(config, 3, client=DropAt({2}, records.SECAGG_COLLECT_UPDATE, 1))
    spec = study.privacy.secagg
    bound = update_error_bound(Quantiser(spec.clipping_range, spec.quantization_range))
    for name, value in _model(tmp_path / "sim").items():
        assert np.abs(_model(submitted.out_dir)[name] - value).max() <= 4 * bound
