"""The shuffle order's rows written from their documented definition (jaxtune.batches),
independently of the engine: an independent reference for the tests that train a
member with a plain loop (imported by tests/conftest.py and tests/test_state.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def reference_permutation(round_keys, n: int) -> np.ndarray:
    """The shuffle order's permutation of ``[0, n)`` for one epoch's round keys, written
    from its documented definition (jaxtune.batches) in plain Python integers: a
    Feistel network on ``bits = max(2, ceil(log2 n))``-bit integers whose rounds add
    ``hash(lo * 0x9E3779B9 ^ key_i) mod 2**hi_bits`` to the high part and swap the parts,
    walked until the value lands below ``n``."""
    m32 = 2**32 - 1

    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & m32
        x ^= x >> 15
        x = (x * 0x846CA68B) & m32
        return x ^ (x >> 16)

    bits = max(2, (n - 1).bit_length())

    def encrypt(x):
        lo_bits, hi_bits = bits // 2, bits - bits // 2
        for k in (int(v) for v in round_keys):
            lo, hi = x & ((1 << lo_bits) - 1), x >> lo_bits
            hi = (hi + mix(((lo * 0x9E3779B9) & m32) ^ k)) & ((1 << hi_bits) - 1)
            x = (lo << hi_bits) | hi
            lo_bits, hi_bits = hi_bits, lo_bits
        return x

    out = []
    for x in range(n):
        y = encrypt(x)
        while y >= n:
            y = encrypt(y)
        out.append(y)
    return np.asarray(out)


def shuffle_rows(train_key, seen: int, b: int, n: int) -> np.ndarray:
    """Rows ``seen .. seen + b`` of the shuffle order: epoch ``e``'s permutation has the
    round keys ``bits(fold_in(fold_in(key, 2**31 - 1), e), (ROUNDS,), uint32)`` (drawn
    in the caller's threefry mode: the engine's programs use the classic one)."""
    from jaxtune.batches import ROUNDS

    order_key = jax.random.fold_in(train_key, 2**31 - 1)
    pos = seen + np.arange(b)
    perms = {e: reference_permutation(np.asarray(jax.random.bits(
        jax.random.fold_in(order_key, int(e)), (ROUNDS,), jnp.uint32)), n)
        for e in np.unique(pos // n)}
    return np.asarray([perms[p // n][p % n] for p in pos])
