from __future__ import annotations

import numpy as np
import pytest

from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.training import planned_steps, train_local
from lhs_federated.study import ModelSpec, TrainingSpec


def data(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n) * 0.5 > 0).astype(int)
    return x, y


def train(seed, mu=0.0, spec=None, model_spec=None):
    x, y = data()
    model = build_model(model_spec or ModelSpec(), 4, seed=0)
    return train_local(
        model, x, y, spec or TrainingSpec(epochs=2, learning_rate=0.1), seed=seed, proximal_mu=mu
    )


@pytest.mark.parametrize(
    "model_spec", [ModelSpec(), ModelSpec(name="mlp", hidden_layers=(8,), dropout=0.2)]
)
def test_same_seed_same_update(model_spec):
    first, second = train(1, model_spec=model_spec), train(1, model_spec=model_spec)
    assert all(np.array_equal(first.arrays[k], second.arrays[k]) for k in first.arrays)
    other = train(2, model_spec=model_spec)
    assert any(not np.array_equal(first.arrays[k], other.arrays[k]) for k in first.arrays)


def test_steps_and_epochs():
    assert planned_steps(120, TrainingSpec(epochs=2, batch_size=32)) == 8
    assert planned_steps(10, TrainingSpec(epochs=1, batch_size=32)) == 1
    assert train(0, spec=TrainingSpec(steps=5)).steps == 5
    update = train(0)
    assert update.steps == 8 and update.n_examples == 120


def test_training_lowers_the_loss():
    early = train(0, spec=TrainingSpec(steps=1, learning_rate=0.1)).loss
    late = train(0, spec=TrainingSpec(epochs=20, learning_rate=0.1)).loss
    assert late < early - 0.1


def test_proximal_term_keeps_the_update_close_to_the_global_model():
    start = get_arrays(build_model(ModelSpec(), 4, seed=0))

    def drift(update):
        return sum(float(np.sum((update.arrays[k] - start[k]) ** 2)) for k in start)

    spec = TrainingSpec(epochs=10, learning_rate=0.2)
    assert drift(train(0, mu=5.0, spec=spec)) < 0.5 * drift(train(0, mu=0.0, spec=spec))
