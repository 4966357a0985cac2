"""A real deployment on loopback: a SuperLink and three SuperNodes with TLS and node keys.

Every process is real (flower-superlink, flower-supernode, each site's gated
launcher, the ServerApp Flower starts); only the network is 127.0.0.1. The
consortium is started once for the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
from audit_mutations import KINDS, run_mutations, summarise
from faulty import faulty_client, run_with

from lhs_federated import StudyRunError, load_study, simulate
from lhs_federated.cli import main
from lhs_federated.deploy import coordinator, processes, site_node
from lhs_federated.deploy.app_bundle import write_bundle_dir
from lhs_federated.deploy.certs import write_site_key
from lhs_federated.deploy.loopback import build_loopback, free_port
from lhs_federated.errors import ConfigError, LhsError
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.governance.verify import load_entries
from lhs_federated.site_config import load_site_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("consortium")
    assert (
        main(
            ["data", "synth", "--sites", "3", "--rows-per-site", "200", "--out", str(root / "data")]
        )
        == 0
    )
    tables = {p.stem: p for p in sorted((root / "data").glob("site-*.csv"))}
    consortium = build_loopback(root / "deploy", tables)
    consortium.start()
    yield consortium
    consortium.stop()
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", f"processes left running: {leftovers}"


def study_for(consortium, name: str, **overrides):
    data = consortium.root.parent / "data"
    return load_study(None).with_overrides(
        {
            "name": name,
            "rounds": 2,
            "data.source": "folder",
            "data.path": str(data),
            "federation.round_timeout": 60.0,
            "federation.connect_timeout": 60.0,
            **overrides,
        }
    )


def test_deployed_study_equals_its_simulation(consortium, tmp_path):
    study = study_for(consortium, "e2e")
    consortium.approve(study)
    deployed = consortium.run(study)
    simulated = simulate(study, out_dir=tmp_path / "simulated", report=False).summary
    assert deployed["model"]["arrays_sha256"] == simulated["model"]["arrays_sha256"]
    for site, values in simulated["final"]["per_site"].items():
        for metric, value in values.items():
            if value is None:
                assert deployed["final"]["per_site"][site][metric] is None
            else:
                assert deployed["final"]["per_site"][site][metric] == pytest.approx(value, abs=1e-6)
    run_dir = next((consortium.server.state_dir / "runs").glob("e2e-*"))
    assert main(["audit", "report", str(run_dir)]) == 0
    for name, site in consortium.sites.items():
        ledger = site.governance_dir / "ledger.jsonl"
        kinds = [entry.kind for entry in load_entries(ledger)]
        # The federated-statistics query, then train and evaluate in each of 2 rounds.
        assert kinds.count("message-sent") == 5 and kinds[-1] == "study-closed", name
        coordinator_ledger = run_dir / "governance" / "coordinator.jsonl"
        assert main(["audit", "crosscheck", str(coordinator_ledger), str(ledger)]) == 0
    # The audit's mutation suite on this deployed run, its site ledgers kept at the sites;
    # the key the coordinator published is the run's public key as it was at the end.
    published = shutil.copy(run_dir / "governance" / "coordinator.pub", tmp_path / "published.pub")
    sites = {name: site.governance_dir / "ledger.jsonl" for name, site in consortium.sites.items()}
    outcomes = run_mutations(run_dir, sites, tmp_path / "mutations", published_key=Path(published))
    report = summarise(outcomes)
    print(report)  # the figure for the closing note
    assert {o.mutation.kind for o in outcomes} == set(KINDS)
    assert all(o.exact for o in outcomes), report


def test_unapproved_or_altered_study_is_refused_at_every_site(consortium):
    approved = study_for(consortium, "approved", rounds=1)
    consortium.approve(approved)
    altered = approved.with_overrides({"training.learning_rate": 0.5})  # another hash
    with pytest.raises(
        StudyRunError, match=r"site-0\d' refused: study .* is not approved at this site"
    ):
        consortium.run(altered, timeout=120)
    for site in consortium.sites.values():
        refusal, reply = load_entries(site.governance_dir / "ledger.jsonl")[-2:]
        assert refusal.kind == "refusal" and refusal.data["study_hash"] == altered.hash
        assert reply.kind == "message-sent" and reply.data["status"] == "refused"


def test_an_altered_app_bundle_is_refused_before_it_is_installed(consortium, tmp_path):
    study = study_for(consortium, "bundle", rounds=1)
    consortium.approve(study)
    bundle = write_bundle_dir(tmp_path / "bundle")
    (bundle / "extra.py").write_text("print('code the sites did not approve')\n")
    run_config = tmp_path / "run-config.toml"
    out_dir = tmp_path / "out"
    run_config.write_text(tomli_w.dumps({"study": study.to_json(), "out-dir": str(out_dir)}))
    payload = coordinator.flwr(
        consortium.server,
        "run",
        str(bundle),
        coordinator.CONNECTION,
        "--run-config",
        str(run_config),
    )
    run = coordinator.SubmittedRun(str(payload["run-id"]), out_dir, study)
    with pytest.raises(StudyRunError, match="is approved here only with code"):
        coordinator.wait_for_run(consortium.server, run, timeout=120)
    for site in consortium.sites.values():
        flwr_apps = site.state_dir / "flwr" / "apps"
        installed = [p.name for p in flwr_apps.iterdir()] if flwr_apps.is_dir() else []
        assert not any(name.endswith(payload["fab-hash"][:8]) for name in installed)


def wait_for_ledger(run_dir: Path, kind: str, round_: int, timeout: float = 180.0) -> None:
    """Wait until the coordinator ledger records ``kind`` for round ``round_``."""
    ledger = run_dir / "governance" / "coordinator.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.is_file():
            records = [json.loads(line) for line in ledger.read_text().splitlines() if line]
            if any(r["kind"] == kind and r["data"].get("round") == round_ for r in records):
                return
        time.sleep(0.5)
    raise AssertionError(f"{ledger} has no {kind} record for round {round_}")


def kill_group(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)


def test_a_site_then_the_coordinator_lose_power_and_the_study_resumes(consortium, tmp_path):
    """A site dies mid-study (the rounds go on without it), then the coordinator dies.

    After ``lhs-fed server resume`` the site is back, every round is recorded
    once, and the final model is that of a simulation of the same study in
    which the site failed the same round.
    """
    study = study_for(
        consortium,
        "faults",
        rounds=3,
        **{
            "strategy.name": "fedadam",  # server state that a resume must restore
            "federation.min_sites": 2,
            "federation.round_timeout": 10.0,
        },
    )
    consortium.approve(study)
    submitted = coordinator.submit_study(consortium.server, study)
    wait_for_ledger(submitted.out_dir, "round-started", 2)
    site = consortium.sites["site-03"]
    kill_group(processes.read_pid_file(site_node.SitePaths(site.state_dir).pid))
    wait_for_ledger(submitted.out_dir, "round-started", 3)  # round 2 checkpointed
    paths = coordinator.ServerPaths(consortium.server.state_dir)
    kill_group(processes.read_pid_file(paths.pid))  # supervisor and SuperLink
    subprocess.run(
        ["pkill", "-9", "-f", f"--runtime-api-address {consortium.server.address}"], check=False
    )
    paths.pid.unlink(missing_ok=True)
    site_node.SitePaths(site.state_dir).pid.unlink(missing_ok=True)
    coordinator.start_detached(consortium.server)
    consortium.start_site("site-03")
    assert (
        main(["server", "resume", str(submitted.out_dir), "--config", consortium.server.path]) == 0
    )
    rounds = pd.read_csv(submitted.out_dir / "rounds.csv", keep_default_na=False)
    everyone = "site-01 site-02 site-03"
    assert rounds["round"].tolist() == [1, 2, 3]
    assert rounds["trained"].tolist() == [everyone, "site-01 site-02", everyone]
    assert re.search(r"site-03: (no reply within 10 s|not connected)", rounds["failed"][1])
    resumed = json.loads((submitted.out_dir / "summary.json").read_text())
    run_with(faulty_client(2, 2, RuntimeError("power cut")), study, tmp_path / "simulated")
    simulated = json.loads((tmp_path / "simulated" / "summary.json").read_text())
    assert resumed["model"]["arrays_sha256"] == simulated["model"]["arrays_sha256"]
    assert main(["audit", "report", str(submitted.out_dir)]) == 0  # every ledger verifies


def test_an_unregistered_key_is_refused_and_nothing_is_left_running(consortium, tmp_path):
    config = _extra_site(consortium, tmp_path, key=write_site_key(tmp_path / "intruder"))
    with pytest.raises(LhsError, match="is this site's public key registered"):
        site_node.start_site(config, timeout=60)
    assert processes.read_pid_file(site_node.SitePaths(config.state_dir).pid) is None
    processes.check_port_free("127.0.0.1", config.runtime.runtime_port, what="test")


def test_a_plaintext_client_is_refused_by_the_tls_server(consortium, tmp_path):
    site = consortium.sites["site-01"]
    config = _extra_site(
        consortium, tmp_path, key=Path(site.resolve(site.identity.private_key)), insecure=True
    )
    with pytest.raises(LhsError, match="did not start"):
        site_node.start_site(config, timeout=60)
    processes.check_port_free("127.0.0.1", config.runtime.runtime_port, what="test")


def test_bad_site_settings_fail_before_anything_starts(consortium, tmp_path):
    config = _extra_site(consortium, tmp_path, address=f"127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match=r"coordinator 127\.0\.0\.1:\d+ cannot be reached"):
        site_node.start_site(config)
    running = consortium.sites["site-01"]
    busy = _extra_site(consortium, tmp_path / "busy", port=running.runtime.runtime_port)
    with pytest.raises(
        ConfigError, match=rf"port {running.runtime.runtime_port} .* already in use"
    ):
        site_node.start_site(busy)
    assert main(["site", "start", "--config", str(tmp_path / "missing.toml")]) == 2


def _extra_site(
    consortium,
    folder: Path,
    *,
    key: Path | None = None,
    insecure: bool = False,
    address: str | None = None,
    port: int | None = None,
):
    """A fourth site's config (its own folder), for tests that must fail to join."""
    folder.mkdir(parents=True, exist_ok=True)
    template = consortium.sites["site-01"]
    SiteFolder.init(folder / "governance", "site-04")
    coordinator_table = {"address": address or consortium.server.address}
    if insecure:
        coordinator_table["insecure"] = True
    else:
        coordinator_table["ca_certificate"] = str(
            template.resolve(template.coordinator.ca_certificate)
        )
    (folder / "site.toml").write_text(
        tomli_w.dumps(
            {
                "site": {"name": "site-04"},
                "coordinator": coordinator_table,
                "identity": {
                    "private_key": str(key or template.resolve(template.identity.private_key))
                },
                "data": {"file": str(template.resolve(template.data.file))},
                "runtime": {"runtime_port": port or free_port(), "connect_timeout": 3.0},
            }
        )
    )
    return load_site_config(folder / "site.toml")


