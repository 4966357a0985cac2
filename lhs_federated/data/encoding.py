"""From a validated table to the numeric matrix a model trains on.

Encoding is fixed by the contract alone: numeric columns pass through, binary
columns become 0/1 and categorical columns become one indicator per level
listed in the contract (optionally without the first level, as FLamby does).
Every site therefore produces the same columns in the same order, whatever
levels its own data happen to contain. Missing values stay NaN here; they are
imputed later from statistics (federated or the site's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from lhs_federated.data.contract import DataContract, Feature, Level
from lhs_federated.data.statistics import EncodedColumn
from lhs_federated.data.validation import matches_levels, validate_table
from lhs_federated.errors import DataError

OneHot = Literal["all-levels", "drop-first"]


@dataclass(frozen=True)
class SiteTable:
    """A site's rows cleaned per its contract.

    Attributes
    ----------
    site : str
        The site's name.
    source : str
        Where the rows came from (a file, or a description of generated data).
    features : ndarray of shape (n_rows, n_features)
        Encoded inputs, float64; NaN marks a value to impute.
    outcome : ndarray of shape (n_rows,)
        1 for the positive class, 0 otherwise.
    n_dropped : int
        Rows dropped because a feature was missing (``missing = "drop-row"``).
    """

    site: str
    source: str
    features: np.ndarray
    outcome: np.ndarray
    n_dropped: int = 0

    def subset(self, rows: np.ndarray) -> SiteTable:
        """The same site restricted to ``rows`` (indices or a boolean mask)."""
        return SiteTable(self.site, self.source, self.features[rows], self.outcome[rows])


def encoded_feature_names(contract: DataContract, one_hot: OneHot) -> list[str]:
    """Names of the encoded columns, in model input order."""
    names: list[str] = []
    for feature in contract.features:
        if feature.type == "categorical":
            levels = feature.levels or ()
            kept = levels[1:] if one_hot == "drop-first" else levels
            names.extend(f"{feature.name}={level}" for level in kept)
        else:
            names.append(feature.name)
    return names


def encoded_columns(contract: DataContract, one_hot: OneHot) -> list[EncodedColumn]:
    """The encoded columns as the coordinator knows them: name, kind, valid range."""
    columns: list[EncodedColumn] = []
    names = iter(encoded_feature_names(contract, one_hot))
    for feature in contract.features:
        if feature.type == "numeric":
            columns.append(EncodedColumn(next(names), False, feature.min, feature.max))
            continue
        kept = 1
        if feature.type == "categorical":
            kept = len(feature.levels or ()) - (1 if one_hot == "drop-first" else 0)
        columns += [EncodedColumn(next(names), True) for _ in range(kept)]
    return columns


def prepare_table(
    table: pd.DataFrame, contract: DataContract, *, site: str, source: str, one_hot: OneHot
) -> SiteTable:
    """Validate a raw table, apply the missing-value policy and encode it.

    Raises
    ------
    DataError
        If the table breaks the contract, or if no rows (or only one outcome
        class) remain after dropping rows with missing values; the message
        names the site and the file.
    """
    validate_table(table, contract, file=source).raise_for_errors()
    features = encode_features(table, contract, one_hot)
    outcome = matches_levels(table[contract.outcome.column], contract.outcome.positive)
    return finish_table(features, outcome.to_numpy(dtype=np.int64), contract, site, source)


def finish_table(
    features: np.ndarray, outcome: np.ndarray, contract: DataContract, site: str, source: str
) -> SiteTable:
    """A validated site's encoded rows after its missing-value policy.

    Raises
    ------
    DataError
        If no rows (or only one outcome class) remain after dropping rows with
        missing values.
    """
    keep = np.ones(len(outcome), dtype=bool)
    if contract.missing == "drop-row":
        keep = ~np.isnan(features).any(axis=1)
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise DataError(
            f"site {site!r} ({source}) has no rows left after dropping the "
            f"{n_dropped} rows with a missing feature value (contract: missing = "
            "'drop-row'). Fill the gaps or use missing = 'impute'."
        )
    outcome = outcome[keep]
    if outcome.min() == outcome.max():
        raise DataError(
            f"site {site!r} ({source}): after dropping rows with missing values only "
            f"outcome class {int(outcome[0])} remains ({len(outcome)} rows); a site "
            "needs both outcomes to train."
        )
    features = features[keep]
    return SiteTable(site, source, features, outcome, n_dropped)


def encode_features(table: pd.DataFrame, contract: DataContract, one_hot: OneHot) -> np.ndarray:
    """Encode a validated table's feature columns into a float64 matrix.

    Missing values and the contract's missing codes become NaN, in every
    indicator column of a categorical feature.
    """
    blocks = []
    for feature in contract.features:
        column = _missing_to_nan(table[feature.name], feature)
        absent = column.isna().to_numpy()
        if feature.type == "numeric":
            blocks.append(pd.to_numeric(column, errors="coerce").to_numpy(float)[:, None])
            continue
        if feature.type == "binary":
            kept: tuple[Level, ...] = (feature.binary_levels[1],)
        else:
            levels = feature.levels or ()
            kept = levels[1:] if one_hot == "drop-first" else levels
        block = np.column_stack(
            [matches_levels(column, (level,)).to_numpy(float) for level in kept]
        )
        block[absent] = np.nan
        blocks.append(block)
    return np.hstack(blocks) if blocks else np.empty((len(table), 0))


def _missing_to_nan(column: pd.Series, feature: Feature) -> pd.Series:
    codes: tuple[Level, ...] = feature.missing_codes
    if not codes:
        return column
    return column.where(~matches_levels(column, codes))
