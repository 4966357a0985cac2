"""The rules of the egress guard: what may leave a site, and what is suppressed.

The guard (a ClientApp mod, :mod:`lhs_federated.apps.egress`) hands every
reply's content to these functions as plain Python values before the reply
leaves. The rules:

- model arrays must have exactly the names, shapes and dtypes of the study's
  model: no extra array (a row of data, a copy of a column), none missing;
- metrics must use declared keys only, each a single finite-or-NaN number
  (a list could carry rows);
- counts of people below the site's minimum cell size are suppressed: query
  counts are withheld, column sums of small cells zeroed, and an evaluation on
  fewer test rows than the minimum is withheld whole (its metrics NaN with the
  reason, its weight 0), as is a prevalence revealing a small number of cases;
- a training update computed from fewer rows than the minimum is blocked.

Problems are collected as :class:`Problem` (a category, and a detail that may
quote what the reply held). The site's log gets the details; the coordinator
only gets the categories, since a detail could itself be leaked data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from lhs_federated.data.statistics import ColumnSums
from lhs_federated.errors import LhsError
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.site import n_features
from lhs_federated.study import Study

ArraySpec = tuple[tuple[int, ...], str]  # shape, numpy dtype string


@dataclass(frozen=True)
class Problem:
    """One reason to block a reply.

    Attributes
    ----------
    category : str
        What kind of problem ("unexpected array"); safe to send to the coordinator.
    detail : str
        Which key or array and what it held; for the site's log only.
    """

    category: str
    detail: str


class EgressBlocked(LhsError):  # noqa: N818 - a block is a decision, not a fault
    """The egress guard stopped a reply.

    Parameters
    ----------
    site : str
        The site whose reply was stopped.
    what : str
        The kind of reply ("train reply").
    problems : list of Problem
        Everything wrong with it.
    """

    def __init__(self, site: str, what: str, problems: list[Problem]) -> None:
        counts = Counter(p.category for p in problems)
        summary = ", ".join(f"{n} x {category}" for category, n in sorted(counts.items()))
        super().__init__(
            f"site {site!r}: the egress guard blocked its {what} ({summary}); the reply did "
            "not leave the site, and the details are in the site's log."
        )
        self.site = site
        self.problems = problems


@lru_cache(maxsize=16)
def _model_specs(study_json: str) -> dict[str, ArraySpec]:
    study = Study.from_json(study_json, source="the study of a reply")
    arrays = get_arrays(build_model(study.model, n_features(study), seed=study.seed))
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def model_array_specs(study: Study) -> dict[str, ArraySpec]:
    """Names, shapes and dtypes of the study's model parameters (plain names)."""
    return dict(_model_specs(study.to_json()))


def array_problems(
    expected: Mapping[str, ArraySpec], got: Mapping[str, ArraySpec]
) -> list[Problem]:
    """Differences between the arrays a reply holds and the study model's."""
    problems = [
        Problem("unexpected array", f"array {name!r}") for name in got if name not in expected
    ]
    problems += [
        Problem("missing array", f"array {name!r}") for name in expected if name not in got
    ]
    for name, spec in got.items():
        if name in expected and tuple(spec[0]) != expected[name][0]:
            problems.append(
                Problem("array of the wrong shape", f"{name!r}: {spec[0]} not {expected[name][0]}")
            )
        if name in expected and spec[1] != expected[name][1]:
            problems.append(
                Problem("array of the wrong dtype", f"{name!r}: {spec[1]} not {expected[name][1]}")
            )
    return problems


def metric_problems(
    allowed: Collection[str], metrics: Mapping[str, Any], *, what: str
) -> list[Problem]:
    """Undeclared keys and non-scalar values in a metric record."""
    problems = [
        Problem("unexpected metric", f"{what} key {key!r}") for key in metrics if key not in allowed
    ]
    for key, value in metrics.items():
        if key in allowed and not _is_number(value):
            problems.append(Problem("metric that is not one number", f"{what} {key!r}"))
    return problems


def suppress_counts(counts: Mapping[str, Any], min_cell_size: int) -> dict[str, Any]:
    """Counts with every value below the minimum cell size withheld."""
    return {key: value for key, value in counts.items() if value >= min_cell_size}


def suppress_evaluation(
    values: Mapping[str, float],
    undefined: Mapping[str, str],
    *,
    n_key: str,
    weight_keys: tuple[str, ...],
    min_cell_size: int,
) -> tuple[dict[str, float], dict[str, str]]:
    """An evaluation with its small counts suppressed.

    Fewer test rows than the minimum: every metric is withheld (NaN with the
    reason) and the weights become 0, so aggregation skips the site. Otherwise
    the prevalence is withheld if the number of positive or of negative test
    cases is between 1 and the minimum (it would give that number away).
    Reasons are cut to a fixed length, since a free-text field could carry data.
    """
    values, undefined = dict(values), dict(undefined)
    n = values.get(n_key, math.nan)
    if not math.isnan(n) and n < min_cell_size:
        reason = f"withheld: fewer test rows than the site's minimum cell size ({min_cell_size})"
        for key in values:
            if key in weight_keys:
                values[key] = 0
            else:
                values[key] = math.nan
                undefined[key] = reason
        return values, undefined
    prevalence = values.get("prevalence", math.nan)
    if not math.isnan(n) and not math.isnan(prevalence):
        positives = round(prevalence * n)
        if 0 < positives < min_cell_size or 0 < n - positives < min_cell_size:
            values["prevalence"] = math.nan
            undefined["prevalence"] = (
                "withheld: fewer positive or negative test cases than the site's minimum "
                f"cell size ({min_cell_size})"
            )
    return values, undefined


def reason_problems(
    undefined: Mapping[str, Any], allowed: Collection[str], limit: int
) -> list[Problem]:
    """Undeclared keys, non-text or overlong reasons in an evaluation's reasons."""
    problems = []
    for key, reason in undefined.items():
        if key not in allowed:
            problems.append(Problem("unexpected reason", f"reason key {key!r}"))
        elif not isinstance(reason, str) or len(reason) > limit:
            problems.append(Problem("reason that is not short text", f"reason of {key!r}"))
    return problems


def suppress_sums(
    sums: Mapping[str, list[float]], keys: tuple[str, str, str], width: int, min_cell_size: int
) -> tuple[dict[str, list[float]], list[Problem]]:
    """Column sums with small cells zeroed, or the problems that block them."""
    if set(sums) != set(keys) or any(
        not isinstance(sums[k], list) or len(sums[k]) != width for k in keys
    ):
        return {}, [Problem("malformed column sums", f"keys {sorted(sums)}")]
    parts = [np.asarray(sums[k], dtype=float) for k in keys]
    suppressed = ColumnSums(*parts).suppress_small_cells(min_cell_size)
    return {
        keys[0]: suppressed.count.tolist(),
        keys[1]: suppressed.total.tolist(),
        keys[2]: suppressed.total_sq.tolist(),
    }, []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