def test_a_deployed_monitoring_study_of_a_release(consortium, tmp_path):
    """``evaluate.monitor`` through real SuperNodes: metrics with CIs, drift sums, site ledgers."""
    study = study_for(consortium, "monitored")
    simulate(study, out_dir=tmp_path / "release-run", report=False)  # the model being monitored
    monitor = study_for(consortium, "monitor")
    consortium.approve(monitor)
    task = {"kind": "monitor", "model": str(tmp_path / "release-run"), "with_reference": True}
    submitted = coordinator.submit_study(consortium.server, monitor, loop_task=task)
    found = coordinator.wait_for_run(consortium.server, submitted, timeout=600)
    deadline = time.monotonic() + 60  # the ServerApp's process ends just after its ledger closes
    while time.monotonic() < deadline:
        runs = coordinator.flwr(
            consortium.server, "ls", coordinator.CONNECTION, "--run-id", submitted.run_id
        )["runs"]
        if runs and str(runs[0]["status"]).startswith("finished"):
            break
        time.sleep(1)
    assert found["kind"] == "monitor" and not found["failed"]
    assert set(found["result"]) == set(consortium.sites)
    assert sum(r["values"]["auroc"] is not None for r in found["result"].values()) >= 2
    for site, result in found["result"].items():
        values = result["values"]
        if values["auroc"] is None:  # the small site: too few cases, withheld with the reason
            assert "withheld" in result["undefined"]["auroc"], site
        else:
            assert values["auroc_low"] < values["auroc"] < values["auroc_high"], site
        counts = [c for column in result["current"] for c in column["counts"]]
        assert all(c is None or c == 0 or c >= 10 for c in counts), site  # egress: small cells
        assert result["reference"], site
        kinds = [
            e.data.get("message_type")
            for e in load_entries(consortium.sites[site].governance_dir / "ledger.jsonl")
        ]
        assert "evaluate.monitor" in kinds, site
    run_dir = next((consortium.server.state_dir / "runs").glob("monitor-*"))
    ledger = [e.kind for e in load_entries(run_dir / "governance" / "coordinator.jsonl")]
    assert "loop-monitor" in ledger and ledger[-1] != "study-failed"
