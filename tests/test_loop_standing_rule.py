"""The standing rule "monitoring studies of releases I approved", at a site's gate (no processes).

The gate reads the site's own signed ledger: a monitoring study is answered
without its own approval only for a model the site evaluated under a study it
approved; a forged model, a model swapped in the message, other message
kinds, a revoked approval and a rule left off are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.config import get_fused_config_from_fab
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from lhs_federated import load_study
from lhs_federated.apps import records
from lhs_federated.apps.site_governance import record_task
from lhs_federated.deploy.app_bundle import build_bundle
from lhs_federated.deploy.gate import SiteGate
from lhs_federated.deploy.standing_approval import STANDING_APPROVAL
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.governance.verify import load_entries
from lhs_federated.loop.monitor import monitoring_study

MODEL = {"linear.weight": np.arange(4, dtype=np.float32).reshape(1, 4), "linear.bias": np.ones(1)}
FORGED = {**MODEL, "linear.bias": np.full(1, 1.5)}


@pytest.fixture
def site(tmp_path):
    """A site that approved a dated study and evaluated ``MODEL`` under it."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 8, 0, 1
    study = load_study(None).with_overrides(
        {"name": "trained", "rounds": 2, "data.synthetic.sites": 2,
         "data.synthetic.periods": 3, "data.train_periods": ["2020Q1"]}
    )  # fmt: skip
    fab_bytes = build_bundle()
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    folder = SiteFolder.init(tmp_path / "governance", "site-01")
    approval = folder.approve(study.hash, fab.hash_str, study_name=study.name, by="steward",
                              reason="IRB 12")  # fmt: skip
    evaluated = Message(
        RecordDict({records.ARRAYS: records.to_array_record(MODEL),
                    records.CONFIG: records.study_config(study)}), 1, "evaluate",
    )  # fmt: skip
    record_task(folder, evaluated, Message(RecordDict(), reply_to=evaluated), approval=approval)
    return study, folder, fab


def monitoring(study, fab, named: dict, kind: str, sent: dict | None = None):
    """A monitoring run's message, context and run, as the launcher receives them."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 9, 0, 1
    watched = monitoring_study(study, ["2020Q3"], name="trained-monitor")
    task = {"kind": "monitor", "model": "/registry/r/v1",
            "release": {"name": "r@v1", "arrays_hash": records.hash_arrays(named)}}  # fmt: skip
    run = dataclasses.replace(
        Run.create_empty(9), fab_hash=fab.hash_str,
        override_config={"study": watched.to_json(), "loop-task": json.dumps(task)},
    )  # fmt: skip
    context = Context(9, 1, {}, RecordDict(), get_fused_config_from_fab(fab.content, run))
    content = RecordDict({records.CONFIG: records.study_config(watched)})
    if sent is not None:
        content[records.ARRAYS] = records.to_array_record(sent)
    return Message(content, 1, kind), context, run


def test_the_rule_covers_monitoring_of_a_model_the_site_evaluated_under_approval(site):
    study, folder, fab = site
    gate = SiteGate(folder, monitoring_rule=True)
    secure_drift_sum = [(stage, None) for stage in (records.SECAGG_SETUP, records.SECAGG_SHARE,
                        records.SECAGG_COLLECT_STATISTICS, records.SECAGG_UNMASK)]  # fmt: skip
    for kind, sent in (("query", None), (records.MONITOR, MODEL), *secure_drift_sum):
        decision = gate.decide(*monitoring(study, fab, MODEL, kind, sent), fab)
        assert decision.allowed, decision.refusal
        assert decision.approval.approved_by == "standing rule monitoring_of_approved_releases"
        record = load_entries(folder.folder / "ledger.jsonl")[-1]
        assert record.kind == STANDING_APPROVAL and record.hash == decision.approval.record_hash
        assert record.data["evaluated_under"]["study_hash"] == study.hash


@pytest.mark.parametrize(
    ("named", "kind", "sent", "why"),
    [
        (FORGED, "query", None, "not a model this site evaluated"),
        (FORGED, records.MONITOR, FORGED, "not a model this site evaluated"),
        (MODEL, records.MONITOR, FORGED, "brings model"),
        (MODEL, "train", MODEL, "covers monitoring messages"),
        (MODEL, records.SECAGG_COLLECT_UPDATE, MODEL, "covers monitoring messages"),
    ],
)
def test_the_rule_refuses_what_the_site_never_approved(site, named, kind, sent, why):
    study, folder, fab = site
    decision = SiteGate(folder, monitoring_rule=True).decide(
        *monitoring(study, fab, named, kind, sent), fab
    )
    assert not decision.allowed and why in decision.refusal
    assert load_entries(folder.folder / "ledger.jsonl")[-1].kind == "refusal"


def test_no_rule_or_a_revoked_approval_means_no_monitoring(site):
    study, folder, fab = site
    args = (*monitoring(study, fab, MODEL, records.MONITOR, MODEL), fab)
    assert "is not approved at this site" in SiteGate(folder).decide(*args).refusal
    folder.revoke(study.hash, by="steward", reason="withdrawn")
    refusal = SiteGate(folder, monitoring_rule=True).decide(*args).refusal
    assert "not a model this site evaluated" in refusal
