"""What a site puts under SecAgg+ masks, as integers, and how the coordinator reads the sum.

Two payloads:

- a **model update**: the change of each parameter in the round, clipped to
  ``[-clipping_range, clipping_range]`` (a larger change is an error naming the
  setting, never a silent clip), stochastically rounded to
  ``quantization_range / (2 * clipping_range)`` steps, and multiplied by the
  site's training rows, with the rows and rows x training loss beside it; the
  coordinator divides the masked sum by the summed rows, giving the
  example-weighted FedAvg mean of the updates;
- the **federated statistics**: each column's count, sum and sum of squares
  in fixed point (``2**16`` steps per unit), summed exactly.

Each site's error is at most one quantisation step per parameter, so the
mean's error is at most ``2 * clipping_range / quantization_range`` (the
bound :func:`update_error_bound` states, which a test checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lhs_federated.apps.secagg import HALF, SecAggError, Vector
from lhs_federated.data.statistics import ColumnSums

WEIGHT, LOSS, PARAM_PREFIX = "secagg-weight", "secagg-loss", "update:"
COUNT, TOTAL, TOTAL_SQ = "stat-count", "stat-sum", "stat-sum-of-squares"
#: Fixed-point steps per unit of a training loss and of a column sum.
LOSS_SCALE = 2**20
STAT_SCALE = 2**16


@dataclass(frozen=True)
class Quantiser:
    """The study's quantisation of model updates (``[privacy.secagg]``)."""

    clipping_range: float
    quantization_range: int

    @property
    def steps_per_unit(self) -> float:
        """Integer steps per unit of a parameter change."""
        return self.quantization_range / (2 * self.clipping_range)


def update_error_bound(quantiser: Quantiser) -> float:
    """Largest difference between the decoded mean and the plain weighted mean, per parameter."""
    return 1.0 / quantiser.steps_per_unit


def update_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the integer vector of a model update with these parameters."""
    return {WEIGHT: (1,), LOSS: (1,), **{PARAM_PREFIX + n: s for n, s in shapes.items()}}


def statistics_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the integer vector of ``width`` columns' sums."""
    return {COUNT: (width,), TOTAL: (width,), TOTAL_SQ: (width,)}


def encode_update(
    delta: dict[str, np.ndarray],
    weight: int,
    loss: float,
    quantiser: Quantiser,
    rng: np.random.Generator,
) -> Vector:
    """A site's weighted, quantised update (NaN loss: sent as 0, as under sample-level DP).

    Raises
    ------
    SecAggError
        If a parameter changed by more than ``clipping_range``.
    """
    largest = max((float(np.abs(v).max(initial=0.0)) for v in delta.values()), default=0.0)
    if not math.isfinite(largest) or largest > quantiser.clipping_range:
        raise SecAggError(
            f"a parameter changed by {largest:.3g} in this round, beyond "
            f"privacy.secagg.clipping_range = {quantiser.clipping_range:g}; raise it (or lower "
            "training.learning_rate)"
        )
    vector = {
        WEIGHT: np.array([weight], dtype=np.int64),
        LOSS: np.array([0 if math.isnan(loss) else round(weight * loss * LOSS_SCALE)], np.int64),
    }
    for name, value in delta.items():
        scaled = np.asarray(value, dtype=np.float64) * quantiser.steps_per_unit
        floor = np.floor(scaled)
        rounded = floor + (rng.random(scaled.shape) < scaled - floor)
        vector[PARAM_PREFIX + name] = rounded.astype(np.int64) * weight
    _check_range(vector, "model update")
    return vector


def decode_update(total: Vector, quantiser: Quantiser) -> tuple[dict[str, np.ndarray], int, float]:
    """The weighted mean update, the summed weight and the weighted mean loss.

    Raises
    ------
    SecAggError
        If the summed weight is not positive (nothing was summed).
    """
    weight = int(total[WEIGHT][0])
    if weight <= 0:
        raise SecAggError(f"the summed training rows are {weight}; nothing to average")
    mean = {
        name.removeprefix(PARAM_PREFIX): value.astype(np.float64)
        / (weight * quantiser.steps_per_unit)
        for name, value in total.items()
        if name.startswith(PARAM_PREFIX)
    }
    return mean, weight, float(total[LOSS][0]) / (weight * LOSS_SCALE)


def encode_statistics(sums: ColumnSums) -> Vector:
    """A site's column counts, sums and sums of squares in fixed point."""
    vector = {
        COUNT: np.rint(sums.count).astype(np.int64),
        TOTAL: np.rint(sums.total * STAT_SCALE).astype(np.int64),
        TOTAL_SQ: np.rint(sums.total_sq * STAT_SCALE).astype(np.int64),
    }
    _check_range(vector, "column sums")
    return vector


def decode_statistics(total: Vector) -> ColumnSums:
    """The federation's column sums from the decoded secure sum."""
    return ColumnSums(
        total[COUNT].astype(float),
        total[TOTAL].astype(float) / STAT_SCALE,
        total[TOTAL_SQ].astype(float) / STAT_SCALE,
    )


def _check_range(vector: Vector, what: str) -> None:
    """A site's own values must leave room for a thousand sites' sum below 2**61."""
    largest = max(int(np.abs(v).max(initial=0)) for v in vector.values())
    if largest >= HALF // 1024:
        raise SecAggError(
            f"the site's {what} reach {largest}, too large to sum securely (the limit is "
            f"{HALF // 1024}); lower privacy.secagg.quantization_range"
        )
