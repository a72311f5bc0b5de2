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

Only the module's ``params`` collection is optimised (``MemberState.params``);
its other collections (``nn.BatchNorm``'s ``batch_stats``, any collection a
training call updates) are the member's ``model_state``: training calls run the
module with ``train=True`` and those collections mutable, evaluation with
``train=False`` (see ``docs/design.md``, "Variable collections").
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtune import schedules as sched
from jaxtune.batches import Sampler, row_capacities
from jaxtune.experiment import Experiment
from jaxtune.models import CallConvention
from jaxtune.optimizers import make_optimizer, set_hyperparams

__all__ = ["MemberProgram", "MemberState", "make_train", "step_budget"]


class MemberState(NamedTuple):
    """Everything one member carries between chunks (a pytree of arrays).

    ``params`` holds the variables that are optimised (the ``"params"``
    collection, as ``{"params": ...}``); ``model_state`` the module's other
    collections (``{"batch_stats": ...}``; ``{}`` for a module without state),
    updated by training calls and read by evaluation, never optimised.
    """

    params: Any
    opt_state: Any
    hparams: dict[str, jax.Array]
    key: jax.Array
    step: jax.Array         # steps taken
    seen: jax.Array         # training examples consumed (the data order's position)
    budget: jax.Array       # step budget
    alive: jax.Array        # still training
    diverged: jax.Array     # loss or parameters became NaN/Inf
    stopped: jax.Array      # early-stopped (patience)
    best: jax.Array         # best validation loss so far
    bad_evals: jax.Array    # evaluations since the best
    best_params: Any        # parameters at the best validation loss (None without patience)
    model_state: Any = None       # the model's other collections (batch statistics ...)
    best_model_state: Any = None  # model state at the best validation loss (with patience)


class MemberProgram(NamedTuple):
    """The pure functions of one member for one bucket (see module docstring).

    ``train_step(state, data, rows=None)`` is one optimizer step (``rows``: the
    capacity it gathers, ``max_batch`` by default); it is exposed for
    cost analyses and probes. ``retune(state, hparams)`` gives a running member new
    traced hyperparameters (population-based training); its step budget stays, and a
    new optimizer family starts from that family's fresh optimizer state.
    ``families`` and ``optimizers`` are the schedule and optimizer families
    compiled in (a member's ``schedule`` and ``optimizer`` hyperparameters index
    them).

    ``capacities`` are the row counts a chunk can run its steps at (increasing, the
    last is ``max_batch``): ``chunk(state, data, capacity)`` with an *unbatched*
    index into them (``None``: the last) runs every step at that many rows, which
    must hold the batch size of every member that trains (``needs(state)``: its
    batch size, 0 once it no longer trains). A member's numbers are the same at
    every capacity that holds its batch (up to float rounding), so the engine runs
    each group of members at the smallest capacity that holds the group.
    """

    init: Callable[..., MemberState]
    chunk: Callable[..., tuple[MemberState, dict[str, jax.Array]]]
    test: Callable[..., dict[str, jax.Array]]
    train: Callable[..., tuple[MemberState, dict[str, jax.Array]]]
    train_step: Callable[..., MemberState]
    retune: Callable[..., MemberState]
    families: tuple[str, ...]
    max_batch: int
    metric_names: tuple[str, ...]
    optimizers: tuple[str, ...] = ()
    conv: str = "native"  # how nn.Conv layers run: "patches" or "native" (jaxtune.conv)
    capacities: tuple[int, ...] = ()
    needs: Callable[..., jax.Array] | None = None


