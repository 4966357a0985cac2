"""The dashboard's pages, the files it refuses to serve, its token, and bad input.

Pages are fetched through a real uvicorn server on loopback (raw HTTP, so
that ``../`` reaches the server unnormalised); the runs are real simulated
studies written by ``lhs-fed simulate``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import time

import pytest
from dashboard_server import Served, free_port
from markupsafe import escape

from lhs_federated.cli import main
from lhs_federated.dashboard import serve
from lhs_federated.dashboard.runs import STALE_AFTER, RunsFolder
from lhs_federated.governance.ledger import canonical_json

TOKEN = "a-token-of-twenty-four-chars"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_study):
    """A runs folder: a completed run whose smallest sites fall below the minimum cell size."""
    root = tmp_path_factory.mktemp("dashboard") / "runs"
    study = root.parent / "study.toml"
    study.write_text(small_study.with_overrides({"sites.min_cell_size": 40}).to_toml())
    assert main(["simulate", str(study), "--quiet", "--out", str(root / "done")]) == 0
    return root


@pytest.fixture(scope="module")
def served(runs):
    with Served(serve.prepare(runs, port=free_port())) as server:
        yield server


def test_pages_show_the_run_from_its_own_files(served, runs):
    response, index = served.get("/")
    assert response.status == 200
    assert "/runs/done" in index and "completed" in index
    response, page = served.get("/runs/done")
    assert response.status == 200
    rounds = list(csv.DictReader((runs / "done" / "rounds.csv").open()))
    assert f'round <span id="round-counter" data-field="round">{len(rounds)}</span>' in page
    assert "<svg" in page and "AUROC on the test splits" in page
    # A metric the run withheld shows its reason, never a number; counts are not shown.
    withheld = [
        row
        for row in csv.DictReader((runs / "done" / "metrics.csv").open())
        if row["split"] == "test" and row["reason"] and row["metric"] == "auroc"
    ]
    for row in withheld:
        assert str(escape(row["reason"])) in page
    sites = list(csv.DictReader((runs / "done" / "sites.csv").open()))
    assert any(row["n_test"].startswith("<") for row in sites)
    response, consortium = served.get("/consortium")
    assert response.status == 200
    assert all(row["site"] in consortium for row in sites)
    assert "no server.toml given" in consortium


def test_the_run_report_and_audit_are_served(served):
    response, report = served.get("/runs/done/files/report.html")
    assert response.status == 200 and "<html" in report.lower()
    response, audit = served.get("/runs/done/audit")
    assert response.status == 200
    assert "INTACT: every ledger verifies" in audit and "NOT INTACT" not in audit
    response, governance = served.get("/runs/done/audit/report")
    assert response.status == 200 and "Governance report" in governance


@pytest.mark.parametrize(
    "path",
    [
        "/runs/done/files/../../../etc/passwd",
        "/runs/done/files/..%2F..%2F..%2Fetc%2Fpasswd",
        "/runs/../../etc/files/passwd",
        "/runs/done/files//etc/passwd",
        "/runs/done/files/checkpoint.pkl",  # a pickle is not a result a reader opens
        "/runs/done/files/governance/../../done/../../study.toml",
        "/runs/done/files/nothing.csv",
        "/runs/nothing",
        "/static/../../runs.py",
    ],
)
def test_nothing_outside_the_served_folders(served, runs, path):
    response, body = served.get(path)
    assert response.status == 404, body
    assert "root:" not in body and "name = " not in body


def test_a_link_out_of_a_run_folder_is_refused(served, runs, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("patient,diagnosis\n")
    (runs / "done" / "link.csv").symlink_to(secret)
    try:
        response, body = served.get("/runs/done/files/link.csv")
    finally:
        (runs / "done" / "link.csv").unlink()
    assert response.status == 404 and "patient" not in body


def test_a_host_name_other_than_loopback_is_refused(served):
    response, _ = served.get("/", headers={"Host": "attacker.example"})
    assert response.status == 400


def test_beyond_loopback_every_request_needs_the_token(runs):
    settings = serve.prepare(runs, port=free_port(), token=TOKEN)
    with Served(settings) as server:
        assert server.get("/")[0].status == 401
        response, body = server.get("/?token=wrong-token-of-some-length")
        assert response.status == 401 and "wrong token" in body
        response, _ = server.get(f"/?token={TOKEN}")
        assert response.status == 200
        cookie = response.getheader("set-cookie").split(";")[0]
        assert server.get("/runs/done", headers={"Cookie": cookie})[0].status == 200
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert server.get("/runs/done/stream", headers=headers)[0].status == 200
        assert server.get("/runs/done/files/../../x", headers=headers)[0].status == 404
    generated = serve.prepare(runs, host="0.0.0.0", port=free_port())
    assert generated.token and len(generated.token) >= 24
    assert generated.url.endswith(f"?token={generated.token}")


def test_the_live_stream_sends_progress_then_done(served):
    response, body = served.get("/runs/done/stream")
    assert response.getheader("content-type").startswith("text/event-stream")
    events = [block for block in body.split("\n\n") if block.startswith("event:")]
    assert events[0].startswith("event: progress")
    progress = json.loads(events[0].split("data: ", 1)[1])
    assert progress["status"] == "completed" and progress["round"] == progress["rounds"] == 2
    assert events[-1].startswith("event: done")


def test_a_run_folder_half_written_by_a_crash(served, runs):
    crashed = runs / "crashed"
    shutil.copytree(runs / "done", crashed)
    (crashed / "summary.json").unlink()
    rounds = (crashed / "rounds.csv").read_text()
    (crashed / "rounds.csv").write_text(rounds[: rounds.rindex("\n") - 5])  # cut mid-row
    metrics = (crashed / "metrics.csv").read_text()
    (crashed / "metrics.csv").write_text(metrics[:-7])
    (crashed / "events.jsonl").write_text('{"kind": "round", "message": "round 1 of 2"}\n{"ki')
    old = time.time() - STALE_AFTER - 60
    for path in crashed.rglob("*"):
        os.utime(path, (old, old))
    response, page = served.get("/runs/crashed")
    assert response.status == 200
    assert "stopped" in page and "a crash?" in page
    assert "rounds.csv ends in the middle of a row" in page
    assert 'round <span id="round-counter" data-field="round">1</span>' in page
    assert "round 1 of 2" in page  # the events file's complete line
    (crashed / "failure.json").write_text("{not json")
    response, page = served.get("/runs/crashed")
    assert response.status == 200 and "failure.json is not valid JSON" in page
    response, audit = served.get("/runs/crashed/audit")
    assert response.status == 200 and "NOT INTACT" in audit


def test_a_tampered_ledger_is_flagged_on_the_audit_page(served, runs):
    tampered = runs / "tampered"
    shutil.copytree(runs / "done", tampered)
    ledger = tampered / "governance" / "coordinator.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[7])
    record["data"]["examples"] = 10_000
    lines[7] = canonical_json(record) + b"\n"
    ledger.write_bytes(b"".join(lines))
    response, audit = served.get("/runs/tampered/audit")
    assert response.status == 200
    assert "NOT INTACT" in audit and "modified: its content no longer matches its hash" in audit


def test_bad_input_at_the_command_line_exits_2(runs, tmp_path, capsys):
    assert main(["dashboard", "--runs", str(tmp_path / "none")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err
    assert main(["dashboard", "--runs", str(runs), "--token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--runs", str(runs), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
    assert main(["dashboard", "--server", str(tmp_path / "server.toml")]) == 2


def test_runs_folder_lists_nested_runs_and_refuses_escapes(runs):
    folder = RunsFolder(runs)
    assert "done" in folder.run_ids()
    with pytest.raises(Exception, match="no run"):
        folder.run_dir("../" + runs.name + "/done/..")


def test_consortium_page_shows_the_approvals_a_site_holds_and_its_budget(runs, tmp_path, capsys):
    from lhs_federated.deploy.loopback import build_loopback

    table = tmp_path / "site-01.csv"
    table.write_text("age,outcome\n50,1\n")
    consortium = build_loopback(tmp_path / "c", {"site-01": table, "site-02": table})
    study = runs.parent / "study.toml"
    approve = ["site", "approve", str(study), "--deployment", "--reason", "IRB 7"]
    folder = consortium.sites["site-01"].governance_dir
    assert main([*approve, "--site-folder", str(folder)]) == 0
    sites = [consortium.sites[name].path for name in ("site-01", "site-02")]
    settings = serve.prepare(runs, port=free_port(), site_configs=sites)
    with Served(settings) as server:
        response, page = server.get("/consortium")
    assert response.status == 200
    rows = {n: page.split(f"<tr><td>{n}</td>")[1].split("</tr>")[0] for n in ("site-01", "site-02")}
    assert "small" in rows["site-01"] and "by " in rows["site-01"]  # from the site's registry
    assert "none in force" in rows["site-02"]
    # No DP study ran at these sites: nothing spent, the whole site.toml budget left.
    assert '<span class="budget">0.00 / 10.00</span>' in rows["site-01"]
    bad = tmp_path / "missing" / "site.toml"
    assert main(["dashboard", "--runs", str(runs), "--site", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
