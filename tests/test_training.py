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


def _logistic_rows(scale, n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0]))).astype(np.float32)
    return (x * scale).astype(np.float32), y


def test_diverging_training_stops_the_update_with_the_fix_named():
    from lhs_federated.errors import TrainingDivergedError

    x, y = _logistic_rows(scale=300.0)  # unscaled inputs (preprocessing.scaling = "none")
    spec = TrainingSpec(epochs=1, batch_size=8, learning_rate=0.2)
    model = build_model(ModelSpec(), 3, seed=0)
    with pytest.raises(
        TrainingDivergedError, match=r"training diverged: .*learning_rate, now 0\.2"
    ):
        train_local(model, x, y, spec, seed=1)


def test_nan_loss_stops_at_once():
    from lhs_federated.errors import TrainingDivergedError

    x, y = _logistic_rows(scale=1.0)
    x[5, 0] = np.inf
    with pytest.raises(TrainingDivergedError, match="loss became nan at step 1"):
        train_local(build_model(ModelSpec(), 3, seed=0), x, y, TrainingSpec(batch_size=200), seed=0)


def test_a_round_that_recovers_from_a_spike_warns_and_trains(recwarn):
    from lhs_federated.errors import TrainingWarning
    from lhs_federated.learning.training import check_losses

    check_losses([0.7, 40.0, 3.0] + [0.6] * 30, TrainingSpec())
    (warning,) = [w for w in recwarn if issubclass(w.category, TrainingWarning)]
    assert "loss reached 40" in str(warning.message)
    x, y = _logistic_rows(scale=1.0)
    update = train_local(build_model(ModelSpec(), 3, seed=0), x, y, TrainingSpec(), seed=0)
    assert np.isfinite(update.loss) and update.loss < 0.8


def test_one_small_last_batch_is_not_taken_for_divergence():
    """Measured: 5 steps from a noisy client-DP aggregate, the last of 12 rows."""
    from lhs_federated.errors import TrainingDivergedError
    from lhs_federated.learning.training import check_losses

    losses = [3.04, 3.35, 3.91, 4.34, 6.95]
    check_losses(losses, TrainingSpec(), rows=[32, 32, 32, 32, 12], epoch_steps=5)
    with pytest.raises(TrainingDivergedError, match="ended the round at 8"):  # a whole epoch
        check_losses([*losses[:3], 8.0, 9.0], TrainingSpec(), rows=[32] * 5, epoch_steps=5)


def test_sites_whose_training_diverges_are_recorded_with_the_reason(tmp_path, uci_folder):
    """UCI Heart unscaled (issue 10: AUROC 0.095 and losses of 28-78, no warning)."""
    import json

    import pandas as pd

    from lhs_federated import load_study, simulate

    study = load_study("simulations/heart_disease_flamby.toml").with_overrides(
        {
            "data.path": str(uci_folder),
            "preprocessing.scaling": "none",
            "baselines.enabled": False,
            "baselines.pooled_scaling": "sites",
            "federation.min_sites": 2,
            "rounds": 1,
        }
    )
    results = simulate(study, out_dir=tmp_path / "run", report=False)
    rounds = pd.read_csv(results.out_dir / "rounds.csv", keep_default_na=False)
    failed = rounds.loc[0, "failed"]
    assert "cleveland: failed: training diverged: the loss ended the round at" in failed
    assert "lower training.learning_rate" in failed and "cleveland" not in rounds.loc[0, "trained"]
    ledger = [json.loads(line) for line in (results.out_dir / "governance" / "coordinator.jsonl")
              .read_text(encoding="utf-8").splitlines()]  # fmt: skip
    assert any("training diverged" in json.dumps(record) for record in ledger)
