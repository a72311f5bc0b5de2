"""Flax models used by the built-in experiments, and how jaxtune calls any module.

Every built-in model takes ``(x, *, train=False, dropout_rate=0.0)``; the dropout
rate is an argument of the call, not a module attribute, so it may be a traced
per-member value. Any other ``flax.linen.Module`` works with jaxtune too, with
the usual Flax conventions (:class:`CallConvention`): a ``train`` or
``deterministic`` argument of ``__call__`` is set for training and evaluation,
and training calls receive a ``"dropout"`` RNG stream (so ``nn.Dropout`` layers
work). A searched (traced) dropout rate needs a ``dropout_rate`` argument; pass it
on to ``nn.Dropout(rate=dropout_rate)`` (a traced rate works there: jaxtune draws
Flax's mask itself) or to :func:`dropout`. A rate given to the model factory
(``hp["dropout"]``) must be declared ``static=True`` (one bucket per value).

Modules with state work the Flax way: ``nn.BatchNorm(use_running_average=not
train)`` (or any collection besides ``params``) is updated by training calls and
read by evaluation; only ``params`` is optimised (see :class:`CNN2DBatchNorm` and
:func:`jaxtune.make_train`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(width=32, depth=2, num_outputs=10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 40)))
    >>> model.apply(variables, jnp.zeros((5, 40))).shape
    (5, 10)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtune.conv import conv_mode, resolve_conv

__all__ = ["CNN1D", "CNN2D", "MLP", "CNN2DBatchNorm", "CallConvention", "Logistic", "dropout"]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu, "elu": nn.elu,
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"hyperparameter 'activation': unknown {name!r}; "
                         f"choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class CallConvention:
    """How jaxtune calls a module, read from its ``__call__`` signature.

    Attributes:
        flag: ``"train"`` (``train=True`` while training), ``"deterministic"``
            (``deterministic=False`` while training) or ``None`` (no flag).
        takes_rate: whether ``__call__`` accepts ``dropout_rate`` (a traced rate).
        conv: the formulation of the module's ``nn.Conv`` layers, ``"patches"`` or
            ``"native"`` (see :mod:`jaxtune.conv`).

    Example:
        >>> CallConvention.of(MLP())
        CallConvention(flag='train', takes_rate=True, conv='native')
        >>> CallConvention.of(CNN1D(), conv="patches").conv
        'patches'
    """

    flag: str | None
    takes_rate: bool
    conv: str = "native"

    @classmethod
    def of(cls, module: nn.Module, conv: str = "native") -> CallConvention:
        """Reads ``module``'s call signature; ``conv`` as in ``Experiment(conv=...)``."""
        params = inspect.signature(type(module).__call__).parameters
        flag = next((f for f in ("train", "deterministic") if f in params), None)
        used = resolve_conv(conv)
        if used != conv:
            logging.getLogger("jaxtune").info(
                "%s: nn.Conv layers run as %s (conv=%r on %s)", type(module).__name__, used,
                conv, jax.default_backend())
        return cls(flag=flag, takes_rate="dropout_rate" in params, conv=used)

    def init(self, module: nn.Module, key: jax.Array, x: jax.Array) -> Any:
        """``module.init`` in evaluation mode (``train=False``, ``deterministic=True``),
        so a module whose ``train`` argument has no default initializes too."""
        kwargs: dict[str, Any] = {}
        if self.flag == "train":
            kwargs["train"] = False
        elif self.flag == "deterministic":
            kwargs["deterministic"] = True
        with conv_mode(self.conv):
            return module.init(key, x, **kwargs)

    def apply(self, module: nn.Module, variables: Any, x: jax.Array, *, train: bool,
              rate: Any = None, key: jax.Array | None = None,
              mutable: tuple[str, ...] = (), rows: jax.Array | None = None) -> Any:
        """``module.apply`` for training (with a ``"dropout"`` stream) or evaluation.

        ``mutable``: the collections the call may update (training a module with
        state, e.g. ``("batch_stats",)``); then ``(output, updated collections)``.
        ``rows``: a ``(batch,)`` mask of the examples that count: ``nn.BatchNorm``
        layers computing batch statistics take them from these rows only.
        """
        kwargs: dict[str, Any] = {}
        if self.flag == "train":
            kwargs["train"] = train
        elif self.flag == "deterministic":
            kwargs["deterministic"] = not train
        if self.takes_rate and rate is not None:
            kwargs["dropout_rate"] = rate
        if mutable:
            kwargs["mutable"] = list(mutable)
        rngs = {"dropout": key} if train and key is not None else None
        with contextlib.ExitStack() as stack:
            stack.enter_context(conv_mode(self.conv))
            if "dropout_rate" in kwargs:  # nn.Dropout(rate=dropout_rate) with a traced rate
                stack.enter_context(nn.intercept_methods(_traced_dropout))
            if rows is not None:
                stack.enter_context(nn.intercept_methods(functools.partial(_batch_norm_rows,
                                                                           rows)))
            return module.apply(variables, x, rngs=rngs, **kwargs)


