"""The egress guard: leaks are blocked before they leave a site; small counts are suppressed."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from lhs_federated import StudyRunError
from lhs_federated.apps import client_app, records, server_app
from lhs_federated.apps.client_app import site_errors_mod
from lhs_federated.apps.client_site import resolve_site
from lhs_federated.apps.egress import egress_guard_mod, guard_reply
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.privacy.egress import EgressBlocked


def leak_row(content: RecordDict, data) -> None:
    row = [float(v) for v in data.train.features[0]]
    content["patient"] = MetricRecord({"row": row})


def leak_array(content: RecordDict, data) -> None:
    content[records.ARRAYS]["leak"] = Array(data.train.features[:1].astype(np.float32))


def leak_metric(content: RecordDict, data) -> None:
    content[records.METRICS]["first-age"] = float(data.train.features[0, 0])


def leak_list_metric(content: RecordDict, data) -> None:
    content[records.METRICS][records.TRAIN_LOSS] = [float(v) for v in data.train.features[0]]


def wrong_dtype(content: RecordDict, data) -> None:
    arrays = content[records.ARRAYS]
    content[records.ARRAYS] = ArrayRecord(
        {name: Array(a.numpy().astype(np.float64)) for name, a in arrays.items()}
    )


def leaky_client(stage: str, leak) -> ClientApp:
    """The real ClientApp behind the guard, except that one stage's reply leaks."""
    app = ClientApp(mods=[site_errors_mod, egress_guard_mod])

    def wrapped(handler):
        def handle(message: Message, context: Context) -> Message:
            reply = handler(message, context)
            if message.metadata.message_type == stage:
                study = records.study_from_config(message.content[records.CONFIG])
                leak(reply.content, resolve_site(study, context).data)
            return reply

        return handle

    app.query()(wrapped(client_app.describe))
    app.train()(wrapped(client_app.train))
    app.evaluate()(wrapped(client_app.evaluate))
    return app


@pytest.mark.parametrize(
    ("stage", "leak", "match"),
    [
        (MessageType.TRAIN, leak_row, r"train reply \(1 x unexpected record\)"),
        (MessageType.TRAIN, leak_array, r"train reply \(1 x unexpected array\)"),
        (MessageType.TRAIN, leak_metric, r"train reply \(1 x unexpected metric\)"),
        (MessageType.TRAIN, leak_list_metric, r"train reply \(1 x metric that is not one number"),
        (MessageType.TRAIN, wrong_dtype, r"train reply \(2 x array of the wrong dtype\)"),
        (MessageType.QUERY, leak_row, r"query reply \(1 x unexpected record\)"),
    ],
)
def test_leaks_are_blocked_and_logged_at_the_site(
    tmp_path, small_study, caplog, stage, leak, match
):
    config = {server_app.STUDY_KEY: small_study.to_json(), server_app.OUT_DIR_KEY: str(tmp_path)}
    with (
        caplog.at_level(logging.WARNING, logger="lhs_federated.egress"),
        pytest.raises(StudyRunError, match=match) as raised,
    ):
        run_inprocess(config, 3, client=leaky_client(stage, leak))
    assert "did not leave the site" in str(raised.value)
    blocked = [r.getMessage() for r in caplog.records if r.name == "lhs_federated.egress"]
    assert blocked and all("blocked" in line for line in blocked)
    if leak is leak_array:  # the site's log names the array; the coordinator is not told
        assert "array 'leak'" in " ".join(blocked) and "'leak'" not in str(raised.value)


def test_a_blocked_evaluation_is_recorded_and_the_run_goes_on(tmp_path, small_study):
    import pandas as pd

    config = {server_app.STUDY_KEY: small_study.to_json(), server_app.OUT_DIR_KEY: str(tmp_path)}
    run_inprocess(config, 3, client=leaky_client(MessageType.EVALUATE, leak_metric))
    failed = pd.read_csv(tmp_path / "rounds.csv")["failed"]
    assert failed.str.contains(
        r"site-01: evaluation failed: site 'site-01': the egress guard blocked its evaluate "
        r"reply \(1 x unexpected metric\)"
    ).all()


def train_content(study, **metrics) -> RecordDict:
    from lhs_federated.learning.models import build_model
    from lhs_federated.learning.parameters import get_arrays
    from lhs_federated.learning.site import n_features

    arrays = get_arrays(build_model(study.model, n_features(study), seed=study.seed))
    values = {records.NUM_EXAMPLES: 40, records.TRAIN_LOSS: 0.5, **metrics}
    return RecordDict(
        {records.ARRAYS: records.to_array_record(arrays), records.METRICS: MetricRecord(values)}
    )


