"""SecAgg+ arithmetic: masks cancel, the mean is within the bound, dropouts are recovered."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from lhs_federated.apps import secagg
from lhs_federated.apps.secagg_payloads import (
    Quantiser,
    decode_statistics,
    decode_update,
    encode_statistics,
    encode_update,
    update_error_bound,
)
from lhs_federated.data.statistics import ColumnSums


def run_protocol(
    vectors: dict[int, dict[str, np.ndarray]],
    *,
    threshold: int,
    num_shares: int | None = None,
    drop_after_share: frozenset[int] = frozenset(),
) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    """The four stages between plain Python sites and a coordinator; return sum and views."""
    nodes = sorted(vectors)
    graph = secagg.neighbours(nodes, num_shares or len(nodes))
    keys = {n: secagg.SiteKeys.generate() for n in nodes}
    public = {n: (k.pk1, k.pk2) for n, k in keys.items()}
    seeds, held, outbox, shared = {}, {}, {}, {}
    for n in nodes:
        shown = {m: public[m] for m in graph[n]}
        seeds[n], outbox[n], held[n], shared[n] = secagg.share_keys(
            n, keys[n], shown, threshold=threshold
        )
    masked = {}
    for n in nodes:
        if n in drop_after_share:
            continue
        inbox = {src: outbox[src][n] for src in graph[n] if src != n}
        held[n].update(secagg.receive_shares(n, shared[n].channel, inbox))
        masked[n] = secagg.mask_vector(
            n, vectors[n], seed=seeds[n], pairwise=shared[n].pairwise, alive=graph[n]
        )
    survivors = set(masked)
    dropped = set(nodes) - survivors
    shares: dict[int, list[bytes]] = {}
    for n in sorted(survivors):
        mine = secagg.unmask_shares(
            set(graph[n]) & survivors, set(graph[n]) & dropped, held[n], threshold=threshold
        )
        for owner, share in mine.items():
            shares.setdefault(owner, []).append(share)
    total = secagg.unmask_sum(
        secagg.sum_masked(masked.values()),
        survivors=survivors,
        dropped=dropped,
        shares=shares,
        public_keys=public,
        neighbourhood=graph,
        threshold=threshold,
    )
    return total, masked


def _ints(seed: int, n: int) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        100 + i: {"a": rng.integers(-(10**9), 10**9, (3, 2)), "b": rng.integers(-5, 5, (4,))}
        for i in range(n)
    }


@pytest.mark.parametrize(("n", "num_shares", "threshold"), [(3, 3, 2), (5, 5, 3), (7, 5, 3)])
def test_masks_cancel_in_the_sum(n: int, num_shares: int, threshold: int) -> None:
    vectors = _ints(n, n)
    total, _ = run_protocol(vectors, threshold=threshold, num_shares=num_shares)
    for name in ("a", "b"):
        np.testing.assert_array_equal(total[name], sum(v[name] for v in vectors.values()))


def test_a_site_that_drops_after_key_sharing_is_recovered_from_shares() -> None:
    vectors = _ints(1, 5)
    total, _ = run_protocol(vectors, threshold=3, drop_after_share=frozenset({102}))
    expected = sum(v["a"] for n, v in vectors.items() if n != 102)
    np.testing.assert_array_equal(total["a"], expected)


def test_the_default_sparse_graph_sums_30_sites_with_3_dropped_after_sharing() -> None:
    """30 sites: 21 neighbours each (the default rule), masks cancel, dropouts recovered."""
    from lhs_federated.privacy.spec import SecAggSpec

    spec = SecAggSpec()
    vectors = _ints(30, 30)
    dropped = frozenset({103, 117, 128})
    total, _ = run_protocol(
        vectors, threshold=spec.threshold_for(30), num_shares=spec.shares_for(30),
        drop_after_share=dropped,
    )  # fmt: skip
    for name in ("a", "b"):
        expected = sum(v[name] for n, v in vectors.items() if n not in dropped)
        np.testing.assert_array_equal(total[name], expected)


def test_fewer_survivors_than_the_threshold_fails_with_the_reason() -> None:
    with pytest.raises(secagg.SecAggError, match="2 neighbours survive; the threshold is 3"):
        run_protocol(_ints(2, 4), threshold=3, drop_after_share=frozenset({100, 101}))


def test_a_site_never_gives_both_shares_of_one_node() -> None:
    held = {1: (b"b", b"sk"), 2: (b"b", b"sk"), 3: (b"b", b"sk")}
    with pytest.raises(secagg.SecAggError, match=r"nodes \[2\] are listed as alive and as dropped"):
        secagg.unmask_shares({1, 2, 3}, {2}, held, threshold=2)
    with pytest.raises(secagg.SecAggError, match=r"nodes \[9\] are not neighbours"):
        secagg.unmask_shares({1, 2}, {9}, held, threshold=2)


def test_a_misaddressed_share_is_refused() -> None:
    nodes = [1, 2, 3]
    keys = {n: secagg.SiteKeys.generate() for n in nodes}
    public = {n: (k.pk1, k.pk2) for n, k in keys.items()}
    _, outbox, _, _ = secagg.share_keys(1, keys[1], public, threshold=2)
    _, _, _, shared = secagg.share_keys(3, keys[3], public, threshold=2)
    with pytest.raises(secagg.SecAggError, match="from node 1 does not decrypt"):
        secagg.receive_shares(3, shared.channel, {1: outbox[2]})
    with pytest.raises(secagg.SecAggError, match="own public keys are shown wrongly"):
        other = secagg.SiteKeys.generate()
        secagg.share_keys(1, keys[1], {**public, 1: (other.pk1, other.pk2)}, threshold=2)


def test_weighted_mean_within_the_quantisation_bound() -> None:
    quantiser = Quantiser(clipping_range=1.0, quantization_range=2**20)
    rng = np.random.default_rng(0)
    deltas = {
        100 + i: {"w": rng.normal(0, 0.3, (5, 3)), "b": rng.normal(0, 0.3, (3,))} for i in range(4)
    }
    weights = {100: 50, 101: 700, 102: 1200, 103: 33}
    losses = {100: 0.5, 101: 0.6, 102: 0.4, 103: 0.9}
    vectors = {
        n: encode_update(deltas[n], weights[n], losses[n], quantiser, np.random.default_rng(n))
        for n in deltas
    }
    total, _ = run_protocol(vectors, threshold=3)
    mean, weight, loss = decode_update(total, quantiser)
    assert weight == sum(weights.values())
    bound = update_error_bound(quantiser)
    for name in ("w", "b"):
        plain = sum(weights[n] * deltas[n][name] for n in deltas) / weight
        assert np.abs(mean[name] - plain).max() <= bound
    assert loss == pytest.approx(sum(weights[n] * losses[n] for n in deltas) / weight, abs=1e-6)


def test_an_update_beyond_the_clipping_range_is_an_error_naming_the_setting() -> None:
    quantiser = Quantiser(clipping_range=0.5, quantization_range=2**20)
    with pytest.raises(secagg.SecAggError, match=r"privacy.secagg.clipping_range = 0.5"):
        encode_update({"w": np.array([0.7])}, 10, 0.3, quantiser, np.random.default_rng(0))


def test_column_sums_add_up_exactly_enough() -> None:
    rng = np.random.default_rng(3)
    tables = {100 + i: rng.normal(200, 40, (30 + 10 * i, 4)) for i in range(3)}
    parts = {n: ColumnSums.of(t) for n, t in tables.items()}
    total, _ = run_protocol({n: encode_statistics(p) for n, p in parts.items()}, threshold=2)
    combined = ColumnSums.combine(parts.values())
    got = decode_statistics(total)
    np.testing.assert_array_equal(got.count, combined.count)
    np.testing.assert_allclose(got.total, combined.total, atol=3 / 2**16)
    np.testing.assert_allclose(got.total_sq, combined.total_sq, atol=3 / 2**16)


def test_one_masked_vector_is_unrelated_to_the_site_values() -> None:
    """What the coordinator sees of one site is uniform noise, whatever the site sent.

    Two very different updates (all zeros and a strong signal) are masked 200
    times; the masked values of either pass a uniformity test and have no
    correlation with the update.
    """
    signal = np.linspace(-1, 1, 64)
    seen = {"zeros": [], "signal": []}
    for trial in range(100):
        for label, values in (("zeros", np.zeros(64)), ("signal", signal)):
            quantiser = Quantiser(1.0, 2**20)
            vectors = {
                n: encode_update({"w": values}, 10, 0.0, quantiser, np.random.default_rng(trial))
                for n in (1, 2, 3)
            }
            _, masked = run_protocol(vectors, threshold=2)
            seen[label].append(masked[1]["update:w"] / secagg.MODULUS)
    for label, rows in seen.items():
        values = np.concatenate(rows)
        counts, _ = np.histogram(values, bins=10, range=(0, 1))
        chi2 = float(((counts - len(values) / 10) ** 2 / (len(values) / 10)).sum())
        assert chi2 < 30, f"{label}: masked values not uniform (chi2 {chi2:.1f}, 9 dof)"
    correlation = np.corrcoef(np.mean(seen["signal"], axis=0), signal)[0, 1]
    assert abs(correlation) < 0.35


@pytest.mark.parametrize(
    ("threshold", "num", "length"), [(2, 3, 0), (3, 5, 32), (6, 10, 17), (11, 21, 32), (13, 25, 48)]
)
def test_shares_keep_flowers_layout(threshold: int, num: int, length: int) -> None:
    """Our Shamir shares combine with Flower's own function from any holders, and back."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

    rng = np.random.default_rng(num)
    secret = rng.bytes(length)
    ours = secagg.create_shares(secret, threshold, num)
    assert [int.from_bytes(s[:4], "little") for s in ours] == list(range(1, num + 1))
    for _ in range(3):
        holders = [ours[i] for i in rng.choice(num, threshold, replace=False)]
        assert combine_shares(holders) == secret
        assert secagg.combine_shares(holders) == secret
    assert secagg.combine_shares(create_shares(secret, threshold, num)[-threshold:]) == secret
    assert secagg.create_shares(secret, threshold, num) != ours  # fresh coefficients


