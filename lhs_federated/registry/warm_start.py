"""An update study's starting point: a verified release whose inputs match the study.

``[model] warm_start = "registry:NAME@VERSION"`` starts the federation from the
release's weights *and* its preprocessing statistics (weights mean nothing
under other scalings), after checking the release against its signed
manifest and that it was trained on exactly the study's encoded inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lhs_federated.data.encoding import encoded_feature_names
from lhs_federated.data.statistics import Standardizer
from lhs_federated.errors import ConfigError
from lhs_federated.learning.export import ReleasedModel
from lhs_federated.registry.store import Registry, ReleaseRef
from lhs_federated.study import Study


@dataclass(frozen=True)
class WarmStart:
    """The release an update starts from."""

    ref: ReleaseRef
    folder: Path
    arrays: dict[str, np.ndarray]
    standardizer: Standardizer | None


def load_warm_start(study: Study) -> WarmStart | None:
    """The study's warm start, verified and checked (None if it starts fresh).

    Raises
    ------
    ConfigError
        If the release does not exist, or its model family or input columns
        differ from the study's (the message names both).
    ReleaseVerificationError
        If the release's files do not match its signed manifest.
    """
    spec = study.model
    if spec.warm_start is None:
        return None
    ref = ReleaseRef.parse(spec.warm_start)
    registry = Registry(spec.registry or "registry")
    folder = registry.require(ref)
    registry.verify(ref)
    description = json.loads((folder / "model" / "model.json").read_text(encoding="utf-8"))
    wanted = encoded_feature_names(study.contract, study.preprocessing.one_hot)
    if description["features"] != wanted:
        missing = [f for f in wanted if f not in description["features"]]
        extra = [f for f in description["features"] if f not in wanted]
        raise ConfigError(
            f"model.warm_start = {spec.warm_start!r}: the release's inputs differ from the "
            f"study's contract (study only: {missing or 'none'}; release only: "
            f"{extra or 'none'}; or their order). Use the release's contract."
        )
    model = description.get("model", {})
    if description["family"] != spec.name or list(model.get("hidden_layers", [])) != list(
        spec.hidden_layers
    ):
        raise ConfigError(
            f"model.warm_start = {spec.warm_start!r} is a {description['family']!r} model "
            f"(hidden layers {model.get('hidden_layers')}), the study's is {spec.name!r} "
            f"(hidden layers {list(spec.hidden_layers)})."
        )
    released = ReleasedModel.load(folder)
    return WarmStart(ref, folder, released.arrays, released.standardizer)
