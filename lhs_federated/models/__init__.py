"""Model families, parameter conversion and export of released models."""

from lhs_federated.models.families import MODEL_FAMILIES, build_model
from lhs_federated.models.parameters import get_arrays, set_arrays

__all__ = ["MODEL_FAMILIES", "build_model", "get_arrays", "set_arrays"]
