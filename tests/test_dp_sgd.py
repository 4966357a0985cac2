"""DP-SGD with Opacus: the accountant spends exactly the plan, and runs are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lhs_federated import load_study
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays, set_arrays
from lhs_federated.learning.training import predict_proba
from lhs_federated.privacy.accounting import epsilon_of, merge_history, plan_study
from lhs_federated.privacy.dp_sgd import PrivateTraining, train_private
from lhs_federated.study import ModelSpec


def data(n=90, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return x, y


def study(epsilon=2.0, rounds=2, model="logistic"):
    return load_study(None).with_overrides(
        {
            "rounds": rounds,
            "model.name": model,
            "model.hidden_layers": [8],
            "training.batch_size": 16,
            "training.learning_rate": 0.5,
            "privacy.mode": "sample-dp",
            "privacy.epsilon": epsilon,
            "privacy.delta": 1e-3,
        }
    )


def train(spec_study, history=(), *, seed=1, noise_seed=1, mu=0.0):
    x, y = data()
    plan = plan_study(spec_study, len(y))
    model = build_model(spec_study.model, x.shape[1], seed=0)
    private = PrivateTraining(plan, tuple(history), noise_seed)
    return train_private(model, x, y, spec_study.training, private, seed=seed, proximal_mu=mu)


@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_accountant_spends_exactly_the_plan_and_names_stay_plain(model):
    s = study(model=model)
    plan = plan_study(s, 90)
    first = train(s)
    second = train(s, first.privacy_history, seed=2)
    assert first.privacy_history == plan.round_history()
    assert second.privacy_history == merge_history(plan.round_history() * 2)
    assert first.steps == plan.steps_per_round == 6
    expected = get_arrays(build_model(ModelSpec(name=model, hidden_layers=(8,)), 4, seed=0))
    assert {k: v.shape for k, v in first.arrays.items()} == {
        k: v.shape for k, v in expected.items()
    }  # no "_module." prefix from Opacus
    spent = epsilon_of(second.privacy_history, 1e-3, "rdp")
    assert 0.95 * 2.0 <= spent <= 2.0  # the whole plan spends the target, not twice it


def test_seeded_noise_is_reproducible_and_unseeded_noise_is_not():
    s = study()
    a, b, c = train(s), train(s), train(s, noise_seed=2)
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert not np.array_equal(a.arrays["linear.weight"], c.arrays["linear.weight"])
    d, e = train(s, noise_seed=None), train(s, noise_seed=None)
    assert not np.array_equal(d.arrays["linear.weight"], e.arrays["linear.weight"])


def test_private_training_learns_at_a_generous_epsilon():
    s = study(epsilon=8.0, rounds=1)
    x, y = data(seed=1)
    model = build_model(s.model, 4, seed=0)
    before = roc_auc_score(y, predict_proba(model, x))
    set_arrays(model, train(s).arrays)
    assert roc_auc_score(y, predict_proba(model, x)) > before + 0.25


def test_proximal_step_keeps_the_private_update_near_the_global_model():
    s = study()
    start = get_arrays(build_model(s.model, 4, seed=0))

    def drift(update):
        return sum(float(np.sum((update.arrays[k] - start[k]) ** 2)) for k in start)

    assert drift(train(s, mu=1.5)) < 0.7 * drift(train(s, mu=0.0))
