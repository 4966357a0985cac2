"""Checking a site's table against its data contract.

Validation never stops at the first problem: a site's data team gets one report
listing every column, rule and the rows involved (``chol: 3 values outside
[100, 600] at rows 12, 40, 77``), so one pass over the file fixes everything.
Rows are numbered from 1 for the first data row, as a spreadsheet shows them
below its header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from lhs_federated.data.contract import DataContract, Feature, Level
from lhs_federated.errors import DataError

MAX_ROWS_SHOWN = 10


@dataclass(frozen=True)
class Finding:
    """One rule broken (or worth a warning) in one column of one file."""

    file: str
    column: str
    rule: str
    severity: Literal["error", "warning"]
    rows: tuple[int, ...] = ()

    def __str__(self) -> str:
        text = f"{self.file}: {self.column}: {self.rule}"
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
            lines = "; ".join(str(f) for f in self.errors)
            raise DataError(
                f"{self.file} does not meet its data contract "
                f"({len(self.errors)} problem{'s' if len(self.errors) > 1 else ''}): "
                f"{lines}. Fix the data, or the contract if it is the contract "
                "that is wrong."
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
    missing_columns = [c for c in required if c not in table.columns]
    for column in missing_columns:
        role = "outcome" if column == contract.outcome.column else "feature"
        add(
            column,
            f"{role} column is missing (columns found: {', '.join(map(str, table.columns))})",
        )
    extra = [str(c) for c in table.columns if c not in contract.columns]
    if extra:
        severity = "error" if contract.extra_columns == "error" else "warning"
        add(", ".join(extra), "columns not in the contract (not used)", severity)

    for feature in contract.features:
        if feature.name in table.columns:
            _check_feature(table[feature.name], feature, contract, add)
    if with_outcome and contract.outcome.column in table.columns:
        _check_outcome(table[contract.outcome.column], contract, add)
    return report


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
            examples = ", ".join(repr(v) for v in pd.unique(values[non_numeric])[:3])
            add(name, f"{int(non_numeric.sum())} non-numeric values ({examples})", rows=non_numeric)
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
            f"{', '.join(repr(v) for v in levels)} ({examples})",
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
    result = column.astype("string").isin(text_levels).fillna(False).astype(bool)
    if numeric_levels:
        numbers = pd.to_numeric(column, errors="coerce")
        result = result | numbers.isin(numeric_levels)
    return result


def _fmt(value: float) -> str:
    if np.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:g}"
