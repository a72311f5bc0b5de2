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
    ``perm_e[p mod n]`` with ``e = p // n`` and ``perm_e = permutation(fold_in(
    order_key, e), n)``, ``order_key = fold_in(key, 2**31 - 1)``. Every example
    is seen exactly once per epoch whatever the (traced) batch size, even if it
    changes during training; a batch that straddles two epochs takes the end of
    one and the start of the next. A chunk computes the permutations of the
    epochs it spans once, at its start.
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
    >>> sampler = Sampler("shuffle", n_train=10, max_batch=4, steps_per_chunk=5)
    >>> key = jax.random.key(0)
    >>> plan = sampler.prepare(key, jnp.int32(0))
    >>> rows = [sampler.indices(key, jnp.int32(s), jnp.int32(4 * s), plan)[:4]
    ...         for s in range(5)]
    >>> sorted(jnp.concatenate(rows)[:10].tolist()) == list(range(10))  # one epoch
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["DATA_ORDERS", "MIN_CAPACITY", "Sampler", "row_capacities"]

DATA_ORDERS = ("shuffle", "replacement", "full_batch")

#: ``fold_in`` data of the per-epoch permutation stream (steps never reach it).
_ORDER_STREAM = 2**31 - 1
#: ``fold_in`` data of the augmentation stream, below a step's key.
_AUGMENT_STREAM = 0x61756720

#: The smallest row capacity :func:`row_capacities` offers: below it a step's cost is
#: mostly the optimizer update, not the rows.
MIN_CAPACITY = 16


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
        steps_per_chunk: steps of one compiled chunk (``eval_every``).
    """

    order: str
    n_train: int
    max_batch: int
    steps_per_chunk: int

    def __post_init__(self) -> None:
        if self.order not in DATA_ORDERS:
            raise ValueError(f"data_order must be one of {list(DATA_ORDERS)}, "
                             f"got {self.order!r}")

    @property
    def epochs_per_chunk(self) -> int:
        """Permutations a chunk may touch: the epochs ``steps_per_chunk`` batches span."""
        return math.ceil((self.steps_per_chunk + 1) * self.max_batch / self.n_train) + 1

    def prepare(self, key: jax.Array, seen: jax.Array) -> Any:
        """Per-chunk work, done once before a chunk whose member has consumed ``seen``
        examples.

        ``"shuffle"``: the permutations of the epochs the chunk spans,
        ``(epochs_per_chunk, n_train)``, and the first of those epochs.
        """
        if self.order != "shuffle":
            return None
        first = seen // self.n_train
        order_key = jax.random.fold_in(key, _ORDER_STREAM)
        epochs = first + jnp.arange(self.epochs_per_chunk)
        perms = jax.vmap(lambda e: jax.random.permutation(
            jax.random.fold_in(order_key, e), self.n_train))(epochs)
        return first, perms.astype(jnp.int32)

    def indices(self, key: jax.Array, step: jax.Array, seen: jax.Array,
                plan: Any) -> jax.Array | None:
        """The ``(max_batch,)`` rows of ``step``, after ``seen`` examples (``None``:
        the whole split, in order)."""
        if self.order == "full_batch":
            return None
        if self.order == "replacement":
            k_batch = jax.random.split(jax.random.fold_in(key, step))[0]
            return jax.vmap(lambda k: jax.random.randint(k, (), 0, self.n_train))(
                self.row_keys(k_batch, self.max_batch))
        first, perms = plan  # a plan prepared for more rows serves fewer rows alike
        pos = seen + jnp.arange(self.max_batch)
        epoch = jnp.clip(pos // self.n_train - first, 0, perms.shape[0] - 1)
        return perms[epoch, pos % self.n_train]

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
