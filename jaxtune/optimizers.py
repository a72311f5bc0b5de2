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
transformation for members of several families: one set of hyperparameters in
its state, the union of the families' names plus ``family``, the index of the
member's family in the sequence. Each family of a union trains exactly as that
family alone (optax's operations in optax's order). Clipping is applied once,
before the family's update. Two layouts of the state:

* ``layout="moments"`` (default): one shared state, :class:`MomentsState`: a
  first moment (momentum's and nesterov's trace, adam's and lion's ``mu``,
  rmsprop's momentum trace), a second moment (adam's and rmsprop's ``nu``) and
  a step count, each present only if a family of the union needs it. Every
  family is ``mu' = a * mu + c * x`` and ``nu' = b * nu + (1 - b) * g**2`` with
  per-member coefficients (``a = 1, c = 0`` leaves ``mu`` as it is), then its
  own direction; a step costs one pass over the moments plus the directions
  of the families present, and the state is no larger than the largest family's.
* ``layout="tuple"``: each family's own optax state side by side, and
  :func:`jax.lax.switch` on ``family``. Under :func:`jax.vmap` with members of
  several families every family's update is computed and selected (the sum of
  their costs, and of their states); a member's other families' states stay
  as initialised.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = [
    "OPTIMIZERS", "OPTIMIZER_HPARAMS", "MomentsState", "family_defaults", "hyperparameter_value",
    "make_optimizer", "set_hyperparams", "union_hparams",
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
                   coupled_decay: bool | Sequence[bool] = True,
                   layout: str = "moments") -> optax.GradientTransformation:
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
        layout: how a union keeps its state: ``"moments"`` (shared first and
            second moments, per-member coefficients) or ``"tuple"`` (each
            family's own optax state side by side, :func:`jax.lax.switch`); see
            the module docstring. Ignored for one family.

    Raises:
        ValueError: for an unknown family, listing the known ones, a union
            naming a family twice, or an unknown layout.
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
    if layout not in ("moments", "tuple"):
        raise ValueError(f"layout must be 'moments' or 'tuple', got {layout!r}")
    if len(families) == 1:
        return _single(families[0], bool(clip), decay[0])
    return _union(families, bool(clip), decay, layout)


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


class MomentsState(NamedTuple):
    """The state a union of families shares (``None`` where no family needs it)."""

    count: jax.Array | None  # steps taken (adam's bias correction)
    mu: Any                  # first moment / momentum trace (adam, lion, momentum, rmsprop)
    nu: Any                  # second moment (adam, adamw, rmsprop)


_FIRST = frozenset({"momentum", "nesterov", "adam", "adamw", "rmsprop", "lion"})
_SECOND = frozenset({"adam", "adamw", "rmsprop"})
_COUPLED = frozenset({"sgd", "momentum", "nesterov", "adam", "rmsprop"})
# families sharing one direction formula
_KIND = {"sgd": "sgd", "momentum": "momentum", "nesterov": "nesterov", "adam": "adam",
         "adamw": "adam", "rmsprop": "rmsprop", "lion": "lion"}


def _moments(hp: Mapping[str, jax.Array], families: tuple[str, ...],
             coupled_decay: tuple[bool, ...]) -> optax.GradientTransformation:
    """A union of ``families`` over one shared state (see the module docstring).

    Every family is written as ``mu' = a * mu + c * x``, ``nu' = b * nu + (1 - b) * g**2``
    and a direction, with the member's coefficients picked by its ``family`` index;
    only the moments and directions the families present need are computed. The
    operations are optax's own, in optax's order, so each family gives optax's
    numbers (tested against each family alone).
    """
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
    index = jnp.asarray(hp["family"], jnp.int32)
    need_mu = any(f in _FIRST for f in families)
    need_nu = any(f in _SECOND for f in families)
    adam_like = any(_KIND[f] == "adam" for f in families)
    kinds = tuple(dict.fromkeys(_KIND[f] for f in families))
    kind = jnp.asarray([kinds.index(_KIND[f]) for f in families], jnp.int32)[index]

    def pick(values: dict[str, Any], default: Any) -> jax.Array:
        return jnp.stack([jnp.asarray(values.get(f, default), jnp.float32)
                          for f in families])[index]

    wd = hp.get("weight_decay", zero)
    coupled = pick({f: wd for f, d in zip(families, coupled_decay) if d and f in _COUPLED}, zero)
    decoupled = pick({f: wd for f in families if f in ("adamw", "lion")}, zero)
    first_decay = {"momentum": hp.get("momentum"), "nesterov": hp.get("momentum"),
                   "rmsprop": hp.get("momentum"), "adam": hp.get("b1"), "adamw": hp.get("b1"),
                   "lion": hp.get("b2")}
    mu_a = pick({f: first_decay[f] for f in families if f in _FIRST}, one)
    mu_c = pick({f: (one if f in ("momentum", "nesterov", "rmsprop") else 1.0 - first_decay[f])
                 for f in families if f in _FIRST}, zero)
    nu_b = pick({f: hp["b2"] for f in families if f in _SECOND}, one)
    neg_lr = -1 * hp["learning_rate"]
    is_rms = kinds.index("rmsprop") if "rmsprop" in kinds else None

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return MomentsState(count=jnp.zeros([], jnp.int32) if adam_like else None,
                            mu=zeros() if need_mu else None, nu=zeros() if need_nu else None)

    def update(updates, state, params=None):
        count = optax.safe_increment(state.count) if adam_like else None
        if adam_like:
            bc1 = (1 - hp["b1"] ** count)
            bc2 = (1 - hp["b2"] ** count)

        def leaf(g, p, mu, nu):
            g = g + coupled * p  # optax.add_decayed_weights; 0 leaves g as it is
            if need_nu:
                nu = (1 - nu_b) * g ** 2 + nu_b * nu
            x = g
            if is_rms is not None:  # rmsprop's trace accumulates -lr * g / sqrt(nu + eps)
                x = jnp.where(kind == is_rms, neg_lr * (lax.rsqrt(nu + hp["eps"]) * g), g)
            new_mu = mu_c * x + mu_a * mu if need_mu else None
            directions = {}
            for k in kinds:
                if k == "sgd":
                    directions[k] = g
                elif k == "momentum":
                    directions[k] = new_mu
                elif k == "nesterov":
                    directions[k] = g + hp["momentum"] * new_mu
                elif k == "adam":
                    directions[k] = ((new_mu / bc1.astype(new_mu.dtype))
                                     / (jnp.sqrt(nu / bc2.astype(nu.dtype) + 0.0) + hp["eps"]))
                elif k == "lion":
                    directions[k] = jnp.sign((1.0 - hp["b1"]) * g + hp["b1"] * mu)
                else:  # rmsprop: the trace is the update
                    directions[k] = new_mu
            d = directions[kinds[0]]
            for i, k in enumerate(kinds[1:], 1):
                d = jnp.where(kind == i, directions[k], d)
            u = neg_lr * (d + decoupled * p)
            if is_rms is not None:
                u = jnp.where(kind == is_rms, d, u)
            return u, new_mu, nu

        mus = state.mu if need_mu else jax.tree.map(lambda _: None, updates)
        nus = state.nu if need_nu else jax.tree.map(lambda _: None, updates)
        out = jax.tree.map(leaf, updates, params, mus, nus, is_leaf=lambda x: x is None)
        treedef = jax.tree.structure(updates)
        leaves = treedef.flatten_up_to(out)
        new_u = treedef.unflatten([o[0] for o in leaves])
        new_mu = treedef.unflatten([o[1] for o in leaves]) if need_mu else None
        new_nu = treedef.unflatten([o[2] for o in leaves]) if need_nu else None
        return new_u, MomentsState(count=count, mu=new_mu, nu=new_nu)

    return optax.GradientTransformation(init, update)


@functools.cache
def _union(families: tuple[str, ...], clip: bool, coupled_decay: tuple[bool, ...],
           layout: str) -> optax.GradientTransformation:
    names = union_hparams(families)

    def builder(**hp):
        parts = [optax.clip_by_global_norm(hp["clip_norm"])] if clip else []
        if layout == "moments":
            return optax.chain(*parts, _moments(hp, families, coupled_decay))
        members = [_BUILDERS[f](**{n: hp[n] for n in OPTIMIZER_HPARAMS[f]}, clip=False,
                                coupled_decay=d) for f, d in zip(families, coupled_decay)]
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
