"""The tuning problem: data, model factory, search space, budget and defaults.

An :class:`Experiment` is an immutable description. It knows which
hyperparameters the training engine reads (:data:`DEFAULTS`), resolves a
configuration into the full hyperparameter set, and turns the configurations of
one bucket into the per-member arrays a compiled program takes
(:meth:`Experiment.member_arrays`). It compiles nothing and holds no state: the
compiled programs live in a :class:`~jaxtune.programs.Programs` cache owned by
the engine.

Traced hyperparameters the engine understands (defaults in :data:`DEFAULTS`):

==================  ==========================================================
lr                  peak learning rate
optimizer           family name (see :mod:`jaxtune.optimizers`); may be a traced Choice
schedule            family name (see :mod:`jaxtune.schedules`); may be a traced Choice
warmup              linear warmup length as a fraction of the member's step budget
end_lr_factor       final value of linear/cosine decay (and low of cyclic) as a fraction of lr
decay_rate          exponential decay: factor reached at the end of the budget
step_factor         step decay: factor applied at each boundary (``Experiment.step_boundaries``)
cycle_fraction      cyclic: period as a fraction of the decay phase
momentum, b1, b2,   optimizer hyperparameters (see :mod:`jaxtune.optimizers`); unless
eps, weight_decay,  set, each optimizer family's own default (optax's: ``adamw`` decays
clip_norm           weights by 1e-4, ``lion`` has ``b2=0.99`` ...; see
                    :func:`~jaxtune.optimizers.family_defaults`); ``clip_norm`` inf: off
l2                  L2 penalty ``0.5 * l2 * ||params||^2`` added to the loss
label_smoothing     classification only
dropout             dropout rate, passed to the model at call time
batch_size          masked mode: traced, ``<= max batch``; bucketed mode: static
steps               the member's step budget (``<= Experiment.steps``)
epochs              if set (not ``None``) the budget is in epochs:
                    ``ceil(epochs * n_train / batch_size)`` steps, capped at ``Experiment.steps``
knot_0 ... knot_15   the ``knots`` schedule: multipliers of lr at K evenly spaced steps of the
                    decay phase, linear in between; K = how many of knot_0, knot_1, ... are
                    searched or set (2 to 16)
stop_train_loss,    train to a target: a member ends (complete) at the first evaluation
stop_train_accuracy where its training loss is ``<=`` (accuracy ``>=``) the target, within
                    its step budget (``None``: no target)
==================  ==========================================================

A traced ``optimizer`` Choice (no ``static=True``) compiles the union of its
families into one program (:func:`~jaxtune.optimizers.make_optimizer`): each
member trains with its own family and gets that family's own defaults for the
optimizer hyperparameters it leaves unset (:meth:`Experiment.member_arrays`).
Declared ``static=True``, each family is a bucket of its own (and only then
does the model factory see ``optimizer``). Any other
hyperparameter is handed to the model factory and must be declared ``static=True``.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    ...     model=lambda hp: jt.models.MLP(width=hp["width"], num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
    ...                    width=jt.Choice([8, 16], static=True)),
    ...     steps=20, eval_every=10)
    >>> exp.static_config({"lr": 0.01, "width": 8})
    {'width': 8, 'optimizer': 'adamw'}
    >>> exp.member_arrays([{"lr": 0.01, "width": 8}], {"width": 8})["lr"]
    array([0.01], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from jaxtune import schedules
from jaxtune.batches import DATA_ORDERS
from jaxtune.conv import CONV_MODES
from jaxtune.data import Dataset
from jaxtune.optimizers import hyperparameter_value, make_optimizer
from jaxtune.probe_settings import Probes
from jaxtune.space import Space

__all__ = ["DEFAULTS", "PROGRAM_HPARAMS", "Experiment", "default_objective"]

#: Default values of every hyperparameter the engine reads. ``None`` for an
#: optimizer hyperparameter means the optimizer family's own default.
DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "lr_scaling": 0.0, "reference_batch_size": 128,
    "schedule": "constant", "warmup": 0.0, "end_lr_factor": 0.0,
    "decay_rate": 0.01, "step_factor": 0.1, "cycle_fraction": 0.25,
    "momentum": None, "b1": None, "b2": None, "eps": None, "weight_decay": None,
    "clip_norm": None, "l2": 0.0, "label_smoothing": 0.0, "dropout": 0.0,
    "batch_size": 128, "steps": None, "epochs": None, "optimizer": "adamw",
    "stop_train_loss": None, "stop_train_accuracy": None,
    **{f"knot_{i}": 1.0 for i in range(16)},
}

#: Names that enter the compiled program as per-member arrays.
PROGRAM_HPARAMS: tuple[str, ...] = tuple(DEFAULTS)

#: The array dtype of each traced hyperparameter (``schedule`` and ``optimizer``
#: are indices into the bucket's schedule and optimizer families; everything not
#: listed is float32).
_INT32 = frozenset({"batch_size", "steps", "schedule", "optimizer"})
_OPTIMIZER_HPARAMS = ("momentum", "b1", "b2", "eps", "weight_decay", "clip_norm")
#: Unset (``None``), these are NaN in the program: no epoch budget, no stop target.
_NAN_WHEN_UNSET = frozenset({"epochs", "stop_train_loss", "stop_train_accuracy"})
#: Values at which a hyperparameter changes nothing (see :meth:`Experiment.uses`).
_NEUTRAL = {"l2": 0.0, "label_smoothing": 0.0, "dropout": 0.0, "weight_decay": 0.0,
            "clip_norm": math.inf, "lr_scaling": 0.0}


def _check_count(field: str, value: Any) -> int:
    """``value`` as an int; ValueError unless it is a whole number >= 1 (ints, numpy
    ints, whole floats)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer,
                                                            np.floating))
    if not ok or not math.isfinite(value) or value != int(value) or value < 1:
        raise ValueError(f"Experiment.{field} must be a whole number >= 1, got {value!r}")
    return int(value)


