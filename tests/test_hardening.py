"""Issue 12: what a malicious site or coordinator, and absurd inputs, must not get past.

Replies are crafted through the real ClientApp (``malicious.tampering_client``)
and run on the in-process engine, or checked at the unit where the mechanism
lives (:mod:`lhs_federated.apps.reply_checks`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from faulty import run_with
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from malicious import tampering_client

from lhs_federated.apps import records
from lhs_federated.apps.reply_checks import MAX_PARAMETER, ReplyChecks, ReplyRejectedError
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.site import SiteSummary, n_features

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
        study = small_study.with_overrides({"strategy.name": name})
        run_with(tampering_client(2, _boosted), study, tmp_path / name)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed"
        weights = np.load(tmp_path / name / "model" / "model.npz")
        largest[name] = max(float(np.abs(weights[k]).max()) for k in weights.files)
    assert largest["fedavg"] > 100 * largest["fedmedian"]
    assert largest["fedmedian"] < MAX_PARAMETER
