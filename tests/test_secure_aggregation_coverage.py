"""What secure aggregation covers, on real in-process runs.

- The coordinator's view of one site's masked update, captured from a real
  run, is statistically unrelated to the update (and the same tests reject
  the unmasked update, so they can fail).
- The learning loop's drift histograms go through the secure sum: the same
  totals, drift and alerts as without it, small cells withheld from the
  totals only; the egress guard knows the masked drift payloads.
- A site's own minimum cell size (its site.toml) applies to the totals.
- A pooled recalibration's Newton steps go through the secure sum; a per-site
  one is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType, MetricRecord, RecordDict
from scipy import stats

from lhs_federated import Study, load_study, simulate
from lhs_federated.apps import client_app, records, server_app
from lhs_federated.apps.client_site import PARTITION_ID, SITE_CONFIG
from lhs_federated.apps.egress import guard_reply
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.apps.federation import SECURE_SUM_SITE
from lhs_federated.apps.loop_secagg import encode_drift
from lhs_federated.apps.run_config import LOOP_RESULT_FILE
from lhs_federated.apps.secagg import HALF, MODULUS, SiteKeys
from lhs_federated.apps.secagg_messages import MIN_CELL_SIZE
from lhs_federated.apps.secagg_payloads import PARAM_PREFIX, Quantiser, encode_update
from lhs_federated.cli import main
from lhs_federated.data.encoding import encoded_columns
from lhs_federated.data.sources import load_sites, raw_sites
from lhs_federated.deploy.certs import init_certificates
from lhs_federated.errors import ConfigError
from lhs_federated.governance.keys import load_private_key, write_key_pair
from lhs_federated.governance.verify import load_entries
from lhs_federated.learning.drift import (
    NUMERIC_BINS,
    ColumnSummary,
    summarise_columns,
    summary_from_json,
)
from lhs_federated.learning.monitoring import MONITOR_KEYS, withhold_small_cells
from lhs_federated.learning.site import n_features
from lhs_federated.loop.alerts import AlertRules
from lhs_federated.loop.monitor import monitor_release, monitoring_study
from lhs_federated.loop.release import REFERENCE, release_run
from lhs_federated.loop.tasks import run_task
from lhs_federated.privacy.egress import EgressBlocked
from lhs_federated.registry.store import Registry, ReleaseRef

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


# --- the learning loop's drift histograms -------------------------------------------------


#: A pooled PSI rule of 0.1: site-02's assay change (its own PSI near 3.7) moves the
#: histogram of all three sites' rows by about 0.13, under the default rule of 0.25.
RULES = AlertRules(psi=0.1)


def _drift_study(**overrides):
    """Three sites over two quarters, site-02's cholesterol assay changed in the second."""
    return load_study(None).with_overrides(
        {
            "name": "drifting",
            "rounds": 2,
            "baselines.enabled": False,
            "data": {
                "synthetic": {
                    "sites": 3,
                    "rows_per_site": 240,
                    "periods": 2,
                    "drift": [
                        {"kind": "assay-change", "site": "site-02", "from_period": 2, "size": 2.0}
                    ],
                },
                "train_periods": ["2020Q1"],
            },
            **overrides,
        }
    )


def _released_and_monitored(study, folder: Path):
    """Train, release (the drift reference) and monitor 2020Q2: the loop's drift step."""
    simulate(study, out_dir=folder / "run", report=False)
    key = folder / "coordinator.key"
    write_key_pair(key)
    registry = Registry(folder / "registry")
    sites = folder / "sites"
    release_run(folder / "run", "cvd", key_path=key, registry_root=registry.root,
                simulated_sites=sites)  # fmt: skip
    ref = ReleaseRef("cvd", "v1")
    monitored = monitor_release(
        registry, ref, ["2020Q2"], key=load_private_key(key), key_path=key,
        out_root=folder / "monitoring", simulated_sites=sites, rules=RULES,
    )  # fmt: skip
    reference = json.loads((registry.folder(ref) / REFERENCE).read_text())
    task = json.loads((folder / "monitoring" / "runs" / "v1-2020Q2" / LOOP_RESULT_FILE).read_text())
    return monitored, reference, task


