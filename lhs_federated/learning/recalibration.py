"""Clinical model updating by recalibration: the arithmetic, free of Flower.

A released model's risk can drift while its ranking of patients holds. The
standard first remedies (Steyerberg, *Clinical Prediction Models*, ch. 20)
refit only how the model's linear predictor ``lp`` maps to risk:

- ``in-the-large``: ``logit P(y) = a + lp`` (the intercept only);
- ``logistic``: ``logit P(y) = a + b * lp`` (intercept and slope).

Federated, the pooled maximum-likelihood fit is exact: each site sends the
score (gradient) and information (Hessian) of its rows' log-likelihood at the
current parameters, the coordinator sums them and takes a Newton step
(:func:`newton_step`); a few rounds reach the pooled fit to machine precision.
Both updates fold into the model's last linear layer
(:func:`fold_recalibration`), so a recalibrated release is a model of the same
shape, usable by every tool that used the old one. Per-site recalibration (the
personalised option) fits each site's own ``(a, b)`` on its rows alone; a
release keeps them beside its model (:data:`SITE_RECALIBRATION_FILE`) and a
site applies its own (:func:`personalise_risk`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

Recalibration = Literal["in-the-large", "logistic"]
METHODS: tuple[Recalibration, ...] = ("in-the-large", "logistic")
_EPS = 1e-7


def linear_predictor(probability: np.ndarray) -> np.ndarray:
    """``logit(p)``, clipped so that certain predictions stay finite."""
    p = np.clip(np.asarray(probability, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def identity(method: Recalibration) -> np.ndarray:
    """Parameters that leave the model as it is (``a = 0``, ``b = 1``)."""
    return np.zeros(1) if method == "in-the-large" else np.array([0.0, 1.0])


def _design(lp: np.ndarray, method: Recalibration) -> tuple[np.ndarray, np.ndarray]:
    if method == "in-the-large":
        return np.ones((len(lp), 1)), lp
    return np.column_stack([np.ones_like(lp), lp]), np.zeros_like(lp)


def score_and_information(
    y: np.ndarray, lp: np.ndarray, params: np.ndarray, method: Recalibration
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and information matrix of the log-likelihood at ``params``.

    Sums over rows, so sites' values add up to the pooled ones.
    """
    design, offset = _design(np.asarray(lp, dtype=float), method)
    mu = 1 / (1 + np.exp(-np.clip(offset + design @ params, -30, 30)))
    gradient = design.T @ (np.asarray(y, dtype=float) - mu)
    information = design.T @ (design * (mu * (1 - mu))[:, None])
    return gradient, information


def newton_step(params: np.ndarray, gradient: np.ndarray, information: np.ndarray) -> np.ndarray:
    """One Newton-Raphson step from summed gradients and information matrices."""
    ridge = 1e-10 * np.eye(len(params))
    return params + np.linalg.solve(information + ridge, gradient)


def fit_recalibration(
    y: np.ndarray, lp: np.ndarray, method: Recalibration, *, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood recalibration of one table: parameters and their covariance."""
    params = identity(method)
    for _ in range(iterations):
        gradient, information = score_and_information(y, lp, params, method)
        new = newton_step(params, gradient, information)
        done = np.max(np.abs(new - params)) < 1e-10
        params = new
        if done:
            break
    _, information = score_and_information(y, lp, params, method)
    return params, np.linalg.inv(information + 1e-10 * np.eye(len(params)))


def fold_recalibration(
    arrays: dict[str, np.ndarray], params: np.ndarray, method: Recalibration
) -> dict[str, np.ndarray]:
    """The model's arrays with the recalibration folded into its last linear layer.

    The output layer computes ``lp = W h + c``; ``a + b * lp`` is the layer
    ``(b W) h + (b c + a)``. Arrays are in model order, the output layer last.
    """
    names = list(arrays)
    weight, bias = names[-2], names[-1]
    if not (weight.endswith("weight") and bias.endswith("bias")):
        raise ValueError(f"the model's last arrays are not a linear layer: {names[-2:]}")
    a, b = (float(params[0]), 1.0) if method == "in-the-large" else map(float, params)
    folded = dict(arrays)
    folded[weight] = (b * arrays[weight]).astype(arrays[weight].dtype)
    folded[bias] = (b * arrays[bias] + a).astype(arrays[bias].dtype)
    return folded


#: A release's per-site recalibrations, beside its model files (the personalised option).
SITE_RECALIBRATION_FILE = "site-recalibration.json"


def read_site_recalibration(model_folder: Path) -> dict[str, list[float]]:
    """Each site's own ``(a, b)`` of a release (empty if it has none)."""
    path = Path(model_folder) / SITE_RECALIBRATION_FILE
    if not path.is_file():
        return {}
    return {str(k): [float(a), float(b)] for k, (a, b) in json.loads(path.read_text()).items()}


def compose(outer: list[float], inner: list[float] | None) -> list[float]:
    """``a2 + b2 * (a1 + b1 * lp)`` as one ``(a, b)``."""
    a1, b1 = inner if inner is not None else (0.0, 1.0)
    a2, b2 = outer
    return [a2 + b2 * a1, b2 * b1]


def personalise_risk(probability: np.ndarray, params: list[float] | None) -> np.ndarray:
    """A site's risk under its own recalibration ``(a, b)`` (unchanged without one)."""
    if params is None:
        return probability
    a, b = params
    return 1 / (1 + np.exp(-(a + b * linear_predictor(probability))))
