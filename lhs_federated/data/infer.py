"""A first draft of a data contract, inferred from the sites' own tables.

Writing a contract by hand for forty columns is slow and error-prone; reading
it is quick. :func:`infer_contract` looks at one or more tables (one per site,
as exported) and drafts the contract a person then reviews: each column's type
(numeric, binary or categorical), numeric ranges from the data rounded outward
to a round number (so the contract admits the data and names no patient's exact
value), levels as found, text codes among numbers as missing codes, and the
outcome's positive values. :func:`contract_toml` writes it as commented TOML
that says, column by column, what was seen and what to check.

The draft is a starting point, not a decision: whether ``cp`` (four integer
codes) is categorical or a number, and which outcome values are the event,
are the study's to decide.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import tomli_w

from lhs_federated.config import build
from lhs_federated.data.contract import DataContract, Level
from lhs_federated.errors import DataError

#: Integer columns with at most this many distinct values are drafted as categorical.
MAX_CODES = 10
#: Text columns with more distinct values than this are not drafted as features.
MAX_TEXT_LEVELS = 30
#: Text values among numbers drafted as missing codes (``unknown``, ``n/a``) at most.
MAX_MISSING_CODES = 3
_TRUE_WORDS = ("yes", "y", "true", "t", "positive", "pos", "ja", "oui", "si", "sí")


@dataclass(frozen=True)
class DraftColumn:
    """One column of the draft: a contract feature (or why it is left out) and notes."""

    name: str
    feature: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DraftContract:
    """The inferred contract and what a reviewer should know about it."""

    name: str
    files: dict[str, int]
    outcome: dict[str, Any]
    outcome_notes: list[str]
    columns: list[DraftColumn]
    missing: str
    missing_note: str

    def to_plain(self) -> dict[str, Any]:
        """The contract as a TOML-ready table (left-out columns omitted)."""
        return {
            "name": self.name,
            "missing": self.missing,
            "outcome": self.outcome,
            "features": [c.feature for c in self.columns if c.feature is not None],
        }

    def contract(self) -> DataContract:
        """The draft as a :class:`DataContract` (checked like a contract file).

        Raises
        ------
        DataError
            If no column could be drafted as a feature.
        """
        plain = self.to_plain()
        if not plain["features"]:
            raise DataError(
                "no column could be drafted as a feature (every column other than the "
                "outcome is free text, an identifier or not in every file)."
            )
        return build(DataContract, plain, source="inferred contract")


def infer_contract(
    tables: Mapping[str, pd.DataFrame],
    *,
    outcome: str,
    positive: tuple[str, ...] = (),
    name: str = "inferred",
) -> DraftContract:
    """Draft a contract that every one of ``tables`` meets.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        Each site's raw table (as :func:`~lhs_federated.data.io.read_table`
        reads it), keyed by its file name.
    outcome : str
        The outcome column.
    positive : tuple of str
        The outcome values that mean the event; needed when the outcome has
        other than two values, or two that are not recognisably yes/no.
    name : str
        The contract's name.

    Raises
    ------
    DataError
        If the outcome column is missing from a table, or its positive values
        cannot be told (the message lists the values found).
    """
    if not tables:
        raise DataError("infer-contract needs at least one table.")
    lacking = [file for file, table in tables.items() if outcome not in table.columns]
    if lacking:
        columns = ", ".join(map(str, next(iter(tables.values())).columns))
        raise DataError(
            f"outcome column {outcome!r} is not in {', '.join(lacking)} (columns: {columns}); "
            "name the outcome with --outcome."
        )
    pooled = pd.concat([t.astype("string") for t in tables.values()], ignore_index=True)
    draft_outcome, outcome_notes = _outcome(pooled[outcome], outcome, positive)
    first = list(next(iter(tables.values())).columns)
    everywhere = [c for c in first if all(c in t.columns for t in tables.values())]
    columns = []
    for column in dict.fromkeys([*first, *pooled.columns]):
        if column == outcome:
            continue
        if column not in everywhere:
            held = [f for f, t in tables.items() if column in t.columns]
            columns.append(DraftColumn(column, None, [f"only in {', '.join(held)}: left out"]))
            continue
        columns.append(_column(pooled[column], str(column)))
    gaps = [c.name for c in columns if c.feature is not None and _has_gaps(pooled[c.name])]
    if gaps:
        missing = "impute"
        note = (
            f"values are missing in {len(gaps)} columns ({', '.join(gaps[:8])}"
            f"{', ...' if len(gaps) > 8 else ''}): imputed from federated statistics; "
            "'drop-row' drops such rows instead"
        )
    else:
        missing, note = "error", "no value is missing: a missing value is an error"
    files = {file: len(table) for file, table in tables.items()}
    return DraftContract(name, files, draft_outcome, outcome_notes, columns, missing, note)


def _has_gaps(column: pd.Series) -> bool:
    return bool(column.isna().any())


def _values(column: pd.Series) -> pd.Series:
    return column.dropna().astype(str).str.strip()


def _level(text: str) -> Level:
    """A level as the contract writes it: a number if the text is one, else the text."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() else number