def step_budget(hparams: Mapping[str, Any], max_steps: int, n_train: int,
                xp: Any = jnp, accumulate: int = 1) -> Any:
    """A member's step budget: ``steps``, or ``ceil(epochs * n_train / (batch_size *
    accumulate))`` optimizer steps when ``epochs`` is set (not NaN); at least 1, at
    most ``max_steps``.

    ``xp`` is ``jax.numpy`` inside programs or ``numpy`` on the host (where the
    engine warns about budgets cut at ``max_steps``).

    Example:
        >>> import numpy as np
        >>> hp = {"steps": np.array([10, 10]), "epochs": np.array([np.nan, 2.0]),
        ...       "batch_size": np.array([8, 8])}
        >>> step_budget(hp, 30, 100, xp=np).tolist()
        [10, 25]
    """
    steps = xp.minimum(hparams["steps"], max_steps)
    from_epochs = xp.ceil(hparams["epochs"] * n_train / (hparams["batch_size"] * accumulate))
    from_epochs = xp.clip(xp.nan_to_num(from_epochs), 1, max_steps)
    return xp.where(xp.isnan(hparams["epochs"]), steps, from_epochs).astype(xp.int32)


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


def _check_output(module: nn.Module, call: CallConvention, sample_x: jax.Array, task: str,
                  num_classes: int) -> None:
    """Checks the model's output shape on one example (shapes only, nothing runs)."""
    variables = _variables_shape(module, call, sample_x)
    with _explained(module, "evaluation"):
        out = jax.eval_shape(lambda v, x: call.apply(module, v, x, train=False), variables,
                             sample_x)
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


def _draws_masks(module: nn.Module, call: CallConvention, sample_x: jax.Array,
                 rate: float | None) -> bool:
    """Whether a training call of ``module`` reads its ``"dropout"`` stream (traced
    once, nothing runs)."""
    variables = _variables_shape(module, call, sample_x)
    mutable = tuple(c for c in variables if c not in _NOT_STATE)
    with _explained(module, "training"):
        closed = jax.make_jaxpr(lambda v, k: call.apply(
            module, v, sample_x, train=True, rate=rate, key=k, mutable=mutable))(
                variables, jax.random.key(0))
    key = closed.jaxpr.invars[-1]
    return any(key in eqn.invars for eqn in closed.jaxpr.eqns)


def _variables_shape(module: nn.Module, call: CallConvention, sample_x: jax.Array) -> Any:
    """The shapes of the module's initial variables (nothing runs)."""
    with _explained(module, "initialization"):
        return jax.eval_shape(lambda k: call.init(module, k, sample_x), jax.random.key(0))


_MODE_HINT = {
    "evaluation": "jaxtune evaluates with every collection but 'params' fixed at its trained "
                  "value: give __call__ a `train` argument and update state only when "
                  "training, e.g. nn.BatchNorm(use_running_average=not train)",
    "training": "jaxtune trains with the collections that initialization (train=False) "
                "creates mutable; create every variable at initialization",
    "initialization": "initialization runs with train=False (or deterministic=True)",
}


@contextlib.contextmanager
def _explained(module: nn.Module, mode: str):
    """Turns Flax's errors about variable collections into one ``ValueError`` that
    names the collection and what to do."""
    try:
        yield
    except (flax.errors.ModifyScopeVariableError, flax.errors.ScopeCollectionNotFound) as e:
        found = re.search(r'collection "([^"]+)"', str(e))
        col = found.group(1) if found else "?"
        what = ("updates" if isinstance(e, flax.errors.ModifyScopeVariableError)
                else "reads, without having created it,")
        raise ValueError(f"{type(module).__name__} {what} its {col!r} collection in "
                         f"{mode} mode; {_MODE_HINT[mode]}") from None


