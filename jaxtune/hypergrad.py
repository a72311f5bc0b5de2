"""Hypergradients: derivatives of the validation loss through the whole training run.

A member's training run (:func:`jaxtune.make_train`) is a pure function of its
traced hyperparameters, so the validation loss at the end of the run can be
differentiated with respect to the continuous ones (Maclaurin et al. 2015;
Franceschi et al. 2017). This module does so for every member of a population at
once (``jit(vmap(...))``), in the *unconstrained* coordinates the searchers use:
``log(value)`` (natural log) for a ``Real(log=True)`` dimension, the value itself
otherwise.

Two modes:

* ``"forward"``: :func:`jax.jvp` through the run, one tangent per hyperparameter
  (:func:`jax.jacfwd`). Memory does not grow with the number of steps; the cost
  grows with the number of hyperparameters.
* ``"reverse"``: :func:`jax.vjp` through the run with every chunk of
  ``eval_every`` steps rematerialized (:func:`jax.checkpoint`): memory grows with
  the number of chunks (one member state each), not steps; the cost does not grow
  with the number of hyperparameters.

``truncate=K`` differentiates only the last ``K`` steps (a multiple of
``eval_every``): the run up to step ``T - K`` is treated as a constant of the
hyperparameters (truncated backpropagation), which is cheaper and, over long
unrolls where the exact hypergradient becomes chaotic (Metz et al. 2019), often
more useful.

Only continuous traced hyperparameters have a derivative (:data:`DIFFERENTIABLE`):
the batch size, step budget, schedule and optimizer families, static
hyperparameters, and those the engine rounds to whole steps (``warmup``,
``cycle_fraction``) or that draw random masks (``dropout``) are held fixed, and
naming one is a ``ValueError``. The optimizer's square roots (adam's
``sqrt(nu)``) have no derivative where a parameter has had exactly zero gradient
throughout (a dead ReLU unit): such a hypergradient is NaN; the momentum
families have no such point.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(data=jt.data.teacher_student(n_train=64, n_test=16, dim=3),
    ...                     model=jt.models.MLP(width=8, num_outputs=1),
    ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...                     steps=10, eval_every=10,
    ...                     defaults={"batch_size": 16, "optimizer": "momentum"})
    >>> hg = hypergradient(exp, [{"lr": 0.01}, {"lr": 0.05}], mode="forward")
    >>> hg.names, hg.value.shape, hg.grad.shape
    (('lr',), (2,), (2, 1))
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.data import train_arrays
from jaxtune.experiment import Experiment
from jaxtune.programs import bucket_key
from jaxtune.space import Space
from jaxtune.train import make_train

__all__ = ["DIFFERENTIABLE", "MODES", "Hypergradient", "differentiable_names",
           "from_unconstrained", "hypergradient", "make_hypergradient", "to_unconstrained"]

#: Traced hyperparameters the validation loss is differentiable in.
DIFFERENTIABLE: tuple[str, ...] = (
    "lr", "lr_scaling", "end_lr_factor", "decay_rate", "step_factor", "momentum", "b1", "b2",
    "eps", "weight_decay", "clip_norm", "l2", "label_smoothing",
    *(f"knot_{i}" for i in range(16)),
)

#: ``mode=`` values.
MODES = ("forward", "reverse")

_WHY_NOT = {
    "warmup": "is rounded to whole steps (its derivative is zero almost everywhere)",
    "cycle_fraction": "is rounded to whole steps (its derivative is zero almost everywhere)",
    "dropout": "draws random masks (the run is not a smooth function of it)",
    "batch_size": "is discrete", "steps": "is discrete", "epochs": "sets a discrete budget",
    "schedule": "is discrete (a family)", "optimizer": "is discrete (a family)",
}


class Hypergradient(NamedTuple):
    """Hypergradients of a batch of configurations.

    Attributes:
        names: the differentiated hyperparameters (the columns).
        value: ``(n,)`` the validation loss at the end of each run.
        grad: ``(n, d)`` its derivative in the unconstrained coordinates
            (:func:`to_unconstrained`).
        point: ``(n, d)`` the configurations' unconstrained coordinates.
    """

    names: tuple[str, ...]
    value: np.ndarray
    grad: np.ndarray
    point: np.ndarray


def differentiable_names(experiment: Experiment,
                         names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The hyperparameters to differentiate: ``names`` checked, or every continuous
    traced one of the space.

    Raises:
        ValueError: a name that is not in the space, is static, discrete, or not
            differentiable (saying why), or no name at all.

    Example:
        >>> import jaxtune as jt
        >>> exp = jt.Experiment(data=jt.data.digits(), model=jt.models.MLP(),
        ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
        ...                                    batch_size=jt.Int(16, 64)))
        >>> differentiable_names(exp)
        ('lr',)
        >>> differentiable_names(exp, ["batch_size"])
        Traceback (most recent call last):
        ...
        ValueError: cannot differentiate hyperparameter 'batch_size': it is discrete
    """
    space = experiment.space
    if names is None:
        names = tuple(n for n in space.names if n in DIFFERENTIABLE and not space[n].static
                      and not (space[n].integral or space[n].categorical))
        if not names:
            raise ValueError(f"the space has no continuous traced hyperparameter to "
                             f"differentiate (differentiable: {list(DIFFERENTIABLE)})")
        return names
    if isinstance(names, str):
        names = (names,)
    out = []
    for name in names:
        if name not in space:
            raise ValueError(f"cannot differentiate hyperparameter {name!r}: it is not in the "
                             f"space ({list(space.names)})")
        dim = space[name]
        why = ("is static (it changes the program)" if dim.static else _WHY_NOT.get(name)
               or ("is discrete" if dim.integral or dim.categorical else None)
               or (None if name in DIFFERENTIABLE
                   else "is not a continuous training hyperparameter"))
        if why is not None:
            raise ValueError(f"cannot differentiate hyperparameter {name!r}: it {why}")
        out.append(name)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"names must list distinct hyperparameters, got {list(names)}")
    return tuple(out)


