"""lhs-federated: federated clinical prediction models for learning health systems.

The public API researchers use from notebooks::

    from lhs_federated import load_study, simulate

    study = load_study("simulations/default.toml").with_overrides({"rounds": 20})
    results = simulate(study)
    results.per_round      # per-round, per-site test metrics (DataFrame)
    results.out_dir        # the results folder
"""

from importlib.metadata import PackageNotFoundError, version

from lhs_federated.errors import ConfigError, DataError, LhsError, StudyRunError
from lhs_federated.results import RunResults, read_results
from lhs_federated.simulation import simulate
from lhs_federated.study import Study, load_study

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