def _batch_norm_rows(rows: jax.Array, next_fun: Callable[..., Any], args: tuple,
                     kwargs: dict[str, Any], context: Any) -> Any:
    """Gives ``flax.linen.BatchNorm`` layers the mask of the rows that count (a masked
    batch's first ``batch_size`` rows), so their batch statistics are those of the
    member's own batch; a layer given its own ``mask``, or whose input does not have
    the batch's rows first, is left alone."""
    module = context.module
    if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
        return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    if kwargs.get("mask") is not None or x.ndim < 1 or x.shape[0] != rows.shape[0]:
        return next_fun(*args, **kwargs)
    mask = jnp.broadcast_to(rows.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    return next_fun(*args, **{**kwargs, "mask": mask})


def _traced_dropout(next_fun: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                    context: Any) -> Any:
    """Runs ``flax.linen.Dropout`` whose ``rate`` is a traced array: Flax tests
    ``rate == 0.0`` in Python, which a tracer cannot answer. The same mask as Flax's
    (``bernoulli(rng, 1 - rate, shape)``, ``broadcast_dims`` honoured, kept values
    scaled by ``1 / (1 - rate)``); other modules and Python rates go to Flax."""
    module = context.module
    if not (isinstance(module, nn.Dropout) and context.method_name == "__call__"
            and isinstance(module.rate, jax.Array)):
        return next_fun(*args, **kwargs)
    names = ("inputs", "deterministic", "rng")
    given = {**dict(zip(names, args)), **kwargs}
    inputs = given["inputs"]
    if nn.merge_param("deterministic", module.deterministic, given.get("deterministic")):
        return inputs
    rng = given.get("rng")
    if rng is None:
        rng = module.make_rng(module.rng_collection)
    keep = 1.0 - jnp.asarray(module.rate, inputs.dtype)
    shape = [1 if d in module.broadcast_dims else n for d, n in enumerate(inputs.shape)]
    mask = jnp.broadcast_to(jax.random.bernoulli(rng, p=keep, shape=shape), inputs.shape)
    return jnp.where(mask, inputs / jnp.maximum(keep, 1e-6), jnp.zeros_like(inputs))


def dropout(x: jax.Array, rate: jax.typing.ArrayLike, key: jax.Array) -> jax.Array:
    """Inverted dropout with a (possibly traced) ``rate`` in ``[0, 1)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> dropout(jnp.ones(4), 0.0, jax.random.key(0))
        Array([1., 1., 1., 1.], dtype=float32)
    """
    keep = 1.0 - jnp.asarray(rate, x.dtype)
    mask = jax.random.uniform(key, x.shape) < keep
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0)


class _Dropout(nn.Module):
    @nn.compact
    def __call__(self, x, rate, train: bool):
        if not train or (isinstance(rate, (int, float)) and rate == 0):
            return x  # a Python zero skips drawing the mask
        return dropout(x, rate, self.make_rng("dropout"))


class Logistic(nn.Module):
    """Multinomial logistic regression (a single dense layer on flattened inputs)."""

    num_outputs: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        del train, dropout_rate
        return nn.Dense(self.num_outputs)(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    """A fully connected network; ``residual=True`` adds skip connections.

    The MNIST-1D paper's MLP is ``MLP(width=100, depth=2)`` on 40 inputs.
    """

    width: int = 100
    depth: int = 2
    num_outputs: int = 10
    residual: bool = False
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        for i in range(self.depth):
            z = act(nn.Dense(self.width)(h))
            z = _Dropout()(z, dropout_rate, train)
            h = h + z if (self.residual and i > 0) else z
        return nn.Dense(self.num_outputs)(h)


class CNN1D(nn.Module):
    """The MNIST-1D paper's convolutional network (three conv layers of 25 channels)."""

    channels: int = 25
    num_outputs: int = 10
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], -1, 1)
        h = act(nn.Conv(self.channels, (5,), strides=(2,), padding=[(1, 1)])(h))
        h = act(nn.Conv(self.channels, (3,), strides=(2,), padding=[(1, 1)])(h))
        h = act(nn.Conv(self.channels, (3,), strides=(2,), padding=[(1, 1)])(h))
        h = _Dropout()(h.reshape(h.shape[0], -1), dropout_rate, train)
        return nn.Dense(self.num_outputs)(h)


class CNN2D(nn.Module):
    """A small 2-D CNN for 8x8 images (scikit-learn digits)."""

    channels: int = 16
    num_outputs: int = 10
    side: int = 8
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], self.side, self.side, 1)
        h = act(nn.Conv(self.channels, (3, 3))(h))
        h = act(nn.Conv(2 * self.channels, (3, 3), strides=(2, 2))(h))
        h = _Dropout()(h.reshape(h.shape[0], -1), dropout_rate, train)
        return nn.Dense(self.num_outputs)(h)


class CNN2DBatchNorm(nn.Module):
    """:class:`CNN2D` with batch normalization after each convolution: training calls
    normalize with the batch's statistics and update their running averages (the
    ``batch_stats`` collection), evaluation uses the running averages.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = CNN2DBatchNorm(channels=4)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 64)))
        >>> sorted(variables), variables["batch_stats"]["BatchNorm_0"]["var"].shape
        (['batch_stats', 'params'], (4,))
    """

    channels: int = 16
    num_outputs: int = 10
    side: int = 8
    activation: str = "relu"
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], self.side, self.side, 1)
        for channels, strides in ((self.channels, (1, 1)), (2 * self.channels, (2, 2))):
            h = nn.Conv(channels, (3, 3), strides=strides, use_bias=False)(h)
            h = act(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(h))
        h = _Dropout()(h.reshape(h.shape[0], -1), dropout_rate, train)
        return nn.Dense(self.num_outputs)(h)
