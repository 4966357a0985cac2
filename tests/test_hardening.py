"""Issue 12: what a malicious site or coordinator, and absurd inputs, must not get past.

Replies are crafted through the real ClientApp (``malicious.tampering_client``)
and run on the in-process engine, or checked at the unit where the mechanism
lives (:mod:`lhs_federated.apps.reply_checks`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
from faulty import run_with
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.superlink.main import create_app as create_superlink_app
from malicious import carry_study, malicious_coordinator, tampering_client

from lhs_federated import load_study
from lhs_federated.apps import records, server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.reply_checks import (
    MAX_PARAMETER,
    ReplyChecks,
    ReplyRejectedError,
    check_summary,
)
from lhs_federated.apps.run_limits import check_round, preprocessing_digest
from lhs_federated.cli import main
from lhs_federated.deploy import coordinator, processes, site_node
from lhs_federated.deploy.certs import check_site_key, init_certificates, write_site_key
from lhs_federated.deploy.loopback import free_port
from lhs_federated.deploy.server_config import load_server_config
from lhs_federated.deploy.superlink import LoopbackOnly
from lhs_federated.errors import ConfigError, LhsError, SiteRefusal, StudyRunError
from lhs_federated.learning.metrics import clinical_metrics
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.site import SiteSummary, n_features
from lhs_federated.privacy.metric_release import release_metrics
from lhs_federated.site_config import load_site_config

# ---------------------------------------------------------------- item 3: poisoned replies


@pytest.fixture(scope="module")
def model_arrays(small_study):
    return get_arrays(build_model(small_study.model, n_features(small_study), seed=1))


def _checks(study, n_train=140, n_test=60) -> ReplyChecks:
    summary = SiteSummary("site-01", n_train, n_test, 20, 10, None)
    return ReplyChecks.from_discovery(study, [summary])


def _train_reply(study, arrays, n=140, loss=0.5) -> RecordDict:
    return records.train_reply(study, arrays, n, loss, None)


def _scaled(arrays, factor):
    return {k: (v * factor).astype(v.dtype) for k, v in arrays.items()}


def _first_set(arrays, value):
    out = {k: v.copy() for k, v in arrays.items()}
    name = next(iter(out))
    out[name].flat[0] = value
    return out


TRAIN_ATTACKS = {
    "a NaN parameter": (lambda a: {"arrays": _first_set(a, np.nan)}, "NaN or infinite"),
    "an infinite parameter": (lambda a: {"arrays": _first_set(a, np.inf)}, "NaN or infinite"),
    "arrays scaled by 1e38": (lambda a: {"arrays": _scaled(a, 1e38)}, "bounded by 1e\\+06"),
    "a parameter of 2e6": (lambda a: {"arrays": _first_set(a, 2e6)}, "bounded by"),
    "num-examples 1e9": (lambda a: {"n": 10**9}, "accepted: 1 to 140"),
    "num-examples -500": (lambda a: {"n": -500}, "accepted: 1 to 140"),
    "num-examples 0": (lambda a: {"n": 0}, "accepted: 1 to 140"),
    "num-examples 141": (lambda a: {"n": 141}, "accepted: 1 to 140"),
    "num-examples 12.5": (lambda a: {"n": 12.5}, "accepted: 1 to 140"),
    "num-examples NaN": (lambda a: {"n": float("nan")}, "accepted: 1 to 140"),
    "an infinite loss": (lambda a: {"loss": float("inf")}, "train_loss is inf"),
    "a wrong shape": (
        lambda a: {"arrays": {k: np.zeros((*v.shape, 2), v.dtype) for k, v in a.items()}},
        "of shape",
    ),
    "integer arrays": (
        lambda a: {"arrays": {k: v.astype(np.int64) for k, v in a.items()}},
        "is int64",
    ),
    "a missing array": (lambda a: {"arrays": dict(list(a.items())[1:])}, "missing \\['"),
    "an extra array": (lambda a: {"arrays": {**a, "extra": np.ones(3, np.float32)}}, "extra"),
    "arrays in another order": (
        lambda a: {"arrays": dict(reversed(list(a.items())))},
        "not in the model's order",
    ),
}


@pytest.mark.parametrize("attack", list(TRAIN_ATTACKS))
def test_a_poisoned_training_reply_is_rejected_with_its_reason(small_study, model_arrays, attack):
    change, reason = TRAIN_ATTACKS[attack]
    checks = _checks(small_study)
    sent = records.to_array_record(model_arrays)
    checks.train("site-01", _train_reply(small_study, model_arrays), sent)  # honest: passes
    fields = {"arrays": model_arrays, "n": 140, "loss": 0.5, **change(model_arrays)}
    reply = _train_reply(small_study, fields["arrays"], fields["n"], fields["loss"])
    with pytest.raises(ReplyRejectedError, match=reason):
        checks.train("site-01", reply, sent)


def test_replies_with_other_records_or_keys_are_rejected(small_study, model_arrays):
    checks = _checks(small_study)
    sent = records.to_array_record(model_arrays)
    reply = _train_reply(small_study, model_arrays)
    reply["metrics"]["secret"] = 5.0
    with pytest.raises(ReplyRejectedError, match=r"extra \['secret'\]"):
        checks.train("site-01", reply, sent)
    reply = _train_reply(small_study, model_arrays)
    reply["smuggled"] = ConfigRecord({"rows": "1,2,3"})
    with pytest.raises(ReplyRejectedError, match="holds exactly"):
        checks.train("site-01", reply, sent)
    reply = _train_reply(small_study, model_arrays)
    reply["metrics"] = MetricRecord({"num-examples": 140})
    with pytest.raises(ReplyRejectedError, match=r"missing \['train_loss'\]"):
        checks.train("site-01", reply, sent)
    withheld = _checks(small_study, n_train=None)
    with pytest.raises(ReplyRejectedError, match="withheld its training row count"):
        withheld.train("site-01", _train_reply(small_study, model_arrays), sent)
    evaluation = records.report_to_record(_report(n=60))
    checks.evaluate("site-01", evaluation)  # honest: passes
    evaluation["metrics"]["auroc"] = float("inf")
    with pytest.raises(ReplyRejectedError, match="'auroc' is inf"):
        checks.evaluate("site-01", evaluation)
    too_many = records.report_to_record(_report(n=61))
    with pytest.raises(ReplyRejectedError, match="accepted: 1 to 60"):
        checks.evaluate("site-01", too_many)


def _report(n: int):
    from lhs_federated.learning.metrics import METRIC_NAMES, MetricReport

    return MetricReport({m: (float(n) if m == "n" else 0.5) for m in METRIC_NAMES}, {})


def test_scaffold_control_arrays_are_expected_by_their_shapes(small_study, model_arrays):
    sent = ArrayRecord(
        {
            **{k: Array(v) for k, v in model_arrays.items()},
            **{records.SERVER_CONTROL_PREFIX + k: Array(v) for k, v in model_arrays.items()},
        }
    )
    arrays = {
        **model_arrays,
        **{records.CONTROL_DELTA_PREFIX + k: v for k, v in model_arrays.items()},
    }
    _checks(small_study).train("site-01", _train_reply(small_study, arrays), sent)
    arrays[records.CONTROL_DELTA_PREFIX + next(iter(model_arrays))] = np.zeros(1, np.float32)
    with pytest.raises(ReplyRejectedError, match="scaffold-delta-c:"):
        _checks(small_study).train("site-01", _train_reply(small_study, arrays), sent)


def _poison_each_round(reply: Message, server_round: int) -> Message:
    """Round 1: NaN; round 2: num-examples 1e9; round 3: a missing array."""
    content = reply.content
    arrays = records.from_array_record(content["arrays"])
    if server_round == 1:
        content["arrays"] = records.to_array_record(_first_set(arrays, np.nan))
    elif server_round == 2:
        content["metrics"]["num-examples"] = 10**9
    else:
        content["arrays"] = records.to_array_record(dict(list(arrays.items())[1:]))
    return reply


def test_a_site_sending_poisoned_updates_is_refused_and_the_study_goes_on(small_study, tmp_path):
    study = small_study.with_overrides({"rounds": 3, "federation.min_sites": 2})
    run_with(tampering_client(2, _poison_each_round), study, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert rounds["trained"].tolist() == ["site-01 site-02"] * 3
    assert "site-03: reply rejected: array 'linear.weight' holds NaN" in rounds["failed"][0]
    assert "num-examples = 1e+09; the site reported" in rounds["failed"][1]
    assert "arrays differ from the model's: missing ['linear.weight']" in rounds["failed"][2]
    ledger = (tmp_path / "run" / "governance" / "coordinator.jsonl").read_text()
    assert ledger.count("reply rejected") >= 3


def _boosted(reply: Message, server_round: int) -> Message:
    """A poisoned model within every bound: each parameter 1000."""
    arrays = records.from_array_record(reply.content["arrays"])
    reply.content["arrays"] = records.to_array_record(
        {k: np.full_like(v, 1000.0) for k, v in arrays.items()}
    )
    return reply


def test_robust_strategies_stay_available_against_a_plausible_but_wrong_update(
    small_study, tmp_path
):
    """A poisoned update within every bound moves FedAvg's model, not FedMedian's."""
    largest = {}
    for name in ("fedavg", "fedmedian"):
        study = small_study.with_overrides({"strategy.name": name, "rounds": 1})
        run_with(tampering_client(2, _boosted), study, tmp_path / name)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed"
        weights = np.load(tmp_path / name / "model" / "model.npz")
        largest[name] = max(float(np.abs(weights[k]).max()) for k in weights.files)
    assert largest["fedavg"] > 100 * largest["fedmedian"]
    assert largest["fedmedian"] < MAX_PARAMETER


# ---------------------------------------------------------------- item 8: absurd values

INF, NAN = float("inf"), float("nan")
#: Study overrides a user (or a coordinator's `--set`) might try, and the error each gives.
BAD_STUDY_VALUES = [
    ({"rounds": 0}, r"rounds must be >= 1; got 0 \(accepted: >= 1 and <= 10000\)"),
    ({"rounds": -1}, r"rounds must be >= 1"),
    ({"rounds": 10**9}, r"rounds must be <= 10000; got 1000000000 \(accepted: >= 1 and <= 10000\)"),
    ({"rounds": 1e9}, r"rounds must be an integer; got 1000000000\.0"),
    ({"rounds": 10001}, r"rounds must be <= 10000"),
    ({"rounds": "ten"}, r"rounds must be an integer; got 'ten'"),
    ({"rounds": True}, r"rounds must be an integer; got True"),
    (
        {"training.learning_rate": 0},
        r"learning_rate must be > 0; got 0\.0 \(accepted: > 0 and <= 10\)",
    ),
    ({"training.learning_rate": -0.1}, r"learning_rate must be > 0"),
    ({"training.learning_rate": 1e30}, r"learning_rate must be <= 10; got 1e\+30"),
    ({"training.learning_rate": 11}, r"learning_rate must be <= 10"),
    ({"training.learning_rate": INF}, r"learning_rate must be a finite number; got inf"),
    ({"training.learning_rate": NAN}, r"learning_rate must be a finite number; got nan"),
    ({"training.learning_rate": "fast"}, r"learning_rate must be a number; got 'fast'"),
    ({"training.steps": 0}, r"steps must be >= 1"),
    ({"training.steps": 10**12}, r"steps must be <= 100000; got 1000000000000"),
    ({"training.steps": 1.5}, r"steps must be an integer"),
    ({"training.epochs": 0}, r"epochs must be >= 1"),
    ({"training.epochs": 1001}, r"epochs must be <= 1000"),
    ({"training.epochs": 2, "training.steps": 5}, r"set either epochs \(2\) or steps \(5\)"),
    ({"training.batch_size": 0}, r"batch_size must be >= 1"),
    ({"training.batch_size": 10**9}, r"batch_size must be <= 1000000"),
    ({"training.momentum": 1.0}, r"momentum must be < 1"),
    ({"training.momentum": -0.1}, r"momentum must be >= 0"),
    ({"training.weight_decay": -1}, r"weight_decay must be >= 0"),
    ({"training.weight_decay": 1e9}, r"weight_decay must be <= 100"),
    ({"training.optimizer": "lbfgs"}, r"optimizer must be one of 'sgd', 'adam'"),
    (
        {"model.name": "mlp", "model.hidden_layers": [100000, 100000]},
        r"hidden_layers must be <= 4096; got 100000",
    ),
    (
        {"model.name": "mlp", "model.hidden_layers": [100000, 100000]},
        r"\(accepted: >= 1 and <= 4096\)",
    ),
    ({"model.name": "mlp", "model.hidden_layers": [0]}, r"hidden_layers must be >= 1; got 0"),
    ({"model.name": "mlp", "model.hidden_layers": [8] * 17}, r"17 layers; at most 16"),
    ({"model.name": "mlp", "model.hidden_layers": "wide"}, r"hidden_layers must be a list"),
    ({"model.dropout": 1.0}, r"dropout must be < 1"),
    ({"model.dropout": -0.5}, r"dropout must be >= 0"),
    ({"model.name": "transformer"}, r"transformer"),
    ({"privacy.mode": "sample-dp", "privacy.epsilon": 1e9}, r"at most 100 .*got 1000000000\.0"),
    ({"privacy.mode": "sample-dp", "privacy.epsilon": 0}, r"privacy\.epsilon must be a positive"),
    ({"privacy.mode": "sample-dp", "privacy.epsilon": -1}, r"privacy\.epsilon must be a positive"),
    ({"privacy.mode": "sample-dp", "privacy.epsilon": INF}, r"epsilon must be a finite number"),
    ({"privacy.mode": "sample-dp", "privacy.epsilon": NAN}, r"epsilon must be a finite number"),
    ({"privacy.mode": "sample-dp"}, r"needs privacy\.epsilon"),
    ({"privacy.epsilon": 1.0}, r"privacy\.mode is"),
    ({"privacy.delta": 0}, r"privacy\.delta must be in \(0, 1\)"),
    ({"privacy.delta": 1}, r"privacy\.delta must be in \(0, 1\)"),
    ({"privacy.max_grad_norm": 0}, r"max_grad_norm must be > 0"),
    ({"privacy.mode": "full"}, r"privacy\.mode must be one of"),
    ({"privacy.min_train_rows": 0}, r"min_train_rows must be >= 1"),
    ({"strategy.name": "fedavgg"}, r"Did you mean 'fedavg'"),
    ({"strategy.fraction_train": 0}, r"fraction_train must be > 0"),
    ({"strategy.fraction_train": 1.5}, r"fraction_train must be <= 1"),
    ({"strategy.name": "fedprox", "strategy.params": {"proximal_mu": INF}}, r"finite number"),
    ({"strategy.name": "fedprox", "strategy.params": {"proximal_mu": "x"}}, r"must be a number"),
    ({"strategy.params": {"proximal_mu": 0.1}}, r"proximal_mu is not a parameter of fedavg"),
    ({"strategy.params": {"min_train_nodes": 1}}, r"set by lhs-federated"),
    ({"strategy.name": "fedavg-ft", "strategy.params": {"fine_tune_steps": 10**9}}, r"1 to 10000"),
    ({"strategy.name": "fedavg-ft", "strategy.params": {"fine_tune_steps": 0}}, r"1 to 10000"),
    ({"strategy.name": "fedavg-ft", "strategy.params": {"fine_tune_steps": 2.5}}, r"1 to 10000"),
    (
        {"strategy.name": "fedavg-ft", "strategy.params": {"fine_tune_learning_rate": 1e30}},
        r"fine_tune_learning_rate must be a number > 0 and <= 10",
    ),
    ({"federation.min_sites": 0}, r"min_sites must be >= 1"),
    ({"federation.round_timeout": 0}, r"round_timeout must be > 0"),
    ({"federation.round_timeout": 1e12}, r"round_timeout must be <= 604800"),
    ({"federation.round_timeout": INF}, r"round_timeout must be a finite number"),
    ({"federation.connect_timeout": -5}, r"connect_timeout must be > 0"),
    ({"sites.epsilon_budget": INF}, r"epsilon_budget must be a finite number; got inf"),
    ({"sites.epsilon_budget": 0}, r"epsilon_budget must be > 0"),
    ({"sites.epsilon_budget": 1e9}, r"epsilon_budget must be <= 1000"),
    ({"sites.min_cell_size": 0}, r"min_cell_size must be >= 1"),
    ({"sites.min_cell_size": 10**6}, r"min_cell_size must be <= 1000"),
    ({"sites.budget_delta": 1}, r"budget_delta must be < 1"),
    ({"evaluation.threshold": 0}, r"threshold must be > 0"),
    ({"evaluation.threshold": 1}, r"threshold must be < 1"),
    ({"evaluation.calibration_bins": 1}, r"calibration_bins must be >= 2"),
    ({"evaluation.calibration_bins": 1000}, r"calibration_bins must be <= 100"),
    ({"data.test_fraction": 0}, r"test_fraction must be > 0"),
    ({"data.test_fraction": 1}, r"test_fraction must be < 1"),
    ({"data.synthetic.sites": 0}, r"sites must be >= 1"),
    ({"data.synthetic.sites": 10**6}, r"sites must be <= 10000"),
    ({"data.synthetic.rows_per_site": 10**9}, r"rows_per_site must be <= 1000000"),
    ({"data.synthetic.rows_per_site": 5}, r"rows_per_site must be >= 20"),
    ({"data.source": "s3"}, r"data\.source must be one of"),
    ({"data.source": "folder"}, r"needs data\.path"),
    ({"name": "bad name!"}, r"name must be letters, digits"),
    ({"name": ""}, r"name must be letters, digits"),
    ({"name": "../x"}, r"name must be letters, digits"),
    ({"trainig.learning_rate": 0.1}, r"unknown key 'trainig'"),
    ({"training.learning_rat": 0.1}, r"Did you mean 'learning_rate'"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_STUDY_VALUES)
def test_an_absurd_study_value_is_a_clear_error(small_study, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        small_study.with_overrides(overrides)


def _site_toml(tmp_path, **tables) -> Path:
    key = write_site_key(tmp_path / "site.key")
    (tmp_path / "data.csv").write_text("age\n50\n")
    (tmp_path / "ca.crt").write_text("")
    base = {
        "site": {"name": "site-01"},
        "coordinator": {"address": "127.0.0.1:9092", "ca_certificate": "ca.crt"},
        "identity": {"private_key": str(key)},
        "data": {"file": "data.csv"},
    }
    for table, values in tables.items():
        base[table] = {**base.get(table, {}), **values}
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(base))
    return path


BAD_SITE_VALUES = [
    ({"site": {"name": "bad name!"}}, r"site name must be letters, digits"),
    ({"policy": {"epsilon_budget": INF}}, r"epsilon_budget must be a finite number; got inf"),
    ({"policy": {"epsilon_budget": 5000.0}}, r"epsilon_budget must be <= 1000"),
    ({"policy": {"min_cell_size": 0}}, r"min_cell_size must be >= 1"),
    ({"policy": {"budget_delta": 2.0}}, r"budget_delta must be < 1"),
    ({"runtime": {"threads": 0}}, r"threads must be >= 1"),
    ({"runtime": {"workers": 1000}}, r"workers must be <= 64"),
    ({"runtime": {"runtime_port": 70000}}, r"runtime_port must be <= 65535"),
    ({"runtime": {"connect_timeout": 0}}, r"connect_timeout must be > 0"),
    ({"runtime": {"poll_interval": 1000}}, r"poll_interval must be <= 60"),
    ({"coordinator": {"address": "nohost"}}, r"coordinator\.address must be host:port"),
    ({"data": {"file": "missing.csv"}}, r"data\.file names .* which does not exist"),
    ({"data": {"csv_separator": "#"}}, r"csv_separator must be one of"),
    ({"policy": {"min_cel_size": 5}}, r"Did you mean 'min_cell_size'"),
]


@pytest.mark.parametrize(("tables", "expected"), BAD_SITE_VALUES)
def test_an_absurd_site_setting_is_a_clear_error(tmp_path, tables, expected):
    with pytest.raises(ConfigError, match=expected):
        load_site_config(_site_toml(tmp_path, **tables))


def test_a_site_value_of_1e400_in_toml_is_refused(tmp_path):
    path = _site_toml(tmp_path)
    path.write_text(path.read_text() + "\n[policy]\nepsilon_budget = 1e400\n")
    with pytest.raises(ConfigError, match=r"policy\.epsilon_budget must be a finite number"):
        load_site_config(path)


def _server_toml(tmp_path, sites: dict[str, str], **server) -> Path:
    path = tmp_path / "server.toml"
    table = {"tls": {"insecure": True}, "sites": sites}
    if server:
        table["server"] = server
    path.write_text(tomli_w.dumps(table))
    return path


def test_bad_server_settings_are_clear_errors(tmp_path):
    one = write_site_key(tmp_path / "one")
    two = write_site_key(tmp_path / "two")
    cases = [
        ({"bad name!": f"{one}.pub"}, {}, r"site name 'bad name!' in \[sites\]"),
        ({"site-01": f"{one}.pub", "site-02": f"{one}.pub"}, {}, r"name the same public key"),
        ({"site-01": f"{two}.pub"}, {"host": "bad host/!"}, r"server\.host must be an IP"),
        ({"site-01": f"{two}.pub"}, {"port": 0}, r"server\.port must be >= 1"),
        ({"site-01": str(tmp_path / "missing.pub")}, {}, r"sites\.site-01 names .* not exist"),
    ]
    for sites, server, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            load_server_config(_server_toml(tmp_path, sites, **server))
    # The same key copied to a second file is the same key.
    (tmp_path / "copy.pub").write_bytes((tmp_path / "one.pub").read_bytes())
    with pytest.raises(ConfigError, match=r"sites\.site-02 and sites\.site-01 name the same"):
        load_server_config(
            _server_toml(tmp_path, {"site-01": f"{one}.pub", "site-02": str(tmp_path / "copy.pub")})
        )
    config = load_server_config(_server_toml(tmp_path, {"site-01": f"{one}.pub"}))
    with pytest.raises(ConfigError, match=r"site name 'bad name!' must be 1-64 letters"):
        coordinator.register_site(config, "bad name!", Path(f"{one}.pub"))


@pytest.mark.parametrize(
    ("hosts", "sites", "expected"),
    [
        (["bad host/!"], [], r"--host 'bad host/!' is neither an IP address nor a DNS name"),
        (["-x.example.org"], [], r"--host '-x\.example\.org'"),
        (["a" * 64 + ".org"], [], r"is neither an IP address"),
        (["coordinator.example.org"], ["bad name!"], r"--site 'bad name!' must be 1-64"),
        (["coordinator.example.org"], ["../../etc"], r"--site '\.\./\.\./etc'"),
        ([], [], r"at least one host"),
    ],
)
def test_certs_init_refuses_bad_hosts_and_site_names(tmp_path, hosts, sites, expected):
    with pytest.raises(ConfigError, match=expected):
        init_certificates(tmp_path / "certs", hosts=hosts, sites=sites)
    assert not (tmp_path / "certs" / "ca.crt").exists()  # nothing half written


def test_site_keys_that_flower_cannot_use_or_others_can_read_are_refused(tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (OpenSSH) makes the passphrase-protected key")
    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "secret", "-f", str(locked)],
        check=True,
    )
    with pytest.raises(ConfigError, match=r"protected by a passphrase.*ssh-keygen -p"):
        check_site_key(locked)
    open_key = write_site_key(tmp_path / "open")
    check_site_key(open_key)  # 0600 as written: accepted
    assert open_key.stat().st_mode & 0o777 == 0o600
    open_key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"has mode 0644: other users can read it.*chmod 600"):
        check_site_key(open_key)
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match=r"is not an OpenSSH private key"):
        check_site_key(garbage)
    with pytest.raises(ConfigError, match=r"is not an OpenSSH private key"):
        check_site_key(tmp_path / "absent")


def test_checkpoints_ledgers_and_privacy_ledgers_are_not_world_readable(small_study, tmp_path):
    study = small_study.with_overrides(
        {"rounds": 1, "privacy.mode": "sample-dp", "privacy.epsilon": 5.0}
    )
    run_with(tampering_client(0, lambda reply, _: None), study, tmp_path / "run")
    written = [
        tmp_path / "run" / "checkpoint.pkl",
        tmp_path / "run" / "governance" / "coordinator.jsonl",
        *(tmp_path / "run" / "site-state").glob("*/privacy-ledger.json"),
        *(tmp_path / "run" / "governance" / "sites").glob("*/ledger.jsonl"),
    ]
    assert len(written) == 8
    for path in written:
        assert path.stat().st_mode & 0o077 == 0, path
    # The wrong public key is a wrong input: exit 2, as the README says.
    assert main(["keys", "init", str(tmp_path / "other.key")]) == 0
    ledger = str(tmp_path / "run" / "governance" / "coordinator.jsonl")
    assert main(["audit", "verify", ledger, "--public-key", str(tmp_path / "other.pub")]) == 2
    own = str(tmp_path / "run" / "governance" / "coordinator.pub")
    assert main(["audit", "verify", ledger, "--public-key", own]) == 0


def test_cli_errors_keep_bracketed_names_and_exit_2(capsys):
    assert main(["simulate", "--set", "rounds=1000000000"]) == 2
    assert main(["simulate", "--set", "data.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "rounds must be <= 10000; got 1000000000 (accepted: >= 1 and <= 10000)" in err
    assert "unknown key 'data.nope' in [data]" in err


# ------------------------------------- items 4 and 5: what a modified coordinator can ask


@pytest.mark.parametrize("mode", ["none", "client-dp", "sample-dp"])
def test_sites_refuse_rounds_beyond_the_approved_study_in_every_privacy_mode(
    small_study, tmp_path, mode
):
    privacy = {"none": {}, "client-dp": {"privacy.epsilon": 50.0}}.get(
        mode,
        {
            "privacy.epsilon": 5.0,
            "sites.epsilon_budget": 100.0,
            "sites.state_dir": str(tmp_path / "state"),
        },
    )
    approved = small_study.with_overrides({"privacy.mode": mode, **privacy})
    asked = approved.with_overrides({"rounds": 8})  # what the coordinator runs
    with pytest.raises(StudyRunError, match=r"round 3 is outside the approved study's rounds"):
        malicious_coordinator(asked, carry_study(approved), tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2]  # two rounds of updates, never more


def test_a_round_is_asked_at_most_twice_and_rounds_only_go_forward():
    check_round([], 1, 2, "site-01")
    check_round([1], 1, 2, "site-01")  # an interrupted round, asked again
    with pytest.raises(SiteRefusal, match=r"round 1 was asked 2 times already"):
        check_round([1, 1], 1, 2, "site-01")
    with pytest.raises(SiteRefusal, match=r"round 1 comes after round 2"):
        check_round([1, 2], 1, 2, "site-01")
    for asked in (0, 3, -1):
        with pytest.raises(SiteRefusal, match=rf"round {asked} is outside .* \(1 to 2\)"):
            check_round([], asked, 2, "site-01")


def _inject_local_work(message: Message) -> None:
    """Ask a FedAvg study's sites to fine-tune before scoring and to add a proximal term."""
    config = message.content[records.CONFIG]
    if message.metadata.message_type == "evaluate":
        config["fine-tune-steps"] = 20000
        config["fine-tune-learning-rate"] = 1.0
    else:
        config["proximal-mu"] = 10.0


