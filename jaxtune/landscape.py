"""The loss landscape between two trained members: Keskar et al.'s 1-D interpolation.

Keskar et al. (2017, figure 3) plot the loss and accuracy along the line through
a small-batch solution ``w_small`` and a large-batch one ``w_large``,
``w(a) = (1 - a) w_small + a w_large`` for ``a`` in ``[-1, 2]``: a sharp minimum
shows as a narrow well around its end of the line (``a = 1`` for the large
batch), a flat one as a wide basin; a barrier between the two says they lie in
different basins. Any two parameter pytrees of one model work (two seeds, two
learning rates, a member before and after training); the parameters come from
``train_population(..., keep_params=True)`` (:attr:`~jaxtune.PopulationResult.params`).

=================================  ===========================================
:func:`interpolate`                ``(1 - a) params_a + a params_b``, leaf by leaf
:func:`make_metrics_fn`            an experiment's mean loss and accuracy on a split
:func:`interpolation_curve`        the metrics along the line at several ``a``
=================================  ===========================================

The loss is the one :func:`jaxtune.probes.make_loss_fn` measures (the model in
evaluation mode, no label smoothing, no L2 penalty), so the curve at ``a = 0``
and ``a = 1`` is each member's own training loss as the engine reports it.

Example:
    >>> import jax.numpy as jnp
    >>> a, b = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    >>> metrics_fn = lambda p, batch: {"loss": jnp.sum(p["w"] ** 2)}
    >>> curve = interpolation_curve(metrics_fn, a, b, None, [-1.0, 0.0, 0.5, 1.0])
    >>> curve["loss"].tolist()
    [2.0, 0.0, 0.5, 2.0]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

if TYPE_CHECKING:
    from jaxtune.experiment import Experiment

__all__ = ["interpolate", "interpolation_curve", "make_metrics_fn"]

#: ``metrics_fn(params, batch) -> {name: scalar}``: what is measured at each point.
MetricsFn = Callable[[Any, Any], Mapping[str, jax.Array]]


def _check_pair(params_a: Any, params_b: Any) -> None:
    """ValueError unless the two pytrees have one structure and matching leaf shapes."""
    ta, tb = jax.tree.structure(params_a), jax.tree.structure(params_b)
    if ta != tb:
        raise ValueError(f"interpolation needs two parameter pytrees of one structure, "
                         f"got {ta} and {tb}")
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        if np.shape(x) != np.shape(y):
            raise ValueError(f"interpolation needs leaves of matching shapes, got "
                             f"{np.shape(x)} and {np.shape(y)}")


def interpolate(params_a: Any, params_b: Any, alpha: ArrayLike) -> Any:
    """The point ``(1 - alpha) params_a + alpha params_b`` of the line through two pytrees.

    ``alpha`` may be traced; ``0`` gives ``params_a``, ``1`` gives ``params_b``,
    values outside ``[0, 1]`` extrapolate.

    Example:
        >>> import jax.numpy as jnp
        >>> interpolate({"w": jnp.array([0.0, 2.0])}, {"w": jnp.array([1.0, 4.0])}, 0.5)
        {'w': Array([0.5, 3. ], dtype=float32)}
    """
    alpha = jnp.asarray(alpha)
    return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(jnp.result_type(a)),
                        params_a, params_b)


def make_metrics_fn(experiment: Experiment, static: Mapping[str, Any]) -> MetricsFn:
    """An experiment's mean loss (and accuracy, if a classification) on a batch.

    ``metrics_fn(params, (x, y)) -> {"loss": scalar, "accuracy": scalar}``: the
    model of the bucket ``static`` in evaluation mode; the loss is
    :func:`jaxtune.probes.make_loss_fn`'s; ``accuracy`` (classification only) is
    the fraction of rows whose largest logit is the label, as the engine
    measures it.

    Example:
        >>> import jax, jaxtune as jt
        >>> exp = jt.Experiment(data=jt.data.linear_classes(n_train=40, n_test=10, dim=3),
        ...                     model=jt.models.MLP(width=4, num_outputs=3),
        ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1)), steps=10, eval_every=5,
        ...                     defaults={"batch_size": 8})
        >>> static = exp.static_config({"lr": 0.01})
        >>> hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01}], static).items()}
        >>> params = jt.make_train(exp, static).init(hp, jax.random.key(0)).params
        >>> sorted(make_metrics_fn(exp, static)(params, (exp.data.x_train, exp.data.y_train)))
        ['accuracy', 'loss']
    """
    from jaxtune.models import CallConvention
    from jaxtune.train import _per_example_loss

    ds = experiment.data
    module = experiment.build_model(static)
    call = CallConvention.of(module, conv=experiment.conv)
    task, num_classes = ds.task, ds.num_classes

    def metrics_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> dict[str, jax.Array]:
        x, y = batch
        out = call.apply(module, params, x, train=False)
        loss = jnp.mean(_per_example_loss(out, y, jnp.zeros(()), task, num_classes))
        if task != "classification":
            return {"loss": loss}
        return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(out, -1) == y)}

    return metrics_fn


def interpolation_curve(metrics_fn: MetricsFn, params_a: Any, params_b: Any, batch: Any,
                        alphas: Sequence[float] | ArrayLike) -> dict[str, np.ndarray]:
    """The metrics along ``(1 - a) params_a + a params_b`` at each ``a`` of ``alphas``.

    One compiled program evaluates every point in turn (:func:`jax.lax.map`, so
    memory holds one point's activations at a time).

    Args:
        metrics_fn: ``metrics_fn(params, batch) -> {name: scalar}``, e.g.
            :func:`make_metrics_fn`'s.
        params_a, params_b: two pytrees of one structure (``a = 0`` and ``a = 1``).
        batch: what ``metrics_fn`` reads (e.g. ``(x_train, y_train)``).
        alphas: the points, a non-empty 1-D sequence of finite numbers
            (Keskar et al.: ``numpy.linspace(-1, 2, 25)``).

    Returns:
        ``{name: (len(alphas),) float64 array}`` for every metric, and ``"alpha"``.
    """
    a = np.asarray(alphas, np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"alphas must be a non-empty 1-D sequence of finite numbers, "
                         f"got shape {a.shape}")
    _check_pair(params_a, params_b)
    out = jax.device_get(_along(metrics_fn, params_a, params_b, batch,
                                jnp.asarray(a, jnp.float32)))
    return {"alpha": a} | {k: np.asarray(v, np.float64) for k, v in out.items()}


@functools.partial(jax.jit, static_argnums=0)
def _along(metrics_fn: MetricsFn, pa: Any, pb: Any, data: Any, alpha: jax.Array) -> Any:
    """The metrics at each ``alpha``, compiled once per (``metrics_fn``, shapes): calls
    for several pairs of solutions with one metrics function share the program."""
    return jax.lax.map(lambda t: dict(metrics_fn(interpolate(pa, pb, t), data)), alpha)
