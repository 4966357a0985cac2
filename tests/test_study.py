from __future__ import annotations

from pathlib import Path

import pytest

from lhs_federated import ConfigError, Study, load_study
from lhs_federated.study import write_study

REPO = Path(__file__).resolve().parents[1]


def test_default_study_file_is_the_builtin_default():
    assert load_study(REPO / "simulations" / "default.toml").hash == load_study(None).hash


def test_resolved_study_round_trips_through_toml(tmp_path, uci_folder):
    study = load_study(None).with_overrides(
        {
            "data.source": "uci-heart",
            "data.path": str(uci_folder),
            "strategy.name": "fedprox",
            "strategy.params": {"proximal_mu": 0.1},
            "model.name": "mlp",
        }
    )
    write_study(study, tmp_path / "study.resolved.toml")
    again = load_study(tmp_path / "study.resolved.toml")
    assert again == study
    assert again.hash == study.hash
    assert Study.from_json(study.to_json(), source="test").hash == study.hash


def test_resolution_makes_defaults_explicit():
    study = load_study(None)
    assert study.contract.name == "cardio-risk"
    assert study.data.split_seed == study.seed
    assert study.training.epochs == 1
    assert len(study.hash) == 64


def test_hash_changes_with_any_setting():
    base = load_study(None)
    assert base.with_overrides({"training.learning_rate": 0.3}).hash != base.hash
    assert base.with_overrides({"rounds": 10}).hash == base.hash  # same value, same study


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rounds = 0\n", r"study\.toml: rounds must be >= 1; got 0"),
        ("rounds = 'ten'\n", r"study\.toml: rounds must be an integer; got 'ten'"),
        ("roundz = 3\n", r"unknown key 'roundz' in the top level\. Did you mean 'rounds'"),
        (
            "[model]\nname = 'svm'\n",
            r"model\.name 'svm' is not a model family; choose one of logistic, mlp",
        ),
        (
            "[strategy]\nname = 'fedavgg'\n",
            r"strategy\.name 'fedavgg' is not a known strategy\. Did you mean 'fedavg'",
        ),
        (
            "[strategy]\nname = 'fedprox'\n[strategy.params]\nmu = 1\n",
            r"strategy\.params\.mu is not a parameter of fedprox .*proximal_mu",
        ),
        (
            "[strategy.params]\nmin_train_nodes = 1\n",
            r"strategy\.params\.min_train_nodes is set by lhs-federated",
        ),
        (
            "[strategy]\nname = 'fedprox'\n[strategy.params]\nproximal_mu = 'x'\n",
            r"proximal_mu must be a number",
        ),
        (
            "[training]\nepochs = 1\nsteps = 5\n",
            r"set either epochs \(1\) or steps \(5\), not both",
        ),
        ("[data]\nsource = 'uci-heart'\n", r"data\.source = 'uci-heart' needs data\.path"),
        (
            "[data]\ncontract = 'nope.toml'\n",
            r"data\.contract: data contract file .*nope\.toml' does not exist",
        ),
        (
            "[data]\ncontract = 'nope'\n",
            r"neither a built-in contract \(cardio-risk, uci-heart\) nor a \.toml file",
        ),
        ("[preprocessing]\nscaling = 'none'\n", r"scaling = 'none' cannot impute missing values"),
        ("name = 'a b'\n", r"name must be letters, digits"),
        ("rounds = [\n", r"study\.toml: not valid TOML"),
    ],
)
def test_bad_study_files_give_specific_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_study(write(tmp_path, text))


def test_missing_study_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"study file '.*missing\.toml' does not exist"):
        load_study(tmp_path / "missing.toml")


def test_relative_paths_are_taken_from_the_study_file(tmp_path):
    (tmp_path / "data").mkdir()
    path = write(tmp_path, "[data]\nsource = 'folder'\npath = 'data'\ncontract = 'cardio-risk'\n")
    assert load_study(path).data.path == str((tmp_path / "data").resolve())


def test_override_of_unknown_key_fails():
    with pytest.raises(ConfigError, match=r"overrides: unknown key 'training\.lr'"):
        load_study(None).with_overrides({"training.lr": 0.1})
