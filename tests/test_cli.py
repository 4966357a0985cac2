"""The lhs-fed command: output, exit codes and messages (0 done, 2 bad input, 1 bug)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from lhs_federated import load_study
from lhs_federated.cli import main
from lhs_federated.data.contract import BUILTIN_CONTRACTS
from lhs_federated.data.io import read_table
from lhs_federated.data.validation import validate_table


def test_simulate_prints_progress_table_and_folder(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--set",
            "rounds=2",
            "--set",
            "data.synthetic.sites=3",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "round 2/2" in out and "sites 3/3" in out and "mean AUROC" in out
    assert "site-03" in out and "weighted mean" in out and "AUROC" in out
    assert f"results in {tmp_path / 'r'}" in out
    assert (tmp_path / "r" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "missing.toml"], "study file 'missing.toml' does not exist"),
        (["simulate", "--set", "rounds=0"], "overrides: rounds must be >= 1; got 0"),
        (
            ["simulate", "--set", "strategy.name=fedsgd"],
            "strategy.name 'fedsgd' is not a known strategy",
        ),
        (
            ["simulate", "--backend", "spark"],
            "--backend must be one of inprocess, ray; got 'spark'",
        ),
        (["simulate", "--set", "rounds"], "--set 'rounds': expected KEY=VALUE"),
        (["data", "validate", "--contract", "nope", "x.csv"], "neither a built-in contract"),
    ],
)
def test_bad_input_exits_2_with_one_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_toml_syntax_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "study.toml"
    bad.write_text("rounds = \n")
    assert main(["simulate", str(bad)]) == 2
    assert f"{bad}: not valid TOML" in capsys.readouterr().err


def test_data_synth_then_validate(tmp_path, capsys):
    assert (
        main(
            ["data", "synth", "--sites", "2", "--rows-per-site", "60", "--out", str(tmp_path / "d")]
        )
        == 0
    )
    contract = BUILTIN_CONTRACTS["cardio-risk"]()
    for name in ("site-01.csv", "site-02.csv"):
        assert validate_table(read_table(tmp_path / "d" / name), contract, file=name).ok
    assert (
        main(
            [
                "data",
                "validate",
                "--contract",
                str(tmp_path / "d" / "contract.toml"),
                str(tmp_path / "d" / "site-01.csv"),
            ]
        )
        == 0
    )
    assert "meets the contract" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "d" / "site-02.csv")
    table.loc[[1, 4], "age"] = 130
    table.to_csv(tmp_path / "d" / "site-02.csv", index=False)
    assert main(["data", "validate", "-c", "cardio-risk", str(tmp_path / "d" / "site-02.csv")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "does not meet the contract" in out
        and "2 values outside [18, 100] years at rows 2, 5" in out
    )
    assert main(["data", "synth", "--out", str(tmp_path / "d")]) == 2  # not overwritten


def test_study_show_and_hash(tmp_path, capsys):
    assert main(["study", "hash"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == load_study(None).hash
    assert main(["study", "show", "--set", "rounds=3"]) == 0
    shown = tmp_path / "shown.toml"
    shown.write_text(capsys.readouterr().out)
    assert load_study(shown).rounds == 3
    assert main(["strategies"]) == 0
    assert "proximal_mu" in capsys.readouterr().out


def test_console_script_exit_code_and_module_entry(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lhs_federated", "simulate", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (
        done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    )
