"""Reading a site's table from CSV or Parquet with errors that name the file.

Hospitals export tables from Excel and from clinical systems set up for their
country, so a CSV file may start with a byte-order mark (Excel's "CSV UTF-8"),
use ``;`` between fields and a decimal comma (Excel in most of Europe), end its
lines with CRLF and quote every header. :func:`read_table` reads all of these
as they are: the mark is dropped, the separator and the decimal comma are
detected from the file (or set, by ``[data] csv_separator`` and
``csv_decimal``), and a file that is not UTF-8 text stops with an error that
says where and how to convert it, rather than with garbled column names.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from lhs_federated.data.contract import DEFAULT_NA_VALUES
from lhs_federated.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")

Separator = Literal["auto", ",", ";", "\t", "|"]
Decimal = Literal["auto", ".", ","]

#: Field separators tried when a CSV file's separator is detected, in order of preference.
SEPARATORS = (",", ";", "\t", "|")
_SAMPLE_LINES = 50
_DECIMAL_COMMA = re.compile(r"^[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?$")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file was read: its text encoding, separator and decimal mark."""

    encoding: str
    separator: str
    decimal: str

    def describe(self) -> str:
        """Words for a person (``';'-separated, decimal comma, UTF-8 with BOM``)."""
        separator = "tab" if self.separator == "\t" else repr(self.separator)
        decimal = "decimal comma" if self.decimal == "," else "decimal point"
        encoding = {"utf-8-sig": "UTF-8 with BOM", "utf-16": "UTF-16"}.get(self.encoding, "UTF-8")
        return f"{separator}-separated, {decimal}, {encoding}"


def read_table(
    path: str | Path,
    *,
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES,
    separator: Separator = "auto",
    decimal: Decimal = "auto",
) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet file into a DataFrame of raw values.

    CSV cells are kept as text (validation parses them per the contract and can
    then say exactly which cells are not numbers); ``na_values`` are read as
    missing. How a CSV file was read is kept in ``table.attrs["dialect"]``
    (a :class:`CsvDialect`).

    Parameters
    ----------
    path : str or Path
        The file; its suffix says its kind.
    na_values : tuple of str
        Cell texts that mean a missing value.
    separator : {"auto", ",", ";", "tab", "|"}
        The CSV field separator; ``auto`` detects it from the first lines
        (a ``.tsv`` file defaults to tab).
    decimal : {"auto", ".", ","}
        The decimal mark; ``auto`` reads a column as decimal-comma numbers when
        its fields are separated by something other than a comma and every
        value in it is a number, some written with a comma.

    Raises
    ------
    DataError
        If the file is missing, empty, of an unknown kind, not UTF-8 text, or
        unreadable; if the separator set cannot be the file's, the message
        names the one it looks like.
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
    if suffix in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(path)
        except (ValueError, OSError) as exc:
            raise DataError(f"data file {str(path)!r} could not be read: {exc}") from exc
        return _named_columns(table, [str(c) for c in table.columns], path)
    raw = path.read_bytes()
    encoding = _encoding(raw)
    text = _decode(raw, encoding, path)
    if not text.strip():
        raise DataError(f"data file {str(path)!r} is empty (no header row).")
    default = "\t" if suffix == ".tsv" else ","
    sep = _separator(text, separator, default, path)
    header = _check_field_counts(text, sep, path)
    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=list(na_values),
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file {str(path)!r} is empty (no header row).") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"data file {str(path)!r} could not be read: {exc}") from exc
    mark = _decimal_mark(table, decimal, sep)
    if mark == ",":
        table = _read_decimal_commas(table, only_numeric_columns=decimal == "auto")
    table = _named_columns(table, header, path)
    table.attrs["dialect"] = CsvDialect(encoding, sep, mark)
    return table


