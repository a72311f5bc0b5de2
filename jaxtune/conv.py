"""Convolutions that vectorize over a population: patches and a batched contraction.

``jax.vmap`` over members' kernels turns ``lax.conv_general_dilated`` into one
*grouped* convolution (``feature_group_count`` = members), which XLA:CPU runs
several times slower than the members one after the other.
:func:`conv_general_dilated` computes exactly what ``lax.conv_general_dilated``
computes (same arguments, values and gradients) as strided slices of the padded
input (the patches) followed by one ``dot_general``; under ``vmap`` the
contraction gains a batch dimension, which every backend runs as fast as a
matmul.

Which formulation a population uses is chosen per backend
(:data:`CONV_BY_BACKEND`, measured with ``python experiments/bench_layers.py``;
see ``docs/benchmarks.md``):

=========  ============  ====================================================
backend    formulation   why
=========  ============  ====================================================
cpu        patches       the vmapped native conv (grouped) loses to a loop
                         several times over; patches win (benchmarks.md)
gpu, tpu   native        not measured: no GPU was lent to this work
=========  ============  ====================================================

:func:`conv_mode` makes every ``flax.linen.Conv`` called inside it use the
chosen formulation (a Flax method interceptor): the engine applies it around
each call of the model (``Experiment(conv="auto"|"patches"|"native")``), so a
user's own model with plain ``nn.Conv`` layers benefits too.

Memory: the patches of a layer hold ``prod(kernel_size)`` times the layer's
input (one copy per kernel offset, at the output's resolution). They are
ordinary intermediates of the member's program, so
:func:`jaxtune.memory.member_bytes` (which sums every intermediate of a chunk's
jaxpr) counts them.

Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((2, 8, 8, 3)); w = jnp.ones((3, 3, 3, 4))
    >>> dn = ("NHWC", "HWIO", "NHWC")
    >>> y = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    >>> ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    >>> y.shape, bool(jnp.allclose(y, ref))
    ((2, 8, 8, 4), True)
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax import lax

__all__ = ["CONV_BY_BACKEND", "CONV_MODES", "conv_general_dilated", "conv_mode",
           "resolve_conv"]

#: What ``conv="auto"`` means on each backend (``jax.default_backend()``); a
#: backend not listed gets ``"native"``. Edit this dict to override it globally,
#: or pass ``conv="patches"``/``"native"`` to the Experiment.
CONV_BY_BACKEND: dict[str, str] = {"cpu": "patches", "gpu": "native", "cuda": "native",
                                   "rocm": "native", "tpu": "native"}

#: The values of ``Experiment.conv``.
CONV_MODES = ("auto", "patches", "native")


def resolve_conv(conv: str, backend: str | None = None) -> str:
    """The formulation ``conv`` stands for on ``backend`` (default: JAX's default backend).

    Example:
        >>> resolve_conv("auto", "cpu"), resolve_conv("native", "cpu")
        ('patches', 'native')
    """
    if conv not in CONV_MODES:
        raise ValueError(f"conv must be one of {list(CONV_MODES)}, got {conv!r}")
    if conv != "auto":
        return conv
    return CONV_BY_BACKEND.get(backend or jax.default_backend(), "native")


def _pairs(name: str, value: Sequence[int] | None, n: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n or min(value, default=1) < 1:
        raise ValueError(f"{name} must be {n} positive integers, got {value}")
    return value


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated`` as patches (strided slices) and one contraction.

    Takes the arguments of :func:`jax.lax.conv_general_dilated` and returns the
    same array (up to float rounding), with the same gradients; any number of
    spatial dimensions, strides, ``'SAME'``/``'VALID'``/explicit (also negative)
    padding, input (``lhs``) and kernel (``rhs``) dilation, feature groups and
    any dimension numbers. ``batch_group_count`` must be 1 (it only appears in
    the kernel gradient of a native convolution, never here).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.arange(10.0).reshape(1, 10, 1); w = jnp.ones((3, 1, 1))
        >>> dn = ("NWC", "WIO", "NWC")
        >>> conv_general_dilated(x, w, (2,), "VALID", dimension_numbers=dn)[0, :, 0]
        Array([ 3.,  9., 15., 21.], dtype=float32)
    """
    if lhs.ndim != rhs.ndim or lhs.ndim < 3:
        raise ValueError(f"conv: lhs {lhs.shape} and rhs {rhs.shape} need the same rank, >= 3")
    if int(batch_group_count) != 1:
        raise ValueError(f"conv: batch_group_count={batch_group_count} is not supported "
                         "by the patches formulation (use lax.conv_general_dilated)")
    n_sp = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    strides = _pairs("window_strides", window_strides, n_sp)
    lhs_dil = _pairs("lhs_dilation", lhs_dilation, n_sp)
    rhs_dil = _pairs("rhs_dilation", rhs_dilation, n_sp)
    groups = int(feature_group_count)
    # canonical layouts: x (N, *spatial, C), w (*kernel, I, O)
    x = lax.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
    w = lax.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
    kernel, c_in, c_out = w.shape[:n_sp], w.shape[-2], w.shape[-1]
    if groups < 1 or x.shape[-1] != c_in * groups or c_out % groups:
        raise ValueError(f"conv: {x.shape[-1]} input features and a kernel of {c_in} input x "
                         f"{c_out} output features do not fit feature_group_count={groups}")
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dil)]
    if isinstance(padding, str):
        if any(d != 1 for d in lhs_dil):
            raise ValueError("conv: string padding with lhs_dilation (a transposed "
                             "convolution) is not supported; give explicit (low, high) pairs")
        pads = lax.padtype_to_pads(x.shape[1:-1], eff, strides, padding)
    else:
        pads = [tuple(int(v) for v in p) for p in padding]
        if len(pads) != n_sp or any(len(p) != 2 for p in pads):
            raise ValueError(f"conv: padding must be a string or {n_sp} (low, high) pairs, "
                             f"got {padding!r}")
    zero = np.zeros((), x.dtype)
    x = lax.pad(x, zero, [(0, 0, 0), *[(lo, hi, d - 1) for (lo, hi), d in zip(pads, lhs_dil)],
                          (0, 0, 0)])
    out_sp = [max(0, (size - e) // s + 1) for size, e, s in zip(x.shape[1:-1], eff, strides)]
    n = x.shape[0]
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        start = [o * d for o, d in zip(offset, rhs_dil)]
        limit = [b + (m - 1) * s + 1 if m else b for b, m, s in zip(start, out_sp, strides)]
        taps.append(lax.slice(x, (0, *start, 0), (n, *limit, x.shape[-1]), (1, *strides, 1)))
    k = math.prod(kernel)
    rows = n * math.prod(out_sp)
    # patches (G, rows, K * I) against kernels (G, K * I, O / G)
    patches = lax.concatenate([t.reshape(rows, 1, groups, c_in) for t in taps], 1)
    patches = lax.transpose(patches, (2, 0, 1, 3)).reshape(groups, rows, k * c_in)
    w = w.reshape(k * c_in, groups, c_out // groups).transpose(1, 0, 2)
    y = lax.dot_general(patches, w, (((2,), (1,)), ((0,), (0,))), precision=precision,
                        preferred_element_type=preferred_element_type)
    y = lax.transpose(y, (1, 0, 2)).reshape(n, *out_sp, c_out)
    # back to the requested output layout
    out_perm = (dn.out_spec[0], dn.out_spec[1], *dn.out_spec[2:])
    canon = (0, n_sp + 1, *range(1, n_sp + 1))  # canonical position of (N, C, *spatial)
    inverse = [0] * (n_sp + 2)
    for src, dst in zip(canon, out_perm):
        inverse[dst] = src
    return lax.transpose(y, tuple(inverse))


def _patches_interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.Conv)
            or module.conv_general_dilated is not None
            or module.conv_general_dilated_cls is not None):
        return next_fun(*args, **kwargs)
    # nn.Conv reads its (frozen) ``conv_general_dilated`` field when called
    object.__setattr__(module, "conv_general_dilated", conv_general_dilated)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "conv_general_dilated", None)


@contextlib.contextmanager
def conv_mode(conv: str = "auto") -> Iterator[str]:
    """Every ``flax.linen.Conv`` called inside runs as ``conv`` (after :func:`resolve_conv`).

    ``"patches"`` routes each ``nn.Conv`` without its own ``conv_general_dilated``
    through :func:`conv_general_dilated`; ``"native"`` changes nothing. Yields
    the formulation used.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> layer = nn.Conv(4, (3,))
        >>> v = layer.init(jax.random.key(0), jnp.ones((1, 8, 2)))
        >>> with conv_mode("patches") as used:
        ...     y = layer.apply(v, jnp.ones((1, 8, 2)))
        >>> used, bool(jnp.allclose(y, layer.apply(v, jnp.ones((1, 8, 2))), atol=1e-6))
        ('patches', True)
    """
    used = resolve_conv(conv)
    if used == "native":
        yield used
        return
    with nn.intercept_methods(_patches_interceptor):
        yield used
