"""Large simulated studies: batched ledger durability changes no record, reports stay small."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lhs_federated import load_study
from lhs_federated.apps import server_app
from lhs_federated.apps.engines import run_inprocess
from lhs_federated.governance.run_files import GOVERNANCE_DIR, SIMULATED_SITES_DIR
from lhs_federated.governance.site_folder import LEDGER_FILE
from lhs_federated.governance.verify import load_entries

#: What differs between two runs of one study whatever the engine does: the run's and
#: messages' random ids, record times (so each record's hash, chain link and signature),
#: each run's new site and coordinator keys and ledger ids, and the hashes of records a
#: record cites (the approval, the coordinator ledger's final record): they cover times.
PER_RUN_FIELDS = frozenset(
    {"run_id", "reply_to", "ledger_id", "public_key", "key_fingerprint"}
    | {"approval", "registry_record", "final_hash", "coordinator_key"}
)


def _without_per_run_fields(data):
    if isinstance(data, dict):
        return {k: _without_per_run_fields(v) for k, v in data.items() if k not in PER_RUN_FIELDS}
    return data


def _site_records(run_dir, site):
    entries = load_entries(run_dir / GOVERNANCE_DIR / SIMULATED_SITES_DIR / site / LEDGER_FILE)
    records = [(e.seq, e.kind, _without_per_run_fields(e.data)) for e in entries]
    for _, _, data in records:  # a discovery reply carries the site ledger's (per-run) head
        if data.get("message_type") == "query":
            data.pop("content_hash")
    return records


def test_batched_durability_writes_the_records_and_results_of_per_record_fsync(
    tmp_path, small_study
):
    study = small_study.with_overrides({"data.synthetic.sites": 4})
    runs = {}
    for batched in (True, False):
        out = tmp_path / f"batched-{batched}"
        config = {server_app.STUDY_KEY: study.to_json(), server_app.OUT_DIR_KEY: str(out)}
        run_inprocess(config, 4, batch_durability=batched)
        runs[batched] = out
    fast, slow = runs[True], runs[False]
    for site in ("site-01", "site-02", "site-03", "site-04"):
        records = _site_records(fast, site)
        assert records == _site_records(slow, site)
        assert [kind for _, kind, _ in records].count("message-sent") == 1 + 2 * study.rounds
    pd.testing.assert_frame_equal(
        pd.read_csv(fast / "metrics.csv"), pd.read_csv(slow / "metrics.csv")
    )
    summaries = [json.loads((run / "summary.json").read_text()) for run in (fast, slow)]
    assert summaries[0]["model"]["arrays_sha256"] == summaries[1]["model"]["arrays_sha256"]
    with np.load(fast / "model" / "model.npz") as a, np.load(slow / "model" / "model.npz") as b:
        assert all(np.array_equal(a[name], b[name]) for name in a.files)
    coordinator = [
        [(e.kind, sorted(e.data)) for e in load_entries(run / GOVERNANCE_DIR / "coordinator.jsonl")]
        for run in (fast, slow)
    ]
    assert coordinator[0] == coordinator[1]


def test_batched_appends_are_visible_at_once_and_chain_across_writers(tmp_path):
    from lhs_federated.governance.durability import batched_durability
    from lhs_federated.governance.keys import load_private_key, write_key_pair
    from lhs_federated.governance.ledger import Ledger
    from lhs_federated.governance.verify import verify_ledger

    write_key_pair(tmp_path / "site.key")
    key = load_private_key(tmp_path / "site.key")
    path = tmp_path / "ledger.jsonl"
    with batched_durability():
        first = Ledger.open(path, key, role="site", owner="a")
        first.append("message-sent", {"n": 1})
        assert len(load_entries(path)) == 2  # written at once, durable at the block's end
        other = Ledger.open(path, key, role="site", owner="a")  # another writer
        other.append("message-sent", {"n": 2})
        first.append("message-sent", {"n": 3})  # must chain after the other's record
    entries = load_entries(path)
    assert [e.data.get("n") for e in entries] == [None, 1, 2, 3]
    assert entries[3].prev_hash == entries[2].hash
    assert verify_ledger(path, key.public_key(), allow_open=True).ok


def _same_sites(together, one_by_one):
    assert [s.name for s in together] == [s.name for s in one_by_one]
    for a, b in zip(together, one_by_one, strict=True):
        for part in ("train", "test"):
            x, y = getattr(a, part), getattr(b, part)
            np.testing.assert_array_equal(x.features, y.features)
            np.testing.assert_array_equal(x.outcome, y.outcome)
            assert (x.site, x.source, x.n_dropped) == (y.site, y.source, y.n_dropped)


def test_sites_prepared_together_equal_sites_prepared_one_by_one(uci_folder, small_study):
    from lhs_federated.data.sources import prepare_site, prepare_sites, raw_sites

    simulations = Path(__file__).resolve().parents[1] / "simulations"
    uci = load_study(simulations / "heart_disease_lhs.toml").with_overrides(
        {"data.path": str(uci_folder)}
    )
    dropping = load_study(None).with_overrides(
        {"data.source": "uci-heart", "data.path": str(uci_folder), "data.test_fraction": 0.34}
    )
    many = small_study.with_overrides(
        {
            "data.synthetic.sites": 30,
            "data.synthetic.rows_per_site": 40,
            "data.synthetic.missingness": 0.3,
        }
    )
    for study in (uci, dropping, many):
        raws = raw_sites(study)
        _same_sites(prepare_sites(raws, study), [prepare_site(r, study) for r in raws])


def test_a_bad_site_among_many_is_named_as_when_prepared_alone(small_study):
    from lhs_federated.data.sources import RawSite, prepare_sites, raw_sites
    from lhs_federated.errors import DataError

    study = small_study.with_overrides({"data.synthetic.sites": 6})
    raws = raw_sites(study)
    outcome = study.contract.outcome.column
    one_class = raws[2].table.copy()
    one_class[outcome] = one_class[outcome].iloc[0]  # a site of a single outcome class
    raws[2] = RawSite(raws[2].name, one_class, raws[2].source)
    with pytest.raises(DataError, match=re.escape(raws[2].source) + ".*only one outcome class"):
        prepare_sites(raws, study)


def test_vectorised_cross_site_matrix_equals_full_metrics_per_pair(small_study):
    from lhs_federated.data.sources import load_sites
    from lhs_federated.learning.site import predict_at_site, score_predictions, site_standardizer
    from lhs_federated.research.baselines import local_name, train_baselines
    from lhs_federated.research.cross_site import score_cross_site

    study = small_study.with_overrides(
        {
            "data.synthetic.sites": 7,
            "data.synthetic.rows_per_site": 60,
            "preprocessing.scaling": "site",
        }
    )
    sites = load_sites(study)
    standardizers = {s.name: site_standardizer(study, s, None) for s in sites}
    models = train_baselines(study, sites, standardizers)
    arrays = [models[local_name(s.name)].arrays for s in sites]
    matrix = score_cross_site(study, sites, arrays, standardizers, min_cell_size=1)
    for i, trained in enumerate(sites):
        for j, at in enumerate(sites):
            risk = predict_at_site(study, arrays[i], at.test.features, standardizers[at.name])
            report = score_predictions(study, at.test.outcome, risk)
            for metric in ("auroc", "accuracy"):
                expected = report.values[metric]
                got = matrix.values[metric][i, j]
                assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(
                    expected, abs=1e-12
                ), (trained.name, at.name, metric)
    cell = int(np.median([len(s.test.outcome) for s in sites])) + 1
    guarded = score_cross_site(study, sites, arrays, standardizers, min_cell_size=cell)
    for j, at in enumerate(sites):
        if len(at.test.outcome) < cell:  # no figure on fewer rows than the cell size
            assert np.isnan(guarded.values["accuracy"][:, j]).all()
    assert any(len(s.test.outcome) < cell for s in sites)
    for i, trained in enumerate(sites):
        if len(trained.train.outcome) < cell:
            assert np.isnan(guarded.values["accuracy"][i]).all()


def test_report_of_200_sites_is_written_small_and_summarised(tmp_path, small_study):
    from lhs_federated import simulate

    study = small_study.with_overrides(
        {"rounds": 1, "data.synthetic.sites": 200, "data.synthetic.rows_per_site": 40}
    )
    results = simulate(study, out_dir=tmp_path / "run")
    page = (results.out_dir / "report.html").read_text(encoding="utf-8")
    assert len(page.encode()) < 5_000_000
    assert "200 sites: quantiles" in page and "smallest sites" in page
    assert "best" in page and "worst" in page  # the heat map's ends, named
    assert page.count("<tr>") < 400  # no table with a row per site
    cross = pd.read_csv(results.out_dir / "cross_site.csv")
    assert cross.shape == (2 * 200, 2 + 200 + 1)
    assert "cross_site" not in results.summary["comparison"]  # too big for summary.json
    events = [json.loads(line) for line in (results.out_dir / "events.jsonl").open()]
    steps = [e["data"] for e in events if e["kind"] == "step"]
    analysis = [s for s in steps if s.get("step") == "analysis" and "done" in s]
    assert analysis[-1]["done"] == analysis[-1]["total"] and 3 <= len(analysis) <= 30
    assert [s["done"] for s in steps if s.get("step") == "report" and "done" in s] == [0, 1, 2]


def test_arrays_decoded_from_cached_headers_equal_numpys_own():
    from flwr.app import Array

    from lhs_federated.apps.records import array_to_numpy

    rng = np.random.default_rng(0)
    arrays = [
        rng.random((3, 4)).astype(np.float32),
        np.asfortranarray(rng.random((3, 4))),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.ones((), dtype=np.float32),
    ]
    for value in arrays:
        for _ in range(2):  # the second decode uses the cached header
            array = Array(value)
            decoded, reference = array_to_numpy(array), array.numpy()
            assert decoded.dtype == reference.dtype and decoded.shape == reference.shape
            assert np.array_equal(decoded, reference) and decoded.flags.writeable
            assert decoded.flags.f_contiguous == reference.flags.f_contiguous


def test_records_sealed_from_field_json_are_canonical_and_bad_signatures_still_fail(tmp_path):
    import base64

    from lhs_federated.governance.keys import load_private_key, write_key_pair
    from lhs_federated.governance.ledger import (
        Ledger,
        canonical_json,
        parse_line,
        record_hash,
    )

    write_key_pair(tmp_path / "site.key")
    key = load_private_key(tmp_path / "site.key")
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger.open(path, key, role="site", owner="a")
    data = {"zé": "naïve ✓", "b": [1, 2.5, None, {"y": True, "x": -0.0}], "a": 1e-300}
    ledger.append_many([("message-sent", data), ("refusal", {"reason": 'quote " and \\'})])
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        entry = parse_line(raw, number)
        assert (
            raw + b"\n"
            == entry.to_line()
            == canonical_json({**entry.body(), "hash": entry.hash, "signature": entry.signature})
            + b"\n"
        )
        assert record_hash(entry.body()) == entry.hash
        assert entry.signed_by(key.public_key())  # remembered when made
        forged = base64.b64encode(bytes(64)).decode("ascii")
        assert not type(entry)(**{**vars(entry), "signature": forged}).signed_by(key.public_key())
        write_key_pair(tmp_path / f"other-{number}.key")
        other = load_private_key(tmp_path / f"other-{number}.key").public_key()
        assert not entry.signed_by(other)


def test_reply_digest_is_the_same_computed_or_remembered():
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from lhs_federated.apps import records, reply_digest

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    content = RecordDict(
        {
            records.ARRAYS: records.to_array_record(arrays),
            records.METRICS: MetricRecord({records.NUM_EXAMPLES: 40, records.TRAIN_LOSS: 0.5}),
        }
    )
    instruction = Message(RecordDict(), 1001, "train")
    reply = Message(content, reply_to=instruction)
    reply_digest._SIZES.clear()
    computed = reply_digest.digest_reply(reply)
    assert computed == reply_digest.digest_reply(reply)  # from the memo
    assert computed.size == recorddict_size(content)
    assert computed.arrays_hash == records.hash_arrays(arrays)
    other = Message(
        RecordDict(
            {
                records.ARRAYS: records.to_array_record(arrays),
                records.METRICS: MetricRecord({records.NUM_EXAMPLES: 40, records.TRAIN_LOSS: 0.25}),
            }
        ),
        reply_to=instruction,
    )
    assert reply_digest.digest_reply(other).content_hash != computed.content_hash


def recorddict_size(content):
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).ByteSize()


def test_delivered_copies_equal_deep_copies_and_share_nothing_mutable():
    import copy

    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from lhs_federated.apps import records
    from lhs_federated.apps.inprocess import copy_message

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)}
    content = RecordDict(
        {
            records.ARRAYS: records.to_array_record(arrays),
            records.CONFIG: ConfigRecord({"mean": [0.5, -1.0], "study": "x", "blob": b"\x00"}),
            records.METRICS: MetricRecord({"n": 40, "loss": float("nan"), "hist": [1, 2]}),
        }
    )
    message = Message(content, 1001, "train", group_id="3")
    message.metadata.__dict__["_message_id"] = "m-1"

    def plain(value):  # every attribute, recursively, for comparison
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(plain(v) for v in value)
        if isinstance(value, float) and np.isnan(value):
            return "nan"
        if hasattr(value, "__dict__") and not callable(value):
            return (type(value), plain(vars(value)))
        return value

    copied = copy_message(message)
    assert plain(copied) == plain(copy.deepcopy(message))
    before = reply_digest_of(message)
    copied.content[records.CONFIG]["mean"].append(9.0)
    copied.content[records.METRICS]["hist"].append(3)
    copied.content[records.ARRAYS]["w"].shape = (3, 2)
    copied.content[records.ARRAYS]["w"].data = b""
    copied.metadata.__dict__["_message_id"] = "changed"
    assert reply_digest_of(message) == before and message.metadata.message_id == "m-1"
    assert plain(message) == plain(copy.deepcopy(message))


def reply_digest_of(message):
    from lhs_federated.apps.reply_digest import content_hash

    return content_hash(message.content)


def test_arrays_made_with_cached_headers_are_flowers_byte_for_byte():
    from flwr.app import Array

    from lhs_federated.apps.records import numpy_to_array

    rng = np.random.default_rng(1)
    values = [
        rng.random((3, 4)).astype(np.float32),
        np.asfortranarray(rng.random((3, 4))),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.ones((), dtype=np.float32),
        np.zeros((0, 5)),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),  # structured: np.save itself
    ]
    for value in values:
        for _ in range(2):  # the second uses the cached header
            made, flowers = numpy_to_array(value), Array(value)
            assert (made.dtype, made.shape, made.stype, made.data) == (
                flowers.dtype,
                flowers.shape,
                flowers.stype,
                flowers.data,
            )


def test_an_approval_check_sees_a_registry_changed_in_place_with_its_size_and_time(tmp_path):
    import os

    from lhs_federated.errors import SiteRefusal
    from lhs_federated.governance.site_folder import APPROVALS_FILE, SiteFolder

    study, code = "a" * 64, "b" * 64
    folder = SiteFolder.init(tmp_path / "site-01", "site-01")
    folder.approve(study, code, study_name="s", by="steward", reason="IRB-1")
    assert folder.check(study, code).study_hash == study  # verified, and remembered
    assert folder.check(study, code).study_hash == study
    registry = folder.folder / APPROVALS_FILE
    info = registry.stat()
    tampered = registry.read_bytes().replace(b"IRB-1", b"IRB-2")  # same size
    with registry.open("r+b") as handle:  # same file, same size, same modification time
        handle.write(tampered)
    os.utime(registry, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (registry.stat().st_size, registry.stat().st_mtime_ns) == (
        info.st_size,
        info.st_mtime_ns,
    )
    with pytest.raises(SiteRefusal, match=r"approvals registry .* failed verification"):
        folder.check(study, code)