def test_a_well_formed_train_reply_passes_unchanged(small_study):
    content = train_content(small_study)
    out = guard_reply(MessageType.TRAIN, content, small_study, "site-01", 10)
    assert dict(out[records.METRICS]) == dict(content[records.METRICS])
    assert list(out[records.ARRAYS]) == ["linear.weight", "linear.bias"]


def test_an_update_from_fewer_rows_than_the_cell_size_is_blocked(small_study):
    with pytest.raises(EgressBlocked, match="update from fewer rows than the minimum cell size"):
        guard_reply(MessageType.TRAIN, train_content(small_study), small_study, "site-01", 50)


def test_privacy_metrics_pass_only_for_studies_that_send_them(small_study):
    dp = small_study.with_overrides({"privacy.mode": "sample-dp", "privacy.epsilon": 1.0})
    content = train_content(dp, **{records.DP_EPSILON: 0.4, records.TRAIN_LOSS: float("nan")})
    guard_reply(MessageType.TRAIN, content, dp, "site-01", 10)
    with pytest.raises(EgressBlocked, match="unexpected metric"):
        guard_reply(
            MessageType.TRAIN,
            train_content(small_study, **{records.DP_EPSILON: 0.4}),
            small_study,
            "site-01",
            10,
        )


def test_an_unnoised_training_loss_is_blocked_under_sample_dp(small_study):
    dp = small_study.with_overrides({"privacy.mode": "sample-dp", "privacy.epsilon": 1.0})
    content = train_content(dp, **{records.DP_EPSILON: 0.4})
    with pytest.raises(EgressBlocked, match="training loss outside the DP guarantee"):
        guard_reply(MessageType.TRAIN, content, dp, "site-01", 10)
    content[records.METRICS][records.TRAIN_LOSS] = float("nan")
    guard_reply(MessageType.TRAIN, content, dp, "site-01", 10)


def test_small_query_counts_are_withheld(small_study):
    content = RecordDict(
        {
            records.SITE: ConfigRecord({"name": "site-01"}),
            records.COUNTS: MetricRecord({"n-train": 140, "positives-train": 7}),
        }
    )
    out = guard_reply(MessageType.QUERY, content, small_study, "site-01", 10)
    assert dict(out[records.COUNTS]) == {"n-train": 140}
    content[records.SITE] = ConfigRecord({"name": "site-02"})
    with pytest.raises(EgressBlocked, match="site record other than the site's name"):
        guard_reply(MessageType.QUERY, content, small_study, "site-01", 10)


def evaluation(n: int, prevalence: float, reason: str = "") -> RecordDict:
    from lhs_federated.learning.metrics import METRIC_NAMES

    values = dict.fromkeys(METRIC_NAMES, 0.7)
    values.update(n=float(n), prevalence=prevalence)
    undefined = {"auroc": reason} if reason else {}
    metrics = MetricRecord({**values, records.NUM_EXAMPLES: n})
    return RecordDict({records.METRICS: metrics, records.UNDEFINED: ConfigRecord(undefined)})


def test_an_evaluation_on_fewer_rows_than_the_cell_size_is_withheld(small_study):
    out = guard_reply(MessageType.EVALUATE, evaluation(8, 0.5), small_study, "site-01", 10)
    metrics, reasons = out[records.METRICS], out[records.UNDEFINED]
    assert metrics[records.NUM_EXAMPLES] == 0 and math.isnan(metrics["n"])
    assert math.isnan(metrics["auroc"])
    assert reasons["auroc"].startswith("withheld: fewer test rows than the site's minimum")


@pytest.mark.parametrize(("prevalence", "withheld"), [(0.05, True), (0.5, False), (0.97, True)])
def test_a_prevalence_revealing_few_cases_is_withheld(small_study, prevalence, withheld):
    out = guard_reply(MessageType.EVALUATE, evaluation(100, prevalence), small_study, "s", 10)
    assert math.isnan(out[records.METRICS]["prevalence"]) == withheld
    assert out[records.METRICS]["auroc"] == 0.7


def test_free_text_reasons_are_capped(small_study):
    content = evaluation(100, 0.5, reason="x" * (records.UNDEFINED_REASON_MAX + 1))
    with pytest.raises(EgressBlocked, match="reason that is not short text"):
        guard_reply(MessageType.EVALUATE, content, small_study, "site-01", 10)
