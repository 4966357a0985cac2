"""What secure aggregation covers, on real in-process runs.

- The coordinator's view of one site's masked update, captured from a real
  run, is statistically unrelated to the update (and the same tests reject
  the unmasked update, so they can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MessageType
from scipy import stats

from lhs_federated.apps import client_app, records, server_app
from lhs_federated.apps.client_site import PARTITION_ID
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.secagg import HALF, MODULUS
from lhs_federated.apps.secagg_payloads import PARAM_PREFIX, Quantiser, encode_update

SECURE = {"privacy.secure_aggregation": "secaggplus"}
#: p-value below which a test says "related": a masked view fails one of the four
#: checks by chance about once in 2,500 runs.
ALPHA = 1e-4


class Capture:
    """The real site ClientApp; keeps what one site was sent and what it replied."""

    def __init__(self, partition: int, message_type: str) -> None:
        self.partition, self.message_type = partition, message_type
        self.seen: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def __call__(self, message, context):
        reply = client_app.app(message, context)
        if (
            context.node_config[PARTITION_ID] == self.partition
            and message.metadata.message_type == self.message_type
            and not reply.has_error()
        ):
            sent = records.from_array_record(message.content[records.ARRAYS])
            record = records.MASKED if records.MASKED in reply.content else records.ARRAYS
            self.seen.append((sent, records.from_array_record(reply.content[record])))
        return reply


def _run(study, out_dir, capture: Capture) -> None:
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out_dir)}
    run_inprocess(config, 3, client=capture)


def _related(view: np.ndarray, update: np.ndarray) -> dict[str, float]:
    """p-values of four ways ``view`` (int64 in [0, 2**62)) could betray ``update``.

    ``uniform``: Kolmogorov-Smirnov of view / 2**62 against U(0, 1);
    ``high bits``: chi-square of the top four bits (16 equally likely cells);
    ``rank``: Spearman correlation of the signed reading of view with update;
    ``joint``: chi-square of independence between view's quarter of the
    modulus and update's quartile.
    """
    fraction = view / MODULUS
    top = (view >> 58).astype(int)
    signed = np.where(view >= HALF, view - MODULUS, view).astype(float)
    quartile = np.searchsorted(np.quantile(update, [0.25, 0.5, 0.75]), update)
    table = np.zeros((4, 4))
    np.add.at(table, ((view >> 60).astype(int), quartile), 1)
    return {
        "uniform": stats.kstest(fraction, "uniform").pvalue,
        "high bits": stats.chisquare(np.bincount(top, minlength=16)).pvalue,
        "rank": stats.spearmanr(signed, update).pvalue,
        "joint": stats.chi2_contingency(table + 1e-9).pvalue,
    }


def test_the_coordinators_view_of_a_masked_update_is_unrelated_to_it(small_study, tmp_path):
    """Captured from real runs: site-01's masked update vs its plain update.

    The plain run (same seed, minimum cell size 1 so both standardise alike)
    gives each round's update of site-01 as the coordinator would see it
    without secure aggregation; the secure run gives what the coordinator
    actually received from site-01 instead. The masked view passes every
    check; the control, the same update in the integer form the site masks
    (weighted, quantised, mod 2**62) but unmasked, fails every check.
    """
    study = small_study.with_overrides(
        {"sites.min_cell_size": 1, "model.name": "mlp", "model.hidden_layers": [32]}
    )
    plain = Capture(0, MessageType.TRAIN)
    _run(study, tmp_path / "plain", plain)
    secure = Capture(0, records.SECAGG_COLLECT_UPDATE)
    _run(study.with_overrides(SECURE), tmp_path / "secure", secure)
    assert len(plain.seen) == len(secure.seen) == study.rounds
    spec = study.with_overrides(SECURE).privacy.secagg
    quantiser = Quantiser(spec.clipping_range, spec.quantization_range)
    updates, masked, unmasked = [], [], []
    for (sent, returned), (_, view) in zip(plain.seen, secure.seen, strict=True):
        delta = {n: returned[n].astype(np.float64) - sent[n].astype(np.float64) for n in sent}
        plain_vector = encode_update(delta, 200, 0.5, quantiser, np.random.default_rng(0))
        for name, value in delta.items():
            updates.append(value.ravel())
            masked.append(view[PARAM_PREFIX + name].ravel())
            unmasked.append(np.mod(plain_vector[PARAM_PREFIX + name], MODULUS).ravel())
    update, view, control = (np.concatenate(x) for x in (updates, masked, unmasked))
    assert update.size > 800 and np.ptp(update) > 0  # a real, varied update
    seen = _related(view, update)
    assert min(seen.values()) > ALPHA, seen
    # the view is not the update in disguise: correlation within noise of zero
    bound = 5 / np.sqrt(update.size)
    assert abs(np.corrcoef(view / MODULUS, update)[0, 1]) < bound
    refused = _related(control, update)
    assert max(refused.values()) < ALPHA, refused
    assert abs(np.corrcoef(control / MODULUS, update)[0, 1]) > bound


@pytest.mark.parametrize("scale", [1e-6, 1.0])
def test_the_relatedness_checks_reject_an_unmasked_vector_of_any_scale(scale: float) -> None:
    """The control at both ends: tiny and large updates, unmasked, are seen through."""
    rng = np.random.default_rng(3)
    update = rng.normal(0, scale, 2000)
    quantiser = Quantiser(8.0 * max(scale, 1e-3), 2**24)
    vector = encode_update({"w": update}, 100, 0.0, quantiser, rng)
    seen = _related(np.mod(vector[PARAM_PREFIX + "w"], MODULUS), update)
    assert max(seen.values()) < ALPHA, seen
