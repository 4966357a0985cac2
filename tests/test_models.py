from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from lhs_federated.errors import LhsError
from lhs_federated.learning.export import ReleasedModel, to_sklearn
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays, set_arrays
from lhs_federated.learning.training import predict_proba
from lhs_federated.study import ModelSpec


@pytest.mark.parametrize(
    "spec", [ModelSpec(), ModelSpec(name="mlp", hidden_layers=(8, 4), dropout=0.1)]
)
def test_parameters_round_trip(spec):
    source = build_model(spec, 5, seed=1)
    target = build_model(spec, 5, seed=2)
    arrays = get_arrays(source)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    set_arrays(target, arrays)
    x = torch.randn(7, 5)
    source.eval(), target.eval()
    torch.testing.assert_close(source(x), target(x))


def test_same_seed_same_initial_model_and_global_rng_untouched():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    first = get_arrays(build_model(ModelSpec(), 4, seed=9))
    after = torch.rand(1)
    second = get_arrays(build_model(ModelSpec(), 4, seed=9))
    assert before == after
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_opacus_prefix_is_stripped_and_loaded_back():
    model = build_model(ModelSpec(name="mlp", hidden_layers=(3,)), 4, seed=0)
    wrapped = GradSampleModule(model)
    names = list(get_arrays(wrapped))
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    plain = build_model(ModelSpec(name="mlp", hidden_layers=(3,)), 4, seed=5)
    set_arrays(wrapped, get_arrays(plain))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(get_arrays(wrapped).values(), get_arrays(plain).values(), strict=True)
    )


def test_mismatched_arrays_are_rejected_without_loading():
    model = build_model(ModelSpec(), 3, seed=0)
    before = get_arrays(model)
    with pytest.raises(LhsError, match=r"missing \['linear.bias'\], unexpected \['extra'\]"):
        set_arrays(model, {"linear.weight": np.zeros((1, 3)), "extra": np.zeros(2)})
    with pytest.raises(
        LhsError, match=r"'linear.weight' has shape \(1, 4\); the study's model expects \(1, 3\)"
    ):
        set_arrays(model, {"linear.weight": np.zeros((1, 4)), "linear.bias": np.zeros(1)})
    assert all(np.array_equal(before[k], v) for k, v in get_arrays(model).items())


def test_sklearn_export_matches_our_predictions():
    model = build_model(ModelSpec(), 6, seed=3)
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    ours = predict_proba(model, x)
    theirs = to_sklearn(get_arrays(model)).predict_proba(x)[:, 1]
    np.testing.assert_allclose(theirs, ours, atol=1e-6)
    with pytest.raises(ValueError, match="not a logistic regression's arrays"):
        to_sklearn(get_arrays(build_model(ModelSpec(name="mlp"), 6, seed=0)))


def test_released_model_applies_the_whole_chain(tmp_path, small_study):
    from lhs_federated import simulate
    from lhs_federated.data.synthetic import generate_cohort

    results = simulate(small_study, out_dir=tmp_path / "run")
    released = ReleasedModel.load(results.out_dir)
    table = generate_cohort(small_study.data.synthetic, seed=small_study.seed)["site-01"]
    risk = released.predict_proba(table.drop(columns=["cvd_event_10y"]))
    assert risk.shape == (len(table),) and np.all((risk > 0) & (risk < 1))
    import pickle

    with (results.out_dir / "model" / "model.pkl").open("rb") as handle:
        estimator = pickle.load(handle)
    from lhs_federated.data.encoding import encode_features

    features = released.standardizer.transform(
        encode_features(table, small_study.contract, small_study.preprocessing.one_hot)
    )
    np.testing.assert_allclose(estimator.predict_proba(features)[:, 1], risk, atol=1e-6)
