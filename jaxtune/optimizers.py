"""Optimizer families whose numeric hyperparameters live in the optimizer state.

Each family is an :func:`optax.inject_hyperparams` transformation built from
Python placeholders only, so the :class:`optax.GradientTransformation` object is
a static, hashable-by-identity value with no traced arrays in its closure. The
per-member values (learning rate, betas, momentum, weight decay, clipping norm
…) are written into ``state.hyperparams`` with :func:`set_hyperparams`; the
learning rate is overwritten at every step from the schedule. A trained state
can therefore leave ``jit(vmap(...))`` and be trained further.

Families and the hyperparameters they read (others are ignored):

========== =================================================================
sgd        learning_rate, weight_decay, clip_norm
momentum   learning_rate, momentum, weight_decay, clip_norm (heavy ball)
nesterov   learning_rate, momentum, weight_decay, clip_norm
adam       learning_rate, b1, b2, eps, weight_decay, clip_norm
adamw      learning_rate, b1, b2, eps, weight_decay, clip_norm
rmsprop    learning_rate, b2 (decay), eps, momentum, weight_decay, clip_norm
lion       learning_rate, b1, b2, weight_decay, clip_norm
========== =================================================================

``weight_decay`` is *decoupled* (``optax.adamw``/``optax.lion`` semantics:
``p -= lr * wd * p``) for adamw and lion, and *coupled* (added to the gradient
before the optimizer, PyTorch's ``weight_decay``) for the other families.
``clip_norm`` clips the global gradient norm; ``inf`` disables it.

Example:
    >>> import jax.numpy as jnp
    >>> opt = make_optimizer("adamw")
    >>> params = {"w": jnp.ones(3)}
    >>> state = set_hyperparams(opt.init(params), learning_rate=0.1, weight_decay=0.0)
    >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OPTIMIZERS", "OPTIMIZER_HPARAMS", "family_defaults", "hyperparameter_value", "make_optimizer",
    "set_hyperparams",
]


def _chain(clip_norm, weight_decay, tail: optax.GradientTransformation, *, clip: bool,
           coupled_decay: bool) -> optax.GradientTransformation:
    """``clip -> coupled weight decay -> tail``, leaving out the parts a study never uses."""
    parts = [optax.clip_by_global_norm(clip_norm)] if clip else []
    if coupled_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    return optax.chain(*parts, tail)


def _sgd(learning_rate, weight_decay, clip_norm, *, clip, coupled_decay):
    return _chain(clip_norm, weight_decay, optax.sgd(learning_rate), clip=clip,
                  coupled_decay=coupled_decay)


def _momentum(learning_rate, momentum, weight_decay, clip_norm, *, nesterov, clip,
              coupled_decay):
    return _chain(clip_norm, weight_decay,
                  optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), clip=clip,
                  coupled_decay=coupled_decay)


def _adam(learning_rate, b1, b2, eps, weight_decay, clip_norm, *, clip, coupled_decay):
    return _chain(clip_norm, weight_decay, optax.adam(learning_rate, b1, b2, eps), clip=clip,
                  coupled_decay=coupled_decay)


def _adamw(learning_rate, b1, b2, eps, weight_decay, clip_norm, *, clip, coupled_decay):
    del coupled_decay  # decoupled: part of optax.adamw
    return _chain(clip_norm, weight_decay,
                  optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay), clip=clip,
                  coupled_decay=False)


def _rmsprop(learning_rate, b2, eps, momentum, weight_decay, clip_norm, *, clip, coupled_decay):
    return _chain(clip_norm, weight_decay,
                  optax.rmsprop(learning_rate, decay=b2, eps=eps, momentum=momentum), clip=clip,
                  coupled_decay=coupled_decay)


def _lion(learning_rate, b1, b2, weight_decay, clip_norm, *, clip, coupled_decay):
    del coupled_decay  # decoupled: part of optax.lion
    return _chain(clip_norm, weight_decay,
                  optax.lion(learning_rate, b1, b2, weight_decay=weight_decay), clip=clip,
                  coupled_decay=False)


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": functools.partial(_momentum, nesterov=False),
    "nesterov": functools.partial(_momentum, nesterov=True),
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
    "lion": _lion,
}

#: The numeric hyperparameters each family keeps in its state.
OPTIMIZER_HPARAMS: dict[str, tuple[str, ...]] = {
    "sgd": ("learning_rate", "weight_decay", "clip_norm"),
    "momentum": ("learning_rate", "momentum", "weight_decay", "clip_norm"),
    "nesterov": ("learning_rate", "momentum", "weight_decay", "clip_norm"),
    "adam": ("learning_rate", "b1", "b2", "eps", "weight_decay", "clip_norm"),
    "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay", "clip_norm"),
    "rmsprop": ("learning_rate", "b2", "eps", "momentum", "weight_decay", "clip_norm"),
    "lion": ("learning_rate", "b1", "b2", "weight_decay", "clip_norm"),
}

OPTIMIZERS: tuple[str, ...] = tuple(_BUILDERS)

# Placeholders used only to build the static transformation; real values are set
# in the state by `set_hyperparams`. They are also the values of hyperparameters a
# family does not read (so every member array exists whatever the family).
_PLACEHOLDER = {"learning_rate": 0.0, "momentum": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                "weight_decay": 0.0, "clip_norm": float("inf")}

# Where each family's defaults come from: (optax function, {jaxtune name: optax name}).
_OPTAX_DEFAULTS: dict[str, tuple[Callable[..., Any], dict[str, str]]] = {
    "adam": (optax.adam, {"b1": "b1", "b2": "b2", "eps": "eps"}),
    "adamw": (optax.adamw, {"b1": "b1", "b2": "b2", "eps": "eps",
                            "weight_decay": "weight_decay"}),
    "rmsprop": (optax.rmsprop, {"b2": "decay", "eps": "eps", "momentum": "momentum"}),
    "lion": (optax.lion, {"b1": "b1", "b2": "b2", "weight_decay": "weight_decay"}),
}
# optax.sgd has no momentum by default; the momentum families are defined by it.
_OWN_DEFAULTS = {"momentum": {"momentum": 0.9}, "nesterov": {"momentum": 0.9}}


@functools.cache
def family_defaults(family: str) -> dict[str, float]:
    """The default value of every numeric hyperparameter ``family`` reads (but the lr).

    Taken from the signature of the optax function the family wraps
    (``optax.adamw``'s ``weight_decay=1e-4``, ``optax.rmsprop``'s ``decay=0.9`` as
    ``b2``, ``optax.lion``'s ``b2=0.99`` ...); ``None`` in optax (rmsprop's
    momentum) is 0. The momentum families default to ``momentum=0.9``. Weight
    decay defaults to 0 and clipping to ``inf`` (off) where optax has no default.

    Example:
        >>> family_defaults("rmsprop")["b2"], family_defaults("lion")["weight_decay"]
        (0.9, 0.001)
    """
    make_optimizer(family)  # validates the name
    fn, names = _OPTAX_DEFAULTS.get(family, (None, {}))
    params = inspect.signature(fn).parameters if fn is not None else {}
    out = {k: v for k, v in _PLACEHOLDER.items() if k in OPTIMIZER_HPARAMS[family]}
    out.update({"weight_decay": 0.0, "clip_norm": float("inf")})
    for ours, theirs in names.items():
        default = params[theirs].default
        out[ours] = 0.0 if default is None else float(default)
    out.update(_OWN_DEFAULTS.get(family, {}))
    out.pop("learning_rate", None)
    return out


def hyperparameter_value(family: str, name: str, value: float | None) -> float:
    """``value``, or the family's default if ``value`` is ``None`` (or the placeholder
    if the family does not read ``name``)."""
    if value is not None:
        return value
    return family_defaults(family).get(name, _PLACEHOLDER[name])


@functools.cache
def make_optimizer(family: str, *, clip: bool = True,
                   coupled_decay: bool = True) -> optax.GradientTransformation:
    """Returns the static optimizer transformation of ``family`` (cached).

    Args:
        family: one of :data:`OPTIMIZERS`.
        clip: include gradient clipping (``clip_norm``); an experiment that never
            clips leaves it out, saving a pass over the gradients per step.
        coupled_decay: include coupled weight decay (families other than adamw
            and lion, whose decay is decoupled and always present).

    Raises:
        ValueError: for an unknown family, listing the known ones.
    """
    if family not in _BUILDERS:
        raise ValueError(f"hyperparameter 'optimizer': unknown family {family!r}; "
                         f"choose one of {list(OPTIMIZERS)}")
    builder = functools.partial(_BUILDERS[family], clip=clip, coupled_decay=coupled_decay)
    kwargs = {name: _PLACEHOLDER[name] for name in OPTIMIZER_HPARAMS[family]}
    return optax.inject_hyperparams(builder)(**kwargs)


def set_hyperparams(state: optax.OptState, **values: jax.typing.ArrayLike) -> optax.OptState:
    """Returns ``state`` with the named numeric hyperparameters replaced.

    Names the family does not use are ignored, so one call can pass the whole
    hyperparameter set. Values are cast to the dtype already in the state.
    """
    hp = dict(state.hyperparams)
    for name, value in values.items():
        if name in hp:
            hp[name] = jnp.asarray(value, dtype=jnp.result_type(hp[name]))
    return state._replace(hyperparams=hp)