def test_messages_cannot_make_a_site_fine_tune_or_add_a_proximal_term(small_study, tmp_path):
    honest = malicious_coordinator(small_study, lambda message: None, tmp_path / "honest")
    attacked = malicious_coordinator(small_study, _inject_local_work, tmp_path / "attacked")
    assert attacked["final"]["per_site"] == honest["final"]["per_site"]
    assert attacked["model"]["arrays_sha256"] == honest["model"]["arrays_sha256"]


def test_a_deployed_run_is_labelled_deployment_whatever_its_run_config_says(
    small_study, tmp_path, monkeypatch
):
    """Item 9: under `server start` the ServerApp is deployed; its bindings come from state/."""
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    nodes = {"site-01": "1000", "site-02": "1001", "site-03": "1002"}
    (state / "sites.json").write_text(json.dumps(nodes))
    monkeypatch.setenv("LHS_FED_SERVER_STATE", str(state))
    study = small_study.with_overrides({"rounds": 1})
    run_config = {"study": study.to_json(), "out-dir": str(tmp_path / "run"), "engine": "inprocess"}
    run_inprocess(run_config, 3)
    ledger = (tmp_path / "run" / "governance" / "coordinator.jsonl").read_text().splitlines()
    started = next(json.loads(line) for line in ledger if '"study-started"' in line)
    assert started["data"]["engine"] == "deployment"
    assert [p["node_id"] for p in started["data"]["participants"]] == [1000, 1001, 1002]


