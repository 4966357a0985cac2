"""What the CLI prints of user text reaches the terminal as written.

Rich reads ``[data]`` as markup and prints nothing for it, so "unknown key
'x' in [data]" became "... in ." and the strategies table's title
"strategies ( name, and )". Every path that prints an error or a finding is
run here with a bracketed name in the text.
"""

from __future__ import annotations

import pytest
from exports import CONTRACT, clinical_table, european, plain_csv
from faulty import faulty_client, run_with

from lhs_federated.cli import main
from lhs_federated.cli.progress_display import progress_display
from lhs_federated.cli.simulate import console
from lhs_federated.errors import SiteRefusal, StudyRunError
from lhs_federated.results.progress import RoundProgress, report_progress


def words(text: str) -> str:
    """Terminal output as one line of words (table borders and wrapping removed)."""
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two sites' ';'-separated exports and their contract."""
    folder = tmp_path_factory.mktemp("exported")
    (folder / "contract.toml").write_text(CONTRACT)
    for k, name in enumerate(("north", "south")):
        european(clinical_table(60, seed=k), folder / f"{name}.csv")
    return folder


def test_errors_print_bracketed_names(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--set", "data.bogus=1"]) == 2
    assert "unknown key 'data.bogus' in [data]." in words(capsys.readouterr().err)
    server = tmp_path / "server.toml"
    server.write_text("[tls]\ninsecure = true\nport = 1\n")
    assert main(["server", "status", "--config", str(server)]) == 2
    assert "unknown key 'tls.port' in [tls]." in words(capsys.readouterr().err)
    args = ["simulate", "--set", "data.source=folder", "--set", f"data.path={exported}"]
    assert main([*args, "--set", "data.csv_separator=,", "--out", "r"]) == 2
    err = words(capsys.readouterr().err)
    assert 'set `[data] csv_separator = ";"` (or "auto")' in err
    assert err.count(str(exported / "north.csv")) == 1  # each file named once
    assert err.startswith("error: 2 of the 2 site files cannot be used")


def test_strategies_title_keeps_its_tables(capsys):
    assert main(["strategies"]) == 0
    assert "strategies ([strategy] name, and [strategy.params])" in capsys.readouterr().out


def test_validate_prints_bracketed_columns(tmp_path, capsys):
    table = clinical_table(40, seed=2).rename(columns={"dx_00": "[dx_00]"})
    path = plain_csv(table, tmp_path / "site.csv")
    (tmp_path / "c.toml").write_text(CONTRACT)
    assert main(["data", "validate", "--contract", str(tmp_path / "c.toml"), str(path)]) == 2
    out = words(capsys.readouterr().out)
    assert "did you mean '[dx_00]' for 'dx_00'?" in out
    assert "columns not in the contract" in out


@pytest.mark.parametrize("mode", ["bar", "lines"])
def test_progress_prints_bracketed_reasons(mode, capsys):
    with progress_display("small", 2, mode=mode, console=console):
        report_progress(
            RoundProgress(
                study="small",
                round=1,
                rounds=2,
                sites_done=2,
                sites_total=3,
                mean_auroc=0.7,
                failed={"site-03": "refused: [privacy] min_train_rows is 20"},
            )
        )
    assert "site-03 refused: [privacy] min_train_rows is 20" in words(capsys.readouterr().out)


def test_failed_sweep_runs_print_bracketed_errors(exported, tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f'name = "separators"\nmetrics = ["auroc"]\nplot = ["federated_auroc"]\n'
        f'[fixed]\nrounds = 1\n"data.source" = "folder"\n"data.path" = "{exported}"\n'
        '"baselines.enabled" = false\n"governance.preapproved" = true\n'
        '[grid]\n"data.csv_separator" = [",", "auto"]\n'
    )
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "s"), "--workers", "1"]) == 2
    out = words(capsys.readouterr().out)
    assert 'set `[data] csv_separator = ";"`' in out


def test_a_refusal_reason_ends_the_sentence_once(tmp_path, small_study):
    reason = "its updates would reveal too much about few patients."
    client = faulty_client(1, 1, SiteRefusal("site-02", reason))
    with pytest.raises(StudyRunError) as caught:
        run_with(client, small_study, tmp_path / "run")
    assert "few patients." in caught.value.message and ".." not in caught.value.message


def test_preflight_warnings_reach_the_terminal(tmp_path, capsys):
    folder = tmp_path / "sites"
    folder.mkdir()
    (folder / "contract.toml").write_text(CONTRACT)
    for name, n in (("big", 90), ("tiny", 8)):
        plain_csv(clinical_table(n, seed=n), folder / f"{name}.csv")
    args = ["simulate", "--quiet", "--set", "rounds=1", "--set", "data.source=folder"]
    args += ["--set", f"data.path={folder}", "--set", "federation.min_sites=1"]
    assert main([*args, "--set", "baselines.enabled=false", "--out", str(tmp_path / "r")]) == 0
    assert "1 of 2 sites will refuse to train every round" in words(capsys.readouterr().out)
