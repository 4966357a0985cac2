"""Distributed DP: each site's share of the noise, under SecAgg+, accounted in its own ledger."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from test_secure_aggregation import run_protocol
from test_secure_aggregation_deployed import consortium  # noqa: F401  (fixture: 3 SuperNodes)

from lhs_federated import StudyRunError, load_study, simulate
from lhs_federated.apps import client_app, records, server_app
from lhs_federated.apps.egress import guard_reply
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.secagg_payloads import Quantiser, decode_update, encode_update
from lhs_federated.cli import main
from lhs_federated.deploy import coordinator
from lhs_federated.errors import ConfigError
from lhs_federated.governance.verify import load_entries
from lhs_federated.learning.training import LocalUpdate
from lhs_federated.privacy.accounting import DPPlan, epsilon_of
from lhs_federated.privacy.budget import SitePrivacy
from lhs_federated.privacy.distributed import PLAN_KEYS, clip_to_norm, noise_plan
from lhs_federated.privacy.egress import EgressBlocked
from lhs_federated.privacy.ledger import PrivacyLedger
from lhs_federated.privacy.site_round import SiteRound, noised_round

DISTRIBUTED = {
    "privacy.mode": "distributed-dp",
    "privacy.secure_aggregation": "secaggplus",
    "privacy.epsilon": 8.0,
    "privacy.secagg.reconstruction_threshold": 3,
}


@pytest.fixture
def dp_study(small_study):
    """Four synthetic sites, two rounds, distributed DP with a threshold of 3."""
    return small_study.with_overrides({"data.synthetic.sites": 4, **DISTRIBUTED})


def _model(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "model" / "model.npz") as stored:
        return {name: stored[name] for name in stored.files}


# --- the noise the sum carries ------------------------------------------------------------


def _site_vectors(study, tmp_path, sites: int, *, seeded: bool, quantiser: Quantiser):
    """Each site's real noised round of a fixed change (norm 3, clipped to 1), quantised."""
    rng = np.random.default_rng(1)
    start = {"w": np.zeros((40, 50), np.float32), "b": np.zeros(3, np.float32)}
    changes, vectors = {}, {}
    for i in range(sites):
        change = {name: rng.normal(0, 1, value.shape) for name, value in start.items()}
        scale = 3 / np.sqrt(sum(np.square(v).sum() for v in change.values()))
        change = {name: (value * scale).astype(np.float32) for name, value in change.items()}
        privacy = SitePrivacy(f"site-{i}", 100.0, 1e-5, tmp_path / f"site-{i}.json", seeded)
        update = LocalUpdate({n: start[n] + change[n] for n in start}, 100, 0.5, 1)
        noised = noised_round(
            study,
            privacy,
            n_train=100,
            server_round=1,
            start=start,
            train=lambda update=update: SiteRound(update, None),
        )
        changes[100 + i] = clip_to_norm(change, study.privacy.client.clipping_norm)
        vectors[100 + i] = encode_update(
            noised.change, 1, float("nan"), quantiser, np.random.default_rng(i)
        )
    return changes, vectors


@pytest.mark.parametrize("seeded", [True, False], ids=["simulated", "os-csprng"])
@pytest.mark.parametrize(("sites", "dropped", "ratio"), [(5, 0, 1.0), (7, 2, 1.0), (7, 0, 7 / 5)])
def test_the_sums_noise_variance_is_the_plans(tmp_path, seeded, sites, dropped, ratio):
    """Summed over t sites the noise is (zC)^2 per parameter; over s > t sites s/t times that."""
    study = load_study(None).with_overrides(
        {
            **DISTRIBUTED,
            "data.synthetic.sites": sites,
            "privacy.secagg.reconstruction_threshold": 5,
            "privacy.secagg.clipping_range": 32.0,
        }
    )
    spec = study.privacy.secagg
    quantiser = Quantiser(spec.clipping_range, spec.quantization_range)
    changes, vectors = _site_vectors(study, tmp_path, sites, seeded=seeded, quantiser=quantiser)
    gone = frozenset(list(vectors)[:dropped])
    total, _ = run_protocol(vectors, threshold=5, drop_after_share=gone)
    mean, weight, _ = decode_update(total, quantiser)
    assert weight == sites - dropped
    residual = np.concatenate(
        [
            (
                mean[name] * weight - sum(c[name] for n, c in changes.items() if n not in gone)
            ).ravel()
            for name in ("w", "b")
        ]
    )
    plan = noise_plan(study)
    expected = ratio * (plan.noise_multiplier * plan.clipping_norm) ** 2
    # the sample variance of n normal draws has relative standard error sqrt(2 / n)
    assert abs(residual.mean()) < 5 * np.sqrt(expected / residual.size)
    assert residual.var() == pytest.approx(expected, rel=5 * np.sqrt(2 / residual.size))


