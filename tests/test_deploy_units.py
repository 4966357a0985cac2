"""Deployment pieces that need no running processes: bundle, gate, certificates, configs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import socket
import stat
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from flwr.app import Context, Message, RecordDict
from flwr.common.config import get_fused_config_from_fab
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from lhs_federated import load_study
from lhs_federated.apps import records, server_app
from lhs_federated.cli import main
from lhs_federated.deploy import processes
from lhs_federated.deploy.app_bundle import build_bundle, bundle_hash
from lhs_federated.deploy.certs import check_certificate, check_site_key, init_certificates
from lhs_federated.deploy.gate import SiteGate
from lhs_federated.deploy.server_config import load_server_config
from lhs_federated.errors import ConfigError
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.governance.verify import load_entries
from lhs_federated.site_config import load_site_config


def test_bundle_is_deterministic_and_versioned():
    assert build_bundle() == build_bundle()
    assert bundle_hash() == hashlib.sha256(build_bundle()).hexdigest()
    assert bundle_hash("0.1.0") != bundle_hash("0.2.0")


@pytest.fixture
def task(small_study):
    """A task as the launcher receives it: message, context, run and bundle."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    fab_bytes = build_bundle()
    digest = hashlib.sha256(fab_bytes).hexdigest()
    run = Run.create_empty(7)
    run = dataclasses.replace(
        run, fab_hash=digest, override_config={"study": small_study.to_json()}
    )
    context = Context(7, 1, {}, RecordDict(), get_fused_config_from_fab(fab_bytes, run))
    content = RecordDict({records.CONFIG: records.study_config(small_study)})
    message = Message(content, 1, "train")
    return message, context, run, Fab(digest, fab_bytes, {})


@pytest.fixture
def gate(tmp_path):
    return SiteGate(SiteFolder.init(tmp_path / "governance", "site-01"))


def approve(gate, study, tmp_path, *code_option):
    path = tmp_path / "study.toml"
    path.write_text(study.to_toml())
    args = [
        "site",
        "approve",
        str(path),
        "--site-folder",
        str(gate.folder.folder),
        "--reason",
        "IRB 12",
    ]
    assert main([*args, *code_option]) == 0


def last_record(gate):
    return load_entries(gate.folder.folder / "ledger.jsonl")[-1]


def test_gate_allows_a_study_approved_for_the_deployment_bundle(task, small_study, gate, tmp_path):
    message, context, run, fab = task
    refused = gate.decide(message, context, run, fab)
    assert not refused.allowed and "is not approved at this site" in refused.refusal
    assert last_record(gate).kind == "refusal"
    approve(gate, small_study, tmp_path, "--deployment")
    decision = gate.decide(message, context, run, fab)
    assert decision.allowed and decision.study_hash == small_study.hash
    assert decision.approval.code_hash == bundle_hash()


def test_gate_refuses_another_bundle_version(task, small_study, gate, tmp_path):
    message, context, run, fab = task
    fab_file = tmp_path / "study.fab"
    fab_file.write_bytes(fab.content)
    approve(gate, small_study, tmp_path, "--fab", str(fab_file))
    other = build_bundle("0.0.1")
    run = dataclasses.replace(run, fab_hash=hashlib.sha256(other).hexdigest())
    context = Context(7, 1, {}, RecordDict(), get_fused_config_from_fab(other, run))
    decision = gate.decide(message, context, run, Fab(run.fab_hash, other, {}))
    assert not decision.allowed and "approved here only with code" in decision.refusal


def test_gate_refuses_an_altered_bundle(task, small_study, gate, tmp_path):
    message, context, run, fab = task
    approve(gate, small_study, tmp_path, "--deployment")
    altered = Fab(fab.hash_str, fab.content + b"\x00", {})
    assert "altered in transit" in gate.decide(message, context, run, altered).refusal
    assert "altered in transit" in last_record(gate).data["reason"]


def test_gate_refuses_a_run_config_that_differs_from_the_bundle(task, small_study, gate, tmp_path):
    message, context, run, fab = task
    approve(gate, small_study, tmp_path, "--deployment")
    tampered = Context(7, 1, {}, RecordDict(), {**context.run_config, "out-dir": "/elsewhere"})
    assert "keys out-dir" in gate.decide(message, tampered, run, fab).refusal


def test_gate_refuses_a_message_study_other_than_the_run_study(task, small_study, gate, tmp_path):
    _, context, run, fab = task
    other = small_study.with_overrides({"rounds": 9})
    approve(gate, small_study, tmp_path, "--deployment")
    swapped = Message(RecordDict({records.CONFIG: records.study_config(other)}), 1, "train")
    refusal = gate.decide(swapped, context, run, fab).refusal
    assert "not the study the run was started with" in refusal
    forged = records.study_config(small_study)
    forged[records.STUDY_HASH] = other.hash
    bad = Message(RecordDict({records.CONFIG: forged}), 1, "train")
    assert "hashes to" in gate.decide(bad, context, run, fab).refusal


