"""Data order: how a member's sequence of minibatches derives from its key.

Every member draws a fixed number of row indices per step (its *capacity*, at most
``max_batch``) and weights only its first ``batch_size`` of them, so the batch size
may be traced (differ per member). Row ``j`` of a step never depends on the
capacity, so a member computes the same batch whatever capacity it runs at
(:func:`row_capacities`; the engine picks one per group of members). Three orders
(``Experiment(data_order=...)``):

``"shuffle"`` (default)
    Epochs without replacement. Example positions ``p = seen + j`` (``seen``:
    examples the member consumed before this step, ``j < batch_size``) run
    through a fresh permutation of the training split per epoch: row
    ``perm_e(p mod n)`` with ``e = p // n``. ``perm_e`` is a keyed bijection of
    ``[0, n)`` (:func:`permute`): a :data:`ROUNDS`-round Feistel network on the
    ``ceil(log2 n)``-bit integers, walked until it lands below ``n`` (cycle
    walking), with round keys ``bits(fold_in(order_key, e), (ROUNDS,), uint32)``
    and ``order_key = fold_in(key, 2**31 - 1)``. Every example is seen exactly
    once per epoch whatever the (traced) batch size, even if it changes during
    training; a batch that straddles two epochs takes the end of one and the
    start of the next. A row costs a few integer hashes: no permutation of the
    split is materialised, so a small batch pays for its own rows only.
``"replacement"``
    Independent draws with replacement: row ``j`` is ``randint(fold_in(k, j), (),
    0, n)`` with ``k`` the first half of ``split(fold_in(key, step))``. Cheapest; an
    epoch is not a permutation.
``"full_batch"``
    Full-batch gradient descent: every step uses the whole training split, in
    order, and the batch size is ignored (no gather at all).

Augmentation keys (``Experiment(augment=...)``) are ``fold_in(fold_in(key, step),
0x61756720)`` (:meth:`Sampler.augment_key`), one per example as for dropout.
With gradient accumulation (``Experiment(accumulate=k)``) ``step`` above is the
micro-batch index ``optimizer_step * k + i``.

Dropout keys are the second half of ``split(fold_in(key, step))`` in every order;
example ``j`` of the step draws its masks from ``fold_in(dropout_key, j)``
(:meth:`Sampler.row_keys`), so they too are the same at every capacity.

Example:
    >>> import jax, jax.numpy as jnp
    >>> sampler = Sampler("shuffle", n_train=10, max_batch=4)
    >>> key = jax.random.key(0)
    >>> rows = [sampler.indices(key, jnp.int32(s), jnp.int32(4 * s))[:4] for s in range(5)]
    >>> sorted(jnp.concatenate(rows)[:10].tolist()) == list(range(10))  # one epoch
    True
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["DATA_ORDERS", "MIN_CAPACITY", "ROUNDS", "Sampler", "permute", "row_capacities"]

DATA_ORDERS = ("shuffle", "replacement", "full_batch")

#: ``fold_in`` data of the per-epoch permutation stream (steps never reach it).
_ORDER_STREAM = 2**31 - 1
#: ``fold_in`` data of the augmentation stream, below a step's key.
_AUGMENT_STREAM = 0x61756720

#: The smallest row capacity :func:`row_capacities` offers: below it a step's cost is
#: mostly the optimizer update, not the rows.
MIN_CAPACITY = 16


#: Rounds of the Feistel network behind the shuffle order's permutations.
ROUNDS = 6
_GOLDEN = 0x9E3779B9


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (xor-shift-multiply; uint32 arithmetic wraps)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _encrypt(x: jax.Array, round_keys: jax.Array, bits: int) -> jax.Array:
    """One pass of the Feistel network, a bijection of the ``bits``-bit integers.

    Each round adds a hash of the low part to the high part, then swaps the parts
    (sizes ``bits // 2`` and ``bits - bits // 2`` alternate, so odd ``bits`` work).
    """
    lo_bits, hi_bits = bits // 2, bits - bits // 2
    for i in range(ROUNDS):
        lo, hi = x & jnp.uint32((1 << lo_bits) - 1), x >> lo_bits
        hi = (hi + _mix((lo * jnp.uint32(_GOLDEN)) ^ round_keys[..., i])) & jnp.uint32(
            (1 << hi_bits) - 1)
        x = (lo << hi_bits) | hi
        lo_bits, hi_bits = hi_bits, lo_bits
    return x


def permute(x: jax.Array, round_keys: jax.Array, n: int) -> jax.Array:
    """Where the keyed permutation of ``[0, n)`` sends each ``x`` (``0 <= x < n``).

    ``round_keys``: ``(..., ROUNDS)`` uint32, broadcast against ``x``. The Feistel
    network permutes ``[0, 2**bits)`` with ``2**bits >= n``; a value that lands at
    ``n`` or above is encrypted again until it lands below (cycle walking: the
    result is still a bijection of ``[0, n)``, and fewer than two passes are needed
    on average).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> keys = jax.random.bits(jax.random.key(0), (ROUNDS,), jnp.uint32)
        >>> p = permute(jnp.arange(10, dtype=jnp.uint32), keys, 10)
        >>> sorted(p.tolist()) == list(range(10))
        True
    """
    bits = max(2, (int(n) - 1).bit_length())
    x = jnp.asarray(x, jnp.uint32)
    first = _encrypt(x, round_keys, bits)
    return jax.lax.while_loop(
        lambda y: jnp.any(y >= n),
        lambda y: jnp.where(y >= n, _encrypt(y, round_keys, bits), y), first)


def row_capacities(smallest: int, largest: int) -> tuple[int, ...]:
    """The row counts a step may run at: powers of two from the one that holds
    ``smallest`` (at least :data:`MIN_CAPACITY`) below ``largest``, then ``largest``.

    A member whose batch size is ``b`` runs at the first capacity ``>= b``, less than
    twice ``b`` (or :data:`MIN_CAPACITY`).

    Example:
        >>> row_capacities(16, 256)
        (16, 32, 64, 128, 256)
        >>> row_capacities(20, 200), row_capacities(1, 8), row_capacities(64, 64)
        ((32, 64, 128, 200), (8,), (64,))
    """
    c = max(MIN_CAPACITY, 1 << max(int(smallest) - 1, 0).bit_length())
    caps = []
    while c < largest:
        caps.append(c)
        c *= 2
    return (*caps, int(largest))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Minibatch row indices of one member, per step (pure functions of its key).

    Args:
        order: one of :data:`DATA_ORDERS`.
        n_train: rows of the training split.
        max_batch: rows gathered per step (the capacity: at least the batch size of
            every member it serves).
    """

    order: str
    n_train: int
    max_batch: int

    def __post_init__(self) -> None:
        if self.order not in DATA_ORDERS:
            raise ValueError(f"data_order must be one of {list(DATA_ORDERS)}, "
                             f"got {self.order!r}")

    def indices(self, key: jax.Array, step: jax.Array, seen: jax.Array) -> jax.Array | None:
        """The ``(max_batch,)`` rows of ``step``, after ``seen`` examples (``None``:
        the whole split, in order)."""
        if self.order == "full_batch":
            return None
        if self.order == "replacement":
            k_batch = jax.random.split(jax.random.fold_in(key, step))[0]
            return jax.vmap(lambda k: jax.random.randint(k, (), 0, self.n_train))(
                self.row_keys(k_batch, self.max_batch))
        n = self.n_train
        order_key = jax.random.fold_in(key, _ORDER_STREAM)
        pos = seen + jnp.arange(self.max_batch)
        first = seen // n
        spans = -(-self.max_batch // n) + 1  # epochs the step's positions may touch
        keys = jax.vmap(lambda e: jax.random.bits(jax.random.fold_in(order_key, e), (ROUNDS,),
                                                  jnp.uint32))(first + jnp.arange(spans))
        rows = permute((pos % n).astype(jnp.uint32), keys[pos // n - first], n)
        return rows.astype(jnp.int32)

    @staticmethod
    def dropout_key(key: jax.Array, step: jax.Array) -> jax.Array:
        """The key of the dropout masks of ``step``."""
        return jax.random.split(jax.random.fold_in(key, step))[1]

    @staticmethod
    def augment_key(key: jax.Array, step: jax.Array) -> jax.Array:
        """The key of the data augmentation of ``step`` (``Experiment(augment=...)``):
        example ``j`` of the step is augmented with ``fold_in(augment_key, j)``."""
        return jax.random.fold_in(jax.random.fold_in(key, step), _AUGMENT_STREAM)

    @staticmethod
    def row_keys(key: jax.Array, rows: int) -> jax.Array:
        """``fold_in(key, j)`` for the first ``rows`` examples ``j`` of a step: row ``j``'s
        key does not depend on how many rows are drawn."""
        return jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(rows))
