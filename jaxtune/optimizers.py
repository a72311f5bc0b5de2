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

**A union of families.** ``make_optimizer(("adamw", "nesterov"))`` is one
transformation for members of several families: its state holds each family's
own optax state side by side (a tuple, ``inner_state[-1]``) and one set of
hyperparameters, the union of the families' names plus ``family``, the index
of the member's family in the tuple. Its update is the update of the member's
family alone (:func:`jax.lax.switch` on ``family``; under :func:`jax.vmap` with
members of different families every family's update is computed and selected,
so a step costs the sum of the families' updates); the other families' states
stay as they were initialised. Each family of a union therefore trains exactly
as that family alone. Clipping is applied once, before the switch.

Example:
    >>> import jax.numpy as jnp
    >>> opt = make_optimizer("adamw")
    >>> params = {"w": jnp.ones(3)}
    >>> state = set_hyperparams(opt.init(params), learning_rate=0.1, weight_decay=0.0)
    >>> updates, state = opt.update({"w": jnp.ones(3)}, state, params)
    >>> union = make_optimizer(("adamw", "nesterov"))
    >>> state = set_hyperparams(union.init(params), learning_rate=0.1, momentum=0.9, family=1)
    >>> updates, state = union.update({"w": jnp.ones(3)}, state, params)
    >>> round(float(updates["w"][0]), 6)  # nesterov's first step: -lr * (1 + momentum) * g
    -0.19
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = [
    "OPTIMIZERS", "OPTIMIZER_HPARAMS", "family_defaults", "hyperparameter_value", "make_optimizer",
    "set_hyperparams", "union_hparams",
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


def make_optimizer(family: str | Sequence[str], *, clip: bool = True,
                   coupled_decay: bool | Sequence[bool] = True) -> optax.GradientTransformation:
    """Returns the static optimizer transformation of ``family`` (cached).

    Args:
        family: one of :data:`OPTIMIZERS`, or a sequence of distinct ones: their
            union, where each member trains with the family whose index in the
            sequence is its ``family`` hyperparameter (see the module docstring).
            A sequence of one family is that family.
        clip: include gradient clipping (``clip_norm``); an experiment that never
            clips leaves it out, saving a pass over the gradients per step.
        coupled_decay: include coupled weight decay (families other than adamw
            and lion, whose decay is decoupled and always present); for a union,
            one flag for all or one per family.

    Raises:
        ValueError: for an unknown family, listing the known ones, or a union
            naming a family twice.
    """
    families = (family,) if isinstance(family, str) else tuple(family)
    if not families:
        raise ValueError("hyperparameter 'optimizer': no family given")
    for name in families:
        if name not in _BUILDERS:
            raise ValueError(f"hyperparameter 'optimizer': unknown family {name!r}; "
                             f"choose one of {list(OPTIMIZERS)}")
    if len(set(families)) != len(families):
        raise ValueError(f"hyperparameter 'optimizer': families {list(families)} repeat a name")
    decay = ((bool(coupled_decay),) * len(families) if isinstance(coupled_decay, bool)
             else tuple(bool(c) for c in coupled_decay))
    if len(decay) != len(families):
        raise ValueError(f"coupled_decay has {len(decay)} flags for {len(families)} families")
    if len(families) == 1:
        return _single(families[0], bool(clip), decay[0])
    return _union(families, bool(clip), decay)


@functools.cache
def _single(family: str, clip: bool, coupled_decay: bool) -> optax.GradientTransformation:
    builder = functools.partial(_BUILDERS[family], clip=clip, coupled_decay=coupled_decay)
    kwargs = {name: _PLACEHOLDER[name] for name in OPTIMIZER_HPARAMS[family]}
    return optax.inject_hyperparams(builder)(**kwargs)


def union_hparams(families: Sequence[str]) -> tuple[str, ...]:
    """The hyperparameters a union of ``families`` keeps in its state: every name
    one of them reads, and ``family`` (the member's index into ``families``).

    Example:
        >>> union_hparams(["sgd", "nesterov"])
        ('learning_rate', 'weight_decay', 'clip_norm', 'momentum', 'family')
    """
    names = dict.fromkeys(n for f in families for n in OPTIMIZER_HPARAMS[f])
    return (*names, "family")


def _switch(index: jax.Array,
            members: Sequence[optax.GradientTransformation]) -> optax.GradientTransformation:
    """The update of ``members[index]`` on its own state (a tuple of every member's)."""

    def init(params):
        return tuple(m.init(params) for m in members)

    def update(updates, state, params=None):
        def branch(i):
            def run(operands):
                u, s, p = operands
                u, new = members[i].update(u, s[i], p)
                return u, (*s[:i], new, *s[i + 1:])
            return run

        return lax.switch(jnp.asarray(index, jnp.int32), [branch(i) for i in range(len(members))],
                          (updates, state, params))

    return optax.GradientTransformation(init, update)


@functools.cache
def _union(families: tuple[str, ...], clip: bool,
           coupled_decay: tuple[bool, ...]) -> optax.GradientTransformation:
    names = union_hparams(families)

    def builder(**hp):
        members = [_BUILDERS[f](**{n: hp[n] for n in OPTIMIZER_HPARAMS[f]}, clip=False,
                                coupled_decay=d) for f, d in zip(families, coupled_decay)]
        parts = [optax.clip_by_global_norm(hp["clip_norm"])] if clip else []
        return optax.chain(*parts, _switch(hp["family"], members))

    # inject_hyperparams reads the hyperparameter names from the signature
    builder.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
    kwargs = {n: _PLACEHOLDER[n] for n in names if n != "family"}
    return optax.inject_hyperparams(builder)(**kwargs, family=0)


def set_hyperparams(state: optax.OptState, **values: jax.typing.ArrayLike) -> optax.OptState:
    """Returns ``state`` with the named numeric hyperparameters replaced.

    Names the family does not use are ignored, so one call can pass the whole
    hyperparameter set. Values are cast to the dtype already in the state (a
    union's ``family`` index is ``int32``).
    """
    hp = dict(state.hyperparams)
    for name, value in values.items():
        if name in hp:
            hp[name] = jnp.asarray(value, dtype=jnp.result_type(hp[name]))
    return state._replace(hyperparams=hp)
