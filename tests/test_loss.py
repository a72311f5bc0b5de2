"""The classification loss under vmap with member-shared labels (large evaluation sets)."""

import jax
import numpy as np

from jaxtune.train import _per_example_loss


def _reference(z: np.ndarray, y: np.ndarray, smoothing: float) -> np.ndarray:
    z = z.astype(np.float64)
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
        -1, keepdims=True)
    target = np.eye(z.shape[-1])[y] * (1 - smoothing) + smoothing / z.shape[-1]
    return -(target * logp).sum(-1)


def test_vmapped_loss_matches_float64_reference():
    # 32 members x 3600 examples x 10 classes: past the ~324k-logit point where a
    # fused one-hot reduction went wrong on XLA:CPU.
    kz, ky = jax.random.split(jax.random.key(0))
    z = np.asarray(jax.random.normal(kz, (32, 3600, 10)))
    y = np.asarray(jax.random.randint(ky, (3600,), 0, 10))
    for smoothing in (0.0, 0.1):
        f = jax.jit(jax.vmap(lambda zz, yy, s=smoothing: _per_example_loss(
            zz, yy, s, "classification", 10), in_axes=(0, None)))
        got = np.asarray(f(z, y))
        want = np.stack([_reference(z[m], y, smoothing) for m in range(32)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
