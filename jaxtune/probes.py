"""Measurements of a member for batch-size and generalization studies.

Every probe is a pure function of one member's parameters (a pytree) and, where
it needs data, of a loss ``loss_fn(params, batch) -> scalar``: the mean training
loss on ``batch`` (any pytree the loss understands; :func:`make_loss_fn` builds
the one of an :class:`~jaxtune.Experiment`). Probes take their randomness from
an explicit key, run under :func:`jax.jit`, and map over a population with
:func:`jax.vmap` (each member its own parameters and key). Loop lengths
(iterations, ascent steps, draws, batch sizes) are static Python ints.

=============================  ===============================================
:func:`hessian_top_eigenvalue`  sharpness: power iteration on Hessian-vector products
:func:`hessian_lanczos`         extreme Hessian eigenvalues and Ritz spectrum (Lanczos)
:func:`epsilon_sharpness`       Keskar et al.'s epsilon-sharpness (box neighbourhood)
:func:`gradient_noise_scale`    McCandlish et al.'s simple noise scale ``B_simple``
:func:`weight_norm`             L2 norm of all parameters
:func:`distance_from_init`      L2 distance from the initial parameters
:func:`steps_to_target`         first evaluation step at which a curve reaches a target
:func:`generalization_gaps`     train minus validation/test, per metric
=============================  ===============================================

See ``docs/probes.md`` for how to read each one and what it costs.

Example:
    >>> import jax, jax.numpy as jnp
    >>> h = jnp.array([[3.0, 0.0], [0.0, 1.0]])
    >>> loss_fn = lambda p, batch: 0.5 * p @ h @ p
    >>> params = jnp.ones((4, 2))               # four members
    >>> keys = jax.random.split(jax.random.key(0), 4)
    >>> top = jax.jit(jax.vmap(lambda p, k: hessian_top_eigenvalue(
    ...     loss_fn, p, None, k, max_iters=50, tol=1e-6).eigenvalue))
    >>> jnp.round(top(params, keys), 4).tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

if TYPE_CHECKING:
    from jaxtune.experiment import Experiment

__all__ = [
    "LanczosResult",
    "NoiseScale",
    "PowerIterationResult",
    "SharpnessResult",
    "distance_from_init",
    "draw_batches",
    "epsilon_sharpness",
    "generalization_gaps",
    "gradient_noise_scale",
    "hessian_lanczos",
    "hessian_top_eigenvalue",
    "hessian_vector_product",
    "make_loss_fn",
    "noise_scale_from_norms",
    "split_grad_norms",
    "squared_grad_norms",
    "steps_to_target",
    "weight_norm",
]

#: ``loss_fn(params, batch) -> scalar``: the mean training loss on a batch.
LossFn = Callable[[Any, Any], jax.Array]


# --------------------------------------------------------------------------- norms


def weight_norm(params: Any) -> jax.Array:
    """The L2 norm of every parameter together, ``sqrt(sum_i params_i**2)``.

    Jiang et al. (2019) find norm- and distance-based measures among the better
    predictors of generalization; this is their ``frob``-style global norm, with no
    per-layer product.

    Example:
        >>> import jax.numpy as jnp
        >>> weight_norm({"w": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])})
        Array(5., dtype=float32)
    """
    return jnp.sqrt(_sum_squares(params))


def _sum_squares(tree: Any) -> jax.Array:
    return sum((jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)), jnp.zeros(()))


def distance_from_init(params: Any, init_params: Any) -> jax.Array:
    """The L2 distance ``|params - init_params|`` over the whole pytree.

    ``init_params`` is the member's parameters at step 0 (re-created exactly by
    the member's ``init(hparams, key)``).

    Example:
        >>> import jax.numpy as jnp
        >>> distance_from_init({"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([1.0, -1.0])})
        Array(2., dtype=float32)
    """
    return weight_norm(jax.tree.map(jnp.subtract, params, init_params))


# --------------------------------------------------------------------------- curvature


def hessian_vector_product(loss_fn: LossFn, params: Any, batch: Any, vector: Any) -> Any:
    """``H @ vector`` for the Hessian ``H`` of ``loss_fn(., batch)`` at ``params``.

    Forward-over-reverse (:func:`jax.jvp` of :func:`jax.grad`): one call costs
    about as much as two to three gradients and never forms ``H``.

    Example:
        >>> import jax.numpy as jnp
        >>> loss_fn = lambda p, batch: jnp.sum(batch * p ** 2)   # H = diag(2 * batch)
        >>> hessian_vector_product(loss_fn, jnp.ones(2), jnp.array([1.0, 3.0]), jnp.ones(2))
        Array([2., 6.], dtype=float32)
    """
    grad = jax.grad(loss_fn)
    return jax.jvp(lambda p: grad(p, batch), (params,), (vector,))[1]


def _flat_hvp(loss_fn: LossFn, params: Any, batch: Any
              ) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """The flattened parameters and ``v -> H v`` on flat vectors."""
    flat, unravel = ravel_pytree(params)

    def matvec(v: jax.Array) -> jax.Array:
        return ravel_pytree(hessian_vector_product(loss_fn, params, batch, unravel(v)))[0]

    return flat, matvec


def _unit_normal(key: jax.Array, like: jax.Array) -> jax.Array:
    v = jax.random.normal(key, like.shape, like.dtype)
    return v / jnp.linalg.norm(v)


class PowerIterationResult(NamedTuple):
    """What :func:`hessian_top_eigenvalue` returns.

    Attributes:
        eigenvalue: the Rayleigh quotient ``v.H v`` of the last unit vector ``v``:
            the estimate of the eigenvalue of largest magnitude.
        eigenvector: that ``v``, a unit-norm pytree shaped like ``params``.
        iterations: Hessian-vector products evaluated (``<= max_iters``).
        converged: whether the estimate changed by at most ``tol`` (relative)
            in the last iteration.
    """

    eigenvalue: jax.Array
    eigenvector: Any
    iterations: jax.Array
    converged: jax.Array


def hessian_top_eigenvalue(loss_fn: LossFn, params: Any, batch: Any, key: jax.Array, *,
                           max_iters: int = 20, tol: float = 1e-3) -> PowerIterationResult:
    """Sharpness: the top Hessian eigenvalue of the loss at ``params``, by power iteration.

    Starts from a standard normal vector drawn with ``key`` and repeats
    ``v <- H v / |H v|`` (:func:`hessian_vector_product`) until the Rayleigh
    quotient changes by at most ``tol * |estimate|`` or ``max_iters`` products
    were taken (``tol=0`` always takes ``max_iters``). The loop is a
    :func:`jax.lax.while_loop`: under :func:`jax.vmap` it runs until every member
    stopped, each member's result frozen at its own stop, so a population pays
    for its slowest member.

    Power iteration finds the eigenvalue of largest *magnitude*. Near a minimum
    that is the largest eigenvalue (the negative ones are small); where a large
    negative curvature is possible, read :func:`hessian_lanczos`'s ``top``. The
    error shrinks like ``(lambda_2 / lambda_1) ** (2 k)`` after ``k`` products; the
    ``tol`` test bounds the last change, not the error.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: the parameters (any pytree of float arrays).
        batch: the data the loss is measured on.
        key: PRNG key of the start vector.
        max_iters: most Hessian-vector products (static).
        tol: relative change that stops the iteration.

    Returns:
        A :class:`PowerIterationResult`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> loss_fn = lambda p, batch: 0.5 * jnp.sum(batch * p ** 2)  # H = diag(batch)
        >>> r = hessian_top_eigenvalue(loss_fn, jnp.zeros(3), jnp.array([4.0, 1.0, 0.5]),
        ...                            jax.random.key(0), max_iters=100, tol=1e-7)
        >>> round(float(r.eigenvalue), 4), bool(r.converged)
        (4.0, True)
    """
    flat, matvec = _flat_hvp(loss_fn, params, batch)
    _, unravel = ravel_pytree(params)
    v0 = _unit_normal(key, flat)

    def cond(carry):
        i, _, _, _, done = carry
        return (i < max_iters) & ~done

    def body(carry):
        i, v, lam, _, _ = carry
        w = matvec(v)
        new = jnp.vdot(v, w)
        norm = jnp.linalg.norm(w)
        done = jnp.abs(new - lam) <= tol * jnp.abs(new)
        return i + 1, jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), v), new, v, done

    nan = jnp.asarray(jnp.nan, flat.dtype)
    i, _, lam, v, done = lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), v0, nan, v0, jnp.zeros((), bool)))
    return PowerIterationResult(eigenvalue=lam, eigenvector=unravel(v), iterations=i,
                                converged=done)


class LanczosResult(NamedTuple):
    """What :func:`hessian_lanczos` returns.

    Attributes:
        top: the largest Ritz value, the estimate of the largest eigenvalue.
        bottom: the smallest Ritz value, the estimate of the smallest eigenvalue.
        ritz_values: ``(order,)`` eigenvalues of the Lanczos tridiagonal matrix,
            ascending. After a breakdown (``steps < order``) the unused entries
            repeat the first Rayleigh quotient with weight 0.
        ritz_weights: ``(order,)`` squared first components of the Ritz vectors
            (they sum to 1): with ``ritz_values``, the one-vector estimate of the
            Hessian's spectral density of Ghorbani et al. (2019).
        steps: Lanczos steps (Hessian-vector products) that extended the Krylov
            space; fewer than ``order`` when it became invariant (an exact answer).
    """

    top: jax.Array
    bottom: jax.Array
    ritz_values: jax.Array
    ritz_weights: jax.Array
    steps: jax.Array


def hessian_lanczos(loss_fn: LossFn, params: Any, batch: Any, key: jax.Array, *,
                    order: int = 20) -> LanczosResult:
    """Extreme Hessian eigenvalues by ``order`` Lanczos steps (full re-orthogonalization).

    ``order`` Hessian-vector products from a normal start vector drawn with
    ``key`` build an orthonormal Krylov basis (kept in memory, ``order x
    n_params``, and re-orthogonalized twice per step, so float32 stays accurate);
    the eigenvalues of the small tridiagonal matrix (Ritz values) approach the
    extreme eigenvalues of ``H`` much faster than power iteration and find the
    largest *algebraic* eigenvalue even when a negative one is larger in
    magnitude. With ``order >= n_params`` they are the whole spectrum. The
    number of steps is fixed, so a population costs no more than one member
    times its size; a step whose new direction vanishes (the Krylov space is
    invariant) ends the recursion, masked.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: the parameters (any pytree of float arrays).
        batch: the data the loss is measured on.
        key: PRNG key of the start vector.
        order: Lanczos steps (static; capped at the number of parameters).

    Returns:
        A :class:`LanczosResult`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> loss_fn = lambda p, batch: 0.5 * jnp.sum(batch * p ** 2)  # H = diag(batch)
        >>> r = hessian_lanczos(loss_fn, jnp.zeros(4), jnp.array([-5.0, 1.0, 2.0, 3.0]),
        ...                     jax.random.key(0), order=4)
        >>> jnp.round(r.ritz_values, 4).tolist(), round(float(r.top), 4)
        ([-5.0, 1.0, 2.0, 3.0], 3.0)
    """
    flat, matvec = _flat_hvp(loss_fn, params, batch)
    order = int(min(order, flat.size))
    dtype = flat.dtype
    rtol = 100 * jnp.finfo(dtype).eps

    def body(i, carry):
        basis, alphas, betas, v, v_prev, beta_prev, scale, ok, steps = carry
        basis = basis.at[i].set(jnp.where(ok, v, 0))
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        w = w - alpha * v - beta_prev * v_prev
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
        extend = ok & (beta > rtol * scale) & (i + 1 < order)
        alphas = alphas.at[i].set(jnp.where(ok, alpha, alphas[0]))
        betas = betas.at[i].set(jnp.where(extend, beta, 0))
        v_next = jnp.where(extend, w / jnp.where(extend, beta, 1), v)
        return (basis, alphas, betas, v_next, jnp.where(extend, v, v_prev),
                jnp.where(extend, beta, 0), scale, extend, steps + ok)

    zero = jnp.zeros((), dtype)
    carry = (jnp.zeros((order, flat.size), dtype), jnp.zeros(order, dtype),
             jnp.zeros(order, dtype), _unit_normal(key, flat), jnp.zeros_like(flat), zero,
             zero, jnp.ones((), bool), jnp.zeros((), jnp.int32))
    _, alphas, betas, *_, steps = lax.fori_loop(0, order, body, carry)
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    values, vectors = jnp.linalg.eigh(tri)
    return LanczosResult(top=values[-1], bottom=values[0], ritz_values=values,
                         ritz_weights=jnp.square(vectors[0]), steps=steps)


class SharpnessResult(NamedTuple):
    """What :func:`epsilon_sharpness` returns.

    Attributes:
        sharpness: ``100 * (max_loss - loss) / (1 + loss)`` (Keskar et al.'s
            percentage; ``>= 0``).
        loss: the loss at ``params``.
        max_loss: the largest loss found in the box (at least ``loss``).
        perturbation: the ``delta`` (pytree like ``params``) where ``max_loss``
            was found (zeros if no point beat ``params``).
    """

    sharpness: jax.Array
    loss: jax.Array
    max_loss: jax.Array
    perturbation: Any


def epsilon_sharpness(loss_fn: LossFn, params: Any, batch: Any, key: jax.Array, *,
                      eps: float = 1e-3, steps: int = 20,
                      step_size: float | None = None) -> SharpnessResult:
    """Keskar et al. (2017)'s epsilon-sharpness, by projected sign-gradient ascent.

    The box is ``C_eps = {delta : |delta_i| <= eps * (|params_i| + 1)}`` in the full
    parameter space (Keskar's ``A = I``), and the measure

        ``100 * (max_{delta in C_eps} f(params + delta) - f(params)) / (1 + f(params))``.

    Keskar et al. maximize with L-BFGS-B; here the maximum is approached by
    projected sign-gradient ascent from a uniform random point of the box (drawn
    with ``key``): ``delta <- clip(delta + step_size * r * sign(grad), -r, r)``
    with ``r = eps * (|params| + 1)``, for ``steps`` gradients. The largest loss
    seen (including at ``delta = 0``) is the answer, a lower bound of the true
    maximum (exact for a loss that is separable and convex per coordinate).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: the parameters (any pytree of float arrays).
        batch: the data the loss is measured on (Keskar: the training set).
        key: PRNG key of the start point.
        eps: the box's relative half-width (Keskar uses ``1e-3`` and ``5e-4``).
        steps: ascent steps (static), one gradient each.
        step_size: step as a fraction of the half-width; default ``2.5 / steps``
            (a step count that crosses the box once from the centre, with room).

    Returns:
        A :class:`SharpnessResult`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> loss_fn = lambda p, batch: jnp.sum(p ** 2)          # f(0) = 0
        >>> r = epsilon_sharpness(loss_fn, jnp.zeros(3), None, jax.random.key(0), eps=0.1)
        >>> round(float(r.max_loss), 6), round(float(r.sharpness), 4)   # 3 * 0.1**2
        (0.03, 3.0)
    """
    alpha = 2.5 / steps if step_size is None else step_size
    radius = jax.tree.map(lambda p: eps * (jnp.abs(p) + 1), params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))
    delta0 = jax.tree.map(
        lambda k, p, r: r * jax.random.uniform(k, jnp.shape(p), jnp.result_type(p), -1, 1),
        keys, params, radius)
    value_and_grad = jax.value_and_grad(lambda d: loss_fn(jax.tree.map(jnp.add, params, d),
                                                          batch))
    base = loss_fn(params, batch)

    def keep_best(value, delta, best, best_delta):
        better = value > best  # NaN never wins
        return (jnp.where(better, value, best),
                jax.tree.map(lambda d, b: jnp.where(better, d, b), delta, best_delta))

    def ascend(_, carry):
        delta, best, best_delta = carry
        value, g = value_and_grad(delta)
        best, best_delta = keep_best(value, delta, best, best_delta)
        delta = jax.tree.map(
            lambda d, gi, r: jnp.clip(d + alpha * r * jnp.sign(jnp.nan_to_num(gi)), -r, r),
            delta, g, radius)
        return delta, best, best_delta

    zeros = jax.tree.map(jnp.zeros_like, params)
    delta, best, best_delta = lax.fori_loop(0, steps, ascend, (delta0, base, zeros))
    best, best_delta = keep_best(loss_fn(jax.tree.map(jnp.add, params, delta), batch), delta,
                                 best, best_delta)
    return SharpnessResult(sharpness=100 * (best - base) / (1 + base), loss=base,
                           max_loss=best, perturbation=best_delta)


# --------------------------------------------------------------------------- gradient noise


class NoiseScale(NamedTuple):
    """What :func:`noise_scale_from_norms` and :func:`gradient_noise_scale` return.

    Attributes:
        b_simple: ``trace_cov / grad_sq_norm``, the simple noise scale: near the
            batch size beyond which larger batches stop buying fewer steps.
        grad_sq_norm: unbiased estimate of ``|G|^2``, the squared norm of the
            full-data gradient.
        trace_cov: unbiased estimate of ``tr(Sigma)``, the trace of the
            per-example gradient covariance.
        b_simple_se: the standard error of ``b_simple`` from the spread of the
            draws (delta method for a ratio of means); NaN with fewer than two
            draws. Read ``b_simple`` as ``b_simple +- 2 b_simple_se``; the
            first-order formula understates the error where ``grad_sq_norm`` is
            within a few standard errors of zero.
    """

    b_simple: jax.Array
    grad_sq_norm: jax.Array
    trace_cov: jax.Array
    b_simple_se: jax.Array


def noise_scale_from_norms(sq_norm_small: ArrayLike, sq_norm_big: ArrayLike,
                           b_small: ArrayLike, b_big: ArrayLike) -> NoiseScale:
    """``B_simple`` from squared minibatch-gradient norms at two batch sizes.

    McCandlish et al. (2018), appendix A.1: a batch of ``B`` examples drawn
    independently has ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, so

        ``|G|^2 = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)``,
        ``tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)``

    are unbiased. Their ratio is not (and one draw of it is very noisy), so each
    estimator is averaged over the draws first and the ratio taken last.

    The standard error ``b_simple_se`` is the delta method's for that ratio of
    means, from the sample variances of the draws (and their covariance when
    both sizes have the same number of draws, which are then taken as pairs,
    as :func:`gradient_noise_scale` makes them).

    Args:
        sq_norm_small: ``|G_small|^2``, one per draw along the last axis (or a scalar).
        sq_norm_big: ``|G_big|^2``, likewise (paired with the small ones draw by
            draw when the counts agree).
        b_small: the small batch size (may be traced).
        b_big: the big batch size, ``> b_small``.

    Returns:
        A :class:`NoiseScale`.

    Example:
        >>> # |G|^2 = 2, tr(Sigma) = 40: E|G_8|^2 = 2 + 40/8, E|G_64|^2 = 2 + 40/64
        >>> ns = noise_scale_from_norms(7.0, 2.625, 8, 64)
        >>> float(ns.grad_sq_norm), float(ns.trace_cov), float(ns.b_simple)
        (2.0, 40.0, 20.0)
        >>> ns = noise_scale_from_norms(jnp.array([6.0, 8.0]), jnp.array([2.5, 2.75]), 8, 64)
        >>> round(float(ns.b_simple), 2), round(float(ns.b_simple_se), 2)
        (20.0, 4.0)
    """
    def as_draws(a):
        a = jnp.asarray(a, jnp.result_type(float, a))
        return a if a.ndim else a[None]

    s, b = as_draws(sq_norm_small), as_draws(sq_norm_big)
    small, big = jnp.mean(s, axis=-1), jnp.mean(b, axis=-1)
    bs, bb = (jnp.asarray(x, small.dtype) for x in (b_small, b_big))
    c = 1 / bs - 1 / bb
    grad_sq = (bb * big - bs * small) / (bb - bs)
    trace = (small - big) / c
    ratio = trace / grad_sq

    def var_of_mean(a, m):
        n = a.shape[-1]
        return jnp.sum((a - m[..., None]) ** 2, axis=-1) / (n * max(n - 1, 1))

    d_small = 1 / (c * grad_sq) + ratio * bs / (grad_sq * (bb - bs))
    d_big = -1 / (c * grad_sq) - ratio * bb / (grad_sq * (bb - bs))
    var = d_small ** 2 * var_of_mean(s, small) + d_big ** 2 * var_of_mean(b, big)
    if s.shape[-1] == b.shape[-1]:
        n = s.shape[-1]
        cov = jnp.sum((s - small[..., None]) * (b - big[..., None]), axis=-1)
        var = var + 2 * d_small * d_big * cov / (n * max(n - 1, 1))
    few = min(s.shape[-1], b.shape[-1]) < 2
    se = jnp.full_like(ratio, jnp.nan) if few else jnp.sqrt(jnp.maximum(var, 0))
    return NoiseScale(b_simple=ratio, grad_sq_norm=grad_sq, trace_cov=trace, b_simple_se=se)


def draw_batches(key: jax.Array, data: Any, batch_size: int, draws: int) -> Any:
    """``draws`` independent batches of ``batch_size`` rows each, with replacement.

    Rows are drawn uniformly with replacement (independently within and across
    batches), so that ``E|G_B|^2 = |G|^2 + tr(Sigma) / B`` holds exactly for the
    training split's own distribution (without replacement the noise term
    shrinks by ``(n - B) / (n - 1)``).

    Args:
        key: PRNG key.
        data: a pytree of arrays sharing their leading (row) axis, e.g.
            ``(x_train, y_train)``.
        batch_size: rows per batch (static).
        draws: batches (static).

    Returns:
        ``data``'s structure with leaves of shape ``(draws, batch_size, ...)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x, y = draw_batches(jax.random.key(0), (jnp.zeros((10, 3)), jnp.arange(10)), 4, 2)
        >>> x.shape, y.shape
        ((2, 4, 3), (2, 4))
    """
    n = jax.tree.leaves(data)[0].shape[0]
    rows = jax.random.randint(key, (draws, batch_size), 0, n)
    return jax.tree.map(lambda a: jnp.asarray(a)[rows], data)


def squared_grad_norms(loss_fn: LossFn, params: Any, batches: Any) -> jax.Array:
    """``|grad loss_fn(params, batch)|^2`` for each batch stacked along ``batches``' first axis.

    The batches are processed one after another (:func:`jax.lax.map`), so memory
    is one batch's.

    Example:
        >>> import jax.numpy as jnp
        >>> loss_fn = lambda p, batch: jnp.mean(batch) * jnp.sum(p)   # grad = mean(batch)
        >>> squared_grad_norms(loss_fn, jnp.zeros(2), jnp.array([[1.0, 3.0], [0.0, 1.0]]))
        Array([8. , 0.5], dtype=float32)
    """
    grad = jax.grad(loss_fn)
    return lax.map(lambda b: _sum_squares(grad(params, b)), batches)


def split_grad_norms(loss_fn: LossFn, params: Any, batches: Any, parts: int
                     ) -> tuple[jax.Array, jax.Array]:
    """Squared gradient norms of each big batch and of its ``parts`` equal slices.

    Each batch along ``batches``' first axis is cut into ``parts`` consecutive
    slices; the slices' gradients are computed one after another and summed, so
    the big batch's gradient (the mean of its slices' when ``loss_fn`` is a mean
    over rows) costs nothing more. Memory is one slice's gradient plus a running
    sum.

    Returns:
        ``(small, big)``: per batch, the mean over its slices of their squared
        gradient norms, and the squared norm of the whole batch's gradient.

    Example:
        >>> import jax.numpy as jnp
        >>> loss_fn = lambda p, batch: jnp.mean(batch) * jnp.sum(p)   # grad = mean(batch)
        >>> small, big = split_grad_norms(loss_fn, jnp.zeros(1), jnp.array([[1.0, 3.0]]), 2)
        >>> small.tolist(), big.tolist()     # slices: grads 1 and 3; batch: grad 2
        ([5.0], [4.0])
    """
    grad = jax.grad(loss_fn)

    def one(batch):
        sliced = jax.tree.map(lambda a: a.reshape((parts, -1, *a.shape[1:])), batch)

        def body(total, part):
            g = grad(params, part)
            return jax.tree.map(jnp.add, total, g), _sum_squares(g)

        shapes = jax.eval_shape(grad, params, jax.tree.map(lambda a: a[0], sliced))
        zero = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), shapes)
        total, sq = lax.scan(body, zero, sliced)
        return jnp.mean(sq), _sum_squares(jax.tree.map(lambda t: t / parts, total))

    return lax.map(one, batches)


def gradient_noise_scale(loss_fn: LossFn, params: Any, data: Any, key: jax.Array, *,
                         b_small: int, b_big: int, draws: int) -> NoiseScale:
    """McCandlish et al. (2018)'s ``B_simple`` at ``params``, from the training split.

    Draws ``draws`` batches of ``b_big`` rows of ``data`` (:func:`draw_batches`,
    with replacement) and cuts each into ``b_big / b_small`` slices of
    ``b_small`` rows (:func:`split_grad_norms`): each draw gives the squared
    gradient norm of the big batch and the mean one of its small slices, which
    :func:`noise_scale_from_norms` combines (with the standard error
    ``b_simple_se`` from the spread of the draws). Taking the small batches
    from inside the big one cancels the term ``2 G.noise`` that dominates
    independent small batches' norms when ``B_simple`` is below ``b_small``
    (the mean over slices minus the big norm is the slices' own variance).
    Cost: ``draws * b_big`` examples forward and backward.

    Reliability (``docs/probes.md`` has the measurements): the estimate's
    relative noise shrinks like ``1 / sqrt(draws)``, and grows where
    ``B_simple`` is far above ``b_big`` (``|G|^2`` small against
    ``tr(Sigma) / b_big``, near a minimum, where ``grad_sq_norm`` may even be
    negative). With independent small batches (this function before the
    slices) and ``draws=4, b_small=32, b_big=512`` the estimate was unreliable
    early in training as well: with a true ``B_simple`` of 6-8 it was negative
    in about a quarter of the draws. Always read ``b_simple`` with
    ``b_simple_se``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, the *mean* loss over the
            rows of ``batch``, shaped like one row-subset of ``data``.
        params: the parameters.
        data: the training split, a pytree of arrays sharing their row axis.
        key: PRNG key of the draws.
        b_small: the small batch size (static, divides ``b_big``).
        b_big: the big batch size (static, a multiple of ``b_small`` above it).
        draws: big batches drawn (static; ``>= 2`` for a standard error).

    Returns:
        A :class:`NoiseScale`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.normal(jax.random.key(1), (1000,))
        >>> loss_fn = lambda w, xb: 0.5 * jnp.mean((xb - w) ** 2)   # gradient w - mean(xb)
        >>> ns = gradient_noise_scale(loss_fn, jnp.float32(1.0), x, jax.random.key(2),
        ...                           b_small=2, b_big=32, draws=1000)
        >>> bool(0.7 < float(ns.b_simple) < 1.3)    # about var(x) / (1 - mean(x))**2 = 1
        True
        >>> bool(float(ns.b_simple_se) < 0.1)
        True
    """
    if not b_big > b_small:
        raise ValueError(f"b_big ({b_big}) must be larger than b_small ({b_small})")
    if b_big % b_small:
        raise ValueError(f"b_big ({b_big}) must be a multiple of b_small ({b_small})")
    small, big = split_grad_norms(loss_fn, params, draw_batches(key, data, b_big, draws),
                                  b_big // b_small)
    return noise_scale_from_norms(small, big, b_small, b_big)


# --------------------------------------------------------------------------- curves


def steps_to_target(steps: ArrayLike, values: ArrayLike, target: ArrayLike, *,
                    higher_is_better: bool) -> jax.Array:
    """The first evaluation step at which a curve reaches ``target``.

    A value reaches the target when ``value >= target`` (``higher_is_better``,
    e.g. accuracy) or ``value <= target`` (a loss); NaN never does.

    Args:
        steps: ``(T,)`` steps of the evaluations (or broadcastable to ``values``).
        values: ``(..., T)`` curves, one per leading index (e.g. members).
        target: a scalar or ``(...)`` targets, one per curve.
        higher_is_better: the metric's direction (static).

    Returns:
        ``(...)`` first steps reaching the target, in ``steps``' dtype; ``-1`` for
        integer steps (``NaN`` for float steps) where a curve never reaches it.

    Example:
        >>> import jax.numpy as jnp
        >>> acc = jnp.array([[0.2, 0.6, 0.9], [0.1, 0.2, 0.3]])
        >>> steps_to_target(jnp.array([100, 200, 300]), acc, 0.5, higher_is_better=True)
        Array([200,  -1], dtype=int32)
    """
    values = jnp.asarray(values)
    steps = jnp.broadcast_to(jnp.asarray(steps), values.shape)
    target = jnp.asarray(target)[..., None]
    hit = values >= target if higher_is_better else values <= target
    first = jnp.argmax(hit, axis=-1)
    step = jnp.take_along_axis(steps, first[..., None], axis=-1)[..., 0]
    never = -1 if jnp.issubdtype(steps.dtype, jnp.integer) else jnp.nan
    return jnp.where(jnp.any(hit, axis=-1), step, jnp.asarray(never, steps.dtype))


def generalization_gaps(metrics: Mapping[str, ArrayLike]) -> dict[str, jax.Array]:
    """Generalization gaps: **train minus held-out**, for every metric and split.

    For each ``train_<m>`` in ``metrics`` and each split ``s`` of ``val``,
    ``test`` with an ``s_<m>``, the gap ``<m>_gap_<s> = train_<m> - s_<m>``. One
    sign for every metric: an overfit model has a *positive* accuracy gap and a
    *negative* loss gap (the training loss is the lower). Values may be arrays
    (curves, populations); they broadcast.

    Args:
        metrics: names as :func:`jaxtune.make_train` records them (``train_loss``,
            ``val_accuracy``, ``test_loss`` ...); other names are ignored.

    Returns:
        ``{"<m>_gap_<s>": train minus split}``.

    Example:
        >>> g = generalization_gaps({"train_loss": 0.1, "val_loss": 0.4, "test_loss": 0.5,
        ...                          "train_accuracy": 1.0, "val_accuracy": 0.9})
        >>> {k: round(float(v), 3) for k, v in g.items()}
        {'loss_gap_val': -0.3, 'loss_gap_test': -0.4, 'accuracy_gap_val': 0.1}
    """
    out = {}
    for name, train in metrics.items():
        if not name.startswith("train_"):
            continue
        metric = name[len("train_"):]
        for split in ("val", "test"):
            if f"{split}_{metric}" in metrics:
                out[f"{metric}_gap_{split}"] = (jnp.asarray(train)
                                                - jnp.asarray(metrics[f"{split}_{metric}"]))
    return out


# --------------------------------------------------------------------------- experiments


def make_loss_fn(experiment: Experiment, static: Mapping[str, Any]) -> LossFn:
    """The mean data loss of an experiment's model: ``loss_fn(params, (x, y))``.

    The model of the bucket ``static`` is called in evaluation mode (no dropout)
    and the loss is the training loss without its regularizers (no label
    smoothing, no L2 penalty): mean squared error or cross-entropy, as
    :func:`jaxtune.make_train` computes it. The L2 penalty ``0.5 * l2 * |params|^2``
    would add exactly ``l2`` to every Hessian eigenvalue.

    Args:
        experiment: a :class:`~jaxtune.Experiment`.
        static: the bucket's static hyperparameters
            (:meth:`~jaxtune.Experiment.static_config`).

    Example:
        >>> import jax, jaxtune as jt
        >>> exp = jt.Experiment(data=jt.data.teacher_student(n_train=50, n_test=10, dim=3),
        ...                     model=jt.models.MLP(width=4, num_outputs=1),
        ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1)), steps=10, eval_every=5,
        ...                     defaults={"batch_size": 8})
        >>> static = exp.static_config({"lr": 0.01})
        >>> member = jt.make_train(exp, static)
        >>> hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01}], static).items()}
        >>> params = member.init(hp, jax.random.key(0)).params
        >>> loss_fn = make_loss_fn(exp, static)
        >>> loss_fn(params, (exp.data.x_train, exp.data.y_train)).shape
        ()
    """
    from jaxtune.models import CallConvention
    from jaxtune.train import _per_example_loss

    ds = experiment.data
    module = experiment.build_model(static)
    call = CallConvention.of(module, conv=experiment.conv)
    task, num_classes = ds.task, ds.num_classes

    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        out = call.apply(module, params, x, train=False)
        return jnp.mean(_per_example_loss(out, y, jnp.zeros(()), task, num_classes))

    return loss_fn
