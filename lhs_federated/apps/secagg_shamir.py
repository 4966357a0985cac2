"""Shamir secret sharing over GF(2^128), in Flower's share layout, at a cost a round can pay.

Flower's ``create_shares``/``combine_shares`` (and PyCryptodome's ``Shamir``
under them) multiply field elements bit by bit in Python, through strings, and
recompute every Lagrange coefficient, with an inversion each, for every secret:
combining one 32-byte secret from 26 shares took a quarter of a second, and the
coordinator combines one secret per site per round. Here:

- the field and its encoding are PyCryptodome's (``x^128 + x^7 + x^2 + x + 1``,
  an element is the big-endian integer of 16 bytes, bit 0 the constant term) and
  the layout Flower's (``<4-byte little-endian index><16 bytes per chunk>``, the
  secret PKCS#7-padded to 16-byte chunks), so each side reads the other's shares
  (a test checks both ways);
- a product is a carry-less multiplication by 4-bit windows, then one reduction;
- the Lagrange coefficients at 0 depend only on which share indices are
  combined, so they are computed once per index set and reused for every secret
  (the coordinator combines every site's secret from the same holders).

The coefficients of the sharing polynomial come from ``os.urandom``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from cryptography.hazmat.primitives import padding

#: x^128 + x^7 + x^2 + x + 1, PyCryptodome's (and GCM's) field polynomial.
_FIELD = (1 << 128) | 0x87
_MASK = (1 << 128) - 1
_CHUNK = 16


class ShareError(ValueError):
    """Shares that cannot be combined into a secret (too few, repeated or altered)."""


def _reduce(value: int) -> int:
    """``value`` (a polynomial of degree below 256) modulo the field polynomial."""
    while value >> 128:
        high = value >> 128
        value = (value & _MASK) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)
    return value


def multiply(a: int, b: int) -> int:
    """The product of two field elements."""
    if a.bit_length() < b.bit_length():
        a, b = b, a
    if b.bit_length() <= 8:  # a share index: a few shifts
        product = 0
        while b:
            if b & 1:
                product ^= a
            a <<= 1
            b >>= 1
        return _reduce(product)
    table = [0, a]
    for i in range(2, 16):
        table.append(table[i >> 1] << 1 if i % 2 == 0 else table[i - 1] ^ a)
    product = 0
    for shift in range(124, -1, -4):
        product = (product << 4) ^ table[(b >> shift) & 15]
    return _reduce(product)


def inverse(a: int) -> int:
    """The inverse of a non-zero field element (extended Euclid over GF(2)[x])."""
    if a == 0:
        raise ShareError("zero has no inverse")
    u, v, g1, g2 = a, _FIELD, 1, 0
    while u != 1:
        shift = u.bit_length() - v.bit_length()
        if shift < 0:
            u, v, g1, g2 = v, u, g2, g1
            shift = -shift
        u ^= v << shift
        g1 ^= g2 << shift
    return g1


@lru_cache(maxsize=256)
def lagrange_at_zero(indices: tuple[int, ...]) -> tuple[int, ...]:
    """The weights that rebuild a polynomial's value at 0 from its values at ``indices``."""
    weights = []
    for j, x_j in enumerate(indices):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(indices):
            if m != j:
                numerator = multiply(numerator, x_m)
                denominator = multiply(denominator, x_m ^ x_j)
        weights.append(multiply(numerator, inverse(denominator)))
    return tuple(weights)


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret``, any ``threshold`` of which rebuild it (Flower's layout)."""
    padder = padding.PKCS7(8 * _CHUNK).padder()
    padded = padder.update(secret) + padder.finalize()
    shares = [bytearray(index.to_bytes(4, "little")) for index in range(1, num + 1)]
    for start in range(0, len(padded), _CHUNK):
        constant = int.from_bytes(padded[start : start + _CHUNK], "big")
        coefficients = [int.from_bytes(os.urandom(_CHUNK), "big") for _ in range(threshold - 1)]
        for index, share in enumerate(shares, start=1):
            value = 0
            for coefficient in coefficients:  # Horner, highest degree first
                value = multiply(value, index) ^ coefficient
            value = multiply(value, index) ^ constant
            share += value.to_bytes(_CHUNK, "big")
    return [bytes(share) for share in shares]


def combine_shares(shares: list[bytes]) -> bytes:
    """The secret the shares rebuild (pass exactly a threshold of them).

    Raises
    ------
    ShareError
        If the shares differ in length, repeat an index, or do not combine into
        a padded secret (too few or altered).
    """
    if not shares or len({len(s) for s in shares}) != 1 or (len(shares[0]) - 4) % _CHUNK:
        raise ShareError("the shares are not of one length of Flower's layout")
    indices = tuple(int.from_bytes(s[:4], "little") for s in shares)
    if len(set(indices)) != len(indices) or 0 in indices:
        raise ShareError(f"the share indices {sorted(indices)} repeat or include 0")
    weights = lagrange_at_zero(indices)
    padded = bytearray()
    for start in range(4, len(shares[0]), _CHUNK):
        value = 0
        for weight, share in zip(weights, shares, strict=True):
            value ^= multiply(weight, int.from_bytes(share[start : start + _CHUNK], "big"))
        padded += value.to_bytes(_CHUNK, "big")
    unpadder = padding.PKCS7(8 * _CHUNK).unpadder()
    try:
        return unpadder.update(bytes(padded)) + unpadder.finalize()
    except ValueError as exc:
        raise ShareError("the shares do not combine into a secret") from exc
