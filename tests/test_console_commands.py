"""`server check`, `bundle hash`, and the progress events of `simulate --json`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from lhs_federated.cli import main
from lhs_federated.deploy.app_bundle import bundle_hash
from lhs_federated.deploy.loopback import build_loopback
from lhs_federated.results.progress import EVENTS_FILE, read_events


def test_bundle_hash_prints_the_code_hash_sites_approve(capsys):
    assert main(["bundle", "hash"]) == 0
    assert capsys.readouterr().out.strip() == bundle_hash()


def test_server_check_passes_then_names_the_taken_port(tmp_path, capsys):
    table = tmp_path / "site-01.csv"
    table.write_text("age,outcome\n50,1\n")
    consortium = build_loopback(tmp_path / "c", {"site-01": table})
    config = consortium.server.path
    assert main(["server", "check", "--config", config]) == 0
    assert "certificate valid" in capsys.readouterr().out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", consortium.server.server.port))
        taken.listen()
        assert main(["server", "check", "--config", config]) == 2
    assert "already in use" in capsys.readouterr().err


def test_simulate_json_prints_events_one_per_line_and_writes_them(tmp_path, small_study):
    study = tmp_path / "study.toml"
    study.write_text(small_study.to_toml())
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lhs_federated", "simulate", str(study), "--json"]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    kinds = [line["kind"] for line in lines]
    # Two rounds, the analysis and report steps, the ledger sealed over the results, the result.
    assert kinds[:2] == ["round", "round"] and kinds[-2:] == ["ledger-sealed", "result"]
    assert set(kinds[2:-2]) == {"step"} and len(kinds) > 5
    assert lines[1]["data"]["round"] == 2 and lines[1]["data"]["sites_total"] == 3
    assert all(set(line) == {"at", "kind", "message", "data"} for line in lines)  # one shape
    assert lines[-1]["data"]["out_dir"] == str(out)
    written, _ = read_events(out / EVENTS_FILE)
    assert [e.to_dict() for e in written] == lines[:-1]
    # The run's audit is intact although the events file grew after the study closed.
    assert main(["audit", "report", str(out)]) == 0


def test_simulate_log_lines_print_once_above_the_bar(tmp_path, small_study):
    study = tmp_path / "study.toml"
    study.write_text(small_study.to_toml())
    command = [sys.executable, "-m", "lhs_federated", "simulate", str(study)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "run")], capture_output=True, text=True, check=True
    )
    output = done.stdout + done.stderr
    assert output.count("writing report.html") == 1
    assert "INFO:small: round" not in output  # the round line is the bar's, not a log line


def test_python_api_prints_each_flower_line_once(tmp_path, small_study):
    """A notebook that configured logging gets Flower's lines once, not twice."""
    study = tmp_path / "study.toml"
    study.write_text(small_study.with_overrides({"baselines.enabled": False}).to_toml())
    code = (
        "import logging, sys\nlogging.basicConfig(level=logging.INFO)\n"
        "from lhs_federated import load_study, simulate\n"
        f"simulate(load_study({str(study)!r}), out_dir={str(tmp_path / 'run')!r}, report=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    output = done.stdout + done.stderr
    assert output.count("configure_train: Sampled 3 nodes") == small_study.rounds, output
    assert output.count("round 2/2, 3/3 sites trained") == 1  # our own progress line, once


def test_demo_consortium_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "consortium", "--dir", str(tmp_path)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    assert main(["demo", "consortium", "--dir", str(tmp_path), "--stop"]) == 2
    assert "holds no consortium" in capsys.readouterr().err
