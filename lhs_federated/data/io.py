"""Reading a site's table from CSV or Parquet with errors that name the file."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from lhs_federated.data.contract import DEFAULT_NA_VALUES
from lhs_federated.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def read_table(path: str | Path, *, na_values: tuple[str, ...] = DEFAULT_NA_VALUES) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet file into a DataFrame of raw values.

    CSV cells are kept as text (validation parses them per the contract and can
    then say exactly which cells are not numbers); ``na_values`` are read as
    missing.

    Raises
    ------
    DataError
        If the file is missing, empty, of an unknown kind or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist (or is not a file).")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"data file {str(path)!r} has suffix {suffix!r}; expected one of "
            f"{', '.join(TABLE_SUFFIXES)}."
        )
    try:
        if suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                dtype=str,
                keep_default_na=False,
                na_values=list(na_values),
                skipinitialspace=True,
            )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file {str(path)!r} is empty (no header row).") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise DataError(f"data file {str(path)!r} could not be read: {exc}") from exc
    names = _csv_header(path, suffix) if suffix in (".csv", ".tsv") else list(table.columns)
    names = [str(c).strip() for c in names]
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DataError(f"data file {str(path)!r} has duplicated columns: {', '.join(duplicated)}.")
    table.columns = names
    return table


def _csv_header(path: Path, suffix: str) -> list[str]:
    """The header row as written (pandas renames duplicates to ``a.1``)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write a table as CSV or Parquet (by suffix), atomically.

    The file appears complete or not at all, so a crash never leaves a
    truncated table that a later run would read as data.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() in (".parquet", ".pq"):
        table.to_parquet(tmp, index=False)
    else:
        table.to_csv(tmp, index=False)
    tmp.replace(path)
