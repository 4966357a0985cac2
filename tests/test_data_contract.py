from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lhs_federated.data.contract import BUILTIN_CONTRACTS, load_contract
from lhs_federated.data.encoding import encoded_feature_names, prepare_table
from lhs_federated.data.io import read_table, write_table
from lhs_federated.data.validation import validate_table
from lhs_federated.errors import ConfigError, DataError

CONTRACT = """
name = "mini"
missing = "drop-row"
[outcome]
column = "event"
positive = [1]
negative = [0]
[[features]]
name = "chol"
type = "numeric"
min = 100
max = 600
unit = "mg/dL"
missing_codes = [0]
[[features]]
name = "smoker"
type = "binary"
levels = ["no", "yes"]
[[features]]
name = "cp"
type = "categorical"
levels = [1, 2, 3]
"""


@pytest.fixture
def contract(tmp_path):
    path = tmp_path / "contract.toml"
    path.write_text(CONTRACT)
    return load_contract(path)


def table(**columns):
    return pd.DataFrame(columns)


def good(n=20):
    rng = np.random.default_rng(0)
    return table(
        chol=[str(v) for v in rng.integers(150, 300, n)],
        smoker=rng.choice(["no", "yes"], n),
        cp=[str(v) for v in rng.integers(1, 4, n)],
        event=[str(i % 2) for i in range(n)],
    )


def test_valid_table_has_no_findings(contract):
    report = validate_table(good(), contract, file="site-a.csv")
    assert report.ok and report.findings == []


def test_out_of_range_values_are_reported_with_rows(contract):
    data = good()
    data.loc[[11, 39 % 20, 17], "chol"] = ["50", "700", "99"]
    report = validate_table(data, contract, file="site-a.csv")
    assert [str(f) for f in report.errors] == [
        "site-a.csv: chol: 3 values outside [100, 600] mg/dL at rows 12, 18, 20"
    ]
    with pytest.raises(
        DataError, match=r"site-a\.csv does not meet its data contract \(1 problem\)"
    ):
        report.raise_for_errors()


def test_every_problem_is_listed_in_one_report(contract):
    data = good().drop(columns=["smoker"])
    data.loc[0, "chol"] = "abc"
    data.loc[1, "cp"] = "7"
    data.loc[2, "event"] = "2"
    data["extra"] = 1
    rules = {
        (f.column, f.severity): str(f)
        for f in validate_table(data, contract, file="f.csv").findings
    }
    assert "feature column is missing" in rules[("smoker", "error")]
    assert "1 non-numeric values ('abc') at rows 1" in rules[("chol", "error")]
    assert "1 values not among the levels 1, 2, 3 ('7') at rows 2" in rules[("cp", "error")]
    assert (
        "1 outcome values neither positive [1] nor negative [0] ('2') at rows 3"
        in rules[("event", "error")]
    )
    assert "columns not in the contract" in rules[("extra", "warning")]


def test_missing_outcome_column_and_single_class(contract):
    no_outcome = validate_table(good().drop(columns=["event"]), contract, file="f.csv")
    assert any("outcome column is missing" in str(f) for f in no_outcome.errors)
    one_class = good().assign(event="0")
    assert any(
        "only one outcome class" in str(f)
        for f in validate_table(one_class, contract, file="f.csv").errors
    )


def test_missing_values_follow_the_policy(contract):
    data = good()
    data.loc[[0, 5], "chol"] = [None, "0"]  # 0 is a missing code
    report = validate_table(data, contract, file="f.csv")
    assert report.ok
    assert str(report.warnings[0]) == "f.csv: chol: 2 missing values (dropped) at rows 1, 6"
    site = prepare_table(data, contract, site="a", source="f.csv", one_hot="all-levels")
    assert site.n_dropped == 2 and len(site.outcome) == 18


def test_missing_error_policy_and_empty_site(contract):
    strict = contract.__class__(**{**contract.__dict__, "missing": "error"})
    data = good()
    data.loc[3, "smoker"] = None
    assert "1 missing values (contract: missing = 'error') at rows 4" in str(
        validate_table(data, strict, file="f.csv").errors[0]
    )
    empty = good(4)
    empty["chol"] = "0"
    with pytest.raises(
        DataError, match=r"site 'a' \(f\.csv\) has no rows left after dropping the 4 rows"
    ):
        prepare_table(empty, contract, site="a", source="f.csv", one_hot="all-levels")


def test_encoding_is_fixed_by_the_contract(contract):
    data = good().assign(cp="2")  # the site holds only one level
    site = prepare_table(data, contract, site="a", source="f", one_hot="drop-first")
    assert encoded_feature_names(contract, "drop-first") == ["chol", "smoker", "cp=2", "cp=3"]
    assert site.features.shape == (20, 4)
    assert set(site.features[:, 2]) == {1.0} and set(site.features[:, 3]) == {0.0}
    assert set(site.features[:, 1]) <= {0.0, 1.0}


def test_empty_table_is_an_error(contract):
    assert "no data rows" in str(validate_table(good().iloc[:0], contract, file="f.csv").errors[0])


def test_csv_and_parquet_read_the_same(tmp_path, contract):
    data = good()
    write_table(data, tmp_path / "a.csv")
    write_table(data, tmp_path / "b.parquet")
    for name in ("a.csv", "b.parquet"):
        site = prepare_table(
            read_table(tmp_path / name), contract, site="a", source=name, one_hot="all-levels"
        )
        assert site.features.shape == (20, 5)


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        (None, "missing.csv", r"data file '.*missing\.csv' does not exist"),
        ("", "empty.csv", r"data file '.*empty\.csv' is empty"),
        ("a,b\n1,2\n", "table.xlsx", r"has suffix '\.xlsx'; expected one of \.csv"),
        ('a,b\n1,"2\n', "broken.csv", r"could not be read"),
        ("a,a\n1,2\n", "dup.csv", r"duplicated columns"),
    ],
)
def test_unreadable_files_are_named(tmp_path, content, name, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_table(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ('type = "categorical"\nlevels = [1]', r"needs at least two levels"),
        ('type = "numeric"\nmin = 5\nmax = 1', r"min 5\.0 above max 1\.0"),
        ('type = "binary"\nmin = 0', r"min/max apply to numeric only"),
        (
            'type = "ordinal"',
            r"features\[0\]\.type must be one of 'numeric', 'binary', 'categorical'",
        ),
    ],
)
def test_bad_contracts_are_rejected(tmp_path, change, match):
    path = tmp_path / "c.toml"
    path.write_text(
        'name = "c"\n[outcome]\ncolumn = "y"\npositive = [1]\nnegative = [0]\n'
        f'[[features]]\nname = "x"\n{change}\n'
    )
    with pytest.raises(ConfigError, match=match):
        load_contract(path)


def test_builtin_contracts_load():
    assert {name: len(load().features) for name, load in BUILTIN_CONTRACTS.items()} == {
        "cardio-risk": 10,
        "uci-heart": 10,
    }
