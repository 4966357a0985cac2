"""`lhs-fed data infer-contract`: a reviewed draft that validates the files it came from."""

from __future__ import annotations

import re
import tomllib

import pytest
from exports import clinical_table, european, excel_utf8, plain_csv

from lhs_federated.cli import main
from lhs_federated.data.contract import load_contract
from lhs_federated.data.infer import contract_toml, infer_contract
from lhs_federated.data.io import read_table
from lhs_federated.data.uci_heart import load_uci_heart
from lhs_federated.data.validation import validate_table
from lhs_federated.errors import DataError


@pytest.fixture(scope="module")
def uci_csv(uci_folder, tmp_path_factory):
    """The four UCI centres as CSV files with a header (as a site would export them)."""
    folder = tmp_path_factory.mktemp("uci-csv")
    for name, table in load_uci_heart(uci_folder).items():
        table.to_csv(folder / f"{name}.csv", index=False, na_rep="?")
    return sorted(folder.glob("*.csv"))


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Registry exports of three sites (3, 25 and 70 patients), each written differently."""
    folder = tmp_path_factory.mktemp("messy")
    writers = (excel_utf8, european, plain_csv)
    return [
        writer(clinical_table(n, seed=n), folder / f"site-{n}.csv")
        for writer, n in zip(writers, (3, 25, 70), strict=True)
    ]


def test_uci_contract_is_drafted_and_validates_every_centre(uci_csv, tmp_path, capsys):
    out = tmp_path / "contract.toml"
    args = ["data", "infer-contract", *map(str, uci_csv), "--outcome", "num"]
    assert main([*args, "--positive", "1,2,3,4", "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "13 features and outcome 'num', drafted from 4 files (each meets it)" in printed
    contract = load_contract(out)
    features = {f.name: f for f in contract.features}
    assert (features["age"].type, features["age"].min, features["age"].max) == ("numeric", 20, 80)
    assert (features["chol"].min, features["chol"].max) == (0, 700)  # 0 to 603 rounded outward
    assert features["sex"].type == "binary" and features["sex"].levels is None  # 0/1
    assert (features["cp"].type, features["cp"].levels) == ("categorical", (1, 2, 3, 4))
    assert (features["thal"].type, features["thal"].levels) == ("categorical", (3, 6, 7))
    assert contract.outcome.positive == (1, 2, 3, 4) and contract.outcome.negative == (0,)
    assert contract.missing == "impute"  # '?' in ca, thal, slope, ...
    for path in uci_csv:
        table = read_table(path, na_values=contract.na_values)
        assert validate_table(table, contract, file=path.name).ok
    text = out.read_text()
    assert "# 4 integer codes: drafted as categorical (one-hot)" in text
    assert not re.search(r"\d+ rows", text)  # no count of patients in the file


def test_outcome_values_must_be_told_when_not_yes_no(uci_csv, capsys):
    assert main(["data", "infer-contract", *map(str, uci_csv), "--outcome", "num"]) == 2
    assert "outcome 'num' has 5 values (0, 1, 2, 3, 4); say which mean the event with" in (
        " ".join(capsys.readouterr().err.split())
    )
    assert main(["data", "infer-contract", str(uci_csv[0]), "--outcome", "death"]) == 2
    assert "outcome column 'death' is not in" in capsys.readouterr().err


def test_messy_exports_give_a_contract_they_all_meet(messy):
    tables = {path.name: read_table(path) for path in messy}
    draft = infer_contract(tables, outcome="death_30d")
    text = contract_toml(draft)
    contract = draft.contract()
    assert contract.outcome.positive == ("yes",) and contract.outcome.negative == ("no",)
    features = {f.name: f for f in contract.features}
    assert features["sbp"].type == "numeric" and features["sbp"].missing_codes == ("unknown",)
    assert features["sex"].levels == ("F", "M") and features["dx_00"].type == "binary"
    assert features["smoking"].levels == ("current", "former", "never")
    assert features["age"].type == features["bmi"].type == "numeric"
    for name, table in tables.items():
        report = validate_table(table, contract, file=name)
        assert report.ok, report.errors
    written = tomllib.loads(text)
    assert [f["name"] for f in written["features"]] == [f.name for f in contract.features]
    assert "# text among numbers drafted as missing codes: 'unknown'" in text


def test_columns_not_in_every_file_and_identifiers_are_left_out(tmp_path):
    big = clinical_table(80, seed=4)
    big.insert(0, "patient_id", [str(1000 + k) for k in range(80)])
    small = clinical_table(20, seed=5).drop(columns=["ward"])
    small.insert(0, "patient_id", [str(2000 + k) for k in range(20)])
    draft = infer_contract({"a.csv": big, "b.csv": small}, outcome="death_30d")
    left_out = {c.name: c.notes[0] for c in draft.columns if c.feature is None}
    assert left_out == {
        "patient_id": "every value differs: an identifier? left out",
        "ward": "only in a.csv: left out",
    }
    with pytest.raises(DataError, match=r"--positive names 'maybe', not among the values"):
        infer_contract({"a.csv": big}, outcome="death_30d", positive=("maybe",))


def test_an_existing_contract_is_not_overwritten(messy, tmp_path, capsys):
    out = tmp_path / "contract.toml"
    out.write_text("# mine\n")
    args = ["data", "infer-contract", str(messy[0]), "--outcome", "death_30d", "--out", str(out)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "# mine\n"
