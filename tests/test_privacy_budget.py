"""The site's privacy ledger and budget: never exceeded, validated, refusing when unsure."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhs_federated import load_study
from lhs_federated.errors import SiteRefusal
from lhs_federated.privacy.accounting import epsilon_of, merge_history, plan_study
from lhs_federated.privacy.budget import SiteBudget, SitePrivacy, check_site_size
from lhs_federated.privacy.ledger import LedgerError, PrivacyLedger, _digest

N_TRAIN = 120
SITE_DELTA = 1e-5


def dp_study(epsilon=1.0, rounds=2, batch_size=32, seed=0, delta=1e-4):
    return load_study(None).with_overrides(
        {
            "name": f"s{seed}",
            "seed": seed,
            "rounds": rounds,
            "training.batch_size": batch_size,
            "privacy.mode": "sample-dp",
            "privacy.epsilon": epsilon,
            "privacy.delta": delta,
        }
    )


def site(path: Path, budget: float = 10.0) -> SitePrivacy:
    return SitePrivacy("site-a", budget, SITE_DELTA, path / "privacy-ledger.json")


def spend_round(privacy: SitePrivacy, study, server_round: int, n_train: int = N_TRAIN):
    """Grant and commit one round, with the history Opacus produces (tested in test_dp_sgd)."""
    with SiteBudget(privacy) as budget:
        grant = budget.grant(study, n_train, server_round)
        history = merge_history(grant.history, grant.plan.round_history())
        return budget.commit(grant, history, server_round)


def test_plan_spends_at_most_the_target_over_the_planned_rounds():
    study = dp_study(epsilon=1.0, rounds=3)
    plan = plan_study(study, N_TRAIN)
    assert plan.sample_rate == 1 / 4 and plan.steps_per_round == 4
    full = plan.round_history() * 3
    spent = epsilon_of(merge_history(full), plan.target_delta, "rdp")
    assert 0.97 <= spent <= 1.0


def test_study_target_refuses_the_round_after_the_plan(tmp_path):
    privacy, study = site(tmp_path), dp_study(epsilon=1.0, rounds=2)
    first, second = spend_round(privacy, study, 1), spend_round(privacy, study, 2)
    assert 0 < first.epsilon < second.epsilon <= 1.0
    with pytest.raises(
        SiteRefusal, match=r"round 3 would bring study 's0' to epsilon 1\.\d+, above"
    ):
        spend_round(privacy, study, 3)
    assert len(PrivacyLedger.load(privacy.ledger_path, "site-a").studies[study.hash].rounds) == 2


def test_site_budget_holds_across_studies(tmp_path):
    privacy = site(tmp_path, budget=1.5)
    spend_round(privacy, dp_study(epsilon=1.0, rounds=1, seed=1), 1)
    with pytest.raises(
        SiteRefusal,
        match=r"site's total over all studies to epsilon .* above its "
        r"budget 1\.5 \(delta 1e-05\); spent so far: 1\.\d+",
    ):
        spend_round(privacy, dp_study(epsilon=1.0, rounds=1, seed=2), 1)


@pytest.mark.parametrize(
    ("delta", "n_train", "match"),
    [
        (1e-2, 150, r"the study's privacy\.delta 0\.01 is not below 1/n"),
        (1e-6, 200_000, r"the site's budget delta 1e-05 is not below 1/n"),
    ],
)
def test_delta_not_below_one_over_n_is_refused(tmp_path, delta, n_train, match):
    with pytest.raises(SiteRefusal, match=match):
        spend_round(site(tmp_path), dp_study(delta=delta), 1, n_train=n_train)


@pytest.mark.parametrize(("rows", "refused"), [(19, True), (20, False)])
def test_site_smaller_than_the_minimum_refuses(rows, refused):
    study = load_study(None)  # privacy.min_train_rows = 20, and a cell size of 10
    if refused:
        with pytest.raises(
            SiteRefusal,
            match=r"'site-a' refused: it has fewer training rows "
            r"than 20 \(the study's privacy\.min_train_rows is 20",
        ):
            check_site_size(study, "site-a", rows, min_cell_size=10)
    else:
        check_site_size(study, "site-a", rows, min_cell_size=10)


def test_no_ledger_no_private_training(tmp_path):
    privacy = SitePrivacy("site-a", 10.0, SITE_DELTA, None)
    with pytest.raises(SiteRefusal, match="the site keeps no privacy ledger"):
        spend_round(privacy, dp_study(), 1)


def test_ledger_state_round_trips_and_continues(tmp_path):
    study = dp_study(rounds=3)
    plan = plan_study(study, N_TRAIN)

    def add_round(ledger, k):
        history = merge_history(ledger.study_history(study.hash), plan.round_history())
        ledger.record(
            study.hash,
            "s0",
            plan,
            history,
            server_round=k,
            site_delta=SITE_DELTA,
            at="2026-01-01T00:00:00+00:00",
        )

    uninterrupted = PrivacyLedger("site-a")
    for k in (1, 2, 3):
        add_round(uninterrupted, k)
    resumed = PrivacyLedger("site-a")
    add_round(resumed, 1)
    add_round(resumed, 2)
    resumed.save(tmp_path / "ledger.json")
    again = PrivacyLedger.load(tmp_path / "ledger.json", "site-a")
    assert again.state_dict() == resumed.state_dict()
    add_round(again, 3)
    assert again.state_dict() == uninterrupted.state_dict()
    copy = PrivacyLedger("site-a")
    copy.load_state_dict(json.loads(json.dumps(uninterrupted.state_dict())))
    assert copy.site_epsilon(SITE_DELTA) == uninterrupted.site_epsilon(SITE_DELTA) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # no temporary file left


def test_a_crash_while_saving_keeps_the_previous_ledger(tmp_path, monkeypatch):
    privacy, study = site(tmp_path), dp_study(rounds=3)
    spend_round(privacy, study, 1)
    before = privacy.ledger_path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lhs_federated.privacy.ledger.json.dump", crash)
    with pytest.raises(OSError, match="disk full"):
        spend_round(privacy, study, 2)
    assert privacy.ledger_path.read_text() == before
    monkeypatch.undo()
    assert len(PrivacyLedger.load(privacy.ledger_path, "site-a").studies[study.hash].rounds) == 1


def _edit(state, change):
    """Apply ``change`` to a ledger state and give it a digest that matches again."""
    body = {k: v for k, v in state.items() if k != "digest"}
    change(body)
    return {**body, "digest": _digest(body)}


def _first_study(body):
    return next(iter(body["studies"].values()))


BAD_LEDGERS = {
    "not JSON": (lambda s: "{ not json", r"is corrupt"),
    "edited, digest kept": (
        lambda s: json.dumps(s).replace('"round": 1,', '"round": 5,'),
        r"digest does not match its content",
    ),
    "epsilon lowered by hand": (
        lambda s: json.dumps(
            _edit(s, lambda b: _first_study(b)["rounds"][-1].update(epsilon=0.01))
        ),
        r"round 2 of study \w+ records epsilon 0\.01",
    ),
    "a round removed by hand": (
        lambda s: json.dumps(_edit(s, lambda b: _first_study(b)["rounds"].pop())),
        r"1 rounds of 4 steps recorded, but its history holds 8 steps",
    ),
    "another site's ledger": (
        lambda s: json.dumps(_edit(s, lambda b: b.update(site="site-b"))),
        r"it belongs to site 'site-b', not 'site-a'",
    ),
    "unknown version": (
        lambda s: json.dumps(_edit(s, lambda b: b.update(version=7))),
        r"not a version-1 privacy ledger",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LEDGERS))
def test_bad_ledger_is_a_clear_error_and_the_site_refuses(tmp_path, case):
    privacy, study = site(tmp_path), dp_study(rounds=3)
    spend_round(privacy, study, 1)
    spend_round(privacy, study, 2)
    path = privacy.ledger_path
    state = json.loads(path.read_text())
    make, match = BAD_LEDGERS[case]
    path.write_text(make(state))
    with pytest.raises(LedgerError, match=match):
        PrivacyLedger.load(path, "site-a")
    with pytest.raises(SiteRefusal, match=rf"{match}.*Until then the site refuses to train"):
        spend_round(privacy, study, 3)


# Property: over any schedule of rounds of any studies, the site never ends above its budget
# and no study above its target. A small pool keeps the noise calibrations cached.
POOL = [
    dp_study(epsilon=eps, rounds=rounds, batch_size=batch, seed=k)
    for k, (eps, rounds, batch) in enumerate(
        [(0.5, 2, 16), (2.0, 2, 64), (0.5, 4, 64), (2.0, 4, 16), (1.0, 3, 32)]
    )
]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.sampled_from([0.4, 1.0, 2.5, 6.0]),
    schedule=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=10),
)
def test_spent_epsilon_never_ends_above_budget(budget, schedule):
    with tempfile.TemporaryDirectory() as folder:
        privacy = site(Path(folder), budget=budget)
        rounds = dict.fromkeys(range(len(POOL)), 0)
        granted = 0
        for index in schedule:
            rounds[index] += 1
            try:
                spend_round(privacy, POOL[index], rounds[index])
                granted += 1
            except SiteRefusal:
                pass
            ledger = PrivacyLedger.load(privacy.ledger_path, "site-a")
            assert ledger.site_epsilon(SITE_DELTA) <= budget
            for spend in ledger.studies.values():
                assert spend.epsilon <= spend.plan.target_epsilon
                assert len(spend.rounds) <= spend.plan.rounds
        assert sum(len(s.rounds) for s in ledger.studies.values()) == granted