def test_shares_refuse_what_cannot_rebuild_a_secret() -> None:
    """Too few, repeated, ragged or zeroed shares give an error (or never the secret)."""
    secret = bytes(range(32))
    shares = secagg.create_shares(secret, 4, 7)
    with contextlib.suppress(secagg.SecAggError):  # usually: the padding is wrong
        assert secagg.combine_shares(shares[:3]) != secret
    with pytest.raises(secagg.SecAggError, match="repeat"):
        secagg.combine_shares([shares[0], shares[0], shares[1], shares[2]])
    with pytest.raises(secagg.SecAggError, match="one length"):
        secagg.combine_shares([shares[0], shares[1][:-16], shares[2], shares[3]])
    with pytest.raises(secagg.SecAggError, match="do not combine"):
        secagg.combine_shares([b"\x01\x00\x00\x00" + bytes(32), b"\x02\x00\x00\x00" + bytes(32)])


def test_field_arithmetic_is_a_field() -> None:
    """GF(2^128) products: commutative, distributive, with inverses (the window path too)."""
    from lhs_federated.apps.secagg_shamir import inverse, multiply

    rng = np.random.default_rng(5)
    for _ in range(50):
        a, b, c = (int.from_bytes(rng.bytes(16), "big") | 1 for _ in range(3))
        assert multiply(a, b) == multiply(b, a) < 2**128
        assert multiply(a, b ^ c) == multiply(a, b) ^ multiply(a, c)
        assert multiply(multiply(a, b), c) == multiply(a, multiply(b, c))
        assert multiply(a, inverse(a)) == 1
        assert multiply(a, 3) == multiply(a, 2) ^ a


