"""Local training and prediction at one site, in plain PyTorch.

This is the loop every site runs each round: a seeded shuffle, mini-batches,
binary cross-entropy on the logits and, when the strategy asks for it
(FedProx's ``proximal-mu``), the proximal term ``mu/2 * ||w - w_global||^2``
that keeps a site's update close to the global model (Li et al., 2020).
All randomness comes from the seed passed in, inside a forked random state, so
a site's update depends only on (study seed, site, round), not on which engine
or process runs it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lhs_federated.errors import TrainingDivergedError, TrainingWarning
from lhs_federated.learning.parameters import get_arrays
from lhs_federated.study import TrainingSpec

# The mean binary cross-entropy of predicting 1/2 for everyone is ln 2 (0.69); a
# loss ten times that is far worse than no model: the optimiser is diverging
# (too high a learning rate, unscaled inputs) rather than learning.
DIVERGED_LOSS = 10 * math.log(2)
GROWTH = 10.0  # a round whose loss ends this many times above its start diverges


@dataclass(frozen=True)
class LocalUpdate:
    """What one round of local training produced.

    Attributes
    ----------
    arrays : dict of str to ndarray
        The updated parameters.
    n_examples : int
        Training rows used (the aggregation weight).
    loss : float
        Mean training loss over the steps (without the proximal term).
    steps : int
        Optimiser steps taken.
    privacy_history : tuple
        DP-SGD only: the study's Opacus accountant history after this round.
    """

    arrays: dict[str, np.ndarray]
    n_examples: int
    loss: float
    steps: int
    privacy_history: tuple[tuple[float, float, int], ...] = ()


def make_optimizer(model: nn.Module, spec: TrainingSpec) -> torch.optim.Optimizer:
    """The local optimiser named by the study."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=spec.learning_rate,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
    )


def planned_steps(n_rows: int, spec: TrainingSpec) -> int:
    """Optimiser steps one round takes at a site with ``n_rows`` training rows."""
    if spec.steps is not None:
        return spec.steps
    return (spec.epochs or 1) * math.ceil(n_rows / min(spec.batch_size, n_rows))


def train_local(
    model: nn.Module,
    features: np.ndarray,
    outcome: np.ndarray,
    spec: TrainingSpec,
    *,
    seed: int,
    proximal_mu: float = 0.0,
    correction: dict[str, np.ndarray] | None = None,
) -> LocalUpdate:
    """Train ``model`` in place on one site's rows for one round.

    Parameters
    ----------
    model : nn.Module
        Holds the global parameters on entry and the site's update on return.
    features : ndarray of shape (n, d), float32
        Imputed, scaled inputs.
    outcome : ndarray of shape (n,)
        0/1 outcomes.
    spec : TrainingSpec
        Epochs or steps, batch size, optimiser and learning rate.
    seed : int
        Seed of the shuffling (and dropout) of this site in this round.
    proximal_mu : float
        FedProx's proximal weight; 0 trains plain FedAvg-style.
    correction : dict of str to ndarray, optional
        SCAFFOLD's drift correction ``c - c_i`` per parameter name, added to
        every step's gradient through the linear loss term ``<w, c - c_i>``.
    """
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(outcome, dtype=np.float32))
    n = len(y)
    batch = min(spec.batch_size, n)
    total_steps = planned_steps(n, spec)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    linear = [
        (p, torch.as_tensor(correction[name], dtype=p.dtype))
        for name, p in model.named_parameters()
        if correction is not None
    ]
    optimizer = make_optimizer(model, spec)
    criterion = nn.BCEWithLogitsLoss()
    losses: list[float] = []
    step_rows: list[int] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: manual_seed also seeds CUDA
        while len(losses) < total_steps:
            order = torch.randperm(n)
            for start in range(0, n, batch):
                rows = order[start : start + batch]
                optimizer.zero_grad()
                loss = criterion(model(x[rows]), y[rows])
                total = loss
                if anchor:
                    drift = sum(
                        ((p - a) ** 2).sum()
                        for p, a in zip(model.parameters(), anchor, strict=True)
                    )
                    total = loss + 0.5 * proximal_mu * drift
                if linear:
                    total = total + sum((p * c).sum() for p, c in linear)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"training diverged: the loss became {value} at step {len(losses) + 1} "
                        f"of {total_steps} ({_remedy(spec)}); the update is not sent"
                    )
                total.backward()
                optimizer.step()
                losses.append(value)
                step_rows.append(len(rows))
                if len(losses) == total_steps:
                    break
    check_losses(losses, spec, rows=step_rows, epoch_steps=math.ceil(n / batch))
    return LocalUpdate(get_arrays(model), n, float(np.mean(losses)), total_steps)


def check_losses(
    losses: list[float],
    spec: TrainingSpec,
    *,
    rows: list[int] | None = None,
    epoch_steps: int = 1,
) -> None:
    """Stop an update whose training diverged; warn about one that recovered.

    Diverged: the loss at the end of the round is above :data:`DIVERGED_LOSS`,
    or above ln 2 after growing :data:`GROWTH`-fold from the start of the
    round. Recovered: a step's loss passed :data:`DIVERGED_LOSS` but the round
    ended below it.

    The start and the end are row-weighted means over windows of a tenth of
    the steps, widened to an epoch (at most half the round): one minibatch's
    loss is no measure of a model. A round of five steps from a noisy
    client-DP aggregate once "ended at 6.95" on a last batch of a few rows
    while its epoch's loss was 3.9.

    Parameters
    ----------
    losses : list of float
        The loss of every step.
    spec : TrainingSpec
        Named in the remedy.
    rows : list of int, optional
        Rows in each step's batch (default: equal batches).
    epoch_steps : int
        Steps in one pass over the site's rows.

    Raises
    ------
    TrainingDivergedError
        With the losses and what to change, as the site's reply to the round.
    """
    weights = np.asarray(rows if rows is not None else [1] * len(losses), dtype=float)
    window = max(1, len(losses) // 10, min(epoch_steps, len(losses) // 2))
    start = float(np.average(losses[:window], weights=weights[:window]))
    end = float(np.average(losses[-window:], weights=weights[-window:]))
    growing = end > GROWTH * start and end > math.log(2)
    if end > DIVERGED_LOSS or growing:
        raise TrainingDivergedError(
            f"training diverged: the loss ended the round at {end:.3g} after starting at "
            f"{start:.3g} ({len(losses)} steps; a constant prediction scores 0.693; "
            f"{_remedy(spec)}); the update is not sent"
        )
    peak = max(losses)
    if peak > DIVERGED_LOSS:
        warnings.warn(
            f"local training was unstable: the loss reached {peak:.3g} before ending at "
            f"{end:.3g} ({_remedy(spec)})",
            TrainingWarning,
            stacklevel=3,
        )


def _remedy(spec: TrainingSpec) -> str:
    return (
        f"lower training.learning_rate, now {spec.learning_rate:g}, or standardise the inputs "
        "(preprocessing.scaling = 'federated')"
    )


def predict_proba(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Predicted probability of the positive class for each row (float64)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
    return torch.sigmoid(logits.double()).numpy()
