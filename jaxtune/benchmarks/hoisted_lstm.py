"""An LSTM with its input projection hoisted out of the time scan: a measured alternative.

``bench_layers.py --layers lstm lstm-hoisted`` compares it with
``nn.RNN(nn.OptimizedLSTMCell(64))`` (equal values and gradients in float64,
``tests/test_layers.py``). On XLA:CPU it is *slower*, vmapped and looped alike
(docs/benchmarks.md, "Layers, continued"): a scan whose step holds only the
recurrent matmul and reads a precomputed ``(time, batch, 4 * features)``
projection ran 1.5x slower than the step with both matmuls, and its gradient
2.4x slower. It is kept here, not in :mod:`jaxtune.layers`, so the measurement
can be repeated on other backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import initializers
from flax.linen.dtypes import promote_dtype

__all__ = ["HoistedLSTM"]


_GATES = ("i", "f", "g", "o")


class _LSTMParams(nn.Module):
    """The parameters of ``nn.OptimizedLSTMCell`` (same names, shapes and initializers):
    returns the input kernel ``(in, 4 * features)``, the recurrent kernel
    ``(features, 4 * features)`` and the bias ``(4 * features,)``, gates in i, f, g, o order."""

    features: int
    kernel_init: Any
    recurrent_kernel_init: Any
    bias_init: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        from flax.linen.recurrent import DenseParams

        x = jnp.zeros((1, in_features), self.param_dtype)
        h = jnp.zeros((1, self.features), self.param_dtype)
        wi, wh, b = [], [], []
        for gate in _GATES:
            kernel, _ = DenseParams(features=self.features, use_bias=False,
                                    param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                                    bias_init=self.bias_init, name=f"i{gate}")(x)
            wi.append(kernel)
            kernel, bias = DenseParams(features=self.features, use_bias=True,
                                       param_dtype=self.param_dtype,
                                       kernel_init=self.recurrent_kernel_init,
                                       bias_init=self.bias_init, name=f"h{gate}")(h)
            wh.append(kernel)
            b.append(bias)
        return (jnp.concatenate(wi, axis=-1), jnp.concatenate(wh, axis=-1),
                jnp.concatenate(b, axis=-1))


class HoistedLSTM(nn.Module):
    """``nn.RNN(nn.OptimizedLSTMCell(features))`` with the input projection out of the scan
    (measured slower on XLA:CPU, vmapped or not: see the module docstring).

    The input kernels multiply every time step at once (one matmul over
    ``(..., time, in)``, which a vmap over members makes one batched matmul,
    and whose kernel gradient is one matmul instead of a sum carried through
    the scan); only the recurrent matmul stays inside ``lax.scan``. Same
    parameters (names, shapes, initializers: ``{"cell": {"ii", ..., "ho"}}``),
    the same values and gradients as ``nn.RNN(nn.OptimizedLSTMCell(features))``
    with its defaults: batch-major inputs ``(*batch, time, in)``, zero initial
    carry, forward in time, all hidden states returned ``(*batch, time, features)``.

    Attributes:
        features: hidden units.
        gate_fn, activation_fn, kernel_init, recurrent_kernel_init, bias_init,
            dtype, param_dtype: as in ``nn.OptimizedLSTMCell``.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> x = jax.random.normal(jax.random.key(0), (2, 5, 3))
        >>> v = HoistedLSTM(4).init(jax.random.key(1), x)
        >>> ref = nn.RNN(nn.OptimizedLSTMCell(4)).apply(v, x)
        >>> bool(jnp.allclose(HoistedLSTM(4).apply(v, x), ref, atol=1e-6))
        True
    """

    features: int
    gate_fn: Callable[..., Any] = nn.sigmoid
    activation_fn: Callable[..., Any] = nn.tanh
    kernel_init: Any = initializers.lecun_normal()
    recurrent_kernel_init: Any = initializers.orthogonal()
    bias_init: Any = initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Hidden states ``(*batch, time, features)`` of ``inputs`` ``(*batch, time, in)``."""
        if inputs.ndim < 2:
            raise ValueError(f"LSTM: inputs must be (*batch, time, features), got shape "
                             f"{inputs.shape}")
        wi, wh, b = _LSTMParams(self.features, self.kernel_init, self.recurrent_kernel_init,
                                self.bias_init, self.param_dtype, name="cell")(inputs.shape[-1])
        inputs, wi, wh, b = promote_dtype(inputs, wi, wh, b, dtype=self.dtype)
        projected = jnp.moveaxis(jnp.dot(inputs, wi), -2, 0)  # (time, *batch, 4 * features)
        zeros = jnp.zeros((*inputs.shape[:-2], self.features), inputs.dtype)
        n = self.features

        def step(carry, x_t):
            c, h = carry
            z_h = jnp.dot(h, wh) + b
            i = self.gate_fn(z_h[..., :n] + x_t[..., :n])
            f = self.gate_fn(z_h[..., n:2 * n] + x_t[..., n:2 * n])
            g = self.activation_fn(z_h[..., 2 * n:3 * n] + x_t[..., 2 * n:3 * n])
            o = self.gate_fn(z_h[..., 3 * n:] + x_t[..., 3 * n:])
            c = f * c + i * g
            h = o * self.activation_fn(c)
            return (c, h), h

        _, hs = jax.lax.scan(step, (zeros, zeros), projected)
        return jnp.moveaxis(hs, 0, -2)