def test_deployed_noise_is_never_the_same_twice(dp_study, tmp_path):
    start = {"w": np.zeros(200, np.float32)}
    update = LocalUpdate({"w": np.full(200, 0.01, np.float32)}, 100, 0.5, 1)
    privacy = SitePrivacy("site-01", 100.0, 1e-5, tmp_path / "ledger.json", seeded_noise=False)
    draws = [
        noised_round(
            dp_study, privacy, n_train=100, server_round=r, start=start,
            train=lambda: SiteRound(update, None),
        ).change["w"]
        for r in (1, 2)
    ]  # fmt: skip
    assert not np.allclose(draws[0], draws[1])


# --- a study under distributed DP ----------------------------------------------------------


def test_each_site_accounts_its_epsilon_and_the_run_is_reproducible(dp_study, tmp_path):
    first = simulate(dp_study, out_dir=tmp_path / "first", report=False)
    again = simulate(dp_study, out_dir=tmp_path / "again", report=False)
    for name, value in _model(tmp_path / "first").items():
        assert np.array_equal(_model(tmp_path / "again")[name], value)
    # the noise is in the model: the same study without it ends elsewhere
    plain = dp_study.with_overrides({"privacy.mode": "none", "privacy.epsilon": None})
    simulate(plain, out_dir=tmp_path / "plain", report=False)
    noisy, clean = _model(tmp_path / "first"), _model(tmp_path / "plain")
    largest = max(np.abs(clean[name] - value).max() for name, value in noisy.items())
    assert largest > 0.05
    assert first.summary["privacy"] == again.summary["privacy"]

    privacy = first.summary["privacy"]
    plan = noise_plan(dp_study)
    expected = epsilon_of(((plan.noise_multiplier, 1.0, dp_study.rounds),), 1e-5, "rdp")
    assert privacy["mode"] == "distributed-dp"
    assert sorted(privacy["epsilon"]) == ["site-01", "site-02", "site-03", "site-04"]
    for site, spent in privacy["epsilon"].items():
        ledger = PrivacyLedger.load(
            tmp_path / "first" / "site-state" / site / "privacy-ledger.json", site
        )
        (recorded,) = ledger.studies.values()
        assert recorded.plan.mechanism == "distributed-gaussian"
        assert [r.round for r in recorded.rounds] == [1, 2]
        assert spent == recorded.epsilon == pytest.approx(expected)
        assert spent <= dp_study.privacy.epsilon
    # four sites summed, three counted on: the sums' noise spent less
    assert privacy["summed_noise_epsilon"] < privacy["max_epsilon"]
    rows = first.metrics[first.metrics.split == "privacy"]
    assert set(rows.site) == {*privacy["epsilon"], "secure-sum"}
    train = first.metrics[first.metrics.split == "train"]
    assert train.loc[train.metric == "loss", "reason"].str.startswith("withheld").all()
    # the coordinator's ledger holds each site's epsilon as the site reported it, and matches
    # every site's own signed ledger
    coordinator = tmp_path / "first" / "governance" / "coordinator.jsonl"
    reported = {
        (e.data["site"], e.data["round"]): e.data["epsilon"]
        for e in load_entries(coordinator)
        if e.kind == "site-reply" and e.data["stage"] == records.SECAGG_COLLECT_UPDATE
    }
    assert {site: reported[site, 2] for site in privacy["epsilon"]} == privacy["epsilon"]
    for site in privacy["epsilon"]:
        ledger = tmp_path / "first" / "governance" / "sites" / site / "ledger.jsonl"
        assert main(["audit", "crosscheck", str(coordinator), str(ledger)]) == 0


class TamperedPlan:
    """The real site ClientApp, receiving messages from a coordinator that edits the noise plan."""

    def __init__(self, changes: dict[str, object]) -> None:
        self.changes = changes

    def __call__(self, message, context):
        if message.metadata.message_type == records.SECAGG_COLLECT_UPDATE:
            config = message.content[records.CONFIG]
            for key, value in self.changes.items():
                if value is None:
                    del config[key]
                else:
                    config[key] = value
        return client_app.app(message, context)


