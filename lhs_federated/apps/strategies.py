"""The strategy registry: study names to Flower strategies.

Flower does the sampling and the aggregation; this module only maps a name
and keyword arguments from the study onto a Flower strategy class, checking
the arguments against the class's own signature so that a misspelt parameter
is an error at study load, not a surprise at round 1. Settings that the
coordinator derives from the study itself (minimum sites, reply keys, metric
aggregation) are not the user's to pass.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from lhs_federated.apps.client_dp import wrap_client_dp
from lhs_federated.apps.fine_tuning import FedAvgFineTuning
from lhs_federated.apps.records import ARRAYS, CONFIG, NUM_EXAMPLES, TRAIN_LOSS, UNIT_WEIGHT
from lhs_federated.apps.scaffold import Scaffold
from lhs_federated.errors import ConfigError
from lhs_federated.learning.metrics import nan_weighted_mean
from lhs_federated.study import Study, TrainingSpec

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
    # Strategies Flower lacks, built around its FedAvg.
    "scaffold": Scaffold,
    "fedavg-ft": FedAvgFineTuning,
}

# Constructor arguments lhs-federated sets itself, from the study.
MANAGED_PARAMS = frozenset(
    {
        "fraction_train",
        "fraction_evaluate",
        "min_train_nodes",
        "min_evaluate_nodes",
        "min_available_nodes",
        "weighted_by_key",
        "arrayrecord_key",
        "configrecord_key",
        "train_metrics_aggr_fn",
        "evaluate_metrics_aggr_fn",
        "train_loss_key",
    }
)


def accepted_params(cls: type[Strategy]) -> dict[str, inspect.Parameter]:
    """Constructor parameters of a strategy that a study may set.

    A wrapper that passes ``**kwargs`` on to its Flower base class accepts
    the base class's parameters too.
    """
    parameters = inspect.signature(cls.__init__).parameters.values()
    own = {
        p.name: p
        for p in parameters
        if p.name != "self"
        and p.name not in MANAGED_PARAMS
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return {**accepted_params(cls.__mro__[1]), **own}
    return own


def check_strategy(spec: Any, *, source: str, training: TrainingSpec | None = None) -> None:
    """Check a ``[strategy]`` table's name and parameters against the registry.

    A strategy class may add its own checks as a classmethod
    ``check_params(params, training)`` raising ``ValueError``.

    Raises
    ------
    ConfigError
        For an unknown strategy name, an unknown or managed parameter, or a
        parameter of the wrong type.
    """
    if spec.name not in STRATEGIES:
        close = difflib.get_close_matches(spec.name, list(STRATEGIES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{source}: strategy.name {spec.name!r} is not a known strategy.{hint} "
            f"Known strategies: {', '.join(STRATEGIES)}."
        )
    accepted = accepted_params(STRATEGIES[spec.name])
    for key, value in spec.params.items():
        if key in MANAGED_PARAMS:
            raise ConfigError(
                f"{source}: strategy.params.{key} is set by lhs-federated from the study "
                "([strategy] fraction_train, [federation] min_sites); remove it."
            )
        if key not in accepted:
            raise ConfigError(
                f"{source}: strategy.params.{key} is not a parameter of {spec.name} "
                f"({STRATEGIES[spec.name].__name__}); it accepts: "
                f"{', '.join(sorted(accepted)) or 'nothing'}."
            )
        default = accepted[key].default
        numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric_default and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{source}: strategy.params.{key} must be a number; got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{source}: strategy.params.{key} must be a finite number; got {value!r}."
            )
    check_params = getattr(STRATEGIES[spec.name], "check_params", None)
    if check_params is not None and training is not None:
        try:
            check_params(spec.params, training)
        except ValueError as exc:
            raise ConfigError(f"{source}: strategy {spec.name!r}: {exc}") from exc


def aggregate_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Weighted mean of each metric over the replies that define it.

    Replaces Flower's default, under which one site's NaN (an undefined AUROC
    at a single-class site) makes the whole federation's average NaN.
    """
    metric_records = [next(iter(r.metric_records.values())) for r in records]
    keys = [k for k in metric_records[0] if k != weighting_key] if metric_records else []
    weights = [float(m[weighting_key]) for m in metric_records]
    return MetricRecord(
        {key: nan_weighted_mean([float(m[key]) for m in metric_records], weights) for key in keys}
    )


def build_strategy(study: Study, *, n_sites: int) -> Strategy:
    """Instantiate the study's Flower strategy for ``n_sites`` connected sites.

    Under client-level DP every site weighs the same (Flower's noise is
    calibrated to an unweighted mean) and the strategy is wrapped in the
    Flower DP wrapper the study asks for.
    """
    spec = study.strategy
    cls = STRATEGIES[spec.name]
    min_sites = study.federation.min_sites or n_sites
    kwargs: dict[str, Any] = dict(spec.params)
    accepted = accepted_params(cls)
    if "client_learning_rate" in accepted and "client_learning_rate" not in kwargs:
        kwargs["client_learning_rate"] = study.training.learning_rate
    if "train_loss_key" in inspect.signature(cls.__init__).parameters:
        kwargs["train_loss_key"] = TRAIN_LOSS
    strategy = cls(
        fraction_train=spec.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=min(min_sites, n_sites),
        min_evaluate_nodes=min(min_sites, n_sites),
        min_available_nodes=min(min_sites, n_sites),
        weighted_by_key=UNIT_WEIGHT if study.privacy.client_dp else NUM_EXAMPLES,
        arrayrecord_key=ARRAYS,
        configrecord_key=CONFIG,
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
        **kwargs,
    )
    if study.privacy.client_dp:
        return wrap_client_dp(strategy, study, n_sites)
    return strategy