def _pooled_current(task: dict) -> list[ColumnSummary]:
    if "secure_sum" in task:
        return [summary_from_json(s) for s in task["secure_sum"]["current"]]
    per_site = [[summary_from_json(s) for s in r["current"]] for r in task["result"].values()]
    return [sum(columns[1:], columns[0]) for columns in zip(*per_site, strict=True)]


def _same(got: list[ColumnSummary], expected: list[ColumnSummary]) -> None:
    """Equal summaries: counts exactly (withheld alike), moments within the fixed point."""
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.counts, b.counts)
        for x, y in ((a.n, b.n), (a.total, b.total), (a.total_squares, b.total_squares)):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=3 * 2**-16)


def test_drift_through_secure_aggregation_gives_the_plain_totals_and_alerts(tmp_path):
    """The loop's drift step with and without SecAgg+: same totals, same drift, same alerts.

    A minimum cell size of 1 withholds nothing, so the plain run's pooled
    histograms (the sum of the sites') must equal the secure sum's. The metric
    alerts stay per site; the PSI alerts are the federation's under SecAgg+,
    and fire exactly where the plain run's pooled PSI exceeds the rule (a
    federation's shift, diluted by the sites that did not change: see RULES).
    """
    study = _drift_study(**{"sites.min_cell_size": 1})
    plain, plain_ref, plain_task = _released_and_monitored(study, tmp_path / "plain")
    secure, secure_ref, secure_task = _released_and_monitored(
        study.with_overrides(SECURE), tmp_path / "secure"
    )
    # nothing per site leaves in the clear: no site's histogram, in the release or the monitoring
    assert all(not r["current"] and not r["reference"] for r in secure_task["result"].values())
    assert all(not r["reference"] for r in secure_ref["per_site"].values())
    assert secure_task["secure_sum"]["contributors"] == ["site-01", "site-02", "site-03"]
    _same(
        [summary_from_json(s) for s in secure_ref["pooled"]],
        [summary_from_json(s) for s in plain_ref["pooled"]],
    )
    _same(_pooled_current(secure_task), _pooled_current(plain_task))
    for feature, value in plain.drift["pooled"].items():
        assert secure.drift["pooled"][feature]["psi"] == pytest.approx(value["psi"], abs=1e-9)
        if value["smd"] is not None:
            assert secure.drift["pooled"][feature]["smd"] == pytest.approx(value["smd"], abs=1e-6)
    assert set(secure.drift) == {"pooled"}  # a site's own drift needs its own histogram
    expected_psi = sorted(
        f"psi:{f}" for f, v in plain.drift["pooled"].items() if v["psi"] > RULES.psi
    )
    assert expected_psi, "the assay change moves the pooled cholesterol histogram"
    pooled_alerts = sorted(a.metric for a in secure.alerts if a.site == SECURE_SUM_SITE)
    assert pooled_alerts == expected_psi
    # the metric alerts: same sites and metrics, values as close as the two models
    per_site = [a for a in secure.alerts if a.site != SECURE_SUM_SITE]
    expected = [a for a in plain.alerts if not a.metric.startswith("psi:")]
    assert [(a.site, a.metric) for a in per_site] == [(a.site, a.metric) for a in expected]
    assert [a.value for a in per_site] == pytest.approx([a.value for a in expected], abs=1e-3)
    assert all("psi:per-site (secure aggregation)" in r["withheld"] for r in secure.rows)


# --- each site's own minimum cell size -----------------------------------------------------


class DeployedSite:
    """The real site ClientApp; partition 0 runs as a deployed site from its own site.toml."""

    def __init__(self, site_toml: Path) -> None:
        self.site_toml = site_toml

    def __call__(self, message, context):
        if context.node_config.get(PARTITION_ID) == 0:
            context.node_config[SITE_CONFIG] = str(self.site_toml)
        return client_app.app(message, context)


def _site_toml(folder: Path, study, min_cell_size: int) -> Path:
    """site-01's own site.toml: its table (the synthetic site's rows) and its minimum cell size."""
    folder.mkdir(parents=True)
    raw = next(s for s in raw_sites(study) if s.name == "site-01")
    raw.table.to_csv(folder / "site-01.csv", index=False)
    made = init_certificates(folder / "certs", hosts=["127.0.0.1"], sites=["site-01"])
    path = folder / "site.toml"
    path.write_text(
        f'[site]\nname = "site-01"\n[coordinator]\naddress = "127.0.0.1:9092"\n'
        f'ca_certificate = "{made.ca_certificate}"\n'
        f'[identity]\nprivate_key = "{made.site_keys["site-01"]}"\n'
        f'[data]\nfile = "site-01.csv"\n[policy]\nmin_cell_size = {min_cell_size}\n',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("site_cell_size", "withheld"), [(10, []), (35, ["diabetes"])])
