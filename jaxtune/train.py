"""One member's whole training run as a pure function of its hyperparameters.

:class:`Experiment` ties a dataset, a Flax model factory and a search space
together. :func:`make_train` compiles nothing: it returns the pure functions of
one *member* (one configuration x one seed) for one bucket of static values:

* ``init(hparams, key) -> MemberState``
* ``chunk(state, data) -> (state, metrics)`` — ``eval_every`` steps under
  :func:`jax.lax.scan`, then an evaluation on the train and validation splits;
* ``test(state, data) -> metrics`` — the final evaluation on the test split;
* ``train(hparams, key, data) -> (state, curves)`` — the whole run, chunk after chunk.

The population engine (:mod:`jaxtune.population`) maps these over members
with :func:`jax.vmap` and compiles them once per bucket.

Traced hyperparameters the engine understands (defaults in :data:`DEFAULTS`):

==================  ==========================================================
lr                  peak learning rate
schedule            family name (see :mod:`jaxtune.schedules`); may be a traced Choice
warmup              linear warmup length as a fraction of the member's step budget
end_lr_factor       final value of linear/cosine decay (and low of cyclic) as a fraction of lr
decay_rate          exponential decay: factor reached at the end of the budget
step_factor         step decay: factor applied at each boundary (``Experiment.step_boundaries``)
cycle_fraction      cyclic: period as a fraction of the decay phase
momentum, b1, b2,   optimizer hyperparameters (see :mod:`jaxtune.optimizers`)
eps, weight_decay,
clip_norm
l2                  L2 penalty ``0.5 * l2 * ||params||^2`` added to the loss
label_smoothing     classification only
dropout             dropout rate, passed to the model at call time
batch_size          masked mode: traced, ``<= max batch``; bucketed mode: static
steps               the member's step budget (``<= Experiment.steps``)
epochs              if set (not ``None``) the budget is in epochs:
                    ``ceil(epochs * n_train / batch_size)`` steps, capped at ``Experiment.steps``
==================  ==========================================================

``optimizer`` (family) is static. Any other hyperparameter is handed to the
model factory and must be declared ``static=True``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import schedules as sched
from jaxtune.data import Dataset
from jaxtune.optimizers import make_optimizer, set_hyperparams
from jaxtune.space import Space

__all__ = ["DEFAULTS", "TRACED", "Experiment", "MemberProgram", "MemberState", "make_train"]

#: Default values of every hyperparameter the engine reads.
DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "schedule": "constant", "warmup": 0.0, "end_lr_factor": 0.0,
    "decay_rate": 0.01, "step_factor": 0.1, "cycle_fraction": 0.25,
    "momentum": 0.9, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
    "clip_norm": math.inf, "l2": 0.0, "label_smoothing": 0.0, "dropout": 0.0,
    "batch_size": 128, "steps": None, "epochs": None, "optimizer": "adamw",
}

#: Names that enter the compiled program as per-member arrays.
TRACED: tuple[str, ...] = tuple(k for k in DEFAULTS if k != "optimizer")
_INT_HPARAMS = ("batch_size", "steps")


class MemberState(NamedTuple):
    """Everything one member carries between chunks (a pytree of arrays)."""

    params: Any
    opt_state: Any
    hparams: dict[str, jax.Array]
    key: jax.Array
    step: jax.Array        # steps taken
    budget: jax.Array      # step budget
    alive: jax.Array       # still training
    diverged: jax.Array    # loss or update became NaN/Inf
    stopped: jax.Array     # early-stopped (patience)
    best: jax.Array        # best validation loss so far
    bad_evals: jax.Array   # evaluations since the best


class MemberProgram(NamedTuple):
    """The pure functions of one member for one bucket (see module docstring)."""

    init: Callable[..., MemberState]
    chunk: Callable[..., tuple[MemberState, dict[str, jax.Array]]]
    test: Callable[..., dict[str, jax.Array]]
    train: Callable[..., tuple[MemberState, dict[str, jax.Array]]]
    families: tuple[str, ...]
    max_batch: int
    metric_names: tuple[str, ...]


@dataclasses.dataclass(eq=False)
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
        patience: early stopping after this many evaluations without a better
            validation loss (``None``: off).
        step_boundaries: boundaries of the ``step`` schedule as fractions of the
            decay phase.
        eval_batch_size: evaluation runs in batches of this size.
        name: a label stored with studies.

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
    patience: int | None = None
    step_boundaries: tuple[float, ...] = (0.5, 0.75)
    eval_batch_size: int = 4096
    name: str = "experiment"

    def __post_init__(self) -> None:
        if not isinstance(self.space, Space):
            raise ValueError("Experiment.space must be a jaxtune Space")
        if not isinstance(self.data, Dataset):
            raise ValueError("Experiment.data must be a jaxtune Dataset (see jaxtune.data)")
        if int(self.steps) < 1 or int(self.eval_every) < 1:
            raise ValueError(
                f"steps ({self.steps}) and eval_every ({self.eval_every}) must be >= 1")
        if self.batch_mode not in ("masked", "bucketed"):
            raise ValueError(f"batch_mode must be 'masked' or 'bucketed', got {self.batch_mode!r}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        unknown_defaults = [k for k in self.defaults if k not in DEFAULTS and k not in self.space]
        for name in self.space.names:
            if name not in DEFAULTS and not self.space[name].static:
                raise ValueError(
                    f"hyperparameter {name!r} is not one the training engine reads; "
                    f"model hyperparameters must be declared static=True (traced ones are "
                    f"{list(TRACED)})")
        self._model_defaults = {k: self.defaults[k] for k in unknown_defaults}
        if "optimizer" in self.space and not self.space["optimizer"].static:
            raise ValueError("hyperparameter 'optimizer' changes the program: declare it "
                             "static=True")
        for fam in self._values_of("optimizer"):
            make_optimizer(fam)  # raises on unknown families
        for fam in self._values_of("schedule"):
            sched.family_index(fam)
        if self.batch_mode == "bucketed" and "batch_size" in self.space \
                and not self.space["batch_size"].static:
            raise ValueError("batch_mode='bucketed' needs batch_size declared static=True "
                             "(or use batch_mode='masked')")
        if self.max_batch_size is None and self.batch_mode == "masked":
            self.max_batch_size = int(max(self._values_of("batch_size")))
        n = self.data.n_train
        for b in self._values_of("batch_size"):
            if b is not None and (int(b) < 1 or int(b) > n):
                raise ValueError(f"hyperparameter 'batch_size': {b} must be in [1, {n}] "
                                 f"(the training split has {n} examples)")
        if self.batch_mode == "masked" and self.max_batch_size > n:
            raise ValueError(f"max_batch_size {self.max_batch_size} exceeds the {n} training "
                             "examples")
        self.compiles = 0
        self._programs: dict[tuple, Any] = {}

    # -- hyperparameter resolution ---------------------------------------------------
    def _values_of(self, name: str) -> list[Any]:
        """Every value ``name`` can take (bounds for ranges), for validation."""
        if name in self.space:
            return self.space[name].extremes()
        return [self.defaults.get(name, DEFAULTS.get(name))]

    @property
    def uses_epochs(self) -> bool:
        """Whether member budgets are given in epochs (``epochs`` searched or set)."""
        return "epochs" in self.space or self.defaults.get("epochs") is not None

    @property
    def static_names(self) -> tuple[str, ...]:
        return self.space.static_names

    def resolve(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The full hyperparameter dict of a configuration (defaults filled in)."""
        hp = {**DEFAULTS, "steps": int(self.steps), **self.defaults, **config}
        if hp["steps"] is None:
            hp["steps"] = int(self.steps)
        return hp

    def static_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The static hyperparameters of ``config`` (what the model factory sees)."""
        hp = self.resolve(config)
        static = {k: hp[k] for k in self.static_names}
        static.setdefault("optimizer", hp["optimizer"])
        return {**self._model_defaults, **static}

    def families(self, static: Mapping[str, Any]) -> tuple[str, ...]:
        """Schedule families compiled into a bucket's program."""
        if "schedule" in self.space and not self.space["schedule"].static:
            return tuple(self.space["schedule"].values)
        return (static.get("schedule", self.resolve({})["schedule"]),)

    def max_batch(self, static: Mapping[str, Any]) -> int:
        if self.batch_mode == "bucketed":
            return int(static.get("batch_size", self.resolve({})["batch_size"]))
        return int(self.max_batch_size)

    def member_arrays(self, configs: list[Mapping[str, Any]], static: Mapping[str, Any],
                      *, check: bool = True) -> dict[str, np.ndarray]:
        """Stacks the traced hyperparameters of members of one bucket, checked.

        Raises:
            ValueError: (with ``check``) naming a hyperparameter whose value the
            program cannot run (a batch size above the bucket's maximum, a step
            budget above ``steps``, a non-finite rate).
        """
        families = self.families(static)
        max_b = self.max_batch(static)
        cols: dict[str, list] = {k: [] for k in TRACED}
        for c in configs:
            hp = self.resolve(c)
            for k in TRACED:
                v = hp[k]
                if k == "schedule":
                    v = families.index(v)
                elif k == "epochs":
                    v = math.nan if v is None else float(v)
                cols[k].append(v)
            if check and not 1 <= int(hp["batch_size"]) <= max_b:
                raise ValueError(f"hyperparameter 'batch_size': {hp['batch_size']} is outside "
                                 f"[1, {max_b}] (the bucket's maximum batch size)")
            if check and not 1 <= int(hp["steps"]) <= self.steps:
                raise ValueError(f"hyperparameter 'steps': {hp['steps']} is outside "
                                 f"[1, {self.steps}] (Experiment.steps)")
        out = {}
        for k, v in cols.items():
            dtype = np.int32 if k in _INT_HPARAMS or k == "schedule" else np.float32
            out[k] = np.asarray(v, dtype)
        for k in ("lr", "dropout", "label_smoothing", "warmup"):
            if check and not np.all(np.isfinite(out[k])):
                raise ValueError(f"hyperparameter {k!r} must be finite")
        if check and np.any((out["dropout"] < 0) | (out["dropout"] >= 1)):
            raise ValueError("hyperparameter 'dropout' must lie in [0, 1)")
        return out

    def build_model(self, static: Mapping[str, Any]) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return self.model
        module = self.model(dict(static))
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
                "patience": self.patience, "step_boundaries": list(self.step_boundaries)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