def _crafted_preprocessing(message: Message) -> None:
    config = message.content[records.CONFIG]
    if message.metadata.message_type == "evaluate" and config[records.ROUND] == 2:
        config[records.PREP_MEAN] = [v + 1.0 for v in config[records.PREP_MEAN]]


def test_evaluation_uses_the_runs_fixed_preprocessing(small_study, tmp_path):
    malicious_coordinator(small_study, _crafted_preprocessing, tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv", keep_default_na=False)
    assert rounds["failed"][0] == ""
    assert rounds["failed"][1].count("differs from the one this run started with") == 3
    bad = ConfigRecord({records.PREP_MEAN: [0.0, 1.0], records.PREP_SCALE: [1.0, 0.0]})
    with pytest.raises(SiteRefusal, match="scales positive and finite"):
        preprocessing_digest(bad, "site-01")


def test_a_site_can_add_calibrated_noise_to_or_coarsen_the_metrics_it_releases():
    """A constant model makes accuracy the complement of prevalence: exact counts on 40 rows."""
    outcome = np.array([1] * 5 + [0] * 35)
    exact = clinical_metrics(outcome, np.zeros(40))
    assert exact.values["accuracy"] * 40 == 35 and exact.values["prevalence"] * 40 == 5
    assert release_metrics(exact, noise=0.0, decimals=None) is exact
    noisy = release_metrics(exact, noise=2.0, decimals=None, rng=np.random.default_rng(3))
    assert noisy.values["n"] == 40
    for name in ("accuracy", "prevalence", "brier"):
        assert noisy.values[name] != exact.values[name] and 0 <= noisy.values[name] <= 1
    spread = [
        release_metrics(exact, noise=2.0, decimals=None).values["prevalence"] for _ in range(400)
    ]
    assert np.mean(np.abs(np.array(spread) - 5 / 40)) == pytest.approx(2 / 40, rel=0.25)
    coarse = release_metrics(exact, noise=0.0, decimals=1)
    assert coarse.values["accuracy"] == 0.9 and coarse.values["prevalence"] == 0.1
    assert coarse.values["auroc"] == 0.5


# ---------------------------------------------------- item 1: a site always comes back


def test_the_site_supervisor_retries_a_failed_rejoin_until_it_succeeds(tmp_path):
    """A SuperNode killed with -9, then two failed rejoins: the site still comes back."""
    paths = site_node.SitePaths(tmp_path)
    first = subprocess.Popen(["sleep", "60"])
    attempts: list[str] = []
    rejoined: list[subprocess.Popen] = []

    def launch() -> list[subprocess.Popen]:
        attempts.append("launch")
        if len(attempts) <= 2:
            raise LhsError("the coordinator refused this site's node")
        rejoined.append(subprocess.Popen(["sleep", "60"]))
        return rejoined[-1:]

    stop = site_node._StopFlag()
    try:
        killer = threading.Timer(0.5, first.kill)
        stopper = threading.Thread(target=_stop_once_rejoined, args=(stop, rejoined))
        killer.start()
        stopper.start()
        site_node.supervise([first], launch, stop, paths, "site-01", first_pause=0.1)
        stopper.join()
    finally:
        stop.restore()
    assert attempts == ["launch"] * 3
    assert rejoined[0].poll() is not None  # stopped by the supervisor on the stop request
    assert paths.alive.exists()


def _stop_once_rejoined(stop, rejoined, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not rejoined and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert rejoined and rejoined[0].poll() is None  # the relaunched process runs
    stop.requested = True


@pytest.mark.slow
def test_a_supernode_that_gives_up_reconnecting_exits(tmp_path):
    """Flower's SuperNode logs "Giving up reconnection" and stays alive; ours exits.

    Real processes: a SuperLink, the site's SuperNode entry point joined to it,
    then the SuperLink stopped for longer than the SuperNode's --max-wait-time.
    """
    env = processes.flower_environment(tmp_path / "flwr")
    port, runtime = free_port(), free_port()
    superlink = processes.start_process(
        [processes.flower_command("flower-superlink"), "--insecure", "--host", "127.0.0.1",
         "--port", str(port)],
        log=tmp_path / "superlink.log", env=env,
    )  # fmt: skip
    log = tmp_path / "supernode.log"
    try:
        processes.wait_until(
            lambda: processes.port_open("127.0.0.1", port), process=superlink, timeout=60,
            what="the SuperLink", log=tmp_path / "superlink.log",
        )  # fmt: skip
        supernode = processes.start_process(
            [sys.executable, "-m", "lhs_federated.deploy.supernode", "--poll-interval", "0.5",
             "--superlink", f"127.0.0.1:{port}", "--insecure", "--isolation", "process",
             "--host", "127.0.0.1", "--port", str(runtime), "--max-wait-time", "2"],
            log=log, env=env,
        )  # fmt: skip
        processes.wait_until(
            lambda: "SuperNode ID" in log.read_text(), process=supernode, timeout=60,
            what="the SuperNode", log=log,
        )  # fmt: skip
        processes.stop_process(superlink)
        assert supernode.wait(timeout=60) != 0
    finally:
        processes.stop_process(superlink)
        processes.stop_process(supernode)
    text = log.read_text()
    assert "Giving up reconnection" in text
    assert "the SuperNode stopped (exit code 1); its supervisor restarts it" in text


# ------------------------------------------- item 2: only the sites' own nodes take part


def test_only_nodes_bound_to_site_keys_take_part_each_as_its_own_site(small_study, tmp_path):
    """An outsider's node (unbound), and a bound node claiming another site, are refused."""
    study = small_study.with_overrides({"federation.min_sites": 1, "rounds": 1})
    bound = {1000: "site-01", 1001: "site-03"}  # node 1001 serves site-02; 1002 is no one's
    summary = malicious_coordinator(study, lambda message: None, tmp_path / "run", site_nodes=bound)
    assert summary["sites"] == ["site-01"]
    ledger = (tmp_path / "run" / "governance" / "coordinator.jsonl").read_text().splitlines()
    started = next(json.loads(line) for line in ledger if '"study-started"' in line)
    refused = sorted(started["data"]["refused_nodes"], key=lambda r: r["node_id"])
    assert refused == [
        {"node_id": 1001, "reason": "it claims to be site 'site-02', but its key is 'site-03''s"},
        {"node_id": 1002, "reason": "its node id is not bound to any site key in server.toml"},
    ]
    assert [p["site"] for p in started["data"]["participants"]] == ["site-01"]
    with pytest.raises(StudyRunError, match=r"only 0 sites joined.*node 1000: it claims"):
        malicious_coordinator(
            study, lambda message: None, tmp_path / "none", site_nodes={1000: "site-02"}
        )


def test_the_control_and_runtime_apis_answer_only_the_coordinators_host():
    """Flower's real SuperLink app, wrapped: `flwr supernode register` from elsewhere is 403."""
    with warnings.catch_warnings():  # Starlette's note about its httpx-based client
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    app = LoopbackOnly(create_superlink_app(), own_hosts={"10.0.0.5"})
    outsider = TestClient(app, client=("203.0.113.7", 5000), raise_server_exceptions=False)
    for path in ("/v1/control/register-node", "/v1/control/start-run", "/v1/runtime/x"):
        assert outsider.post(path, json={}).status_code == 403, path
    assert outsider.post("/v1/fleet/register-node", json={}).status_code != 403  # sites' API
    assert outsider.get("/health").status_code == 200
    for host in ("127.0.0.1", "::1", "10.0.0.5"):
        local = TestClient(app, client=(host, 5000), raise_server_exceptions=False)
        assert local.post("/v1/control/register-node", json={}).status_code != 403, host
    proxied = TestClient(app, client=("127.0.0.1", 5000), raise_server_exceptions=False)
    response = proxied.post(
        "/v1/control/register-node", json={}, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert response.status_code == 403  # a proxy on this host forwarding an outsider


def test_the_ledger_key_path_stays_at_the_coordinator(tmp_path):
    """The run config every site receives names no coordinator file but the results folder."""
    key = tmp_path / "keys" / "coordinator.key"
    assert main(["keys", "init", str(key)]) == 0
    one = write_site_key(tmp_path / "one")
    path = _server_toml(tmp_path, {"site-01": f"{one}.pub"})
    path.write_text(path.read_text() + f'\n[ledger]\nsigning_key = "{key}"\n')
    config = load_server_config(path)
    paths = coordinator.ServerPaths(config.state_dir)
    paths.pid.parent.mkdir(parents=True)
    processes.write_pid_file(paths.pid, os.getpid())  # "running": submit stops at flwr
    with pytest.raises(LhsError, match="flwr"):
        coordinator.submit_study(config, load_study(None), out_dir=tmp_path / "out")
    (run_config_file,) = paths.runs.glob(".out.run-config.toml")
    assert str(key) not in run_config_file.read_text()
    assert server_app.coordinator_settings(paths.state, tmp_path / "out") == {
        "ledger-key": str(key)
    }


def test_more_absurd_inputs_at_the_command_line(small_study, tmp_path, capsys):
    """min_sites above the sites, bad site and study names: exit 2 with the reason."""
    too_many = small_study.with_overrides({"federation.min_sites": 5})
    (tmp_path / "study.toml").write_text(too_many.to_toml())
    assert main(["simulate", str(tmp_path / "study.toml"), "--out", str(tmp_path / "r")]) == 2
    assert main(["site", "init", str(tmp_path / "g"), "--name", "bad name!"]) == 2
    assert main(["simulate", "--set", "name=a/b"]) == 2
    assert main(["simulate", "--set", "training.learning_rate=inf"]) == 2
    err = capsys.readouterr().err
    assert "federation.min_sites" in err and "3" in err
    assert "a site name must be letters, digits" in err
    assert "name must be letters, digits" in err
    assert "training.learning_rate must be a finite number; got inf" in err


def _nan_sums(reply: Message, server_round: int) -> Message | None:
    if "sums" not in reply.content:
        return None
    sums = reply.content["sums"]
    sums["sum"] = [float("nan")] * len(sums["sum"])
    return reply


def test_a_poisoned_discovery_reply_is_refused_before_it_spoils_the_preprocessing(
    small_study, tmp_path
):
    study = small_study.with_overrides({"rounds": 1})
    run_with(tampering_client(2, _nan_sums, message_type="query"), study, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sites"] == ["site-01", "site-02"]
    assert all(v["auroc"] is not None for v in summary["final"]["per_site"].values())
    ledger = (tmp_path / "run" / "governance" / "coordinator.jsonl").read_text()
    assert "discovery reply rejected: column sums hold NaN or infinite values" in ledger
    summaries = [SiteSummary("s", 100, 30, 10, -1, None), SiteSummary("s", 10, 30, 20, 5, None)]
    for bad, reason in zip(summaries, ["a negative count", "20 positives in 10 rows"], strict=True):
        with pytest.raises(ReplyRejectedError, match=reason):
            check_summary(bad, 12)
