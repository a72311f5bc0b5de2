"""Layers whose vmapped (population) form is fast: an embedding.

**Embedding.** Under ``jax.vmap`` over members' tables and ids, the gradient
of ``jnp.take(table, ids, axis=0)`` (what ``flax.linen.Embed`` computes)
becomes one scatter-add whose indices are ``(member, id)`` pairs into a
``(members, vocab, features)`` array. XLA:CPU runs that two-index scatter
about twice as slowly as the same rows added through one index into a flat
``(members * vocab, features)`` array. :func:`take_rows` computes exactly
``jnp.take(table, ids, axis=0)`` (its default "fill" mode: negative ids count
from the end, out-of-range ids read NaN and receive no gradient) with a
``jax.custom_vjp`` whose backward is one flat scatter-add over
``member * vocab + id``: a :func:`jax.custom_batching.custom_vmap` rule folds
each vmapped member axis into the row index, so the member-level code stays
unbatched. :class:`Embed` is ``nn.Embed`` (same parameter, same ``attend``)
with that lookup.

Limits of the custom gradient: reverse mode only (``jax.jvp``/``jacfwd``
through :func:`take_rows` raise, as for any ``custom_vjp``); second-order
reverse mode works (the backward is itself a ``custom_vjp`` whose backward is
the gather). Use ``nn.Embed`` where forward-mode derivatives are needed
(``jaxtune.hypergrad`` in forward mode).

Example:
    >>> import jax, jax.numpy as jnp
    >>> table = jnp.arange(12.0).reshape(4, 3)
    >>> take_rows(table, jnp.array([[3, 0], [-1, 1]]))[1, 0]
    Array([ 9., 10., 11.], dtype=float32)
    >>> g = jax.grad(lambda t: take_rows(t, jnp.array([1, 1, 2])).sum())(table)
    >>> g[:, 0]
    Array([0., 2., 1., 0.], dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

__all__ = ["Embed", "take_rows"]


def _member_offsets(ids: jax.Array, members: int, rows: int) -> jax.Array:
    """``ids`` (members, ...) in ``[0, rows]`` as flat row numbers of a ``(members * rows)``
    array; ``rows`` (out of range) becomes ``members * rows`` (still out of range)."""
    offset = (jnp.arange(members, dtype=ids.dtype) * rows).reshape((members,)
                                                                   + (1,) * (ids.ndim - 1))
    return jnp.where(ids < rows, ids + offset, members * rows)


def _batched(members: int, batched: bool, x: jax.Array) -> jax.Array:
    return x if batched else jnp.broadcast_to(x, (members, *x.shape))


@functools.cache
def _gather(rows: int) -> Any:
    """``rows_of(table, idx)``: ``table[idx]`` for ``idx`` in ``[0, rows]`` (``rows``: fill)."""

    @custom_vmap
    def rows_of(table, idx):
        return jnp.take(table, idx, axis=0, mode="fill")

    @rows_of.def_vmap
    def _rule(members, in_batched, table, idx):
        table = _batched(members, in_batched[0], table)
        idx = _batched(members, in_batched[1], idx)
        flat = _gather(members * rows)(table.reshape(members * rows, *table.shape[2:]),
                                       _member_offsets(idx, members, rows))
        return flat, True

    return rows_of


@functools.cache
def _scatter(rows: int) -> Any:
    """``added(idx, g)``: ``zeros((rows, ...)).at[idx].add(g)``, ``idx == rows`` dropped."""

    @custom_vmap
    def added(idx, g):
        out = jnp.zeros((rows, *g.shape[idx.ndim:]), g.dtype)
        return out.at[idx].add(g, mode="drop")

    @added.def_vmap
    def _rule(members, in_batched, idx, g):
        idx = _batched(members, in_batched[0], idx)
        g = _batched(members, in_batched[1], g)
        flat = _scatter(members * rows)(_member_offsets(idx, members, rows), g)
        return flat.reshape(members, rows, *flat.shape[1:]), True

    return added


@functools.cache
def _differentiable(rows: int) -> tuple[Any, Any]:
    """``(gather, scatter)`` over ``rows`` rows, each the other's gradient."""

    @jax.custom_vjp
    def gather(table, idx):
        return _gather(rows)(table, idx)

    @jax.custom_vjp
    def scatter(idx, g):
        return _scatter(rows)(idx, g)

    gather.defvjp(lambda table, idx: (gather(table, idx), idx),
                  lambda idx, ct: (scatter(idx, ct), None))
    scatter.defvjp(lambda idx, g: (scatter(idx, g), idx),
                   lambda idx, ct: (None, gather(ct, idx)))
    return gather, scatter


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """``jnp.take(table, ids, axis=0)`` whose gradient vectorizes over a population.

    Args:
        table: ``(vocab, *features)``; an integer table is looked up with ``jnp.take``.
        ids: integer array of any shape; negative ids count from the end, ids
            outside ``[-vocab, vocab)`` read NaN (as ``jnp.take``) and get no gradient.

    Returns:
        ``ids.shape + features``, equal to ``jnp.take(table, ids, axis=0)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> tables = jnp.ones((3, 5, 2)); ids = jnp.array([[0, 4], [1, 1], [2, 0]])
        >>> grads = jax.vmap(jax.grad(lambda t, i: take_rows(t, i).sum()))(tables, ids)
        >>> grads[1, :, 0]
        Array([0., 2., 0., 0., 0.], dtype=float32)
    """
    table, ids = jnp.asarray(table), jnp.asarray(ids)
    if table.ndim < 1:
        raise ValueError(f"take_rows: table must have at least one axis, got shape {table.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"take_rows: ids must be integers, got {ids.dtype}")
    if not jnp.issubdtype(table.dtype, jnp.inexact):
        return jnp.take(table, ids, axis=0)
    rows = table.shape[0]
    if jnp.issubdtype(ids.dtype, jnp.signedinteger):
        ids = jnp.where(ids < 0, ids + rows, ids)
    idx = jnp.where((ids >= 0) & (ids < rows), ids, rows).astype(jnp.int32)
    return _differentiable(rows)[0](table, idx)


class Embed(nn.Embed):
    """``flax.linen.Embed`` (same parameter and initializer, same ``attend``) whose lookup
    is :func:`take_rows`: its gradient is one flat scatter-add over a vmapped population.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> ids = jnp.array([[1, 2], [0, 9]])
        >>> v = Embed(10, 4).init(jax.random.key(0), ids)
        >>> bool(jnp.array_equal(Embed(10, 4).apply(v, ids), nn.Embed(10, 4).apply(v, ids)))
        True
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Embeds ``inputs`` (integers, any shape) along a new last axis."""
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Input type must be an integer or unsigned integer.")
        (embedding,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(embedding, (*inputs.shape, self.features))
        return take_rows(embedding, inputs)