def _check_field_counts(text: str, separator: str, path: Path) -> list[str]:
    """The header, once every record is known to have as many fields as it.

    pandas silently takes an extra field for a row name (or drops it), so a
    decimal comma in a comma-separated file would shift numbers into the
    wrong columns instead of failing.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    try:
        header = next(reader, [])
        wrong = [(reader.line_num, len(r)) for r in reader if r and len(r) != len(header)]
    except csv.Error as exc:
        raise DataError(
            f"data file {str(path)!r} could not be read: {exc} (line {reader.line_num})"
        ) from exc
    if wrong:
        shown = ", ".join(f"line {line} has {count}" for line, count in wrong[:5])
        more = f" and {len(wrong) - 5} more lines" if len(wrong) > 5 else ""
        hint = ""
        if separator == ",":
            hint = (
                "; a decimal comma in a ','-separated file splits a number in two: export "
                "with ';' between fields, or quote the numbers"
            )
        raise DataError(
            f"data file {str(path)!r}: the header has {len(header)} fields but {shown}{more}{hint}."
        )
    return header


def _named_columns(table: pd.DataFrame, names: list[str], path: Path) -> pd.DataFrame:
    """Give ``table`` its header as written (pandas renames duplicates to ``a.1``)."""
    names = [str(c).strip() for c in names]
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DataError(f"data file {str(path)!r} has duplicated columns: {', '.join(duplicated)}.")
    table.columns = names
    return table


def _encoding(raw: bytes) -> str:
    """The text encoding a byte-order mark announces (UTF-8 without one)."""
    if raw.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"  # Excel's "CSV UTF-8": the mark is dropped on reading
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # Excel's "Unicode Text"
    return "utf-8"


def _decode(raw: bytes, encoding: str, path: Path) -> str:
    """The file's text, or an error saying where it is not UTF-8 and how to convert it."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            f"data file {str(path)!r} is not UTF-8 text: byte 0x{byte} on line {line} "
            "is not valid UTF-8. It looks like Latin-1 / Windows-1252, which Excel's "
            "plain 'CSV' writes on Windows. Save it as 'CSV UTF-8 (comma delimited)', or "
            f"convert it: iconv -f WINDOWS-1252 -t UTF-8 {path.name} > {path.stem}-utf8.csv"
        ) from exc


def _field_counts(text: str, separator: str) -> list[int]:
    lines = text.splitlines()[:_SAMPLE_LINES]
    rows = csv.reader(lines, delimiter=separator)
    try:
        return [len(row) for row in rows if row]
    except csv.Error:
        return []


def _looks_like(text: str) -> tuple[str, int] | None:
    """The separator that splits the first lines into the most, equal, columns."""
    best: tuple[str, int] | None = None
    for candidate in SEPARATORS:
        counts = _field_counts(text, candidate)
        if not counts or counts[0] < 2 or any(c != counts[0] for c in counts):
            continue
        if best is None or counts[0] > best[1]:
            best = (candidate, counts[0])
    return best


def _separator(text: str, separator: Separator, default: str, path: Path) -> str:
    """The separator to read with: the one set, or the one the file looks like."""
    guess = _looks_like(text)
    if separator == "auto":
        return guess[0] if guess is not None else default
    if guess is not None and guess[0] != separator:
        counts = _field_counts(text, separator)
        if not counts or counts[0] < 2:
            shown = "tab" if guess[0] == "\t" else repr(guess[0])
            raise DataError(
                f"data file {str(path)!r}: read with csv_separator {separator!r} its header "
                f"is one column, but it looks like {shown}-separated ({guess[1]} columns); "
                f'set `[data] csv_separator = "{guess[0]}"` (or "auto").'
            )
    return separator


def _decimal_mark(table: pd.DataFrame, decimal: Decimal, separator: str) -> str:
    """``,`` if the file's numbers use a decimal comma, else ``.``."""
    if decimal != "auto":
        return decimal
    if separator == ",":
        return "."  # a comma cannot be both; a quoted "1,5" there may mean 1 thousand 5
    for name in table.columns:
        values = table[name].dropna().astype(str).str.strip()
        if len(values) and values.str.match(_DECIMAL_COMMA).any():
            is_number = values.str.match(_DECIMAL_COMMA) | values.str.match(_PLAIN_NUMBER)
            if is_number.all():
                return ","
    return "."


def _read_decimal_commas(table: pd.DataFrame, *, only_numeric_columns: bool) -> pd.DataFrame:
    """Turn ``1,5`` into ``1.5`` (in number-only columns, or everywhere if told so)."""
    table = table.copy()
    for name in table.columns:
        column = table[name]
        values = column.dropna().astype(str).str.strip()
        commas = values.str.match(_DECIMAL_COMMA)
        if not commas.any():
            continue
        if only_numeric_columns and not (commas | values.str.match(_PLAIN_NUMBER)).all():
            continue
        converted = values.where(~commas, values.str.replace(",", ".", regex=False))
        table[name] = column.where(column.isna(), converted.reindex(column.index))
    return table


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