def _check_state(module: nn.Module, old: Any, new: Any) -> None:
    """A training call must give back the model state with the shapes it was given."""
    for col in sorted(set(old) | set(new)):
        a, b = old.get(col), new.get(col)
        same = a is not None and b is not None and \
            jax.tree.structure(a) == jax.tree.structure(b) and \
            all(x.shape == y.shape and x.dtype == y.dtype
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
        if not same:
            raise ValueError(f"{type(module).__name__}'s {col!r} collection changes its "
                             "structure, shapes or dtypes in a training call; jaxtune carries "
                             "every collection but 'params' from step to step as model state, "
                             "so it must keep them (do not sow into it while training)")


#: Collections a module writes for inspection (``self.sow``), never carried as state:
#: training calls leave them immutable, so Flax's ``sow`` does nothing there.
_NOT_STATE = frozenset({"params", "intermediates"})


def _state_collections(module: nn.Module, call: CallConvention, batch_x: jax.Array
                       ) -> tuple[str, ...]:
    """The collections carried as model state (all but ``params`` and sown
    ``intermediates``), checked: a training call on ``batch_x`` (a few rows) updates
    them in place, keeping their structure, shapes and dtypes (nothing runs)."""
    variables = _variables_shape(module, call, batch_x[:1])
    cols = tuple(c for c in variables if c not in _NOT_STATE)
    if cols:
        def training(v, k):
            return call.apply(module, v, batch_x, train=True, key=k, mutable=cols)[1]

        with _explained(module, "training"):
            new = jax.eval_shape(training, variables, jax.random.key(0))
        state = {c: variables[c] for c in cols}
        _check_state(module, state, {c: new.get(c, state[c]) for c in cols})
    return cols


def _cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves of ``tree`` as ``dtype`` (``None``: unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, tree)


def _at_least_f32(x: jax.Array) -> jax.Array:
    """A low-precision output as float32 (the loss is computed in float32 or wider)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _tree_where(cond: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


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


def _smallest_batch(experiment: Experiment, static: Mapping[str, Any], max_b: int) -> int:
    """The smallest batch size a member of the bucket ``static`` can have (masked mode)."""
    if "batch_size" not in experiment.space or experiment.space["batch_size"].static:
        return min(int(experiment.resolve({})["batch_size"]), max_b)
    try:
        dim = experiment.region(static)["batch_size"]
    except ValueError:
        dim = experiment.space["batch_size"]
    return min(int(min(dim.extremes())), max_b)


def make_train(experiment: Experiment, static: Mapping[str, Any], *,
               own_batch: bool = True, check: bool = True) -> MemberProgram:
    """Builds the pure functions of one member of the bucket ``static``.

    Args:
        experiment: the :class:`Experiment`.
        static: the bucket's static hyperparameter values
            (see :meth:`Experiment.static_config`).
        own_batch: in masked mode, offer power-of-two row capacities below the
            largest batch (:func:`~jaxtune.batches.row_capacities`) so a group of
            small batches computes about its own rows; ``False``: one capacity,
            ``max_batch`` (every member computes the largest batch's rows).
        check: trace the model once to check its output against the task (a clear
            error before any compile); ``False`` where that already passed.

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
    call = CallConvention.of(module, conv=experiment.conv)
    if check:
        _check_output(module, call, ds.x_train[:1], task, num_classes)
    # Only the "params" collection is optimised; the others (batch statistics, any
    # collection a training call updates) are the member's model state.
    collections = _state_collections(module, call, ds.x_train[:2])
    accumulate = int(experiment.accumulate)
    compute = None if experiment.compute_dtype is None else jnp.dtype(experiment.compute_dtype)
    augment = experiment.augment
    # Without dropout anywhere in the study no mask is drawn (its random bits
    # would cost more than the matmuls of a small model).
    use_dropout = experiment.uses_dropout and call.takes_rate
    static_rate = "dropout" in experiment.space and experiment.space["dropout"].static
    if experiment.uses_dropout and not call.takes_rate and not static_rate:
        raise ValueError(
            f"hyperparameter 'dropout' is searched or set, but {type(module).__name__}.__call__ "
            "takes no `dropout_rate` argument to receive it; add one (see jaxtune.models) or "
            "make the rate a static model hyperparameter (static=True)")
    # Work no member can need is left out of the program: clipping, coupled weight
    # decay, the L2 penalty and label smoothing at their neutral values.
    # A traced optimizer family compiles the union of the bucket's families; a
    # family's coupled decay is left out when none of its members can decay.
    optimizers = experiment.optimizer_families(static)
    optimizer = make_optimizer(
        optimizers, clip=experiment.uses("clip_norm", static),
        coupled_decay=tuple(experiment.uses("weight_decay", {**static, "optimizer": f})
                            for f in optimizers))
    use_l2 = experiment.uses("l2", static)
    use_scaling = experiment.uses("lr_scaling", static)
    use_smoothing = experiment.uses("label_smoothing", static)
    families = experiment.families(static)
    max_b = experiment.max_batch(static)
    eval_every, max_steps = int(experiment.eval_every), int(experiment.steps)
    sampler = Sampler(experiment.data_order, n_train, max_b)
    masked = experiment.batch_mode == "masked" and experiment.data_order != "full_batch"
    # Masks drawn per example (Sampler.row_keys), so a member's masks do not depend
    # on how many rows its step gathers: for a searched rate, and for a module whose
    # own dropout reads the "dropout" stream.
    row_masks = use_dropout or _draws_masks(module, call, ds.x_train[:1], None)
    # A module with state sees the whole batch at once (batch statistics); its dropout
    # masks are then drawn for the whole gathered batch, so every member runs at one
    # capacity (a member's masks must not depend on which other members it runs with).
    per_row = row_masks and not collections
    capacities = (row_capacities(_smallest_batch(experiment, static, max_b), max_b)
                  if masked and own_batch and (per_row or not row_masks) else (max_b,))
    n_chunks = -(-max_steps // eval_every)
    eval_batch = int(experiment.eval_batch_size)
    patience = experiment.patience
    boundary_fracs = jnp.asarray(experiment.step_boundaries, jnp.float32)
    knot_names = [f"knot_{i}" for i in range(experiment.knot_count)] if "knots" in families \
        else []
    sample_x = ds.x_train[:1]
    metric_names = ("train_loss", "val_loss") + (
        ("train_accuracy", "val_accuracy") if task == "classification" else ())

    def peak_lr(hp):
        # the scaling rule lr * (batch_size / reference_batch_size) ** k
        if not use_scaling:
            return hp["lr"]
        batch = n_train if experiment.data_order == "full_batch" else hp["batch_size"]
        batch = batch * accumulate  # the examples of one optimizer step
        ratio = jnp.asarray(batch, jnp.float32) / hp["reference_batch_size"]
        return hp["lr"] * ratio ** hp["lr_scaling"]

    def schedule_args(hp, budget):
        total = budget.astype(jnp.float32)
        warm = jnp.round(hp["warmup"] * total)
        decay = jnp.maximum(total - warm, 1.0)
        peak = peak_lr(hp)
        return sched.ScheduleArgs(
            peak=peak, end=peak * hp["end_lr_factor"], warmup_steps=warm,
            total_steps=total, decay_rate=hp["decay_rate"],
            boundaries=boundary_fracs * decay, step_factor=hp["step_factor"],
            cycle_steps=jnp.maximum(hp["cycle_fraction"] * decay, 2.0),
            knots=jnp.stack([hp[k] for k in knot_names]) if knot_names else None)

    def with_optimizer_hparams(opt_state, hp):
        return set_hyperparams(
            opt_state, momentum=hp["momentum"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
            weight_decay=hp["weight_decay"], clip_norm=hp["clip_norm"],
            family=hp["optimizer"])

    def init(hparams, key):
        hp = {k: jnp.asarray(v) for k, v in hparams.items()}
        init_key, train_key = jax.random.split(key)
        variables = call.init(module, init_key, sample_x)
        params = {c: v for c, v in variables.items() if c == "params"}
        model_state = {c: variables[c] for c in collections}
        opt_state = with_optimizer_hparams(optimizer.init(params), hp)
        zero = jnp.zeros((), jnp.int32)
        return MemberState(params=params, opt_state=opt_state, hparams=hp, key=train_key,
                           step=zero, seen=zero,
                           budget=step_budget(hp, max_steps, n_train),
                           alive=jnp.ones((), bool), diverged=jnp.zeros((), bool),
                           stopped=jnp.zeros((), bool), best=jnp.asarray(jnp.inf, jnp.float32),
                           bad_evals=zero, best_params=params if patience else None,
                           model_state=model_state,
                           best_model_state=model_state if patience else None)

    def forward(params, model_state, x, hp, key, rows):
        """Training-mode outputs (float32) and the updated model state."""
        rate = hp["dropout"] if use_dropout else None
        params, x = _cast(params, compute), _cast(x, compute)
        if per_row:
            def one(xj, kj):
                return call.apply(module, params, xj[None], train=True, rate=rate, key=kj)[0]

            out, new = jax.vmap(one)(x, Sampler.row_keys(key, x.shape[0])), {}
        elif collections:
            out, new = call.apply(module, {**params, **model_state}, x, train=True, rate=rate,
                                  key=key, mutable=collections, rows=rows)
            new = {c: new.get(c, model_state[c]) for c in collections}
            _check_state(module, model_state, new)
        else:
            out, new = call.apply(module, params, x, train=True, rate=None, key=key), {}
        return _at_least_f32(out), new

    def loss_fn(params, model_state, x, y, weights, hp, key, rows):
        out, new = forward(params, model_state, x, hp, key, rows)
        per = _per_example_loss(out, y, hp["label_smoothing"] if use_smoothing else 0.0, task,
                                num_classes)
        penalty = 0.5 * hp["l2"] * _sum_squares(params) if use_l2 else 0.0
        return jnp.sum(weights * per) + penalty, new

    def step_rows(state: MemberState) -> jax.Array | None:
        """The ``(accumulate, max_batch)`` training rows of the member's next step
        (``None``: the whole split). Drawn once per step outside the capacity switch
        (one copy of the data order in the program): a capacity reads the first rows
        of each micro-batch, which do not depend on the capacity."""
        if sampler.order == "full_batch":
            return None
        i = jnp.arange(accumulate)
        return jax.vmap(lambda m, seen: sampler.indices(state.key, m, seen))(
            state.step * accumulate + i, state.seen + i * state.hparams["batch_size"])

    def micro_batch(state: MemberState, data, rows_all, rows: int, i):
        """Inputs, targets, weights, row mask and dropout key of micro-batch ``i`` of the
        step, gathered at ``rows`` rows."""
        hp = state.hparams
        micro = state.step * accumulate + i
        if rows_all is None:  # full batch
            x, y = data["x_train"], data["y_train"]
            weights, mask = jnp.full((n_train,), 1.0 / n_train), None
        else:
            idx = jax.lax.dynamic_index_in_dim(rows_all, i, keepdims=False)[:rows]
            x, y = data["x_train"][idx], data["y_train"][idx]
            mask = jnp.arange(rows) < hp["batch_size"]
            weights = mask / hp["batch_size"].astype(jnp.float32)
        if augment is not None:
            keys = Sampler.row_keys(Sampler.augment_key(state.key, micro), x.shape[0])
            x = jax.vmap(augment)(keys, x)
        return x, y, weights, (mask if masked else None), Sampler.dropout_key(state.key, micro)

    def grads_at(rows: int, state: MemberState, data, rows_all) -> tuple[jax.Array, Any, Any]:
        """Loss, gradients (means over the step's micro-batches) and model state, each
        micro-batch gathered at ``rows`` rows: the part of a step whose cost scales with
        its rows."""
        hp = state.hparams
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def one(model_state, i):
            x, y, w, mask, k = micro_batch(state, data, rows_all, rows, i)
            (loss, model_state), grads = grad_fn(state.params, model_state, x, y, w, hp, k,
                                                 mask)
            return model_state, loss, grads

        first = one(state.model_state, 0)
        if accumulate == 1:
            model_state, loss, grads = first
            return loss, grads, model_state

        def add(carry, i):
            model_state, loss_sum, grad_sum = carry
            model_state, loss, grads = one(model_state, i)
            return (model_state, loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

        (model_state, loss, grads), _ = jax.lax.scan(add, first, jnp.arange(1, accumulate))
        return loss / accumulate, jax.tree.map(lambda g: g / accumulate, grads), model_state

    def apply_grads(state: MemberState, loss: jax.Array, grads: Any,
                    model_state: Any) -> MemberState:
        hp = state.hparams
        active = state.alive & (state.step < state.budget)
        lr = sched.schedule_value(hp["schedule"], state.step.astype(jnp.float32),
                                  schedule_args(hp, state.budget), families)
        # An inactive member (budget spent, stopped, diverged, padding) gets a zero
        # update; its optimizer state may drift, but it is never used again.
        opt_state = set_hyperparams(state.opt_state, learning_rate=lr)
        updates, opt_state = optimizer.update(grads, opt_state, state.params)
        updates = jax.tree.map(lambda u: jnp.where(active, u, 0.0), updates)
        finite = jnp.isfinite(loss)
        commit = active & finite
        return state._replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state,
            model_state=_tree_where(commit, model_state, state.model_state),
            step=state.step + commit.astype(jnp.int32),
            seen=state.seen + jnp.where(commit, hp["batch_size"] * accumulate, 0),
            alive=state.alive & ~(active & ~finite),
            diverged=state.diverged | (active & ~finite))

    def train_step(state: MemberState, data, rows: int | None = None) -> MemberState:
        return apply_grads(state, *grads_at(max_b if rows is None else int(rows), state, data,
                                            step_rows(state)))

    def evaluate(params, model_state, x, y):
        n = x.shape[0]
        bs = min(eval_batch, n)
        pad = (-n) % bs
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)]) if pad else y
        mask = (jnp.arange(n + pad) < n).reshape(-1, bs)

        def one(args):
            xb, yb, mb = args
            variables = _cast({**params, **model_state}, compute)
            out = call.apply(module, variables, _cast(xb, compute), train=False)
            per = _per_example_loss(_at_least_f32(out), yb, 0.0, task, num_classes)
            acc = (jnp.argmax(out, -1) == yb) if task == "classification" else per
            return jnp.sum(jnp.where(mb, per, 0.0)), jnp.sum(jnp.where(mb, acc, 0.0))

        shape = (-1, bs)
        losses, accs = jax.lax.map(one, (xp.reshape(*shape, *x.shape[1:]),
                                         yp.reshape(*shape, *y.shape[1:]), mask))
        loss, acc = jnp.sum(losses) / n, jnp.sum(accs) / n
        if task == "classification":
            return loss, acc
        return loss, None

    def run_steps(state: MemberState, data, capacity) -> MemberState:
        # One scan for every capacity; only the gather and the gradient switch on it
        # (the data order, the optimizer and the schedule are traced and compiled once).
        if capacity is None or len(capacities) == 1:
            grads = functools.partial(grads_at, max_b)
        else:  # an unbatched index: one branch runs (a batched one would run them all)
            branches = [functools.partial(grads_at, c) for c in capacities]
            grads = functools.partial(jax.lax.switch, capacity, branches)
        state, _ = jax.lax.scan(
            lambda s, _: (apply_grads(s, *grads(s, data, step_rows(s))), None),
            state, None, length=eval_every)
        return state

    def needs(state: MemberState) -> jax.Array:
        training = state.alive & (state.step < state.budget)
        return jnp.where(training, state.hparams["batch_size"], 0)

    def chunk(state: MemberState, data, capacity=None
              ) -> tuple[MemberState, dict[str, jax.Array]]:
        start = state
        was_active = state.alive & (state.step < state.budget)
        state = run_steps(state, data, capacity)
        # Divergence: a non-finite loss, or non-finite parameters, during this chunk.
        # The member goes back to its state at the start of the chunk (its last
        # evaluated, finite state) and stops there.
        bad = was_active & (state.diverged | ~_all_finite((state.params, state.model_state)))
        state = _tree_where(bad, start, state)._replace(
            alive=state.alive & ~bad, diverged=state.diverged | bad)
        tr_loss, tr_acc = evaluate(state.params, state.model_state, data["x_train"],
                                   data["y_train"])
        va_loss, va_acc = evaluate(state.params, state.model_state, data["x_val"],
                                   data["y_val"])
        improved = was_active & (va_loss < state.best)
        # (a float64 model, under jax_enable_x64, keeps the carried best float32)
        best = jnp.where(improved, va_loss, state.best).astype(state.best.dtype)
        bad = jnp.where(was_active, jnp.where(improved, 0, state.bad_evals + 1), state.bad_evals)
        stop = was_active & state.alive & (bad >= patience) if patience else jnp.zeros((), bool)
        best_params, best_model_state = ((
            _tree_where(improved, state.params, state.best_params),
            _tree_where(improved, state.model_state, state.best_model_state))
            if patience else (None, None))
        state = state._replace(best=best, bad_evals=bad, alive=state.alive & ~stop,
                               stopped=state.stopped | stop, best_params=best_params,
                               best_model_state=best_model_state)
        # Train to a target: a member whose training loss (or accuracy) reached its
        # target ends its budget here, complete (NaN targets: never).
        hp = state.hparams
        reached = tr_loss <= hp["stop_train_loss"]
        if task == "classification":
            reached = reached | (tr_acc >= hp["stop_train_accuracy"])
        state = state._replace(budget=jnp.where(was_active & state.alive & reached,
                                                jnp.minimum(state.step, state.budget),
                                                state.budget))
        metrics = {"train_loss": tr_loss, "val_loss": va_loss, "step": state.step}
        if task == "classification":
            metrics.update(train_accuracy=tr_acc, val_accuracy=va_acc)
        return state, metrics

    def test(state: MemberState, data) -> dict[str, jax.Array]:
        # with early stopping the kept state (best validation loss) is the result
        loss, acc = evaluate(*((state.best_params, state.best_model_state) if patience
                               else (state.params, state.model_state)),
                             data["x_test"], data["y_test"])
        return {"test_loss": loss} if acc is None else {"test_loss": loss, "test_accuracy": acc}

    def train(hparams, key, data):
        state = init(hparams, key)
        return jax.lax.scan(lambda s, _: chunk(s, data), state, None, length=n_chunks)

    def retune(state: MemberState, hparams) -> MemberState:
        hp = {k: jnp.asarray(v, state.hparams[k].dtype) for k, v in hparams.items()}
        opt_state = with_optimizer_hparams(state.opt_state, hp)
        if len(optimizers) > 1:
            # A member whose optimizer family changes starts that family's state afresh:
            # another family's moments would mislead it (nesterov leaves adam's nu at 0).
            fresh = with_optimizer_hparams(optimizer.init(state.params), hp)
            opt_state = _tree_where(hp["optimizer"] != state.hparams["optimizer"], fresh,
                                    opt_state)
        return state._replace(hparams=hp, opt_state=opt_state)

    init, chunk, test, train, train_step = map(_classic_threefry,
                                               (init, chunk, test, train, train_step))
    return MemberProgram(init=init, chunk=chunk, test=test, train=train, train_step=train_step,
                         retune=retune, families=families, max_batch=max_b,
                         metric_names=metric_names, optimizers=optimizers,
                         conv=call.conv, capacities=capacities, needs=needs)
