"""CSV files as hospitals export them: BOM, ';', decimal commas, CRLF, quotes, Latin-1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from exports import CONTRACT, clinical_table, european, excel_utf8, latin1, plain_csv

from lhs_federated import load_study
from lhs_federated.cli import main
from lhs_federated.data.contract import load_contract
from lhs_federated.data.io import read_table
from lhs_federated.data.sources import load_sites
from lhs_federated.data.validation import validate_table
from lhs_federated.errors import DataError

WRITERS = {"excel-utf8": excel_utf8, "european": european}


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "contract.toml"
    path.write_text(CONTRACT)
    return load_contract(path)


@pytest.fixture(scope="module")
def table():
    return clinical_table(60, seed=1)


def numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers compared as numbers (``63,5`` read as ``63.5``), text as text."""
    return frame.apply(lambda c: pd.to_numeric(c, errors="coerce").astype(object).fillna(c))


@pytest.mark.parametrize("kind", WRITERS)
def test_exports_read_as_the_plain_file(kind, table, contract, tmp_path):
    plain = read_table(plain_csv(table, tmp_path / "plain.csv"), na_values=contract.na_values)
    exported = read_table(
        WRITERS[kind](table, tmp_path / f"{kind}.csv"), na_values=contract.na_values
    )
    assert list(exported.columns) == list(table.columns)  # no '\ufeffage', no quotes
    pd.testing.assert_frame_equal(numbers(exported), numbers(plain), check_dtype=False)
    assert validate_table(exported, contract, file=kind).ok
    dialect = exported.attrs["dialect"]
    assert (dialect.encoding, dialect.separator, dialect.decimal) == {
        "excel-utf8": ("utf-8-sig", ",", "."),
        "european": ("utf-8-sig", ";", ","),
    }[kind]


def test_a_folder_of_exports_gives_the_sites_plain_files_give(contract, tmp_path):
    tables = {f"site-{k}": clinical_table(n, seed=k) for k, n in enumerate((80, 40, 9))}
    for folder, writer in (("plain", plain_csv), ("exported", None)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "contract.toml").write_text(CONTRACT)
        for k, (name, frame) in enumerate(tables.items()):
            chosen = writer or (excel_utf8, european, lambda t, p: european(t, p, bom=False))[k]
            chosen(frame, tmp_path / folder / f"{name}.csv")
    loaded = {
        folder: load_sites(
            load_study(None).with_overrides(
                {"data.source": "folder", "data.path": str(tmp_path / folder)}
            )
        )
        for folder in ("plain", "exported")
    }
    for plain, exported in zip(loaded["plain"], loaded["exported"], strict=True):
        assert plain.name == exported.name
        np.testing.assert_array_equal(plain.train.features, exported.train.features)
        np.testing.assert_array_equal(plain.test.outcome, exported.test.outcome)


def test_a_separator_set_wrong_names_the_one_the_file_has(table, tmp_path):
    path = european(table, tmp_path / "site.csv")
    with pytest.raises(
        DataError,
        match=r"looks like ';'-separated \(37 columns\); set `\[data\] csv_separator = \";\"`",
    ) as caught:
        read_table(path, separator=",")
    assert "\n" not in caught.value.message and len(caught.value.message) < 400


def test_decimal_commas_need_a_separator_or_a_setting(table, contract, tmp_path):
    commas = table.assign(age=table["age"].str.replace(".", ",", regex=False))
    quoted = tmp_path / "quoted.csv"
    commas.to_csv(quoted, index=False, quoting=1)  # ',' between fields, "63,5" quoted
    as_read = read_table(quoted)
    assert as_read["age"].iloc[0] == commas["age"].iloc[0]  # ambiguous: left as written
    report = validate_table(as_read, contract, file="quoted.csv")
    assert any('decimal commas? set `[data] csv_decimal = ","`' in str(f) for f in report.errors)
    fixed = read_table(quoted, decimal=",")
    assert validate_table(fixed, contract, file="quoted.csv").ok
    assert float(fixed["age"].iloc[0]) == float(table["age"].iloc[0])
    bare = tmp_path / "bare.csv"
    bare.write_text("age,sex\n63,5,F\n70,1,M\n")
    with pytest.raises(DataError, match=r"a decimal comma in a ','-separated file"):
        read_table(bare)


def test_latin1_is_refused_with_where_and_how(table, tmp_path):
    path = latin1(table, tmp_path / "site.csv")
    line = 2 + int(np.flatnonzero(table["smoking"] == "former")[0])
    with pytest.raises(
        DataError,
        match=rf"is not UTF-8 text: byte 0xe9 on line {line} .* Latin-1 / Windows-1252.*"
        r"iconv -f WINDOWS-1252 -t UTF-8 site\.csv",
    ):
        read_table(path)


def test_errors_are_capped_and_name_the_file_once(contract, tmp_path):
    broken = clinical_table(30, seed=3)
    for k in range(20):  # 20 columns with a bad value each
        broken.loc[k, f"dx_{k:02d}"] = "2"
    path = plain_csv(broken.drop(columns=["age", "sex"]), tmp_path / "f.csv")
    report = validate_table(read_table(path), contract, file="f.csv")
    assert len(report.errors) == 21  # the two missing columns are one finding
    with pytest.raises(DataError) as caught:
        report.raise_for_errors()
    message = caught.value.message
    assert message.count("f.csv") == 1
    assert "(21 problems)" in message and "; and 11 more (`lhs-fed data validate" in message
    assert message.count("dx_") <= 10 + 12  # ten problems shown; the header listed once
    assert len(message) < 2500


def test_validate_lists_a_semicolon_file_s_problems_once(contract, table, tmp_path, capsys):
    path = european(table.drop(columns=["sex", "ward"]), tmp_path / "site.csv")
    (tmp_path / "c.toml").write_text(CONTRACT)
    assert main(["data", "validate", "--contract", str(tmp_path / "c.toml"), str(path)]) == 2
    out = capsys.readouterr().out
    words = " ".join(out.replace("│", " ").split())
    assert "read as ';'-separated, decimal comma, UTF-8 with BOM" in words
    assert "2 of the contract's 37 columns are missing" in words
    assert len(out.splitlines()) < 20
