"""Studies with SecAgg+: same model as plain FedAvg, dropouts, refusals, governance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from faulty import faulty_client
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from test_deploy_units import gate, task  # noqa: F401  (fixtures: a site gate and its task)

from lhs_federated import StudyRunError, load_study, simulate
from lhs_federated.apps import client_app, records, server_app
from lhs_federated.apps.egress import guard_reply
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.secagg_payloads import Quantiser, update_error_bound
from lhs_federated.cli import main
from lhs_federated.deploy.gate import SiteGate
from lhs_federated.errors import ConfigError
from lhs_federated.governance.verify import load_entries
from lhs_federated.privacy.egress import EgressBlocked, model_array_specs

SECURE = {"privacy.secure_aggregation": "secaggplus"}


def _model(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "model" / "model.npz") as stored:
        return {name: stored[name] for name in stored.files}


def _ledger(run_dir) -> list:
    return load_entries(run_dir / "governance" / "coordinator.jsonl")


def test_a_secure_study_gives_the_plain_model_within_the_quantisation_bound(small_study, tmp_path):
    # A minimum cell size of 1: no site withholds a column, so both runs standardise alike.
    small_study = small_study.with_overrides({"sites.min_cell_size": 1})
    plain = simulate(small_study, out_dir=tmp_path / "plain", report=False)
    secure_study = small_study.with_overrides(SECURE)
    secure = simulate(secure_study, out_dir=tmp_path / "secure", report=False)
    spec = secure_study.privacy.secagg
    bound = update_error_bound(Quantiser(spec.clipping_range, spec.quantization_range))
    for name, value in _model(tmp_path / "plain").items():
        # each round adds at most one bound; the next round trains from the nudged model
        assert (
            np.abs(_model(tmp_path / "secure")[name] - value).max()
            <= 4 * bound * small_study.rounds
        )
    for site, values in plain.summary["final"]["per_site"].items():
        assert secure.summary["final"]["per_site"][site]["auroc"] == pytest.approx(
            values["auroc"], abs=1e-4
        )
    # The coordinator's ledger says the study ran securely, each sum and who is in it.
    entries = _ledger(tmp_path / "secure")
    sums = [e.data for e in entries if e.kind == "secure-aggregation"]
    assert [(s["kind"], s["round"]) for s in sums] == [
        ("statistics", 0),
        ("model", 1),
        ("model", 2),
    ]
    assert all(s["contributors"] == ["site-01", "site-02", "site-03"] for s in sums)
    stages = {e.data["stage"] for e in entries if e.kind == "site-reply"}
    assert {records.SECAGG_SETUP, records.SECAGG_SHARE, records.SECAGG_UNMASK} <= stages
    assert {records.SECAGG_COLLECT_UPDATE, records.SECAGG_COLLECT_STATISTICS} <= stages
    # No site's own column sums or training loss reached the coordinator's files.
    metrics = pd.read_csv(tmp_path / "secure" / "metrics.csv")
    assert set(metrics.loc[metrics["split"] == "train", "site"]) == {"secure-sum"}
    for site in ("site-01", "site-02", "site-03"):
        ledger = tmp_path / "secure" / "governance" / "sites" / site / "ledger.jsonl"
        assert (
            main(
                [
                    "audit",
                    "crosscheck",
                    str(tmp_path / "secure" / "governance" / "coordinator.jsonl"),
                    str(ledger),
                ]
            )
            == 0
        )


def test_the_minimum_cell_size_applies_to_the_total_so_no_column_is_biased(small_study, tmp_path):
    """A binary column with few ones at two sites: plain FedAvg drops it there, SecAgg+ does not."""
    plain = simulate(small_study, out_dir=tmp_path / "plain", report=False).summary
    assert [d["column"] for d in plain["preprocessing"]["departures"]] == ["diabetes"]
    secure = simulate(small_study.with_overrides(SECURE), out_dir=tmp_path / "secure", report=False)
    assert secure.summary["preprocessing"]["departures"] == []
    stats = [e.data for e in _ledger(tmp_path / "secure") if e.data.get("kind") == "statistics"]
    assert stats[0]["contributors"] == ["site-01", "site-02", "site-03"]


class DropAt:
    """The real site ClientApp, except that some sites crash at one stage of one round."""

    def __init__(self, partitions: set[int], message_type: str, server_round: int) -> None:
        self.partitions, self.message_type, self.round = partitions, message_type, server_round

    def __call__(self, message, context):
        config = message.content[records.CONFIG]
        if (
            context.node_config["partition-id"] in self.partitions
            and message.metadata.message_type == self.message_type
            and int(config.get(records.ROUND, 0)) == self.round
        ):
            raise RuntimeError("power cut after sharing its keys")
        return client_app.app(message, context)


def _run(client, study, out_dir) -> None:
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out_dir)}
    run_inprocess(config, 3, client=client)


def test_a_site_that_drops_after_key_sharing_is_recovered_from_the_shares(small_study, tmp_path):
    small_study = small_study.with_overrides({"sites.min_cell_size": 1})  # same statistics
    study = small_study.with_overrides({**SECURE, "federation.min_sites": 2})
    _run(DropAt({2}, records.SECAGG_COLLECT_UPDATE, 1), study, tmp_path / "secure")
    rounds = pd.read_csv(tmp_path / "secure" / "rounds.csv", keep_default_na=False)
    assert rounds["trained"].tolist() == ["site-01 site-02", "site-01 site-02 site-03"]
    assert "site-03: collect masked vectors: " in rounds["failed"][0]
    (first, *_) = [e.data for e in _ledger(tmp_path / "secure") if e.data.get("kind") == "model"]
    assert first["recovered_after_dropout"] == ["site-03"]
    # The same model as plain FedAvg in which site-03 failed round 1's training.
    plain = small_study.with_overrides({"federation.min_sites": 2})
    _run(faulty_client(2, 1, RuntimeError("power cut")), plain, tmp_path / "plain")
    spec = study.privacy.secagg
    bound = update_error_bound(Quantiser(spec.clipping_range, spec.quantization_range))
    for name, value in _model(tmp_path / "plain").items():
        assert np.abs(_model(tmp_path / "secure")[name] - value).max() <= 4 * bound * study.rounds


def test_fewer_survivors_than_the_threshold_fail_the_round_with_the_reason(small_study, tmp_path):
    study = small_study.with_overrides({**SECURE, "federation.min_sites": 1})
    with pytest.raises(
        StudyRunError,
        match=r"round 1: secure aggregation failed at the collect masked vectors stage: 1 sites "
        r"remained, fewer than the threshold of 2",
    ):
        _run(DropAt({1, 2}, records.SECAGG_COLLECT_UPDATE, 1), study, tmp_path / "run")
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv", keep_default_na=False)
    assert rounds["round"].tolist() == [1] and rounds["trained"][0] == ""
    assert (
        "secure-sum: secure aggregation failed at the collect masked vectors stage"
        in rounds["failed"][0]
    )
    last = _ledger(tmp_path / "run")[-1]
    assert last.kind == "study-failed" and "fewer than the threshold of 2" in last.data["error"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"strategy.name": "krum"}, r"strategy 'krum' needs them one by one \(Krum scores"),
        ({"strategy.name": "bulyan"}, r"strategy 'bulyan' needs them one by one"),
        ({"strategy.name": "fedmedian"}, r"'fedmedian' needs them one by one"),
        ({"strategy.name": "fedtrimmedavg"}, r"'fedtrimmedavg' needs them one by one"),
        ({"strategy.name": "scaffold"}, r"SCAFFOLD's server control variate"),
        ({"strategy.name": "qfedavg"}, r"q-FedAvg weights each site by its own training loss"),
        (
            {"privacy.mode": "client-dp", "privacy.epsilon": 3.0},
            r"cannot run with privacy.mode = 'client-dp'",
        ),
        (
            {"privacy.secagg.reconstruction_threshold": 5},
            r"reconstruction_threshold = 5 is larger than the 4 sites in the study",
        ),
        (
            {"privacy.secagg.reconstruction_threshold": 2},
            r"threshold = 2 is not more than half of the 4 shares",
        ),
        ({"privacy.secagg.num_shares": 4}, r"num_shares = 4 must be odd"),
        ({"data.synthetic.sites": 2}, r"needs at least 3 sites; 2 sites in the study"),
    ],
)
def test_settings_that_cannot_run_on_sums_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_study(None).with_overrides({**SECURE, **overrides})


def test_the_cli_refuses_a_robust_strategy_with_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "simulate",
        "--set",
        "privacy.secure_aggregation=secaggplus",
        "--set",
        "strategy.name=krum",
    ]
    assert main([*args, "--out", str(out)]) == 2
    assert "privacy.secure_aggregation = 'secaggplus'" in capsys.readouterr().err
    assert not out.exists()


def test_a_site_requiring_secure_aggregation_refuses_a_study_without_it(task, small_study, gate):  # noqa: F811
    message, context, run, fab = task
    strict = SiteGate(gate.folder, require_secure_aggregation=True)
    decision = strict.decide(message, context, run, fab)
    assert not decision.allowed
    assert "require_secure_aggregation = true" in decision.refusal
    assert "privacy.secure_aggregation = 'none'" in decision.refusal
    assert load_entries(gate.folder.folder / "ledger.jsonl")[-1].kind == "refusal"


def test_the_egress_guard_lets_out_only_the_declared_masked_vector(small_study):
    study = small_study.with_overrides(SECURE)
    shapes = {name: spec[0] for name, spec in model_array_specs(study).items()}
    arrays = {f"update:{n}": np.zeros(s, dtype=np.int64) for n, s in shapes.items()}
    arrays |= {"secagg-weight": np.zeros(1, np.int64), "secagg-loss": np.zeros(1, np.int64)}
    good = RecordDict(
        {records.MASKED: records.to_array_record(arrays), records.METRICS: MetricRecord()}
    )
    assert guard_reply(records.SECAGG_COLLECT_UPDATE, good, study, "site-01", 10) is good
    leaking = RecordDict(
        {
            records.MASKED: ArrayRecord(
                {**good[records.MASKED], "rows": Array(np.ones(3, np.int64))}
            ),
            records.METRICS: MetricRecord({records.TRAIN_LOSS: 0.4}),
        }
    )
    with pytest.raises(EgressBlocked) as blocked:
        guard_reply(records.SECAGG_COLLECT_UPDATE, leaking, study, "site-01", 10)
    assert {p.category for p in blocked.value.problems} == {
        "masked vector of undeclared names, shapes or dtype",
        "unexpected metric",
    }
    clear = RecordDict(
        {
            records.SITE: ConfigRecord({"name": "site-01"}),
            records.COUNTS: MetricRecord({"n-train": 140}),
            records.SUMS: MetricRecord({"count": [1.0], "sum": [2.0], "sum-of-squares": [4.0]}),
        }
    )
    with pytest.raises(EgressBlocked, match="column sums in clear under secure aggregation"):
        guard_reply("query", clear, study, "site-01", 10)
