"""SecAgg+ arithmetic: pairwise and self masks, secret shares, and their removal.

The coordinator learns the sum of the sites' integer vectors and nothing
else (Bell et al. 2020, the protocol of Flower's legacy ``SecAggPlusWorkflow``
and ``secaggplus_mod``). Each site, per protocol instance (one training round,
or the statistics round):

1. *setup*: makes two EC key pairs (``pk1`` for masks, ``pk2`` for encrypting
   shares) and sends the public halves;
2. *share keys*: draws a self-mask seed ``b`` and splits ``b`` and the secret
   its ``sk1`` derives from into Shamir shares (``threshold`` of ``num_shares``
   reconstruct), one per neighbour, each encrypted for it with an ECDH key;
3. *collect*: adds to its vector its self mask (from ``b``) and, for each
   neighbour, a pairwise mask from their shared ``sk1``/``pk1`` key, added by
   the larger node id and subtracted by the smaller, so that pairwise masks
   cancel in the sum;
4. *unmask*: for each surviving neighbour sends its share of ``b``; for each
   neighbour that dropped after step 2, its share of ``sk1``'s secret. The coordinator
   rebuilds the survivors' self masks and the dropped sites' pairwise masks
   and removes them. A site never gives both shares of one node.

Flower's primitives do the cryptography (ECDH + HKDF, Fernet, PEM keys, the
share plaintext layout, ndarray arithmetic). Some parts are our own, on
purpose: masks come from AES-256-CTR keyed with the full 256-bit seed
(Flower's ``pseudo_rand_gen`` folds its seed into a 32-bit ``RandomState``
seed, which a coordinator could search); the modulus is 2**62 with signed
fixed-point encoding, so weighted sums of many sites cannot wrap and negative
values need no offset; ``sk1`` is derived from a shared 32-byte secret (see
:func:`mask_key`); the key pairs are on P-256 (Flower's are on P-384, whose
ECDH cost nine times as much: 128-bit security, as Bonawitz et al.'s
implementation and TLS); and Shamir sharing is
:mod:`~lhs_federated.apps.secagg_shamir` (Flower's field and share layout, a
hundred times faster to combine). Security holds against a semi-honest
coordinator colluding with fewer than ``threshold`` of any site's neighbours
(with every site a neighbour, any minority of sites); a site whose values are
not hidden by at least ``threshold`` others is never summed.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    private_key_to_bytes,
    public_key_to_bytes,
)

from lhs_federated.apps import secagg_shamir

#: Every masked value lives modulo 2**62: int64 sums of two never overflow.
MODULUS = 2**62
#: A decoded sum must stay below this in absolute value (signed encoding).
HALF = MODULUS // 2

Vector = dict[str, np.ndarray]  # named int64 arrays


class SecAggError(ValueError):
    """A step of the protocol cannot go on; the message says which and why."""


#: The curve of both key pairs: NIST P-256, as Bonawitz et al.'s SecAgg
#: implementation (128-bit security; ECDH on it costs a ninth of Flower's P-384).
CURVE = ec.SECP256R1()
#: Order of the P-256 group.
_P256_ORDER = int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """Shamir shares of ``secret`` in Flower's layout (:mod:`~lhs_federated.apps.secagg_shamir`)."""
    return secagg_shamir.create_shares(secret, threshold, num)


def combine_shares(shares: list[bytes]) -> bytes:
    """The secret a threshold of shares rebuild.

    Raises
    ------
    SecAggError
        If the shares do not combine into a padded secret (altered or too few).
    """
    try:
        return secagg_shamir.combine_shares(shares)
    except secagg_shamir.ShareError as exc:
        raise SecAggError(str(exc)) from exc


