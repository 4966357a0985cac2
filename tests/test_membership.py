"""The loss-threshold membership-inference check computes sensible advantages."""

from __future__ import annotations

import numpy as np
import pytest

from lhs_federated import simulate
from lhs_federated.data.sources import load_sites
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.privacy.membership import (
    attack_released_model,
    dp_advantage_bound,
    loss_threshold_attack,
    record_losses,
)


def test_separable_losses_give_full_advantage_and_equal_ones_almost_none():
    rng = np.random.default_rng(0)
    perfect = loss_threshold_attack(rng.uniform(0, 0.1, 200), rng.uniform(0.5, 2.0, 200))
    assert perfect.advantage == 1.0 and perfect.auc == 1.0 and perfect.threshold < 0.5
    blind = loss_threshold_attack(rng.exponential(size=3000), rng.exponential(size=3000))
    assert blind.advantage < 0.06 and abs(blind.auc - 0.5) < 0.03
    shifted = loss_threshold_attack(rng.exponential(0.5, 3000), rng.exponential(1.0, 3000))
    assert 0.15 < shifted.advantage < 0.35  # analytically 0.25 for these two exponentials


def test_record_losses_are_cross_entropies():
    losses = record_losses(np.array([1, 0]), np.array([0.9, 0.9]))
    assert losses == pytest.approx([-np.log(0.9), -np.log(0.1)])


def test_dp_bounds_the_advantage():
    assert dp_advantage_bound(1.0, 0.0) == pytest.approx((np.e - 1) / (np.e + 1))
    assert dp_advantage_bound(0.5, 1e-5) < dp_advantage_bound(1.0, 1e-5) < 1.0
    assert dp_advantage_bound(50.0, 0.0) == pytest.approx(1.0)


def test_empty_group_is_an_error():
    with pytest.raises(ValueError, match="the attack needs members and non-members; got 0 and 3"):
        loss_threshold_attack(np.array([]), np.ones(3))


def test_attack_on_a_released_model(tmp_path, small_study):
    results = simulate(small_study, out_dir=tmp_path / "run")
    released = ReleasedModel.load(results.out_dir)
    sites = load_sites(small_study)
    attack = attack_released_model(small_study, released.arrays, sites, released.standardizer)
    assert attack.n_members == sum(len(s.train.outcome) for s in sites)
    assert attack.n_nonmembers == sum(len(s.test.outcome) for s in sites)
    assert 0.0 <= attack.advantage < 0.2  # a two-round logistic model barely overfits
