"""The data contract: what every site's table must look like.

A contract lists the outcome and each feature (numeric with a valid range and
unit, binary, or categorical with its levels) and the missing-value policy. It
is part of the study, so its hash is approved by every site, and it fixes the
model's input layout (one-hot levels come from the contract, never from a
site's data, so every site encodes identically).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from lhs_federated.config import build, read_toml, setting
from lhs_federated.errors import ConfigError

Level = int | float | str

DEFAULT_NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "?")


@dataclass(frozen=True)
class Feature:
    """One input column of the contract."""

    name: str = setting(doc="column name in the site's table")
    type: Literal["numeric", "binary", "categorical"] = setting(
        doc="numeric (a measurement), binary (0/1) or categorical (fixed levels)"
    )
    min: float | None = setting(None, doc="smallest valid value (numeric)")
    max: float | None = setting(None, doc="largest valid value (numeric)")
    unit: str = setting("", doc="unit of measurement, for people reading the contract")
    levels: tuple[Level, ...] | None = setting(
        None,
        doc="categorical: the allowed levels, in encoding order; "
        "binary: the negative then the positive level (default 0, 1)",
    )
    missing_codes: tuple[Level, ...] = setting(
        (), doc="values that mean 'not measured' (for example 0 for cholesterol)"
    )
    description: str = setting("", doc="what the column holds")

    def __post_init__(self) -> None:
        if self.type == "numeric":
            if self.levels is not None:
                raise ValueError(f"feature {self.name!r} is numeric and cannot have levels")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"feature {self.name!r} has min {self.min} above max {self.max}")
        elif self.min is not None or self.max is not None:
            raise ValueError(f"feature {self.name!r} is {self.type}: min/max apply to numeric only")
        if self.type == "categorical" and (not self.levels or len(self.levels) < 2):
            raise ValueError(
                f"categorical feature {self.name!r} needs at least two levels; got {self.levels!r}"
            )
        if self.type == "binary" and self.levels is not None and len(self.levels) != 2:
            raise ValueError(
                f"binary feature {self.name!r} needs exactly two levels "
                f"(negative, positive); got {self.levels!r}"
            )
        if self.levels is not None and len(set(self.levels)) != len(self.levels):
            raise ValueError(f"feature {self.name!r} lists a level twice: {self.levels!r}")

    @property
    def binary_levels(self) -> tuple[Level, Level]:
        """The (negative, positive) levels of a binary feature."""
        levels = self.levels or (0, 1)
        return levels[0], levels[1]


@dataclass(frozen=True)
class Outcome:
    """The outcome column and which of its values are the positive class."""

    column: str = setting(doc="outcome column name")
    positive: tuple[Level, ...] = setting(doc="values that mean the event happened")
    negative: tuple[Level, ...] = setting(doc="values that mean it did not")
    description: str = setting("", doc="what the outcome is")

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ValueError("outcome needs at least one positive and one negative value")
        overlap = set(self.positive) & set(self.negative)
        if overlap:
            raise ValueError(
                f"outcome values {sorted(map(str, overlap))} are both positive and negative"
            )


@dataclass(frozen=True)
class DataContract:
    """What each site's table must contain for a study."""

    name: str = setting(doc="short name of the contract")
    outcome: Outcome = setting(doc="the outcome column")
    features: tuple[Feature, ...] = setting(doc="the input columns, in model order")
    missing: Literal["error", "drop-row", "impute"] = setting(
        "error",
        doc="what a missing feature value means: an error, drop the row, or impute "
        "it from federated statistics",
    )
    extra_columns: Literal["ignore", "error"] = setting(
        "ignore", doc="whether columns the contract does not list are allowed"
    )
    na_values: tuple[str, ...] = setting(
        DEFAULT_NA_VALUES, doc="text that means a missing value in CSV files"
    )
    description: str = setting("", doc="what the data are")
    index_date: str | None = setting(
        None,
        doc="column holding each row's index date (ISO 8601, e.g. 2021-03-15), which "
        "places the row in a period; none: the data are one period",
    )
    period: Literal["quarter", "month", "year"] = setting(
        "quarter", doc="the periods index dates are grouped into (2021Q1, 2021-03, 2021)"
    )

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("a contract needs at least one feature")
        names = [feature.name for feature in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {', '.join(duplicated)}")
        if self.outcome.column in names:
            raise ValueError(f"outcome column {self.outcome.column!r} is also a feature")
        if self.index_date is not None and self.index_date in (*names, self.outcome.column):
            raise ValueError(f"index_date column {self.index_date!r} is also a feature or outcome")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a site's table must hold: features, the index date if any, the outcome."""
        dated = () if self.index_date is None else (self.index_date,)
        return (*(f.name for f in self.features), *dated, self.outcome.column)


def load_contract(path: str | Path) -> DataContract:
    """Read and check a contract TOML file.

    Raises
    ------
    ConfigError
        If the file is missing, is not TOML, or does not declare a valid
        contract (the message names the key).
    """
    table = read_toml(path, what="data contract")
    return build(DataContract, table, source=str(path))


def contract_from(value: DataContract | str | Path, *, base_dir: Path | None) -> DataContract:
    """Resolve a contract given inline, by built-in name or by file path.

    Parameters
    ----------
    value : DataContract, str or Path
        An already built contract, the name of a built-in contract
        (``"cardio-risk"``, ``"uci-heart"``) or a TOML file path.
    base_dir : Path, optional
        Directory that relative paths are taken from (the study file's).
    """
    if isinstance(value, DataContract):
        return value
    if str(value) in BUILTIN_CONTRACTS:
        return BUILTIN_CONTRACTS[str(value)]()
    path = Path(value)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.suffix == ".toml":
        raise ConfigError(
            f"data contract {str(value)!r} is neither a built-in contract "
            f"({', '.join(sorted(BUILTIN_CONTRACTS))}) nor a .toml file."
        )
    return load_contract(path)


def builtin_contract_text(name: str) -> str:
    """The TOML text of a contract shipped with the package (written beside synthetic data)."""
    resource = resources.files("lhs_federated.data") / "contracts" / f"{name}.toml"
    return resource.read_text(encoding="utf-8")


def _packaged(name: str) -> Callable[[], DataContract]:
    @cache
    def load() -> DataContract:
        table = tomllib.loads(builtin_contract_text(name))
        return build(DataContract, table, source=f"built-in contract {name!r}")

    return load


#: Contracts shipped with the package, so a fresh install runs without any files.
BUILTIN_CONTRACTS: dict[str, Callable[[], DataContract]] = {
    "cardio-risk": _packaged("cardio-risk"),
    "uci-heart": _packaged("uci-heart"),
}


#: How a period is written, for each kind of period a contract can name.
PERIOD_PATTERNS = {
    "quarter": r"\d{4}Q[1-4]",
    "month": r"\d{4}-(0[1-9]|1[0-2])",
    "year": r"\d{4}",
}
PERIOD_EXAMPLES = {"quarter": "2021Q3", "month": "2021-09", "year": "2021"}