def mask_key(secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The mask key pair's private half, derived from a 32-byte secret.

    Sharing the 32-byte secret instead of the PEM key (about 240 bytes) makes
    its Shamir shares and their recombination several times cheaper; the key is
    as strong (a 256-bit secret hashed into the group).
    """
    scalar = int.from_bytes(hashlib.sha512(b"lhs-secagg-sk1" + secret).digest(), "big")
    return ec.derive_private_key(scalar % (_P256_ORDER - 1) + 1, CURVE)


@dataclass(frozen=True)
class SiteKeys:
    """A site's key pairs for one protocol instance (PEM bytes; ``secret1`` derives ``sk1``)."""

    secret1: bytes
    pk1: bytes
    sk2: bytes
    pk2: bytes

    @classmethod
    def generate(cls) -> SiteKeys:
        """Fresh key pairs: one for masks (from a shareable secret), one for encrypting shares."""
        secret1 = os.urandom(32)
        sk2 = ec.generate_private_key(CURVE)
        return cls(
            secret1,
            public_key_to_bytes(mask_key(secret1).public_key()),
            private_key_to_bytes(sk2),
            public_key_to_bytes(sk2.public_key()),
        )


@dataclass(frozen=True)
class SharedKeys:
    """What a site derives once per neighbour at the share stage and keeps for the next.

    Attributes
    ----------
    channel : dict of int to bytes
        Fernet key of each neighbour (ECDH of ``sk2`` and its ``pk2``).
    pairwise : dict of int to bytes
        Pairwise mask seed with each neighbour (ECDH of ``sk1`` and its ``pk1``).
    """

    channel: dict[int, bytes]
    pairwise: dict[int, bytes]


def neighbours(order: list[int], num_shares: int) -> dict[int, list[int]]:
    """Each node's neighbours (itself included) on a ring of ``order``, as Flower's workflow.

    With ``num_shares`` equal to the number of nodes every node neighbours every
    other (SecAgg); fewer gives SecAgg+'s sparse graph, ``num_shares`` nodes each.
    """
    n = len(order)
    if num_shares >= n:
        return {node: sorted(order) for node in order}
    half = num_shares // 2
    return {
        node: sorted({order[(i + k) % n] for k in range(-half, half + 1)})
        for i, node in enumerate(order)
    }


def mask_stream(seed: bytes, shapes: Mapping[str, tuple[int, ...]]) -> Vector:
    """Uniform values in [0, MODULUS) for each named shape, from AES-256-CTR keyed by ``seed``."""
    key = hashlib.sha256(b"lhs-secagg-mask" + seed).digest()
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    raw = np.frombuffer(encryptor.update(bytes(8 * sum(sizes))), dtype=np.uint64) >> np.uint64(2)
    out, start = {}, 0
    for (name, shape), size in zip(shapes.items(), sizes, strict=True):
        out[name] = raw[start : start + size].astype(np.int64).reshape(shape)
        start += size
    return out


def _agree(private: ec.EllipticCurvePrivateKey, public_pem: bytes) -> bytes:
    """Flower's ECDH + HKDF key (url-safe base64 of 32 bytes) with another's public key."""
    return generate_shared_key(private, bytes_to_public_key(public_pem))


def _apply(vector: Vector, mask: Vector, sign: int) -> Vector:
    names = list(vector)
    parts = [vector[n] for n in names]
    masks = [mask[n] for n in names]
    combined = (
        parameters_addition(parts, masks) if sign > 0 else parameters_subtraction(parts, masks)
    )
    return dict(zip(names, parameters_mod(combined, MODULUS), strict=True))


def share_keys(
    node: int,
    keys: SiteKeys,
    public_keys: Mapping[int, tuple[bytes, bytes]],
    *,
    threshold: int,
) -> tuple[bytes, dict[int, bytes], dict[int, tuple[bytes, bytes]], SharedKeys]:
    """Stage 2 at a site: its self-mask seed, encrypted shares per neighbour, its own shares.

    Returns ``(seed, ciphertexts by destination, {node: (b share, secret1
    share)}, the keys agreed with each neighbour)``.

    Raises
    ------
    SecAggError
        If the neighbours are fewer than ``threshold``, a public key repeats,
        or the site's own keys are shown wrongly.
    """
    if len(public_keys) < threshold:
        raise SecAggError(
            f"{len(public_keys)} neighbours sent keys; reconstruction needs {threshold}"
        )
    flat = [k for pair in public_keys.values() for k in pair]
    if len(set(flat)) != len(flat):
        raise SecAggError("two neighbours show the same public key")
    if tuple(public_keys.get(node, ())) != (keys.pk1, keys.pk2):
        raise SecAggError("the site's own public keys are shown wrongly")
    seed = os.urandom(32)
    ordered = sorted(public_keys)
    b_shares = create_shares(seed, threshold, len(ordered))
    sk_shares = create_shares(keys.secret1, threshold, len(ordered))
    sk1 = mask_key(keys.secret1)
    sk2 = bytes_to_private_key(keys.sk2)
    ciphertexts, channel, pairwise = {}, {}, {}
    for index, other in enumerate(ordered):
        if other == node:
            own = (b_shares[index], sk_shares[index])
            continue
        channel[other] = _agree(sk2, public_keys[other][1])
        pairwise[other] = _agree(sk1, public_keys[other][0])
        plaintext = share_keys_plaintext_concat(node, other, b_shares[index], sk_shares[index])
        ciphertexts[other] = encrypt(channel[other], plaintext)
    return seed, ciphertexts, {node: own}, SharedKeys(channel, pairwise)


def receive_shares(
    node: int, channel: Mapping[int, bytes], ciphertexts: Mapping[int, bytes]
) -> dict[int, tuple[bytes, bytes]]:
    """Stage 3 at a site: decrypt the shares the neighbours sent it, checking their addresses.

    Raises
    ------
    SecAggError
        If a ciphertext comes from a node that is not a neighbour, does not
        decrypt, or names another source or destination.
    """
    shares = {}
    for source, ciphertext in ciphertexts.items():
        if source not in channel:
            raise SecAggError(f"a share came from node {source}, which is not a neighbour")
        try:
            plaintext = decrypt(channel[source], ciphertext)
        except Exception as exc:  # Fernet's InvalidToken: altered or misaddressed
            raise SecAggError(f"the share from node {source} does not decrypt") from exc
        src, dst, b_share, sk_share = share_keys_plaintext_separate(plaintext)
        if (src, dst) != (source, node):
            raise SecAggError(f"the share from node {source} is addressed {src} -> {dst}")
        shares[source] = (b_share, sk_share)
    return shares


def mask_vector(
    node: int,
    vector: Vector,
    *,
    seed: bytes,
    pairwise: Mapping[int, bytes],
    alive: Iterable[int],
) -> Vector:
    """Stage 3 at a site: the vector plus its self mask and pairwise masks, mod MODULUS.

    ``alive`` are the neighbours whose shares arrived (the others dropped
    before this stage and are left out of the sum altogether).
    """
    shapes = {name: value.shape for name, value in vector.items()}
    plain = {n: np.mod(v, MODULUS) for n, v in vector.items()}
    masked = _apply(plain, mask_stream(seed, shapes), 1)
    for other in sorted(alive):
        if other == node:
            continue
        pairwise_mask = mask_stream(base64.urlsafe_b64decode(pairwise[other]), shapes)
        masked = _apply(masked, pairwise_mask, 1 if node > other else -1)
    return masked


def unmask_shares(
    active: Iterable[int],
    dropped: Iterable[int],
    held: Mapping[int, tuple[bytes, bytes]],
    *,
    threshold: int,
) -> dict[int, bytes]:
    """Stage 4 at a site: its b share of each survivor and sk1 share of each dropped node.

    Raises
    ------
    SecAggError
        If a node is listed both alive and dropped, a listed node is not one
        whose shares the site holds, or fewer than ``threshold`` survive.
    """
    active, dropped = set(active), set(dropped)
    if active & dropped:
        raise SecAggError(f"nodes {sorted(active & dropped)} are listed as alive and as dropped")
    unknown = (active | dropped) - set(held)
    if unknown:
        raise SecAggError(f"nodes {sorted(unknown)} are not neighbours of this site")
    if len(active) < threshold:
        raise SecAggError(f"{len(active)} neighbours survive; the threshold is {threshold}")
    out = {n: held[n][0] for n in sorted(active)}
    out.update({n: held[n][1] for n in sorted(dropped)})
    return out


def sum_masked(vectors: Iterable[Vector]) -> Vector:
    """The sum of masked vectors, mod MODULUS (what the coordinator can compute alone)."""
    total: Vector | None = None
    for vector in vectors:
        total = dict(vector) if total is None else _apply(total, vector, 1)
    if total is None:
        raise SecAggError("no masked vector to sum")
    return total


def unmask_sum(
    masked_total: Vector,
    *,
    survivors: Iterable[int],
    dropped: Iterable[int],
    shares: Mapping[int, list[bytes]],
    public_keys: Mapping[int, tuple[bytes, bytes]],
    neighbourhood: Mapping[int, list[int]],
    threshold: int,
) -> Vector:
    """Remove the survivors' self masks and the dropped sites' pairwise masks; decode signed.

    ``shares[node]`` are the shares the coordinator collected of ``node``'s
    secret (its self-mask seed if it survived, its ``sk1`` if it dropped).

    Raises
    ------
    SecAggError
        If fewer than ``threshold`` shares of some node arrived.
    """
    shapes = {name: value.shape for name, value in masked_total.items()}
    total = dict(masked_total)
    survivors, dropped = set(survivors), set(dropped)
    for node in sorted(survivors | dropped):
        got = shares.get(node, [])
        if len(got) < threshold:
            raise SecAggError(
                f"{len(got)} shares of node {node} arrived; reconstruction needs {threshold}"
            )
        secret = combine_shares(list(got)[:threshold])  # any threshold of them rebuild it
        if node in survivors:
            total = _apply(total, mask_stream(secret, shapes), -1)
            continue
        sk1 = mask_key(secret)
        for other in neighbourhood[node]:
            if other == node or other not in survivors:
                continue
            seed = base64.urlsafe_b64decode(_agree(sk1, public_keys[other][0]))
            pairwise = mask_stream(seed, shapes)
            # node added this mask if node > other; other then subtracted it
            total = _apply(total, pairwise, 1 if node > other else -1)
    return {name: np.where(v >= HALF, v - MODULUS, v) for name, v in total.items()}
