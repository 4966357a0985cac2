"""lhs-federated: federated clinical prediction models for learning health systems.

The public API researchers use from notebooks::

    from lhs_federated import load_study, simulate

    study = load_study("simulations/default.toml").with_overrides({"rounds": 20})
    results = simulate(study)
    results.per_round      # per-round, per-site test metrics (DataFrame)
    results.out_dir        # the results folder
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from lhs_federated.errors import ConfigError, DataError, LhsError, StudyRunError

if TYPE_CHECKING:
    from lhs_federated.research.simulation import simulate
    from lhs_federated.results.reader import RunResults, read_results
    from lhs_federated.study import Study, load_study

# Imported on first use: a site's SuperNode, its launcher and every CLI command
# import this package, and only some of them need PyTorch and scikit-learn.
_LAZY = {
    "RunResults": "lhs_federated.results.reader",
    "read_results": "lhs_federated.results.reader",
    "simulate": "lhs_federated.research.simulation",
    "Study": "lhs_federated.study",
    "load_study": "lhs_federated.study",
}
# A study loaded through the package is checked whole: the checks of its model,
# strategy and client-level DP live with Flower and PyTorch (see study.PART_CHECKS).
_CHECKED = ("Study", "load_study")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lhs_federated' has no attribute {name!r}")
    if name in _CHECKED:
        importlib.import_module("lhs_federated.apps.study_checks")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


try:
    __version__ = version("lhs-federated")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "ConfigError",
    "DataError",
    "LhsError",
    "RunResults",
    "Study",
    "StudyRunError",
    "__version__",
    "load_study",
    "read_results",
    "simulate",
]