def to_unconstrained(space: Space, names: Sequence[str],
                     configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The ``(n, d)`` unconstrained coordinates of ``configs``: ``log(value)`` for a
    log-scaled dimension, the value otherwise.

    Example:
        >>> from jaxtune.space import Real, Space
        >>> space = Space(lr=Real(1e-3, 1.0, log=True), momentum=Real(0.0, 0.99))
        >>> to_unconstrained(space, ["lr", "momentum"], [{"lr": 1.0, "momentum": 0.5}]).tolist()
        [[0.0, 0.5]]
    """
    out = np.empty((len(configs), len(names)))
    for j, name in enumerate(names):
        dim = space[name]
        for i, c in enumerate(configs):
            out[i, j] = math.log(float(c[name])) if dim.log else float(c[name])
    return out


def from_unconstrained(space: Space, names: Sequence[str], points: Any,
                       configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``configs`` with ``names`` replaced by the unconstrained ``points`` mapped back
    and clipped to the bounds (the inverse of :func:`to_unconstrained` inside them).

    Example:
        >>> from jaxtune.space import Real, Space
        >>> space = Space(lr=Real(1e-3, 1.0, log=True))
        >>> from_unconstrained(space, ["lr"], [[0.5]], [{"lr": 0.1}])
        [{'lr': 1.0}]
    """
    points = np.asarray(points, np.float64).reshape(len(configs), len(names))
    out = []
    for i, c in enumerate(configs):
        new = dict(c)
        for j, name in enumerate(names):
            dim = space[name]
            v = math.exp(points[i, j]) if dim.log else float(points[i, j])
            new[name] = float(min(max(v, float(dim.low)), float(dim.high)))
        out.append(new)
    return out


def _check_options(experiment: Experiment, mode: str, truncate: int | None) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    n_chunks = -(-int(experiment.steps) // int(experiment.eval_every))
    if truncate is None:
        return n_chunks
    if (isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer))
            or truncate < 1 or truncate % experiment.eval_every):
        raise ValueError(f"truncate must be a positive multiple of eval_every "
                         f"({experiment.eval_every}) steps, got {truncate!r}")
    return min(int(truncate) // int(experiment.eval_every), n_chunks)


#: The population functions built so far, per experiment (gone with the experiment).
_CACHE: weakref.WeakKeyDictionary[Experiment, dict[Any, Callable[..., Any]]] = \
    weakref.WeakKeyDictionary()


def make_hypergradient(experiment: Experiment, static: Mapping[str, Any],
                       names: Sequence[str], *, mode: str = "reverse",
                       truncate: int | None = None) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The jitted population function ``f(u, hparams, keys, data) -> (value, grad)``.

    ``u``: ``(n, d)`` unconstrained coordinates of ``names``; ``hparams``: the
    members' arrays (:meth:`Experiment.member_arrays`), whose ``names`` columns
    are replaced by ``u`` mapped back; ``keys``: ``(n,)`` member keys; ``data``:
    :func:`jaxtune.data.train_arrays`. Returns the ``(n,)`` final validation
    losses and their ``(n, d)`` derivatives in ``u``. Arguments are checked by
    :func:`hypergradient`; nothing is compiled until the first call, and the
    function is built once per (experiment, bucket, names, mode, truncation).
    """
    names = tuple(names)
    grad_chunks = _check_options(experiment, mode, truncate)
    cache = _CACHE.setdefault(experiment, {})
    key = (bucket_key(static), names, mode, grad_chunks)
    if key not in cache:
        cache[key] = _build(experiment, static, names, mode, grad_chunks)
    return cache[key]


def _build(experiment: Experiment, static: Mapping[str, Any], names: tuple[str, ...],
           mode: str, grad_chunks: int) -> Callable[..., tuple[jax.Array, jax.Array]]:
    n_chunks = -(-int(experiment.steps) // int(experiment.eval_every))
    member = make_train(experiment, static)
    logs = tuple(bool(experiment.space[n].log) for n in names)

    def run(u, hp, key, data):
        def body(state, _):
            state, metrics = member.chunk(state, data)
            return state, metrics["val_loss"]

        values = {n: (jnp.exp(u[i]) if log else u[i]) for i, (n, log) in
                  enumerate(zip(names, logs))}
        hp = {**hp, **values}
        if grad_chunks < n_chunks:  # truncated: the first part is a constant of u
            state = member.init({**hp, **jax.lax.stop_gradient(values)}, key)
            state, _ = jax.lax.scan(body, state, None, length=n_chunks - grad_chunks)
            state = member.retune(jax.lax.stop_gradient(state), hp)
        else:
            state = member.init(hp, key)
        step = jax.checkpoint(body) if mode == "reverse" else body
        _, losses = jax.lax.scan(step, state, None, length=grad_chunks)
        return losses[-1]

    if mode == "forward":
        def one(u, hp, key, data):
            def with_value(v):
                value = run(v, hp, key, data)
                return value, value
            grad, value = jax.jacfwd(with_value, has_aux=True)(u)
            return value, grad
    else:
        def one(u, hp, key, data):
            return jax.value_and_grad(run)(u, hp, key, data)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))


def hypergradient(experiment: Experiment, configs: Sequence[Mapping[str, Any]], *,
                  names: Sequence[str] | None = None, mode: str = "reverse",
                  truncate: int | None = None, seed: int = 0, keys: jax.Array | None = None,
                  data: Mapping[str, jax.Array] | None = None) -> Hypergradient:
    """Hypergradients of the final validation loss of each configuration's run.

    Args:
        experiment: the :class:`Experiment`.
        configs: configurations of its space, all in one bucket (the same static
            values).
        names: the hyperparameters to differentiate (default: every continuous
            traced one of the space, see :func:`differentiable_names`).
        mode: ``"forward"`` or ``"reverse"`` (see the module docstring).
        truncate: differentiate only the last ``truncate`` steps (a multiple of
            ``eval_every``); ``None``: the whole run.
        seed: member ``i``'s key is ``split(key(seed), n)[i]`` unless ``keys`` given.
        keys: ``(n,)`` member keys.
        data: the training arrays (default :func:`jaxtune.data.train_arrays`).

    Returns:
        A :class:`Hypergradient`.

    Raises:
        ValueError: before any compile, for a hyperparameter that cannot be
            differentiated, an unknown mode, a bad ``truncate``, configurations of
            several buckets or outside the space.
    """
    names = differentiable_names(experiment, names)
    _check_options(experiment, mode, truncate)
    if not configs:
        raise ValueError("configs must hold at least one configuration")
    configs = [experiment.space.validate(c) for c in configs]
    statics = [experiment.static_config(c) for c in configs]
    if len({bucket_key(s) for s in statics}) != 1:
        raise ValueError("configs span several buckets (static values differ); "
                         "differentiate one bucket at a time")
    n = len(configs)
    if keys is None:
        keys = jax.random.split(jax.random.key(int(seed)), n)
    elif len(keys) != n:
        raise ValueError(f"keys has {len(keys)} entries for {n} configurations")
    hp = experiment.member_arrays(configs, statics[0])
    point = to_unconstrained(experiment.space, names, configs)
    fn = make_hypergradient(experiment, statics[0], names, mode=mode, truncate=truncate)
    value, grad = fn(jnp.asarray(point), hp, keys,
                     train_arrays(experiment.data) if data is None else data)
    return Hypergradient(names=names, value=np.asarray(value), grad=np.asarray(grad),
                         point=point)