def test_certificates_and_keys(tmp_path):
    made = init_certificates(
        tmp_path / "certs", hosts=["127.0.0.1", "localhost"], sites=["site-01"]
    )
    assert stat.S_IMODE(os.stat(made.ca_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(made.site_keys["site-01"]).st_mode) == 0o600
    check_certificate(
        made.server_certificate, ca_path=made.ca_certificate, host="127.0.0.1", what="server"
    )
    with pytest.raises(ConfigError, match=r"is for 127\.0\.0\.1, localhost, not 'example\.org'"):
        check_certificate(made.server_certificate, host="example.org", what="server certificate")
    other = init_certificates(tmp_path / "other", hosts=["127.0.0.1"], sites=[])
    with pytest.raises(ConfigError, match="was not issued by the CA"):
        check_certificate(
            made.server_certificate, ca_path=other.ca_certificate, what="server certificate"
        )
    check_site_key(made.site_keys["site-01"])
    with pytest.raises(ConfigError, match="not an OpenSSH private key"):
        check_site_key(made.ca_certificate)
    with pytest.raises(ConfigError, match="already holds a CA"):
        init_certificates(tmp_path / "certs", hosts=["127.0.0.1"], sites=[])


def test_expired_certificate_is_refused(tmp_path):
    made = init_certificates(tmp_path, hosts=["127.0.0.1"], sites=[])
    certificate = x509.load_pem_x509_certificate(made.server_certificate.read_bytes())
    from cryptography.hazmat.primitives import serialization

    ca_key = serialization.load_pem_private_key(made.ca_key.read_bytes(), password=None)
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(certificate.public_key())
        .serial_number(1)
        .not_valid_before(past)
        .not_valid_after(past + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    path = tmp_path / "expired.crt"
    path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=r"expired on 2020-01-02"):
        check_certificate(path, what="server certificate")


def write_site(tmp_path, **changes):
    made = init_certificates(tmp_path / "certs", hosts=["127.0.0.1"], sites=["site-01"])
    (tmp_path / "data.csv").write_text("a\n1\n")
    values = {
        "ca": str(made.ca_certificate),
        "key": str(made.site_keys["site-01"]),
        "file": "data.csv",
        "address": "127.0.0.1:9092",
        **changes,
    }
    path = tmp_path / "site.toml"
    path.write_text(
        f'[site]\nname = "site-01"\n[coordinator]\naddress = "{values["address"]}"\n'
        f'ca_certificate = "{values["ca"]}"\n[identity]\nprivate_key = "{values["key"]}"\n'
        f'[data]\nfile = "{values["file"]}"\n'
    )
    return path


def test_site_config_resolves_and_checks_paths(tmp_path):
    config = load_site_config(write_site(tmp_path))
    assert config.resolve(config.data.file) == (tmp_path / "data.csv").resolve()
    assert config.state_dir == (tmp_path / "state").resolve()
    with pytest.raises(
        ConfigError, match=r"data\.file names '.*missing\.csv', which does not exist"
    ):
        load_site_config(write_site(tmp_path / "b", file="missing.csv"))
    with pytest.raises(ConfigError, match=r"coordinator\.address must be host:port; got 'nohost'"):
        load_site_config(write_site(tmp_path / "c", address="nohost"))


def test_server_config_requires_tls_files(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("[server]\nport = 9092\n")
    with pytest.raises(ConfigError, match="all required unless insecure = true"):
        load_server_config(path)
    path.write_text(
        '[tls]\nca_certificate = "ca.crt"\ncertificate = "s.crt"\nprivate_key = "s.key"\n'
    )
    with pytest.raises(
        ConfigError, match=r"tls\.ca_certificate names '.*ca\.crt', which does not exist"
    ):
        load_server_config(path)


def test_port_in_use_is_named():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(
            ConfigError,
            match=rf"port {port} on 127\.0\.0\.1 is already in use .*; the SuperLink needs it",
        ):
            processes.check_port_free("127.0.0.1", port, what="the SuperLink")


def test_a_deployed_sample_dp_study_reaches_the_sites_exactly_as_approved(tmp_path):
    study = load_study(None).with_overrides({"privacy.mode": "sample-dp", "privacy.epsilon": 3.0})
    config = {
        server_app.STUDY_KEY: study.to_json(),
        server_app.OUT_DIR_KEY: str(tmp_path / "run"),
        server_app.ENGINE_KEY: server_app.DEPLOYMENT,
    }
    deployed, _, _ = server_app.run_from_config(config)
    assert deployed.hash == study.hash and deployed.sites.state_dir is None
    simulated, _, _ = server_app.run_from_config({**config, server_app.ENGINE_KEY: "flower"})
    assert simulated.sites.state_dir == str((tmp_path / "run" / "site-state").resolve())


def test_a_pid_file_is_trusted_only_for_the_process_that_wrote_it(tmp_path):
    """A stale pid file whose pid now belongs to another process names no live supervisor."""
    first = subprocess.Popen(["sleep", "30"])
    time.sleep(0.05)  # start times are clock ticks (10 ms): the two differ
    later = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "server.pid"
        processes.write_pid_file(pid_file, first.pid)
        assert processes.read_pid_file(pid_file) == first.pid
        _, started = pid_file.read_text().split()
        pid_file.write_text(f"{later.pid} {started}\n")  # as if `later` had been given first's pid
        assert processes.read_pid_file(pid_file) is None
        pid_file.write_text(f"{later.pid}\n")  # a file written before start times were kept
        assert processes.read_pid_file(pid_file) == later.pid
    finally:
        first.kill()
        later.kill()
        first.wait()
        later.wait()