@pytest.mark.parametrize(
    ("sites", "threshold", "shares"),
    [(3, 0, 3), (10, 0, 10), (21, 0, 21), (22, 0, 21), (50, 0, 21), (129, 0, 25), (1000, 0, 31),
     (40, 36, 37), (50, 22, 23)],
)  # fmt: skip
def test_many_sites_share_with_a_sparse_graph_by_default(sites, threshold, shares) -> None:
    """num_shares = 0: every site up to 21, then max(21, 3 ceil(log2 n)), odd, >= the threshold."""
    from lhs_federated.privacy.spec import SecAggSpec

    spec = SecAggSpec(reconstruction_threshold=threshold)
    assert spec.shares_for(sites) == shares
    assert spec.threshold_for(sites) == (threshold or shares // 2 + 1)
    order = list(np.random.default_rng(sites).permutation(np.arange(100, 100 + sites)))
    graph = secagg.neighbours([int(n) for n in order], shares)
    assert {len(members) for members in graph.values()} == {shares}
    assert all(node in graph[other] for node in graph for other in graph[node])  # symmetric


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"privacy.secagg.reconstruction_threshold": 5},
            r"threshold = 5 is not more than half of the 21 shares each site makes "
            r"\(privacy.secagg.num_shares = 0, so 21 at 50 sites\)",
        ),
        (
            {"privacy.secagg.reconstruction_threshold": 51},
            r"reconstruction_threshold = 51 is larger than the 50 sites in the study",
        ),
        (
            {"privacy.secagg.num_shares": 7, "privacy.secagg.reconstruction_threshold": 9},
            r"reconstruction_threshold = 9 is larger than privacy.secagg.num_shares = 7",
        ),
        (
            {"privacy.secagg.num_shares": 7, "privacy.secagg.reconstruction_threshold": 3},
            r"threshold = 3 is not more than half of the 7 shares",
        ),
    ],
)
def test_a_threshold_the_graph_cannot_meet_is_refused_with_exit_2(
    overrides, match, tmp_path, capsys
):
    from lhs_federated.cli import main
    from lhs_federated.errors import ConfigError
    from lhs_federated.study import load_study

    many = {"privacy.secure_aggregation": "secaggplus", "data.synthetic.sites": 50, **overrides}
    with pytest.raises(ConfigError, match=match):
        load_study(None).with_overrides(many)
    out = tmp_path / "run"
    args = [a for key, value in many.items() for a in ("--set", f"{key}={value}")]
    assert main(["simulate", *args, "--out", str(out)]) == 2
    assert "privacy.secagg" in capsys.readouterr().err
    assert not out.exists()