def test_a_sites_own_stricter_minimum_cell_size_applies_to_the_totals(
    small_study, tmp_path, site_cell_size: int, withheld: list[str]
):
    """site-01 (deployed, its own site.toml) asks for k = 35; the study says 10.

    Under secure aggregation no site can withhold its own small cells (they
    are hidden in the sum), so the coordinator applies the largest k of the
    study and of every site in the sum to the totals: the diabetes column,
    29 ones across the three sites' training rows, is withheld from the
    federation's statistics with k = 35 and kept with k = 10 (bp_treated, 39
    ones, is kept by both), and the ledger says which k each sum used.
    """
    study = small_study.with_overrides(SECURE)
    site_toml = _site_toml(tmp_path / "site-01", study, site_cell_size)
    config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(tmp_path / "run")}
    run_inprocess(config, 3, client=DeployedSite(site_toml))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [d["column"] for d in summary["preprocessing"]["departures"]] == withheld
    sums = [
        e.data
        for e in load_entries(tmp_path / "run" / "governance" / "coordinator.jsonl")
        if e.kind == "secure-aggregation"
    ]
    assert [s["min_cell_size"] for s in sums] == [site_cell_size] * len(sums)


def test_secure_drift_withholds_small_cells_of_the_totals_only(tmp_path):
    """A minimum cell size of 40 on sites of about 120 rows a quarter (messy tails).

    Plain monitoring withholds each site's small bins (the tails), so its
    pooled histogram undercounts them; the secure sum's totals are the pooled
    rows' own histogram with only the bins of fewer than 40 rows across all
    sites withheld, both for the release's reference and the monitored quarter.
    """
    study = _drift_study(**{"sites.min_cell_size": 40})
    _, _, plain_task = _released_and_monitored(study, tmp_path / "plain")
    secure_study = study.with_overrides(SECURE)
    _, reference, task = _released_and_monitored(secure_study, tmp_path / "secure")
    edges = [np.asarray(e) for e in reference["edges"]]

    def pooled_rows(of: Study, rows: str) -> list[ColumnSummary]:
        features = np.vstack([getattr(s, rows).features for s in load_sites(of)])
        return withhold_small_cells(summarise_columns(features, edges), 40)

    _same([summary_from_json(s) for s in reference["pooled"]], pooled_rows(secure_study, "train"))
    monitored = monitoring_study(secure_study, ["2020Q2"], name="cvd-monitor")
    oracle = pooled_rows(monitored, "test")
    _same([summary_from_json(s) for s in task["secure_sum"]["current"]], oracle)
    assert task["secure_sum"]["min_cell_size"] == 40
    # the plain pooled histogram lost the sites' small tails: it holds fewer rows
    plain_rows = sum(np.nansum(c.counts) for c in _pooled_current(plain_task))
    assert plain_rows < sum(np.nansum(c.counts) for c in oracle)


def _monitor_reply(drift: dict[str, list[float]]) -> RecordDict:
    metrics = MetricRecord(dict.fromkeys(MONITOR_KEYS, 0.5) | {"n": 100.0})
    return RecordDict(
        {
            records.METRICS: metrics,
            records.UNDEFINED: ConfigRecord({}),
            records.DRIFT: MetricRecord(drift),
        }
    )


def _drift_vector(study: Study, bins: int = NUMERIC_BINS) -> dict[str, np.ndarray]:
    """A well-formed drift vector of the study's columns (numeric ones with ``bins`` bins)."""
    columns = encoded_columns(study.contract, study.preprocessing.one_hot)
    edges = [np.linspace(0, 1, 1 if c.indicator else bins - 1) for c in columns]
    features = np.random.default_rng(0).random((50, len(columns)))
    return encode_drift({"current": summarise_columns(features, edges)})


