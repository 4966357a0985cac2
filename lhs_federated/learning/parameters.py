"""Model parameters as named numpy arrays: what travels between site and server.

Names are the ``state_dict`` keys with Opacus's ``_module.`` prefix removed, so
a model wrapped for differential privacy and a plain one exchange the same
arrays, and the server's aggregation never sees an engine-specific name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lhs_federated.errors import LhsError

_OPACUS_PREFIX = "_module."


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters and buffers, keyed by their plain names (copies)."""
    return {
        _plain_name(name): tensor.detach().cpu().numpy().copy()
        for name, tensor in model.state_dict().items()
    }


def change_from(start: dict[str, np.ndarray], end: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``end - start`` per array of ``start``, in float64: a round's change of the model.

    What secure aggregation sums (and distributed DP clips and noises):
    float64 so the difference of two float32 models loses nothing before it
    is quantised.
    """
    return {
        name: end[name].astype(np.float64) - value.astype(np.float64)
        for name, value in start.items()
    }


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into ``model``, checking names and shapes first.

    Raises
    ------
    LhsError
        If a name is missing or unexpected, or a shape differs; nothing is
        loaded in that case.
    """
    state = model.state_dict()
    plain_to_key = {_plain_name(key): key for key in state}
    expected, got = set(plain_to_key), set(arrays)
    if expected != got:
        raise LhsError(
            "model parameters do not match the study's model: "
            f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}.",
            exit_code=1,
        )
    for name, key in plain_to_key.items():
        if tuple(arrays[name].shape) != tuple(state[key].shape):
            raise LhsError(
                f"parameter {name!r} has shape {tuple(arrays[name].shape)}; the study's "
                f"model expects {tuple(state[key].shape)}.",
                exit_code=1,
            )
    model.load_state_dict(
        {
            key: torch.as_tensor(np.asarray(arrays[name]), dtype=state[key].dtype)
            for name, key in plain_to_key.items()
        }
    )


def _plain_name(name: str) -> str:
    return name.removeprefix(_OPACUS_PREFIX)
