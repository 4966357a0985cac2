"""One round of local training with DP-SGD (Opacus), at the plan's fixed noise.

Each round builds a fresh :class:`opacus.PrivacyEngine`, restores the study's
accountant history into it, and calls ``make_private`` with the noise
multiplier of the study's plan (never ``make_private_with_epsilon``, which
would recalibrate for the full target every round and spend it again).
Batches are drawn by Poisson sampling, gradients are clipped per record and
noised by Opacus's optimiser; the accountant's history after the round is
returned so the site's ledger can record exactly what was spent.

Randomness: Opacus runs without ``secure_mode`` (torchcsprng has no build for
this Python), so noise comes from PyTorch's standard generator. Simulated
sites seed it from the study seed, making research runs reproducible; a
deployed site passes ``noise_seed=None`` and the generator is seeded from the
operating system, because noise derived from a published seed could be
subtracted by anyone who knows the seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lhs_federated.learning.parameters import get_arrays
from lhs_federated.learning.training import LocalUpdate, make_optimizer
from lhs_federated.privacy.accounting import DPPlan, History, merge_history
from lhs_federated.study import TrainingSpec

SECURE_RNG = False  # Opacus secure_mode needs torchcsprng, unavailable here.


class _Rows(Dataset):
    """A site's rows, fetched a batch at a time (no per-row Python work)."""

    def __init__(self, features: torch.Tensor, outcome: torch.Tensor) -> None:
        self.features = features
        self.outcome = outcome

    def __len__(self) -> int:
        return len(self.outcome)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.outcome[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        return self.features[rows], self.outcome[rows]


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


@dataclass(frozen=True)
class PrivateTraining:
    """What a site needs to train one round privately.

    Attributes
    ----------
    plan : DPPlan
        The study's noise plan at this site.
    history : tuple
        The study's accountant history before this round.
    noise_seed : int or None
        Seed of the DP noise; ``None`` draws it from the operating system.
    """

    plan: DPPlan
    history: History
    noise_seed: int | None


def train_private(
    model: nn.Module,
    features: np.ndarray,
    outcome: np.ndarray,
    spec: TrainingSpec,
    private: PrivateTraining,
    *,
    seed: int,
    proximal_mu: float = 0.0,
) -> LocalUpdate:
    """Train ``model`` for one round with DP-SGD.

    Parameters
    ----------
    model : nn.Module
        Holds the global parameters on entry; a plain module (not wrapped).
    features, outcome : ndarray
        The site's preprocessed training rows and 0/1 outcomes.
    spec : TrainingSpec
        Optimiser, learning rate and batch size (epochs/steps are in ``plan``).
    private : PrivateTraining
        The plan, the history so far and the noise seed.
    seed : int
        Seed of batch sampling and dropout for this site and round.
    proximal_mu : float
        FedProx's proximal weight. The proximal term does not depend on the
        data, so it is applied as a separate step after each private step
        (``w -= lr * mu * (w - w_global)``): Opacus only clips and noises
        per-record gradients, and would otherwise drop it.

    Returns
    -------
    LocalUpdate
        The updated arrays (plain names), rows, mean loss of the non-empty
        batches, steps, and the study's accountant history after this round.
    """
    plan = private.plan
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(outcome, dtype=np.float32))
    n = len(y)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    sampler = torch.Generator().manual_seed(seed)
    noise = torch.Generator()
    if private.noise_seed is None:
        noise.seed()
    else:
        noise.manual_seed(private.noise_seed)
    loader = DataLoader(
        _Rows(x, y), batch_size=min(spec.batch_size, n), generator=sampler, collate_fn=_as_batch
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Results state that Opacus ran without a secure RNG; the hook warning is
        # about inputs that need no gradient, which is how DP-SGD uses them.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant=plan.accountant, secure_mode=SECURE_RNG)
        engine.accountant.load_state_dict(
            {"history": [tuple(h) for h in private.history], "mechanism": plan.accountant}
        )
        torch.manual_seed(seed)
        private_model, optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=make_optimizer(model, spec),
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise,
        )
        if not math.isclose(private_loader.sample_rate, plan.sample_rate, rel_tol=1e-12):
            raise RuntimeError(
                f"Opacus samples at rate {private_loader.sample_rate}, the plan assumed "
                f"{plan.sample_rate}: the privacy accounting would not match the training"
            )
        losses = _run_steps(
            private_model, optimizer, private_loader, plan.steps_per_round, anchor, proximal_mu
        )
    arrays = get_arrays(private_model)
    after = merge_history(tuple(tuple(h) for h in engine.accountant.history))
    private_model._close()  # remove Opacus's hooks from the module
    loss = float(np.mean(losses)) if losses else float("nan")
    return LocalUpdate(arrays, n, loss, plan.steps_per_round, privacy_history=after)


def _run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    total_steps: int,
    anchor: list[torch.Tensor],
    proximal_mu: float,
) -> list[float]:
    """Take ``total_steps`` private steps; return the losses of non-empty batches."""
    criterion = nn.BCEWithLogitsLoss()
    learning_rate = optimizer.param_groups[0]["lr"]
    losses: list[float] = []
    steps = 0
    model.train()
    while steps < total_steps:
        for features, outcome in loader:
            optimizer.zero_grad()
            if len(outcome):
                loss = criterion(model(features), outcome)
                loss.backward()
                losses.append(float(loss.detach()))
            else:  # an empty Poisson batch still costs a (noise-only) step
                model(features).sum().backward()
            optimizer.step()
            if anchor:
                with torch.no_grad():
                    for parameter, start in zip(model.parameters(), anchor, strict=True):
                        parameter -= learning_rate * proximal_mu * (parameter - start)
            steps += 1
            if steps == total_steps:
                break
    return losses