def test_the_egress_guard_knows_the_drift_payloads(small_study):
    """Under SecAgg+ no histogram leaves in clear; a masked one only of the declared shapes."""
    secure = small_study.with_overrides(SECURE)
    histogram = {"current-counts": [5.0, 20.0], "current-n": [25.0] * n_features(secure)}
    guard_reply(records.MONITOR, _monitor_reply(histogram), small_study, "site-01", 10)
    with pytest.raises(EgressBlocked, match="drift histograms in clear under secure aggregation"):
        guard_reply(records.MONITOR, _monitor_reply(histogram), secure, "site-01", 10)
    guard_reply(records.MONITOR, _monitor_reply({}), secure, "site-01", 10)

    def collect(vector: dict[str, np.ndarray]) -> RecordDict:
        return RecordDict({records.MASKED: records.to_array_record(vector)})

    for bins in (2, NUMERIC_BINS):  # a numeric column has ten bins, or two without a range
        guard_reply(records.SECAGG_COLLECT_STATISTICS, collect(_drift_vector(secure, bins)),
                    secure, "site-01", 10)  # fmt: skip
    odd = _drift_vector(secure, 5)
    with pytest.raises(EgressBlocked, match="1 x masked vector of undeclared names"):
        guard_reply(records.SECAGG_COLLECT_STATISTICS, collect(odd), secure, "site-01", 10)
    extra = {**_drift_vector(secure), "drift-current-rows": np.arange(50, dtype=np.int64)}
    with pytest.raises(EgressBlocked, match="masked vector of undeclared names"):
        guard_reply(records.SECAGG_COLLECT_STATISTICS, collect(extra), secure, "site-01", 10)


def test_the_setup_reply_declares_the_sites_own_minimum_cell_size(small_study):
    secure = small_study.with_overrides(SECURE)
    keys = SiteKeys.generate()

    def setup(k: int) -> RecordDict:
        values = {"pk1": keys.pk1, "pk2": keys.pk2, MIN_CELL_SIZE: k}
        return RecordDict({records.SECAGG: ConfigRecord(values)})

    guard_reply(records.SECAGG_SETUP, setup(25), secure, "site-01", 25)
    with pytest.raises(EgressBlocked, match="not the site's minimum cell size"):
        guard_reply(records.SECAGG_SETUP, setup(10), secure, "site-01", 25)


# --- the learning loop's pooled recalibration --------------------------------------------------


def test_a_pooled_recalibration_through_secure_aggregation_fits_the_plain_parameters(
    small_study, tmp_path
):
    """Each Newton step's score and information as one secure sum: the same fit as plain."""
    study = small_study.with_overrides({"rounds": 4})
    simulate(study, out_dir=tmp_path / "run", report=False)
    task = {"kind": "recalibrate", "model": str(tmp_path / "run"), "method": "logistic"}
    plain = run_task(study, tmp_path / "plain", task)
    secure = run_task(study.with_overrides(SECURE), tmp_path / "secure", task)
    assert secure["result"]["newton_rounds"] == plain["result"]["newton_rounds"]
    np.testing.assert_allclose(
        secure["result"]["params"]["pooled"], plain["result"]["params"]["pooled"], atol=1e-6
    )
    sums = [
        e.data
        for e in load_entries(tmp_path / "secure" / "governance" / "coordinator.jsonl")
        if e.kind == "secure-aggregation"
    ]
    assert [s["kind"] for s in sums] == ["recalibration"] * secure["result"]["newton_rounds"]
    with pytest.raises(ConfigError, match="per-site recalibration fits each site's own"):
        run_task(study.with_overrides(SECURE), tmp_path / "per-site", {**task, "per_site": True})
    assert [p.name for p in (tmp_path / "per-site").iterdir()] == ["failure.json"]


def test_a_loop_of_per_site_updates_under_secure_aggregation_is_refused(tmp_path, capsys):
    loop = tmp_path / "loop.toml"
    loop.write_text(
        '[loop]\nupdate = "per-site"\ninitial_periods = 1\n'
        '[study]\nname = "l"\n[study.data.synthetic]\nsites = 3\nperiods = 2\n'
        '[study.privacy]\nsecure_aggregation = "secaggplus"\n',
        encoding="utf-8",
    )
    assert main(["loop", str(loop), "--out", str(tmp_path / "out")]) == 2
    assert "loop.update = 'per-site' fits each site's own recalibration" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