def _outcome(
    column: pd.Series, name: str, positive: tuple[str, ...]
) -> tuple[dict[str, Any], list[str]]:
    found = sorted({_level(v) for v in _values(column)}, key=_sort_key)
    shown = ", ".join(map(repr, found[:12])) + (", ..." if len(found) > 12 else "")
    if not found:
        raise DataError(f"outcome column {name!r} has no values.")
    if positive:
        wanted = {_level(v) for v in positive}
        unknown = sorted(wanted - set(found), key=_sort_key)
        if unknown:
            raise DataError(
                f"--positive names {', '.join(map(repr, unknown))}, not among the values of "
                f"outcome {name!r} ({shown})."
            )
        chosen = [v for v in found if v in wanted]
        note = f"positive as given ({', '.join(map(repr, chosen))})"
    elif len(found) == 2:
        words = [str(v).strip().lower() for v in found]
        truthy = [v for v, w in zip(found, words, strict=True) if w in _TRUE_WORDS]
        if found == [0, 1]:
            truthy = [1]
        if len(truthy) != 1:
            raise DataError(
                f"outcome {name!r} has the values {shown}; say which mean the event with "
                f"--positive (for example --positive {found[-1]!r})."
            )
        chosen = truthy
        note = f"positive: {chosen[0]!r} (check: the other value, {_other(found, chosen)!r}, "
        note += "is the negative)"
    else:
        raise DataError(
            f"outcome {name!r} has {len(found)} values ({shown}); say which mean the event "
            "with --positive, e.g. --positive 1,2,3,4."
        )
    negative = [v for v in found if v not in chosen]
    if not negative:
        raise DataError(
            f"every value of outcome {name!r} ({shown}) would be positive: a prediction "
            "model needs both outcomes."
        )
    counts = f"values found: {shown}"
    return {"column": name, "positive": chosen, "negative": negative}, [note, counts]


def _other(found: list[Level], chosen: list[Level]) -> Level:
    return next(v for v in found if v not in chosen)


def _sort_key(value: Level) -> tuple[int, float, str]:
    return (0, float(value), "") if not isinstance(value, str) else (1, 0.0, value)


