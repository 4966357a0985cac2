"""The learning loop in deployment: a coordinator and three sites on loopback, real processes.

The same loop driver as ``test_loop_e2e`` with the deployed engine: each step
is a study submitted to the SuperLink. The sites approve the training and
update studies and set the standing rule for monitoring
(``[approval] monitoring_of_approved_releases``), which each site checks
against its own ledger; a monitoring study of a model no site approved is
refused by every site.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from lhs_federated.apps.records import hash_arrays
from lhs_federated.cli import main
from lhs_federated.data.contract import builtin_contract_text
from lhs_federated.data.io import write_table
from lhs_federated.data.synthetic import DriftEvent, SyntheticCohort, generate_cohort
from lhs_federated.deploy.loop_engine import DeployedEngine
from lhs_federated.deploy.loopback import build_loopback
from lhs_federated.deploy.standing_approval import MODELS_EVALUATED, RULE, STANDING_APPROVAL
from lhs_federated.errors import StudyRunError
from lhs_federated.governance.verify import load_entries
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.loop.monitor import monitoring_study
from lhs_federated.loop.simulation import load_loop, run_loop
from lhs_federated.registry.store import Registry, ReleaseRef
from lhs_federated.study import Study, read_resolved_study

pytestmark = pytest.mark.slow

PERIODS = ["2020Q1", "2020Q2", "2020Q3", "2020Q4"]


def _loop_file(path: Path, data: Path) -> Path:
    path.write_text(
        f"""
[loop]
release = "cvd"
initial_periods = 2
update = "per-site"
update_on = "every-period"
update_sites = "all"
oracle = false
periods = {PERIODS!r}

[study]
name = "deployed-loop"
rounds = 2

[study.data]
source = "folder"
path = "{data}"

[study.federation]
round_timeout = 60.0
connect_timeout = 60.0

[study.training]
epochs = 2
learning_rate = 0.1

[study.baselines]
enabled = false
""",
        encoding="utf-8",
    )
    return path


def test_the_loop_in_deployment_with_the_standing_monitoring_rule(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cohort = SyntheticCohort(
        sites=3, rows_per_site=160, size_imbalance=0.2, prevalence_spread=0.0,
        measurement_offset=0.0, periods=len(PERIODS),
        drift=(DriftEvent(kind="assay-change", site="site-02", from_period=3, size=2.0),),
    )  # fmt: skip
    tables = {}
    for name, table in generate_cohort(cohort, seed=7).items():
        write_table(table, data / f"{name}.csv")
        tables[name] = data / f"{name}.csv"
    contract = builtin_contract_text("cardio-risk").replace(
        'extra_columns = "ignore"\n',
        'extra_columns = "ignore"\nindex_date = "index_date"\nperiod = "quarter"\n',
    )
    (data / "contract.toml").write_text(contract, encoding="utf-8")
    consortium = build_loopback(
        tmp_path / "deploy", tables,
        site_settings={"approval": {"monitoring_of_approved_releases": True}}, signing_key=True,
    )  # fmt: skip
    approved: list[Study] = []

    def approve(study: Study) -> None:
        """The sites' stewards approve training and update studies; monitoring goes by the rule."""
        if study.data.train_periods is not None:
            consortium.approve(study)
            approved.append(study)

    engine = DeployedEngine(consortium.server, approve=approve, timeout=600.0)
    consortium.start()
    try:
        loop = load_loop(_loop_file(tmp_path / "loop.toml", data), deployed=True)
        out = tmp_path / "loop"
        result = run_loop(loop, out, engine=engine)
        registry = Registry(out / "registry")

        # an adversarial coordinator: a monitoring study of a model no site ever evaluated
        v1 = registry.folder(ReleaseRef("cvd", "v1"))
        forged = tmp_path / "forged"
        (forged / "model").mkdir(parents=True)
        for item in v1.rglob("*"):
            if item.is_file():
                target = forged / item.relative_to(v1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(item.read_bytes())
        arrays = dict(np.load(v1 / "model" / "model.npz"))
        first = next(iter(arrays))
        arrays[first] = arrays[first] + 0.5
        np.savez(forged / "model" / "model.npz", **arrays)
        model = ReleasedModel.load(forged)
        probe = monitoring_study(read_resolved_study(v1 / "study.resolved.toml"), ["2020Q4"],
                                 name="cvd-monitor")  # fmt: skip
        with pytest.raises(StudyRunError, match="not a model this site evaluated"):
            engine.task(
                probe, tmp_path / "forged-run",
                {"kind": "monitor", "model": str(forged),
                 "release": {"name": "cvd@v1", "arrays_hash": hash_arrays(model.arrays)}},
            )  # fmt: skip
    finally:
        consortium.stop()
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"

    summary = result["summary"]
    assert summary["engine"] == "deployment" and summary["periods"] == PERIODS[2:]
    scores = result["scores"]
    assert {(r["period"], r["site"]) for r in scores} == {
        (p, s) for p in PERIODS[2:] for s in consortium.sites
    }
    decided = [e for e in result["events"] if e["kind"] == "release" and e.get("parent")]
    assert len(decided) == 1 and set(decided[0]["verdicts"]) == set(consortium.sites)
    for version in registry.versions("cvd"):
        assert main(["registry", "verify", f"cvd@{version}", "--registry", str(registry.root)]) == 0
    assert registry.manifest(ReleaseRef("cvd", "v2"))["parent"] == "cvd@v1"
    assert (out / "loop-report.html").is_file()
    # the stewards approved the training study and one update study, nothing else
    assert len({s.hash for s in approved}) == 2
    for name, site in consortium.sites.items():
        entries = load_entries(site.governance_dir / "ledger.jsonl")
        standing = {e.hash: e for e in entries if e.kind == STANDING_APPROVAL}
        assert standing and all(e.data["rule"] == RULE for e in standing.values()), name
        monitored = [
            e for e in entries
            if e.kind == "message-sent" and e.data["message_type"] == "evaluate.monitor"
            and e.data["approval"] in standing
        ]  # fmt: skip
        assert len(monitored) == 2, name  # one per monitored period, each under the rule
        assert all(e.data["status"] == "ok" for e in monitored), name
        assert any(e.kind == MODELS_EVALUATED for e in entries), name  # the gate's models
        refused = [e for e in entries if e.kind == "refusal"]
        assert any("not a model this site evaluated" in e.data["reason"] for e in refused), name
