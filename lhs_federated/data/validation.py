"""Checking a site's table against its data contract.

Validation never stops at the first problem: a site's data team gets one report
listing every column, rule and the rows involved (``chol: 3 values outside
[100, 600] at rows 12, 40, 77``), so one pass over the file fixes everything.
Rows are numbered from 1 for the first data row, as a spreadsheet shows them
below its header.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from lhs_federated.data.contract import DataContract, Feature, Level
from lhs_federated.errors import DataError

MAX_ROWS_SHOWN = 10
MAX_ERRORS_SHOWN = 10
MAX_NAMES_SHOWN = 12
_DECIMAL_COMMA = re.compile(r"^[+-]?(\d+,\d*|,\d+)$")


@dataclass(frozen=True)
class Finding:
    """One rule broken (or worth a warning) in one column of one file."""

    file: str
    column: str
    rule: str
    severity: Literal["error", "warning"]
    rows: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"

    @property
    def problem(self) -> str:
        """The column, the rule and the rows, without the file (``chol: 3 values ...``)."""
        text = f"{self.column}: {self.rule}"
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:MAX_ROWS_SHOWN])
            more = len(self.rows) - MAX_ROWS_SHOWN
            text += f" at rows {shown}" + (f" and {more} more" if more > 0 else "")
        return text


@dataclass
class ValidationReport:
    """Everything found in one table, plus the number of rows checked."""

    file: str
    n_rows: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """Findings that make the table unusable for the study."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings the site should know about but that do not block it."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Whether the table meets the contract."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise one :class:`DataError` listing every error found.

        Raises
        ------
        DataError
            If any finding is an error.
        """
        if self.errors:
            raise DataError(self.error_summary())

    def error_summary(self) -> str:
        """One paragraph: the file once, the first errors, and how many more there are."""
        errors = self.errors
        shown = "; ".join(f.problem for f in errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        if more > 0:
            shown += (
                f"; and {more} more (`lhs-fed data validate --contract CONTRACT FILE` "
                "lists them all)"
            )
        return (
            f"{self.file} does not meet its data contract "
            f"({len(errors)} problem{'s' if len(errors) > 1 else ''}): {shown}. Fix the "
            "data, or the contract if it is the contract that is wrong."
        )


def validate_table(
    table: pd.DataFrame, contract: DataContract, *, file: str, with_outcome: bool = True
) -> ValidationReport:
    """Check every column and row of ``table`` against ``contract``.

    Parameters
    ----------
    table : DataFrame
        The site's raw table, as read (strings or numbers).
    contract : DataContract
        What the table must hold.
    file : str
        The file (or site) named in the findings.
    with_outcome : bool
        Whether the outcome column is required (not when applying a model).

    Returns
    -------
    ValidationReport
        All findings; use :meth:`ValidationReport.raise_for_errors` to stop on
        errors.
    """
    report = ValidationReport(file=file, n_rows=len(table))

    def add(
        column: str, rule: str, severity: str = "error", rows: np.ndarray | None = None
    ) -> None:
        numbers = () if rows is None else tuple(int(r) + 1 for r in np.flatnonzero(rows))
        report.findings.append(Finding(file, column, rule, severity, numbers))  # type: ignore[arg-type]

    if len(table) == 0:
        add("(table)", "the table has no data rows")
        return report
    required = contract.columns if with_outcome else contract.columns[:-1]
    found = [str(c) for c in table.columns]
    missing_columns = [c for c in required if c not in table.columns]
    if missing_columns:
        add(names_list(missing_columns), _missing_columns_rule(missing_columns, contract, found))
    extra = [c for c in found if c not in contract.columns]
    if extra:
        severity = "error" if contract.extra_columns == "error" else "warning"
        add(names_list(extra), f"{len(extra)} columns not in the contract (not used)", severity)

    for feature in contract.features:
        if feature.name in table.columns:
            _check_feature(table[feature.name], feature, contract, add)
    if with_outcome and contract.outcome.column in table.columns:
        _check_outcome(table[contract.outcome.column], contract, add)
    return report


def training_size_findings(
    file: str,
    n_rows: int,
    n_positive: int,
    *,
    rows_to_train: int,
    min_cell_size: int,
    test_fraction: float,
    outcome: str,
) -> list[Finding]:
    """Warnings about a site whose usable rows are too few to train on, or one-sided.

    Parameters
    ----------
    file : str
        The table, as findings name it.
    n_rows, n_positive : int
        Rows left once the contract's missing-value policy has applied, and
        their positive cases.
    rows_to_train : int
        Fewest training rows a site trains on
        (:meth:`~lhs_federated.privacy.spec.PrivacySpec.rows_to_train`).
    min_cell_size : int
        The site's minimum cell size.
    test_fraction : float
        Share of the rows a study holds out for testing.
    outcome : str
        The outcome column (named in class findings).
    """
    found = []
    n_train = n_rows - math.ceil(test_fraction * n_rows)  # scikit-learn's split sizes
    if n_train < rows_to_train:
        found.append(
            Finding(
                file,
                "(rows)",
                f"{n_rows} usable rows leave {n_train} training rows (test_fraction "
                f"{test_fraction:g}), fewer than {rows_to_train} (privacy.min_train_rows or "
                "the minimum cell size): this site will refuse to train; it can still be scored",
                "warning",
            )
        )
    for label, count in (("positive", n_positive), ("negative", n_rows - n_positive)):
        if count < 2:
            rule = (
                f"{count} {label} row{'s' if count != 1 else ''}: the train/test split cannot be "
                f"stratified, and one of its parts holds no {label} case"
            )
        elif count < min_cell_size:
            rule = (
                f"{count} {label} rows, fewer than the minimum cell size {min_cell_size}: "
                "counts and metrics on them are withheld, and the model learns little from them"
            )
        else:
            continue
        found.append(Finding(file, outcome, rule, "warning"))
    return found


def names_list(names: list[str], limit: int = MAX_NAMES_SHOWN) -> str:
    """``a, b, c and 4 more``: a list of names kept to one readable line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _missing_columns_rule(missing: list[str], contract: DataContract, found: list[str]) -> str:
    """Which contract columns are missing, said once, with the header found and near misses."""
    outcome = contract.outcome.column in missing
    if len(missing) == 1:
        what = f"{'outcome' if outcome else 'feature'} column is missing"
    else:
        what = f"{len(missing)} of the contract's {len(contract.columns)} columns are missing" + (
            " (the outcome among them)" if outcome else ""
        )
    lowered = {name.lower(): name for name in found}
    near = {}
    for column in missing:
        match = lowered.get(column.lower()) or next(
            iter(difflib.get_close_matches(column, found, n=1, cutoff=0.8)), None
        )
        if match is not None:
            near[column] = match
    text = f"{what}; the table's columns: {names_list(found)}"
    if near:
        pairs = ", ".join(f"{found_as!r} for {column!r}" for column, found_as in near.items())
        text += f"; did you mean {pairs}?"
    return text


