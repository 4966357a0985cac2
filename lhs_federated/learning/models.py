"""Model families, chosen by name from a registry.

Every family maps ``n_features`` inputs to one logit per row, so training,
evaluation and export treat them alike. Adding a family means adding one
builder to :data:`MODEL_FAMILIES`. No family uses BatchNorm, which Opacus
cannot train with differential privacy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lhs_federated.errors import ConfigError
from lhs_federated.study import ModelSpec, Study


class LogisticRegressionModel(nn.Module):
    """Logistic regression: one linear layer giving the log-odds."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-odds of the positive class, shape (n_rows,)."""
        return self.linear(features).squeeze(-1)


class MLPModel(nn.Module):
    """A multilayer perceptron with ReLU and optional dropout."""

    def __init__(self, n_features: int, hidden_layers: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for hidden in hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-odds of the positive class, shape (n_rows,)."""
        return self.layers(features).squeeze(-1)


MODEL_FAMILIES: dict[str, Callable[[ModelSpec, int], nn.Module]] = {
    "logistic": lambda spec, n_features: LogisticRegressionModel(n_features),
    "mlp": lambda spec, n_features: MLPModel(n_features, spec.hidden_layers, spec.dropout),
}


def build_model(spec: ModelSpec, n_features: int, *, seed: int) -> nn.Module:
    """Build a freshly initialised model of the study's family.

    Initialisation uses its own seeded random stream, leaving torch's global
    random state as it was, so the server's initial model is the same on every
    engine and in every process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return MODEL_FAMILIES[spec.name](spec, n_features)


def check_model_family(study: Study, source: str) -> None:
    """Check the study's ``model.name`` against the registry (at study load).

    Raises
    ------
    ConfigError
        If the name is not a model family.
    """
    if study.model.name not in MODEL_FAMILIES:
        raise ConfigError(
            f"{source}: model.name {study.model.name!r} is not a model family; "
            f"choose one of {', '.join(sorted(MODEL_FAMILIES))}."
        )