def _accepts_call_kwargs(module: nn.Module) -> bool:
    params = inspect.signature(type(module).__call__).parameters
    return "dropout_rate" in params and "train" in params


def _per_example_loss(out: jax.Array, y: jax.Array, smoothing: jax.Array, task: str,
                      num_classes: int) -> jax.Array:
    if task == "regression":
        return jnp.square(out.reshape(y.shape) - y)
    # Same value as cross-entropy against smoothed one-hot targets, without the
    # one-hot: XLA:CPU (jaxlib 0.10.2) miscomputes the fused reduction of a
    # member-shared one-hot x log_softmax beyond ~324k logits under vmap.
    logp = jax.nn.log_softmax(out)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)


def _tree_where(cond: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _sum_squares(tree: Any) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _classic_threefry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Traces ``fn`` with ``jax_threefry_partitionable=False``.

    The partitionable threefry lowering (JAX's default) makes XLA:CPU spend
    seconds compiling every ``jax.random.normal``/``uniform``; the classic one
    compiles in a fraction of that. Members never share random draws, so
    nothing is lost by not partitioning them. Entering the mode inside the
    traced function makes a member's random stream the same whoever calls it.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(False):
            return fn(*args, **kwargs)

    return wrapped


def make_train(experiment: Experiment, static: Mapping[str, Any]) -> MemberProgram:
    """Builds the pure functions of one member of the bucket ``static``.

    Args:
        experiment: the :class:`Experiment`.
        static: the bucket's static hyperparameter values
            (see :meth:`Experiment.static_config`).

    Returns:
        A :class:`MemberProgram`. ``hparams`` arguments are dicts of scalars with
        the keys of :data:`TRACED` (see :meth:`Experiment.member_arrays`).

    Example:
        >>> import jax, jaxtune as jt
        >>> exp = jt.Experiment(data=jt.data.teacher_student(n_train=100, n_test=20, dim=3),
        ...                     model=jt.models.MLP(width=8, num_outputs=1),
        ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
        ...                     steps=20, eval_every=10, defaults={"batch_size": 16})
        >>> static = exp.static_config({"lr": 0.01})
        >>> prog = jt.make_train(exp, static)
        >>> hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01}], static).items()}
        >>> data = jt.population.train_data(exp.data)
        >>> state, curves = jax.jit(prog.train)(hp, jax.random.key(0), data)
        >>> int(state.step), curves["val_loss"].shape
        (20, (2,))
    """
    ds = experiment.data
    task, num_classes, n_train = ds.task, ds.num_classes, ds.n_train
    module = experiment.build_model(static)
    call_kwargs = _accepts_call_kwargs(module)
    optimizer = make_optimizer(static.get("optimizer", DEFAULTS["optimizer"]))
    families = experiment.families(static)
    max_b = experiment.max_batch(static)
    eval_every = int(experiment.eval_every)
    patience = experiment.patience
    boundary_fracs = jnp.asarray(experiment.step_boundaries, jnp.float32)
    sample_x = ds.x_train[:1]
    # Without dropout anywhere in the study no mask is drawn (its random bits
    # would cost more than the matmuls of a small model).
    use_dropout = "dropout" in experiment.space or experiment.resolve({})["dropout"] != 0
    metric_names = ("train_loss", "val_loss") + (
        ("train_accuracy", "val_accuracy") if task == "classification" else ())

    def apply(params, x, *, train, rate=0.0, key=None):
        if not call_kwargs:
            return module.apply(params, x)
        rngs = {"dropout": key} if train else None
        return module.apply(params, x, train=train, dropout_rate=rate, rngs=rngs)

    def budget_of(hp):
        steps = jnp.minimum(hp["steps"], experiment.steps)
        from_epochs = jnp.ceil(hp["epochs"] * n_train / hp["batch_size"])
        from_epochs = jnp.clip(from_epochs, 1, experiment.steps).astype(jnp.int32)
        return jnp.where(jnp.isnan(hp["epochs"]), steps, from_epochs).astype(jnp.int32)

    def schedule_args(hp, budget):
        total = budget.astype(jnp.float32)
        warm = jnp.round(hp["warmup"] * total)
        decay = jnp.maximum(total - warm, 1.0)
        return sched.ScheduleArgs(
            peak=hp["lr"], end=hp["lr"] * hp["end_lr_factor"], warmup_steps=warm,
            total_steps=total, decay_rate=hp["decay_rate"],
            boundaries=boundary_fracs * decay, step_factor=hp["step_factor"],
            cycle_steps=jnp.maximum(hp["cycle_fraction"] * decay, 2.0))

    def init(hparams, key):
        hp = {k: jnp.asarray(v) for k, v in hparams.items()}
        init_key, train_key = jax.random.split(key)
        params = module.init(init_key, sample_x)
        opt_state = optimizer.init(params)
        opt_state = set_hyperparams(
            opt_state, learning_rate=0.0, momentum=hp["momentum"], b1=hp["b1"], b2=hp["b2"],
            eps=hp["eps"], weight_decay=hp["weight_decay"], clip_norm=hp["clip_norm"])
        f32 = lambda v: jnp.asarray(v, jnp.float32)
        return MemberState(params=params, opt_state=opt_state, hparams=hp, key=train_key,
                           step=jnp.zeros((), jnp.int32), budget=budget_of(hp),
                           alive=jnp.ones((), bool), diverged=jnp.zeros((), bool),
                           stopped=jnp.zeros((), bool), best=f32(jnp.inf),
                           bad_evals=jnp.zeros((), jnp.int32))

    def loss_fn(params, x, y, weights, hp, key):
        out = apply(params, x, train=True, rate=hp["dropout"] if use_dropout else 0.0, key=key)
        per = _per_example_loss(out, y, hp["label_smoothing"], task, num_classes)
        return jnp.sum(weights * per) + 0.5 * hp["l2"] * _sum_squares(params)

    def step(state: MemberState, data) -> MemberState:
        hp = state.hparams
        k_batch, k_drop = jax.random.split(jax.random.fold_in(state.key, state.step))
        idx = jax.random.randint(k_batch, (max_b,), 0, n_train)
        x, y = data["x_train"][idx], data["y_train"][idx]
        weights = (jnp.arange(max_b) < hp["batch_size"]) / hp["batch_size"].astype(jnp.float32)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y, weights, hp, k_drop)
        lr = sched.schedule_value(hp["schedule"], state.step.astype(jnp.float32),
                                  schedule_args(hp, state.budget), families)
        opt_state = set_hyperparams(state.opt_state, learning_rate=lr)
        updates, new_opt = optimizer.update(grads, opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(
            sum(jnp.sum(u) for u in jax.tree.leaves(updates)))
        active = state.alive & (state.step < state.budget)
        commit = active & finite
        return state._replace(
            params=_tree_where(commit, new_params, state.params),
            opt_state=_tree_where(commit, new_opt, state.opt_state),
            step=state.step + commit.astype(jnp.int32),
            alive=state.alive & ~(active & ~finite),
            diverged=state.diverged | (active & ~finite))

    def evaluate(params, x, y):
        n = x.shape[0]
        bs = min(int(experiment.eval_batch_size), n)
        pad = (-n) % bs
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)]) if pad else y
        mask = (jnp.arange(n + pad) < n).reshape(-1, bs)

        def one(args):
            xb, yb, mb = args
            out = apply(params, xb, train=False)
            per = _per_example_loss(out, yb, 0.0, task, num_classes)
            acc = (jnp.argmax(out, -1) == yb) if task == "classification" else per
            return jnp.sum(jnp.where(mb, per, 0.0)), jnp.sum(jnp.where(mb, acc, 0.0))

        shape = (-1, bs)
        losses, accs = jax.lax.map(one, (xp.reshape(*shape, *x.shape[1:]),
                                         yp.reshape(*shape, *y.shape[1:]), mask))
        loss, acc = jnp.sum(losses) / n, jnp.sum(accs) / n
        if task == "classification":
            return loss, acc
        return loss, None

    def chunk(state: MemberState, data) -> tuple[MemberState, dict[str, jax.Array]]:
        was_active = state.alive & (state.step < state.budget)
        state, _ = jax.lax.scan(lambda s, _: (step(s, data), None), state, None, length=eval_every)
        tr_loss, tr_acc = evaluate(state.params, data["x_train"], data["y_train"])
        va_loss, va_acc = evaluate(state.params, data["x_val"], data["y_val"])
        improved = va_loss < state.best
        best = jnp.where(was_active & improved, va_loss, state.best)
        bad = jnp.where(was_active, jnp.where(improved, 0, state.bad_evals + 1), state.bad_evals)
        stop = was_active & state.alive & (bad >= patience) if patience else jnp.zeros((), bool)
        state = state._replace(best=best, bad_evals=bad, alive=state.alive & ~stop,
                               stopped=state.stopped | stop)
        metrics = {"train_loss": tr_loss, "val_loss": va_loss, "step": state.step}
        if task == "classification":
            metrics.update(train_accuracy=tr_acc, val_accuracy=va_acc)
        return state, metrics

    def test(state: MemberState, data) -> dict[str, jax.Array]:
        loss, acc = evaluate(state.params, data["x_test"], data["y_test"])
        return {"test_loss": loss} if acc is None else {"test_loss": loss, "test_accuracy": acc}

    def train(hparams, key, data):
        state = init(hparams, key)
        n_chunks = -(-experiment.steps // eval_every)
        return jax.lax.scan(lambda s, _: chunk(s, data), state, None, length=n_chunks)

    init, chunk, test, train = map(_classic_threefry, (init, chunk, test, train))
    return MemberProgram(init=init, chunk=chunk, test=test, train=train, families=families,
                         max_batch=max_b, metric_names=metric_names)
