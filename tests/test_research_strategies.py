"""SCAFFOLD and local fine-tuning: strategies Flower lacks, wired through the real apps."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from lhs_federated import ConfigError, simulate
from lhs_federated.apps import records
from lhs_federated.apps.scaffold import SiteControl
from lhs_federated.learning.scaffold import drift_correction, refreshed_control
from lhs_federated.learning.training import LocalUpdate


def test_option_two_recovers_a_constant_gradient():
    """With K SGD steps on a constant gradient g, the refreshed control is g itself."""
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=(1, 3)).astype(np.float32), "b": np.zeros(1, np.float32)}
    g = {"w": rng.normal(size=(1, 3)).astype(np.float32), "b": np.ones(1, np.float32)}
    c = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in x.items()}
    c_i = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in x.items()}
    steps, lr = 7, 0.05
    correction = drift_correction(c, c_i)
    y = {k: x[k] - steps * lr * (g[k] + correction[k]) for k in x}
    new = refreshed_control(x, y, c, c_i, steps=steps, learning_rate=lr)
    for k in x:
        np.testing.assert_allclose(new[k], g[k], rtol=1e-4, atol=1e-5)


def test_site_keeps_its_control_variate_in_node_state():
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    model = {"w": np.ones((1, 2), np.float32)}
    server = {"w": np.full((1, 2), 0.5, np.float32)}
    message = {**model, **{records.SERVER_CONTROL_PREFIX + "w": server["w"]}}
    arrays, control = SiteControl.receive(message, context)
    assert arrays.keys() == {"w"} and control is not None
    np.testing.assert_array_equal(control.own["w"], 0.0)  # first round: zeros
    update = LocalUpdate({"w": np.zeros((1, 2), np.float32)}, 10, 0.1, steps=4)
    delta = control.finish(arrays, update, 0.25, context)
    expected = 0.0 - 0.5 + (1.0 - 0.0) / (4 * 0.25)
    np.testing.assert_allclose(delta[records.CONTROL_DELTA_PREFIX + "w"], expected)
    _, again = SiteControl.receive(message, context)
    np.testing.assert_allclose(again.own["w"], expected)  # persisted for the next round
    plain, none = SiteControl.receive(model, context)
    assert none is None and plain.keys() == {"w"}


def test_scaffold_first_round_is_fedavg_then_corrects_drift(tmp_path, small_study):
    fedavg = simulate(small_study, out_dir=tmp_path / "fedavg", report=False)
    scaffold = simulate(
        small_study.with_overrides({"strategy.name": "scaffold"}),
        out_dir=tmp_path / "scaffold",
        report=False,
    )
    first = [r.per_round.xs(1, level="round")["auroc"].to_numpy() for r in (fedavg, scaffold)]
    np.testing.assert_allclose(first[0], first[1], rtol=1e-6)  # c = c_i = 0 in round 1
    assert fedavg.summary["model"]["arrays_sha256"] != scaffold.summary["model"]["arrays_sha256"]
    comparison = scaffold.summary["comparison"]["per_site"]
    for site, values in scaffold.summary["final"]["per_site"].items():
        assert comparison[site]["federated"]["auroc"] == pytest.approx(values["auroc"], abs=1e-12)


def test_fine_tuning_personalises_and_the_analysis_scores_the_same_model(tmp_path, small_study):
    study = small_study.with_overrides(
        {
            "strategy.name": "fedavg-ft",
            "strategy.params": {"fine_tune_steps": 15, "fine_tune_learning_rate": 0.3},
        }
    )
    tuned = simulate(study, out_dir=tmp_path / "ft", report=False)
    plain = simulate(small_study, out_dir=tmp_path / "plain", report=False)
    # Training is FedAvg's: the same global model; only the scored (personalised) models differ.
    assert tuned.summary["model"]["arrays_sha256"] == plain.summary["model"]["arrays_sha256"]
    assert not np.allclose(tuned.final["brier"].to_numpy(), plain.final["brier"].to_numpy())
    comparison = tuned.summary["comparison"]["per_site"]
    for site, values in tuned.summary["final"]["per_site"].items():
        assert comparison[site]["federated"]["brier"] == pytest.approx(values["brier"], abs=1e-12)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"strategy.name": "scaffold", "training.optimizer": "adam"},
            r"strategy 'scaffold': scaffold needs plain SGD.*optimizer = 'adam'",
        ),
        (
            {"strategy.name": "scaffold", "training.momentum": 0.9},
            r"scaffold needs plain SGD.*momentum = 0\.9",
        ),
        (
            {"strategy.name": "fedavg-ft", "strategy.params": {"fine_tune_steps": 0}},
            r"strategy 'fedavg-ft': fine_tune_steps must be an integer from 1 to 10000; got 0",
        ),
        (
            {"strategy.name": "fedavg-ft", "strategy.params": {"fine_tune_learning_rate": "x"}},
            r"fine_tune_learning_rate must be a number > 0 and <= 10; got 'x'",
        ),
        (
            {"strategy.name": "scaffold", "strategy.params": {"eta": 1.0}},
            r"strategy\.params\.eta is not a parameter of scaffold .*server_learning_rate",
        ),
    ],
)
def test_bad_strategy_settings_fail_at_study_load(small_study, overrides, match):
    with pytest.raises(ConfigError, match=match):
        small_study.with_overrides(overrides)