@pytest.mark.parametrize(
    "changes",
    [{PLAN_KEYS[0]: 1e-6}, {PLAN_KEYS[1]: 100.0}, {PLAN_KEYS[2]: 1}, {PLAN_KEYS[0]: None}],
    ids=["noise-off", "larger-norm", "one-share", "no-plan"],
)
def test_a_site_refuses_a_noise_plan_other_than_the_approved_study(dp_study, tmp_path, changes):
    config = {
        server_app.STUDY_KEY: dp_study.to_json(),
        server_app.OUT_DIR_KEY: str(tmp_path / "run"),
    }
    with pytest.raises(StudyRunError, match=r"round 1: secure aggregation failed at the collect"):
        run_inprocess(config, 4, client=TamperedPlan(changes))
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv", keep_default_na=False)
    assert "noise plan" in rounds["failed"][0]
    assert "is not the approved study's" in rounds["failed"][0]
    assert not (tmp_path / "run" / "site-state" / "site-01" / "privacy-ledger.json").exists()


def test_a_plain_train_reply_cannot_leave_under_secure_aggregation(dp_study):
    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    content = RecordDict(
        {records.ARRAYS: arrays, records.METRICS: MetricRecord({records.NUM_EXAMPLES: 100})}
    )
    with pytest.raises(EgressBlocked, match=r"plain update under secure aggregation"):
        guard_reply("train", content, dp_study, "site-01", 10)


# --- refusals at study load ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"privacy.secure_aggregation": "none"},
            r"privacy.mode = 'distributed-dp' needs privacy.secure_aggregation = 'secaggplus' "
            r"\(got 'none'\)",
        ),
        ({"privacy.epsilon": None}, r"'distributed-dp' needs privacy.epsilon"),
        (
            {"privacy.secagg.reconstruction_threshold": 0},
            r"needs privacy.secagg.reconstruction_threshold set explicitly \(for example 3 of "
            r"the 4 sites\)",
        ),
        (
            {"privacy.client.clipping": "client-adaptive"},
            r"privacy.client.clipping = 'client-adaptive' adapts the norm",
        ),
        (
            {"privacy.epsilon": 0.5},
            r"privacy.secagg.clipping_range = 8 leaves too little room for distributed DP's "
            r"noise: each site adds noise of std",
        ),
        (
            {"privacy.client.noise_multiplier": 0.5},
            r"privacy.client.noise_multiplier = 0.5 spends epsilon",
        ),
    ],
)
def test_settings_distributed_dp_cannot_run_with_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_study(None).with_overrides({**DISTRIBUTED, **overrides})


def test_the_cli_refuses_distributed_dp_without_secure_aggregation_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--set", "privacy.mode=distributed-dp",
            "--set", "privacy.epsilon=3.0",
            "--set", "privacy.secagg.reconstruction_threshold=3",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 2
    assert "privacy.secure_aggregation = 'secaggplus'" in capsys.readouterr().err
    assert not out.exists()


def test_a_ledger_written_before_distributed_dp_still_loads():
    plan = DPPlan(1.1, 0.1, 10, 5, 1.0, "rdp", 1.0, 1e-5, 200)
    older = {k: v for k, v in plan.to_dict().items() if k != "mechanism"}
    assert DPPlan.from_dict(older) == plan
    assert json.loads(json.dumps(plan.to_dict()))["mechanism"] == "dp-sgd"


# --- deployed sites --------------------------------------------------------------------


@pytest.mark.slow
def test_deployed_sites_draw_their_own_noise_and_account_it(consortium, tmp_path):  # noqa: F811
    """Three SuperNodes on loopback: ledgers in each site's state folder, noise not the seed's."""
    study = load_study(None).with_overrides(
        {
            **DISTRIBUTED,
            "name": "distributed-deployed",
            "rounds": 1,
            "data.source": "folder",
            "data.path": str(consortium.root.parent / "data"),
            "privacy.secagg.reconstruction_threshold": 2,
            "federation.round_timeout": 60.0,
            "federation.connect_timeout": 60.0,
            "sites.min_cell_size": 1,  # no column withheld: compare with the simulation
        }
    )
    consortium.approve(study)
    submitted = coordinator.submit_study(consortium.server, study)
    coordinator.wait_for_run(consortium.server, submitted, timeout=300)
    privacy = json.loads((submitted.out_dir / "summary.json").read_text())["privacy"]
    coordinator_ledger = submitted.out_dir / "governance" / "coordinator.jsonl"
    for name, site in consortium.sites.items():
        ledger = PrivacyLedger.load(site.state_dir / "privacy-ledger.json", name)
        assert privacy["epsilon"][name] == ledger.studies[study.hash].epsilon > 0
        signed = site.governance_dir / "ledger.jsonl"
        assert main(["audit", "crosscheck", str(coordinator_ledger), str(signed)]) == 0
    # The simulation of the same study draws its noise from the seed; the deployed sites did not.
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(tmp_path / "sim")}
    run_inprocess(config, 3)
    simulated, deployed = _model(tmp_path / "sim"), _model(submitted.out_dir)
    assert max(np.abs(deployed[n] - v).max() for n, v in simulated.items()) > 0.05