def default_objective(task: str) -> str:
    """The metric a study optimizes unless told otherwise: accuracy or loss."""
    return "val_accuracy" if task == "classification" else "val_loss"


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """A tuning problem: data, model, search space and training budget.

    Args:
        data: a :class:`~jaxtune.data.Dataset`.
        model: a function of the static hyperparameters returning a Flax module,
            or a module.
        space: the :class:`~jaxtune.space.Space` searched.
        steps: maximum number of optimizer steps per member (the program length).
        eval_every: steps per chunk; metrics are recorded between chunks.
        defaults: values of hyperparameters not in ``space`` (override :data:`DEFAULTS`).
        batch_mode: ``"masked"`` (traced batch size up to ``max_batch_size``) or
            ``"bucketed"`` (batch size static, one bucket per value).
        max_batch_size: masked mode's maximum; by default the largest batch size
            the space or the defaults allow.
        batch_capacities: masked mode only: the rows a step gathers, as a few
            sizes (e.g. ``(64, 256)``); a member computes the smallest capacity that
            holds its traced batch size, so a small batch does not pay for the
            largest. Each capacity is a bucket (one program). ``None``: one
            capacity, ``max_batch_size``.
        patience: early stopping after this many evaluations without a better
            validation loss (``None``: off).
        step_boundaries: boundaries of the ``step`` schedule as fractions of the
            decay phase.
        data_order: ``"shuffle"`` (epochs without replacement), ``"replacement"``
            or ``"full_batch"`` (see :mod:`jaxtune.batches`).
        eval_batch_size: evaluation runs in batches of this size.
        name: a label stored with studies.
        probes: a :class:`~jaxtune.Probes`: measure every member (sharpness,
            gradient noise scale, norms) at chosen chunk boundaries; the values
            join the curves as ``probe_*`` (see :mod:`jaxtune.probing`). ``None``:
            no probe is traced or compiled.
        conv: how ``flax.linen.Conv`` layers run: ``"patches"`` (patches and a
            batched contraction, fast under ``vmap`` on CPU), ``"native"`` (XLA's
            convolution) or ``"auto"`` (per backend, see :mod:`jaxtune.conv`).
        augment: data augmentation, ``augment(key, x) -> x`` on *one* training
            example (a pure function of the key, same shape and dtype out); every
            member applies it to each example of each training batch with its own
            key (:meth:`~jaxtune.batches.Sampler.augment_key`). ``None``: off.
        compute_dtype: mixed precision: ``"bfloat16"`` runs the model (training
            and evaluation) with parameters and inputs cast to bfloat16, while
            parameters, gradients, optimizer state and the loss stay float32 (no
            loss scaling is needed for bfloat16). ``None``: the parameters' dtype.
        accumulate: gradient accumulation: micro-batches of ``batch_size``
            examples per optimizer step (their gradients are averaged, so a step
            sees ``accumulate * batch_size`` examples, as learning-rate scaling and
            epoch budgets count them). ``steps`` counts optimizer steps.

    Raises:
        ValueError: naming the problem (a traced hyperparameter the engine does
            not read, an unknown optimizer or schedule family, a batch size larger
            than the training split, ...).

    Example:
        >>> import jaxtune as jt
        >>> exp = jt.Experiment(
        ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
        ...     model=lambda hp: jt.models.MLP(width=hp["width"], num_outputs=1),
        ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
        ...                    width=jt.Choice([8, 16], static=True)),
        ...     steps=20, eval_every=10)
        >>> exp.static_names
        ('width',)
    """

    data: Dataset
    model: Callable[[Mapping[str, Any]], nn.Module] | nn.Module
    space: Space
    steps: int = 1000
    eval_every: int = 100
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_mode: str = "masked"
    max_batch_size: int | None = None
    batch_capacities: tuple[int, ...] | None = None
    patience: int | None = None
    step_boundaries: tuple[float, ...] = (0.5, 0.75)
    eval_batch_size: int = 4096
    data_order: str = "shuffle"
    name: str = "experiment"
    probes: Probes | None = None
    conv: str = "auto"
    augment: Callable[[Any, Any], Any] | None = None
    compute_dtype: str | None = None
    accumulate: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.space, Space):
            raise ValueError("Experiment.space must be a jaxtune Space")
        if not isinstance(self.data, Dataset):
            raise ValueError("Experiment.data must be a jaxtune Dataset (see jaxtune.data)")
        self.data.check()
        for field in ("steps", "eval_every", "eval_batch_size", "max_batch_size", "patience",
                      "accumulate"):
            value = getattr(self, field)
            if value is not None or field in ("steps", "eval_every", "eval_batch_size",
                                              "accumulate"):
                object.__setattr__(self, field, _check_count(field, value))
        if not isinstance(self.defaults, Mapping):
            raise ValueError(f"Experiment.defaults must be a dict of hyperparameter values, "
                             f"got {type(self.defaults).__name__}")
        if not (isinstance(self.model, nn.Module) or callable(self.model)):
            raise ValueError(f"Experiment.model must be a flax Module or a function of the "
                             f"static hyperparameters, got {type(self.model).__name__}")
        bounds = tuple(self.step_boundaries)
        if not all(isinstance(b, (int, float, np.floating)) and 0 < b < 1 for b in bounds) or \
                list(bounds) != sorted(set(bounds)):
            raise ValueError(f"Experiment.step_boundaries must be increasing fractions in (0, 1),"
                             f" got {self.step_boundaries!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Experiment.name must be a non-empty string, got {self.name!r}")
        if self.batch_mode not in ("masked", "bucketed"):
            raise ValueError(f"batch_mode must be 'masked' or 'bucketed', got {self.batch_mode!r}")
        if self.data_order not in DATA_ORDERS:
            raise ValueError(f"data_order must be one of {list(DATA_ORDERS)}, "
                             f"got {self.data_order!r}")
        if self.data_order == "full_batch" and ("batch_size" in self.space
                                                or "batch_size" in self.defaults):
            raise ValueError("data_order='full_batch' trains on the whole training split every "
                             "step: batch_size cannot be searched or set")
        if self.compute_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be None, 'float32' or 'bfloat16', got "
                             f"{self.compute_dtype!r} (float16 would need loss scaling)")
        if self.augment is not None:
            self._check_augment()
        if self.conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {list(CONV_MODES)}, got {self.conv!r}")
        if self.probes is not None and not isinstance(self.probes, Probes):
            raise ValueError(f"Experiment.probes must be a jaxtune.Probes or None, "
                             f"got {type(self.probes).__name__}")
        for name in self.space.names:
            if name not in DEFAULTS and not self.space[name].static:
                raise ValueError(
                    f"hyperparameter {name!r} is not one the training engine reads; "
                    f"model hyperparameters must be declared static=True (traced ones are "
                    f"{list(PROGRAM_HPARAMS)})")
        for name in self.space.traced_names:
            dim = self.space[name]
            default = self.defaults.get(name, DEFAULTS.get(name))
            if dim.when and dim.categorical and not dim.numeric and not dim.contains(default):
                raise ValueError(
                    f"hyperparameter {name!r} is conditional ({self.space.condition_text(name)})"
                    f", so inactive members take its default {default!r}, which must be one of "
                    f"its values {list(dim.values)}")
        for fam in self._values_of("optimizer"):
            make_optimizer(fam)  # raises on unknown families
        for fam in self._values_of("schedule"):
            schedules.family_index(fam)
        if "knots" in self._values_of("schedule") and self.knot_count < 2:
            raise ValueError("schedule 'knots' needs knot_0, knot_1, ... (2 to 16 knots) "
                             "searched or set")
        if self.batch_mode == "bucketed" and "batch_size" in self.space \
                and not self.space["batch_size"].static:
            raise ValueError("batch_mode='bucketed' needs batch_size declared static=True "
                             "(or use batch_mode='masked')")
        if self.data_order == "full_batch":
            object.__setattr__(self, "max_batch_size", self.data.n_train)
        if self.max_batch_size is None and self.batch_mode == "masked":
            object.__setattr__(self, "max_batch_size",
                               int(max(self._values_of("batch_size"))))
        n = self.data.n_train
        for b in self._values_of("batch_size"):
            if b is not None and (int(b) < 1 or int(b) > n):
                raise ValueError(f"hyperparameter 'batch_size': {b} must be in [1, {n}] "
                                 f"(the training split has {n} examples)")
        if self.batch_capacities is not None:
            self._check_capacities()
        if self.batch_mode == "masked" and self.max_batch_size > n:
            raise ValueError(f"max_batch_size {self.max_batch_size} exceeds the {n} training "
                             "examples")

    def _check_augment(self) -> None:
        import jax

        if not callable(self.augment):
            raise ValueError(f"Experiment.augment must be a function augment(key, x) -> x, "
                             f"got {type(self.augment).__name__}")
        x = jax.ShapeDtypeStruct(self.data.x_train.shape[1:], self.data.x_train.dtype)
        try:
            out = jax.eval_shape(self.augment, jax.random.key(0), x)
        except Exception as e:
            raise ValueError(f"Experiment.augment(key, x) fails on one example of shape "
                             f"{x.shape}: {type(e).__name__}: {e}") from None
        if getattr(out, "shape", None) != x.shape or getattr(out, "dtype", None) != x.dtype:
            raise ValueError(f"Experiment.augment(key, x) must return one example of shape "
                             f"{x.shape} and dtype {x.dtype}, got {out}")

    def _check_capacities(self) -> None:
        caps = tuple(int(c) for c in self.batch_capacities)
        if self.batch_mode != "masked" or self.data_order == "full_batch":
            raise ValueError("batch_capacities need batch_mode='masked' and minibatches")
        if not caps or list(caps) != sorted(set(caps)) or caps[0] < 1:
            raise ValueError(f"batch_capacities must be increasing positive sizes, got {caps}")
        if caps[-1] < self.max_batch_size:
            raise ValueError(f"batch_capacities {caps}: the largest must hold the largest batch "
                             f"size, {self.max_batch_size}")
        object.__setattr__(self, "batch_capacities", caps)
        object.__setattr__(self, "max_batch_size", caps[-1])

    # -- hyperparameter resolution ---------------------------------------------------
    def _values_of(self, name: str) -> list[Any]:
        """Every value ``name`` can take (bounds for ranges), for validation."""
        default = self.defaults.get(name, DEFAULTS.get(name))
        if name in self.space:
            dim = self.space[name]  # a conditional one takes its default where inactive
            return dim.extremes() + ([default] if dim.when and default is not None else [])
        return [default]

    @property
    def knot_count(self) -> int:
        """How many knots the ``knots`` schedule has: the run of ``knot_0``, ``knot_1``,
        ... searched or set."""
        k = 0
        while f"knot_{k}" in self.space or f"knot_{k}" in self.defaults:
            k += 1
        return k

    @property
    def uses_epochs(self) -> bool:
        """Whether member budgets are given in epochs (``epochs`` searched or set)."""
        return "epochs" in self.space or self.defaults.get("epochs") is not None

    def uses(self, name: str, static: Mapping[str, Any] | None = None) -> bool:
        """Whether a member of the bucket ``static`` may have a value of ``name`` that
        changes training: it is searched, or set to a non-neutral value (``l2``,
        ``label_smoothing``, ``dropout``, ``weight_decay`` not 0, ``clip_norm``
        finite). The engine leaves out the work of what no member uses. With a
        traced optimizer family, a member of any family of the bucket counts (the
        families' own defaults differ: adamw decays weights, nesterov does not);
        ``static`` naming an ``optimizer`` asks about that family's members only.

        Example:
            >>> import jaxtune as jt
            >>> exp = jt.Experiment(data=jt.data.digits(), model=jt.models.Logistic(),
            ...                     space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True)),
            ...                     defaults={"l2": 1e-4})
            >>> exp.uses("l2"), exp.uses("clip_norm")
            (True, False)
        """
        if name in self.space:
            return True
        static = dict(static or {})
        families = ((static["optimizer"],) if "optimizer" in static
                    else self.optimizer_families(static))
        return any(self.resolve({**static, "optimizer": f})[name] != _NEUTRAL[name]
                   for f in families)

    @property
    def traced_optimizer(self) -> bool:
        """Whether the optimizer family is a traced Choice (one program, many families)."""
        return "optimizer" in self.space and not self.space["optimizer"].static

    @property
    def uses_dropout(self) -> bool:
        """Whether any member may have a non-zero dropout rate (searched or set)."""
        return self.uses("dropout")

    @property
    def static_names(self) -> tuple[str, ...]:
        return self.space.static_names

    @property
    def model_defaults(self) -> dict[str, Any]:
        """Defaults that are not engine hyperparameters: handed to the model factory."""
        return {k: v for k, v in self.defaults.items() if k not in DEFAULTS
                and k not in self.space}

    def resolve(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The full hyperparameter dict of a configuration (defaults filled in).

        A conditional hyperparameter that is inactive (absent, or ``None`` as
        :meth:`static_config` gives it) takes its default, as if the space did not
        search it.
        """
        if self.space.conditional:
            config = {k: v for k, v in config.items()
                      if v is not None or k not in self.space or not self.space[k].when}
        hp = {**DEFAULTS, "steps": int(self.steps), **self.defaults, **config}
        if self.data_order == "full_batch":
            hp["batch_size"] = self.data.n_train
        if hp["steps"] is None:
            hp["steps"] = int(self.steps)
        for name in _OPTIMIZER_HPARAMS:
            hp[name] = hyperparameter_value(hp["optimizer"], name, hp[name])
        return hp

    def static_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The static hyperparameters of ``config`` (what the model factory sees).

        A conditional static hyperparameter that ``config`` leaves inactive is
        ``None`` here: configurations that differ only in it share a bucket.
        """
        hp = self.resolve(config)
        static = {k: hp[k] if not self.space[k].when or self.space.is_active(k, config) else None
                  for k in self.static_names}
        if not self.traced_optimizer:
            static.setdefault("optimizer", hp["optimizer"])
        if self.batch_capacities is not None:
            static["batch_capacity"] = next(c for c in self.batch_capacities
                                            if c >= int(hp["batch_size"]))
        return {**self.model_defaults, **static}

    def region(self, static: Mapping[str, Any]) -> Space:
        """The part of the space whose configurations fall in the bucket ``static``:
        its static values pinned, the batch size within its capacity.

        Example:
            >>> import jaxtune as jt
            >>> exp = jt.Experiment(
            ...     data=jt.data.digits(), model=jt.models.MLP(),
            ...     space=jt.Space(batch_size=jt.Int(16, 256, log=True),
            ...                    optimizer=jt.Choice(["adam", "sgd"], static=True)),
            ...     batch_capacities=(64, 256))
            >>> region = exp.region({"optimizer": "sgd", "batch_capacity": 256})
            >>> region["batch_size"], region["optimizer"].values
            (Int(low=65, high=256, log=True, static=False), ('sgd',))
        """
        pins: dict[str, Any] = {k: static[k] for k in self.static_names
                                if self.space.is_active(k, static)}
        cap = static.get("batch_capacity")
        if cap is not None and "batch_size" in self.space:
            below = [c for c in self.batch_capacities if c < cap]
            part = self.space["batch_size"].between(below[-1] + 1 if below else 1, cap)
            if part is None:
                raise ValueError(f"no batch size of the space falls in capacity {cap}")
            pins["batch_size"] = part
        return self.space.subspace(**pins)

    def buckets(self, limit: int = 64) -> list[dict[str, Any]] | None:
        """The static values of every bucket the space can reach, or ``None`` when there
        are more than ``limit`` (a static range too wide to enumerate, or a static
        ``Real``).

        Example:
            >>> import jaxtune as jt
            >>> exp = jt.Experiment(
            ...     data=jt.data.digits(), model=jt.models.MLP(),
            ...     space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True),
            ...                    optimizer=jt.Choice(["adam", "sgd"], static=True)))
            >>> [b["optimizer"] for b in exp.buckets()]
            ['adam', 'sgd']
        """
        names = self.static_names
        axes: list[list[Any]] = []
        for name in names:
            if self.space[name].cardinality > limit:
                return None
            axes.append(self.space[name].all_values())
        caps: list[int | None] = [None]
        if self.batch_capacities is not None:
            caps = [c for c in self.batch_capacities if self._capacity_reachable(c)]
        combos = list(itertools.product(*axes, caps))
        if len(combos) > limit:
            return None
        out: list[dict[str, Any]] = []
        for *values, cap in combos:
            config = self.space.prune(dict(zip(names, values)))
            static = self.static_config(config if cap is None else {**config, "batch_size": cap})
            if static not in out:  # combinations differing in inactive values: one bucket
                out.append(static)
        return out

    def _capacity_reachable(self, cap: int) -> bool:
        if "batch_size" not in self.space:
            return cap == self.static_config({})["batch_capacity"]
        below = [c for c in self.batch_capacities if c < cap]
        return self.space["batch_size"].between(below[-1] + 1 if below else 1, cap) is not None

    def families(self, static: Mapping[str, Any]) -> tuple[str, ...]:
        """Schedule families compiled into a bucket's program."""
        if "schedule" in self.space and not self.space["schedule"].static:
            return tuple(self.space["schedule"].values)
        return (static.get("schedule", self.resolve({})["schedule"]),)

    def optimizer_families(self, static: Mapping[str, Any]) -> tuple[str, ...]:
        """Optimizer families compiled into a bucket's program: the values of a traced
        ``optimizer`` Choice (a member's ``optimizer`` array is its index here), or
        the bucket's one family.

        Example:
            >>> import jaxtune as jt
            >>> exp = jt.Experiment(
            ...     data=jt.data.digits(), model=jt.models.MLP(),
            ...     space=jt.Space(optimizer=jt.Choice(["adamw", "nesterov"])))
            >>> exp.buckets(), exp.optimizer_families({})
            ([{}], ('adamw', 'nesterov'))
            >>> arrays = exp.member_arrays([{"optimizer": "nesterov"}, {"optimizer": "adamw"}], {})
            >>> arrays["optimizer"].tolist(), arrays["weight_decay"].tolist()
            ([1, 0], [0.0, 9.999999747378752e-05])
        """
        if self.traced_optimizer:
            return tuple(self.space["optimizer"].values)
        return (static.get("optimizer", self.resolve({})["optimizer"]),)

    def max_batch(self, static: Mapping[str, Any]) -> int:
        """The number of rows every member of the bucket ``static`` gathers per step."""
        if self.batch_mode == "bucketed" and self.data_order != "full_batch":
            return int(static.get("batch_size", self.resolve({})["batch_size"]))
        return int(static.get("batch_capacity", self.max_batch_size))

    def member_arrays(self, configs: Sequence[Mapping[str, Any]], static: Mapping[str, Any],
                      *, check: bool = True) -> dict[str, np.ndarray]:
        """The traced hyperparameters of members of one bucket, as ``(members,)`` arrays.

        The searched traced values are stacked by :meth:`Space.stack` (a traced
        ``schedule`` Choice becomes the index of its family, which is the index
        into :meth:`families`; a traced ``optimizer`` Choice the index into
        :meth:`optimizer_families`); every other traced hyperparameter is the
        bucket's static value or its default, where an optimizer
        hyperparameter left unset takes the default of each member's own family.
        ``epochs``, ``stop_train_loss`` and ``stop_train_accuracy`` left ``None``
        become NaN.

        Raises:
            ValueError: (with ``check``) naming a hyperparameter whose value the
                program cannot run (a batch size above the bucket's maximum, a
                step budget above ``steps``, a non-finite rate).
        """
        fill = ([self.resolve({**static, **c}) for c in configs] if self.space.conditional
                else None)  # an inactive traced hyperparameter: its default
        stacked = self.space.stack(configs, fill=fill)
        fixed = self.resolve(static)
        families = self.families(static)
        per_family = self.traced_optimizer
        out: dict[str, np.ndarray] = {}
        for k in PROGRAM_HPARAMS:
            if k in stacked:
                col = stacked[k]
            elif k == "schedule":
                col = np.full(len(configs), families.index(fixed[k]))
            elif k == "optimizer":
                col = np.full(len(configs), self.optimizer_families(static).index(fixed[k]))
            elif per_family and k in _OPTIMIZER_HPARAMS:
                col = [self.resolve({**static, **c})[k] for c in configs]
            elif k in _NAN_WHEN_UNSET and fixed[k] is None:
                col = np.full(len(configs), math.nan)
            else:
                col = np.full(len(configs), fixed[k])
            out[k] = np.asarray(col, np.int32 if k in _INT32 else np.float32)
        if check:
            self._check_arrays(out, static)
        return out

    def _check_arrays(self, arrays: Mapping[str, np.ndarray], static: Mapping[str, Any]) -> None:
        max_b = self.max_batch(static)
        bad = arrays["batch_size"][(arrays["batch_size"] < 1) | (arrays["batch_size"] > max_b)]
        if bad.size:
            raise ValueError(f"hyperparameter 'batch_size': {int(bad[0])} is outside "
                             f"[1, {max_b}] (the bucket's maximum batch size)")
        bad = arrays["steps"][(arrays["steps"] < 1) | (arrays["steps"] > self.steps)]
        if bad.size:
            raise ValueError(f"hyperparameter 'steps': {int(bad[0])} is outside "
                             f"[1, {self.steps}] (Experiment.steps)")
        for k in ("lr", "lr_scaling", "dropout", "label_smoothing", "warmup"):
            if not np.all(np.isfinite(arrays[k])):
                raise ValueError(f"hyperparameter {k!r} must be finite")
        if not np.all(arrays["reference_batch_size"] > 0):
            raise ValueError("hyperparameter 'reference_batch_size' must be positive")
        if np.any((arrays["dropout"] < 0) | (arrays["dropout"] >= 1)):
            raise ValueError("hyperparameter 'dropout' must lie in [0, 1)")
        if self.data.task != "classification" and np.any(
                np.isfinite(arrays["stop_train_accuracy"])):
            raise ValueError("hyperparameter 'stop_train_accuracy' needs a classification "
                             "task; use stop_train_loss")

    def example_config(self, static: Mapping[str, Any]) -> dict[str, Any]:
        """A configuration of the bucket ``static`` (its static values, every traced
        value at the middle of its range): what programs are built and estimated from."""
        middle = {name: dim.from_unit(0.5, name) for name, dim in self.space.items()}
        pinned = {k: static[k] for k in self.static_names if static.get(k) is not None}
        return self.space.prune({**middle, **pinned})

    def build_model(self, static: Mapping[str, Any]) -> nn.Module:
        """The Flax module of the bucket ``static``."""
        if isinstance(self.model, nn.Module):
            return self.model
        try:
            module = self.model(dict(static))
        except KeyError as e:
            name = e.args[0] if e.args else None
            if name not in DEFAULTS and name not in self.space:
                raise
            hint = ("; a searched dropout rate reaches the module as its `dropout_rate` call "
                    "argument (pass it on to nn.Dropout or jaxtune.models.dropout)"
                    if name == "dropout" else "")
            raise ValueError(f"Experiment.model reads hyperparameter {name!r}, but a model "
                             f"factory receives the static ones only ({sorted(static)}): "
                             f"declare it static=True (one bucket per value){hint}") from None
        if not isinstance(module, nn.Module):
            raise ValueError(f"Experiment.model returned {type(module).__name__}, "
                             "expected a flax.linen.Module")
        return module

    def spec(self) -> dict[str, Any]:
        """A JSON description of the experiment (stored with studies)."""
        return {"name": self.name, "data": self.data.spec(), "space": self.space.spec(),
                "steps": int(self.steps), "eval_every": int(self.eval_every),
                "defaults": {k: _jsonable(v) for k, v in self.defaults.items()},
                "batch_mode": self.batch_mode, "max_batch_size": self.max_batch_size,
                "batch_capacities": (list(self.batch_capacities)
                                     if self.batch_capacities is not None else None),
                "patience": self.patience, "step_boundaries": list(self.step_boundaries),
                "data_order": self.data_order,
                "probes": dataclasses.asdict(self.probes) if self.probes is not None else None,
                "conv": self.conv, "model": self.model_spec, **self._training_spec()}

    def _training_spec(self) -> dict[str, Any]:
        """Augmentation, mixed precision and accumulation, when set (a study stored
        without them is the same as one with their defaults)."""
        out: dict[str, Any] = {}
        if self.augment is not None:
            out["augment"] = getattr(self.augment, "__qualname__", repr(self.augment))
        if self.compute_dtype is not None:
            out["compute_dtype"] = self.compute_dtype
        if self.accumulate != 1:
            out["accumulate"] = self.accumulate
        return out

    @functools.cached_property
    def model_spec(self) -> dict[str, Any]:
        """The model's identity, per bucket: the module's ``repr`` (its class and
        fields) and the shape and dtype of every initial parameter (from shapes
        alone: nothing runs). Part of :meth:`spec`, so a study reopened with another
        model is refused. Only the first bucket when the buckets cannot be listed.

        Example:
            >>> import jaxtune as jt
            >>> exp = jt.Experiment(data=jt.data.teacher_student(n_train=20, n_test=5, dim=3),
            ...                     model=jt.models.MLP(width=4, num_outputs=1),
            ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
            ...                     defaults={"batch_size": 8})
            >>> (bucket,) = exp.model_spec.values()
            >>> bucket["params"]["['params']['Dense_0']['kernel']"]
            [[3, 4], 'float32']
        """
        import jax

        from jaxtune.models import CallConvention

        buckets = self.buckets() or [self.static_config(self.example_config({}))]
        out = {}
        for static in buckets:
            module = self.build_model(static)
            shapes = jax.eval_shape(lambda k, m=module: CallConvention.of(m).init(
                m, k, self.data.x_train[:1]), jax.random.key(0))
            leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
            out[json.dumps({k: _jsonable(v) for k, v in sorted(static.items())},
                           sort_keys=True)] = {
                "repr": repr(module),
                "params": {jax.tree_util.keystr(path): [list(x.shape), str(x.dtype)]
                           for path, x in leaves}}
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