def _column(column: pd.Series, name: str) -> DraftColumn:
    values = _values(column)
    gaps = ["has missing values"] if column.isna().any() else []
    if values.empty:
        return DraftColumn(name, None, ["no values at all: left out"])
    numbers = pd.to_numeric(values, errors="coerce")
    text = values[numbers.isna()]
    codes = sorted(set(text), key=str)
    if len(codes) <= MAX_MISSING_CODES and len(text) < len(values) / 2:
        numbers = numbers.dropna()
        distinct = sorted(set(numbers))
        missing_codes = [_level(c) for c in codes]
        notes = gaps + (
            [f"text among numbers drafted as missing codes: {', '.join(map(repr, codes))}"]
            if codes
            else []
        )
        extra = {"missing_codes": missing_codes} if missing_codes else {}
        integers = all(float(v).is_integer() for v in distinct)
        if len(distinct) == 1:
            return DraftColumn(
                name, None, [f"one value only ({_level(str(distinct[0]))!r}): left out"]
            )
        if integers and len(distinct) == len(numbers) >= 50:
            return DraftColumn(name, None, ["every value differs: an identifier? left out"])
        if len(distinct) == 2 and integers:
            levels = [_level(str(v)) for v in distinct]
            feature = {"name": name, "type": "binary", **extra}
            if levels != [0, 1]:
                feature["levels"] = levels
            notes.append(f"two values, {levels[0]!r} and {levels[1]!r}: check which is positive")
            return DraftColumn(name, feature, notes)
        if integers and 2 < len(distinct) <= MAX_CODES:
            levels = [_level(str(v)) for v in distinct]
            notes.append(
                f"{len(distinct)} integer codes: drafted as categorical (one-hot); make it "
                'type = "numeric" if it is a count or a score'
            )
            return DraftColumn(
                name, {"name": name, "type": "categorical", "levels": levels, **extra}, notes
            )
        low, high = _outward(min(distinct), max(distinct))
        notes.append(
            f"numeric; the data's range rounded outward to [{_fmt(low)}, {_fmt(high)}]: "
            "check it, and add the unit"
        )
        feature = {"name": name, "type": "numeric", "min": low, "max": high, **extra}
        return DraftColumn(name, feature, notes)
    levels = sorted({_level(v) for v in values}, key=_sort_key)
    if len(levels) > MAX_TEXT_LEVELS:
        return DraftColumn(
            name,
            None,
            [f"{len(levels)} distinct text values: an identifier or free text? left out"],
        )
    if len(levels) == 1:
        return DraftColumn(name, None, [f"one value only ({levels[0]!r}): left out"])
    if len(levels) == 2:
        words = [str(v).lower() for v in levels]
        if words[0] in _TRUE_WORDS and words[1] not in _TRUE_WORDS:
            levels = levels[::-1]
        notes = [*gaps, f"binary: negative {levels[0]!r}, positive {levels[1]!r} (check)"]
        return DraftColumn(name, {"name": name, "type": "binary", "levels": levels}, notes)
    notes = [*gaps, f"{len(levels)} levels, in this order (the first is dropped by drop-first)"]
    return DraftColumn(name, {"name": name, "type": "categorical", "levels": levels}, notes)


def _outward(low: float, high: float) -> tuple[float, float]:
    """``low`` down and ``high`` up to a multiple of a round step (the range's power of ten).

    The data's own minimum and maximum would describe two patients exactly;
    a contract only needs a range that admits the data.
    """
    spread = high - low
    magnitude = spread if spread > 0 else max(abs(low), abs(high), 1.0)
    exponent = math.floor(math.log10(magnitude))
    step = 10.0**exponent
    digits = max(0, -exponent)
    down = round(math.floor(low / step) * step, digits)
    up = round(math.ceil(high / step) * step, digits)
    return _tidy(down), _tidy(up)


def _tidy(value: float) -> float:
    return float(int(value)) if float(value).is_integer() else value


def _fmt(value: float) -> str:
    return f"{value:g}"


def contract_toml(draft: DraftContract) -> str:
    """The draft as TOML, with a comment on each column for its reviewer.

    The text loads back into the same contract (a test checks it).
    """
    lines = [
        "# Data contract drafted by `lhs-fed data infer-contract` from:",
        *(f"#   {file}" for file in draft.files),
        "# Review every column before a study uses it: types, units, ranges, levels and the",
        "# outcome's positive values are guesses from the data. Ranges are rounded outward.",
        "",
        _line("name", draft.name),
        'description = ""',
        f"# missing: {draft.missing_note}",
        _line("missing", draft.missing),
        'extra_columns = "ignore"',
        "",
        "[outcome]",
        *(f"# {note}" for note in draft.outcome_notes),
        *(_line(k, v) for k, v in draft.outcome.items()),
    ]
    for column in draft.columns:
        lines.append("")
        if column.feature is None:
            lines.append(f"# column {column.name!r}: {'; '.join(column.notes)}")
            continue
        lines += [f"# {note}" for note in column.notes]
        lines.append("[[features]]")
        lines += [_line(k, v) for k, v in column.feature.items()]
        if column.feature["type"] == "numeric":
            lines.append('unit = ""')
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # the draft is TOML, whatever the names and levels hold
    return text


def _line(key: str, value: Any) -> str:
    """``key = value`` with lists on one line, as people write contracts."""
    if isinstance(value, list):
        name = _scalar(key, 0).rsplit(" = ", 1)[0]  # the key, quoted if TOML needs it
        return f"{name} = [{', '.join(_scalar('v', v).split(' = ', 1)[1] for v in value)}]"
    return _scalar(key, value)


def _scalar(key: str, value: Any) -> str:
    return tomli_w.dumps({key: value}).strip()
