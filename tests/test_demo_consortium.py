"""`lhs-fed demo consortium`: the deploy kits' "try it first" step, run as a new user would.

It starts real processes (a SuperLink, two SuperNodes and their gated
launchers) on 127.0.0.1; the test then runs the commands it printed, in
order: each site approves the study, the coordinator runs it (following the
coordinator's own progress events), and ``--stop`` ends everything. The
commands run in this process (``main``), as the console script would run them.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from lhs_federated.cli import main

pytestmark = pytest.mark.slow


def lhs_fed(capsys, command: str, *extra: str) -> tuple[int, str]:
    args = shlex.split(command)
    assert args[0] == "lhs-fed"
    capsys.readouterr()
    code = main([*args[1:], *extra])
    return code, capsys.readouterr().out


def json_lines(result: tuple[int, str]) -> list[dict]:
    code, out = result
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]  # every line is JSON


def test_demo_consortium_starts_runs_what_it_prints_and_stops(tmp_path, capsys):
    root = tmp_path / "demo"
    start = f"lhs-fed demo consortium --sites 2 --dir {root}"
    try:
        events = json_lines(lhs_fed(capsys, start, "--json"))
        started = [e["data"] for e in events if e["kind"] == "started"]
        assert started[0]["process"] == "coordinator"
        assert sorted(e["sites_up"] for e in started[1:]) == [1, 2]
        result = events[-1]
        assert result["kind"] == "result" and set(result) == {"at", "kind", "message", "data"}
        assert sorted(result["data"]["sites"]) == ["site-01", "site-02"]
        *approve, run, status, _dashboard, _simulate, stop = result["data"]["next"]
        assert lhs_fed(capsys, start)[0] == 2  # already running: said, nothing started twice

        for command in approve:
            assert lhs_fed(capsys, command)[0] == 0
        progress = json_lines(lhs_fed(capsys, run, "--json"))
        rounds = [e["data"] for e in progress if e["kind"] == "round"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["sites_done"] == r["sites_total"] == 2 for r in rounds)
        assert progress[-1]["kind"] == "result"
        assert (tmp_path / progress[-1]["data"]["summary"]).is_file()
        code, table = lhs_fed(capsys, status)
        assert code == 0 and table.count("online") >= 2
        # The coordinator said what it waited for, with counts, in its log.
        log = (root / "server" / "state" / "logs" / "server.log").read_text()
        assert "2/2 sites registered" in log and "2/2 sites online: site-01, site-02" in log

        stopped = json_lines(lhs_fed(capsys, stop, "--json"))[-1]
        assert sorted(stopped["data"]["stopped"]) == ["coordinator", "site-01", "site-02"]
    finally:
        main(["demo", "consortium", "--dir", str(root), "--stop"])
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", f"processes left running: {leftovers}"
