"""Clinical tables shaped like real multi-site data, written as hospitals export them.

``clinical_table`` makes one site's table the way registries look: many binary
and one-hot columns with rare levels, decimals, a numeric column with a text
code for "not measured", an outcome with about 30% positives. The writers save
it as Excel and European hospital systems do: ``excel_utf8`` (Excel's "CSV
UTF-8": a byte-order mark, CRLF), ``european`` (``;`` between fields, decimal
commas, every field quoted, CRLF, a BOM), ``latin1`` (Windows-1252 text, as
Excel's plain "CSV" on Windows).
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

N_FLAGS = 30
SMOKING = ("never", "former", "current")
WARDS = ("cardiology", "medicine", "surgery", "icu")


def clinical_table(n: int, *, seed: int) -> pd.DataFrame:
    """One site's table of ``n`` patients, as text cells (how an export holds them)."""
    rng = np.random.default_rng(seed)
    flags = {f"dx_{k:02d}": rng.random(n) < rng.uniform(0.02, 0.4) for k in range(N_FLAGS)}
    age = rng.normal(64, 12, n).clip(18, 99).round(1)
    sbp = rng.normal(135, 20, n).round().astype(int)
    risk = -1.6 + 0.04 * (age - 64) + 1.2 * flags["dx_00"] + 0.8 * flags["dx_01"]
    died = rng.random(n) < 1 / (1 + np.exp(-risk))
    died[:2] = [True, False]  # both outcomes at every site, however small
    table = pd.DataFrame(
        {
            "age": [f"{v:.1f}" for v in age],
            "sex": rng.choice(["F", "M"], n),
            "bmi": [f"{v:.2f}" for v in rng.normal(27, 4.5, n)],
            "sbp": [str(v) for v in sbp],
            "smoking": rng.choice(SMOKING, n, p=[0.5, 0.3, 0.2]),
            "ward": rng.choice(WARDS, n, p=[0.4, 0.35, 0.2, 0.05]),
            **{name: np.where(v, "1", "0") for name, v in flags.items()},
            "death_30d": np.where(died, "yes", "no"),
        }
    )
    table.loc[rng.random(n) < 0.05, "bmi"] = "NA"
    table.loc[rng.random(n) < 0.05, "sbp"] = "unknown"
    return table


def plain_csv(table: pd.DataFrame, path: Path) -> Path:
    """A plain comma-separated UTF-8 file with LF line ends."""
    table.to_csv(path, index=False)
    return path


def excel_utf8(table: pd.DataFrame, path: Path) -> Path:
    """Excel's "CSV UTF-8 (comma delimited)": a byte-order mark, commas, CRLF."""
    path.write_bytes(codecs.BOM_UTF8 + _csv_text(table, ",", quote=False).encode("utf-8"))
    return path


def european(table: pd.DataFrame, path: Path, *, bom: bool = True) -> Path:
    """A European hospital system's export: ``;``, decimal commas, quoted fields, CRLF."""
    commas = table.copy()
    for column in ("age", "bmi"):
        commas[column] = commas[column].str.replace(".", ",", regex=False)
    text = _csv_text(commas, ";", quote=True)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
    return path


def latin1(table: pd.DataFrame, path: Path) -> Path:
    """Excel's plain "CSV" on Windows: Windows-1252 text (here an accented level)."""
    accented = table.assign(smoking=table["smoking"].replace({"former": "ancien fumeur é"}))
    path.write_bytes(_csv_text(accented, ";", quote=False).encode("cp1252"))
    return path


def _csv_text(table: pd.DataFrame, separator: str, *, quote: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(
        buffer,
        delimiter=separator,
        lineterminator="\r\n",
        quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL,
    )
    writer.writerow(table.columns)
    writer.writerows(table.itertuples(index=False))
    return buffer.getvalue()


CONTRACT = f"""
name = "registry"
missing = "impute"
[outcome]
column = "death_30d"
positive = ["yes"]
negative = ["no"]
[[features]]
name = "age"
type = "numeric"
min = 18
max = 100
unit = "years"
[[features]]
name = "sex"
type = "binary"
levels = ["F", "M"]
[[features]]
name = "bmi"
type = "numeric"
min = 10
max = 60
[[features]]
name = "sbp"
type = "numeric"
min = 60
max = 260
missing_codes = ["unknown"]
[[features]]
name = "smoking"
type = "categorical"
levels = {list(SMOKING)}
[[features]]
name = "ward"
type = "categorical"
levels = {list(WARDS)}
""" + "".join(f'[[features]]\nname = "dx_{k:02d}"\ntype = "binary"\n' for k in range(N_FLAGS))
