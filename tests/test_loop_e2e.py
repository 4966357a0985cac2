"""The learning loop end to end in simulation: periods, alerts, updates, the gate, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lhs_federated.cli import main
from lhs_federated.governance.verify import load_entries
from lhs_federated.registry.store import Registry, ReleaseRef

LOOP = """
[loop]
release = "cvd"
initial_periods = 3
initial_recalibration = "logistic"
update = "per-site"

[study]
name = "tiny-loop"
rounds = 4

[study.data.synthetic]
sites = 3
rows_per_site = 260
size_imbalance = 0.2
prevalence_spread = 0.0
measurement_offset = 0.0
periods = 6

[[study.data.synthetic.drift]]
kind = "late-join"
site = "site-03"
from_period = 2

[[study.data.synthetic.drift]]
kind = "assay-change"
site = "site-02"
from_period = 5
size = 2.0

[study.training]
epochs = 2
learning_rate = 0.1

[study.baselines]
enabled = false

[study.governance]
preapproved = true
"""


def test_the_loop_over_six_periods(tmp_path: Path, capsys) -> None:
    loop_file = tmp_path / "loop.toml"
    loop_file.write_text(LOOP, encoding="utf-8")
    out = tmp_path / "loop"
    assert main(["loop", str(loop_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "period 3/3 2021Q2" in printed  # progress per monitored period
    scores = list(csv.DictReader((out / "loop-timeline.csv").open()))
    assert {r["model"] for r in scores} == {"frozen", "loop", "oracle"}
    assert len(scores) == 3 * 3 * 3  # 3 monitored periods x 3 sites x 3 models
    events = json.loads((out / "loop-events.json").read_text())
    # the assay change at site-02 from 2021Q1 is caught in its first period
    caught = [e for e in events if e["kind"] == "alert" and e["site"] == "site-02"]
    assert any(e["period"] == "2021Q1" for e in caught), caught
    assert not any(e["kind"] == "alert" and e["metric"].startswith("psi:total_chol")
                   and e["site"] != "site-02" for e in events)  # fmt: skip
    registry = Registry(out / "registry")
    decided = [e for e in events if e["kind"] == "release" and e.get("parent")]
    assert decided, "an alert led to an update and a gate decision"
    status = registry.status("cvd")
    for event in decided:
        version = event["release"].split("@")[1]
        assert status[version]["status"] in ("current", "rejected", "superseded")
        assert event["reason"] and set(event["verdicts"]) <= {"site-01", "site-02", "site-03"}
        manifest = registry.manifest(ReleaseRef("cvd", version))
        assert manifest["parent"] == event["parent"]  # lineage
    for version in registry.versions("cvd"):
        assert (
            main(["registry", "verify", f"cvd@{version}", "--registry", str(out / "registry")]) == 0
        )
    # each site's own ledger holds its gate replies (its verdicts), signed
    ledger = load_entries(out / "governance" / "sites" / "site-01" / "ledger.jsonl")
    types = [e.data.get("message_type") for e in ledger]
    assert "evaluate.gate" in types and "evaluate.monitor" in types
    # the first release: the trained model with its intercept and slope refitted on its rows
    first = json.loads((registry.folder(ReleaseRef("cvd", "v1")) / "card.json").read_text())
    assert first["update"]["method"] == "logistic" and first["parent"] is None
    assert first["update"]["periods"] == ["2020Q1", "2020Q2", "2020Q3"]
    html = (out / "loop-report.html").read_text()
    assert "data:image/png;base64," in html and "Frozen vs loop vs oracle" in html
