"""One member's whole training run as a pure function of its hyperparameters.

:func:`make_train` compiles nothing: it returns the pure functions of one
*member* (one configuration x one seed) of one bucket of static values:

* ``init(hparams, key) -> MemberState``
* ``chunk(state, data) -> (state, metrics)`` — ``eval_every`` steps under
  :func:`jax.lax.scan`, then an evaluation on the train and validation splits;
* ``test(state, data) -> metrics`` — the final evaluation on the test split;
* ``train(hparams, key, data) -> (state, curves)`` — the whole run, chunk after chunk.

``hparams`` is a dict of scalars with the keys of
:data:`jaxtune.experiment.PROGRAM_HPARAMS` (see :meth:`Experiment.member_arrays
<jaxtune.experiment.Experiment.member_arrays>`). The population engine
(:mod:`jaxtune.programs`, :mod:`jaxtune.population`) maps these functions over
members with :func:`jax.vmap` and compiles them once per bucket.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtune import schedules as sched
from jaxtune.experiment import DEFAULTS, Experiment
from jaxtune.optimizers import make_optimizer, set_hyperparams

__all__ = ["MemberProgram", "MemberState", "make_train"]


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


def _check_output(module: nn.Module, sample_x: jax.Array, task: str, num_classes: int) -> None:
    """Checks the model's output shape on one example (shapes only, nothing runs)."""
    variables = jax.eval_shape(module.init, jax.random.key(0), sample_x)
    out = jax.eval_shape(module.apply, variables, sample_x)
    want = [(1, num_classes)] if task == "classification" else [(1, 1), (1,)]
    try:
        chex.assert_shape(out, want[0] if len(want) == 1 else (1, ...))
        if task == "regression" and math.prod(out.shape) != 1:
            raise AssertionError(f"{out.shape} has more than one output per example")
    except AssertionError:
        need = (f"{num_classes} logits per example ({num_classes} classes)"
                if task == "classification" else "one output per example (regression)")
        raise ValueError(f"the model's output for a batch of 1 has shape {tuple(out.shape)}; "
                         f"the dataset needs {need}, shape {want[0]}") from None


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
        the keys of :data:`PROGRAM_HPARAMS` (see :meth:`Experiment.member_arrays`).

    Example:
        >>> import jax, jaxtune as jt
        >>> exp = jt.Experiment(data=jt.data.teacher_student(n_train=100, n_test=20, dim=3),
        ...                     model=jt.models.MLP(width=8, num_outputs=1),
        ...                     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
        ...                     steps=20, eval_every=10, defaults={"batch_size": 16})
        >>> static = exp.static_config({"lr": 0.01})
        >>> member = jt.make_train(exp, static)
        >>> hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01}], static).items()}
        >>> data = jt.data.train_arrays(exp.data)
        >>> state, curves = jax.jit(member.train)(hp, jax.random.key(0), data)
        >>> int(state.step), curves["val_loss"].shape
        (20, (2,))
    """
    ds = experiment.data
    task, num_classes, n_train = ds.task, ds.num_classes, ds.n_train
    module = experiment.build_model(static)
    call_kwargs = _accepts_call_kwargs(module)
    _check_output(module, ds.x_train[:1], task, num_classes)
    optimizer = make_optimizer(static.get("optimizer", DEFAULTS["optimizer"]))
    families = experiment.families(static)
    max_b = experiment.max_batch(static)
    eval_every, max_steps = int(experiment.eval_every), int(experiment.steps)
    n_chunks = -(-max_steps // eval_every)
    eval_batch = int(experiment.eval_batch_size)
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
        steps = jnp.minimum(hp["steps"], max_steps)
        from_epochs = jnp.ceil(hp["epochs"] * n_train / hp["batch_size"])
        from_epochs = jnp.clip(from_epochs, 1, max_steps).astype(jnp.int32)
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

    def train_step(state: MemberState, data) -> MemberState:
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
        bs = min(eval_batch, n)
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
        state, _ = jax.lax.scan(lambda s, _: (train_step(s, data), None), state, None,
                                length=eval_every)
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
        return jax.lax.scan(lambda s, _: chunk(s, data), state, None, length=n_chunks)

    init, chunk, test, train = map(_classic_threefry, (init, chunk, test, train))
    return MemberProgram(init=init, chunk=chunk, test=test, train=train, families=families,
                         max_batch=max_b, metric_names=metric_names)
