"""The study checks that need PyTorch and Flower, registered with the ground's study.

:func:`lhs_federated.study.check_study` checks what the study itself knows;
whether ``model.name`` is a model family, whether ``[strategy.params]`` are
parameters of that Flower strategy and whether client-level DP's noise fits
its epsilon are known only to :mod:`lhs_federated.learning.models`,
:mod:`lhs_federated.apps.strategies` and :mod:`lhs_federated.apps.client_dp`.
Importing this module registers their checks (:func:`~lhs_federated.study.register_part_check`),
so the ground never imports upwards. ``lhs_federated.load_study`` and every
command or engine that loads a study import it first; a study checked without
it is refused, never passed unchecked.
"""

from __future__ import annotations

from lhs_federated.apps.client_dp import check_client_dp
from lhs_federated.apps.strategies import check_strategy
from lhs_federated.learning.models import check_model_family
from lhs_federated.study import Study, register_part_check


def _check_strategy(study: Study, source: str) -> None:
    check_strategy(study.strategy, source=source, training=study.training)


def _check_client_dp(study: Study, source: str) -> None:
    check_client_dp(study, source=source)


register_part_check("model", check_model_family)
register_part_check("strategy", _check_strategy)
register_part_check("client-dp", _check_client_dp)