def _check_feature(column: pd.Series, feature: Feature, contract: DataContract, add) -> None:
    name = feature.name
    values = column.where(~matches_levels(column, feature.missing_codes))
    missing = values.isna().to_numpy()
    if missing.any():
        if contract.missing == "error":
            add(
                name,
                f"{int(missing.sum())} missing values (contract: missing = 'error')",
                rows=missing,
            )
        else:
            policy = "dropped" if contract.missing == "drop-row" else "imputed"
            add(name, f"{int(missing.sum())} missing values ({policy})", "warning", rows=missing)
    present = ~missing
    if feature.type == "numeric":
        numbers = pd.to_numeric(values, errors="coerce")
        non_numeric = present & numbers.isna().to_numpy()
        if non_numeric.any():
            unique = pd.unique(values[non_numeric])
            examples = ", ".join(repr(v) for v in unique[:3])
            hint = ""
            if all(_DECIMAL_COMMA.match(str(v).strip()) for v in unique[:3]):
                hint = '; decimal commas? set `[data] csv_decimal = ","`'
            add(
                name,
                f"{int(non_numeric.sum())} non-numeric values ({examples}{hint})",
                rows=non_numeric,
            )
        numbers = numbers.to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            low = feature.min if feature.min is not None else -np.inf
            high = feature.max if feature.max is not None else np.inf
            outside = present & ~non_numeric & ((numbers < low) | (numbers > high))
        if outside.any():
            add(
                name,
                f"{int(outside.sum())} values outside [{_fmt(low)}, {_fmt(high)}]"
                + (f" {feature.unit}" if feature.unit else ""),
                rows=outside,
            )
        return
    levels = feature.levels if feature.type == "categorical" else feature.binary_levels
    unknown = present & ~matches_levels(values, levels).to_numpy()
    if unknown.any():
        examples = ", ".join(repr(v) for v in pd.unique(values[unknown])[:3])
        add(
            name,
            f"{int(unknown.sum())} values not among the levels "
            f"{names_list([repr(v) for v in levels])} ({examples})",
            rows=unknown,
        )


def _check_outcome(column: pd.Series, contract: DataContract, add) -> None:
    outcome = contract.outcome
    name = outcome.column
    missing = column.isna().to_numpy()
    if missing.any():
        add(name, f"{int(missing.sum())} missing outcome values", rows=missing)
    positive = matches_levels(column, outcome.positive).to_numpy()
    negative = matches_levels(column, outcome.negative).to_numpy()
    unknown = ~missing & ~positive & ~negative
    if unknown.any():
        examples = ", ".join(repr(v) for v in pd.unique(column[unknown])[:3])
        add(
            name,
            f"{int(unknown.sum())} outcome values neither positive "
            f"{list(outcome.positive)} nor negative {list(outcome.negative)} ({examples})",
            rows=unknown,
        )
    n_pos, n_neg = int(positive.sum()), int(negative.sum())
    if (n_pos == 0) != (n_neg == 0):
        present = "positive" if n_pos else "negative"
        add(
            name,
            f"only one outcome class: all {n_pos + n_neg} labelled rows are {present}; "
            "a site needs both outcomes to train a prediction model",
        )


def matches_levels(column: pd.Series, levels: tuple[Level, ...]) -> pd.Series:
    """Whether each value equals one of ``levels`` (numbers compared as numbers).

    CSV values arrive as text ("1", "1.0") and Parquet values as numbers, so a
    numeric level matches any value that parses to the same number.
    """
    if not levels:
        return pd.Series(False, index=column.index)
    numeric_levels = [float(v) for v in levels if not isinstance(v, str)]
    text_levels = {v for v in levels if isinstance(v, str)}
    result = np.zeros(len(column), dtype=bool)
    if text_levels:
        # Text compared as text; a column already of strings needs no conversion
        # (the conversion is most of the cost of validating a small site's table).
        text = (
            column
            if pd.api.types.infer_dtype(column, skipna=True) in ("string", "empty")
            else column.astype("string")
        )
        result |= text.isin(text_levels).to_numpy(dtype=bool, na_value=False)
    if numeric_levels:
        numbers = column if pd.api.types.is_numeric_dtype(column) else None
        if numbers is None:
            numbers = pd.to_numeric(column, errors="coerce")
        result |= np.isin(numbers.to_numpy(dtype=float, na_value=np.nan), numeric_levels)
    return pd.Series(result, index=column.index)


def _fmt(value: float) -> str:
    if np.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:g}"
