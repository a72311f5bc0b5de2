"""Shared fixtures for the jaxtune tests: small CPU datasets, shared experiments and
an independent plain-optax reference of one member's training run.

Compiling a bucket program costs seconds on CPU, so the datasets and the
experiments most tests use are session-scoped: their compiled programs (cached
per :class:`~jaxtune.Experiment` object and population size) are reused by every
test of a worker. Tests that count compiles build their own experiment.

XLA's LLVM backend optimisations make up most of the compile time of these tiny
programs and buy nothing at this size, so unless ``XLA_FLAGS`` already chooses a
level (or ``JAXTUNE_TEST_FAST_COMPILE=0``), the tests run with
``--xla_backend_optimization_level=0``. The flag must be set before the XLA
backend starts, hence before anything below runs JAX code.
"""

from __future__ import annotations

import os

_OPT_FLAG = "--xla_backend_optimization_level"
if os.environ.get("JAXTUNE_TEST_FAST_COMPILE", "1") != "0" and _OPT_FLAG not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_OPT_FLAG}=0".strip()
# population sizes measured by a test (population="auto") stay out of the user's cache
if "JAXTUNE_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAXTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxtune-test-cache-")
# A shell starts background jobs (`cmd &`, nohup) with Ctrl-C ignored, and processes
# inherit that: the Ctrl-C tests need the handler a foreground run has (the children
# they start then get the default disposition again).
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import math  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from shuffle_reference import shuffle_rows  # noqa: E402

import jaxtune as jt  # noqa: E402

# --------------------------------------------------------------------------- datasets


@pytest.fixture(scope="session")
def ts_data() -> jt.data.Dataset:
    """Teacher-student regression: 230 train, 26 validation, 64 test rows of dim 8."""
    return jt.data.teacher_student(n_train=256, n_test=64, dim=8)


@pytest.fixture(scope="session")
def digits_data() -> jt.data.Dataset:
    """scikit-learn digits (64 features, 10 classes)."""
    return jt.data.digits()


# --------------------------------------------------------------------------- experiments



@pytest.fixture(scope="session")
def basic_exp(ts_data) -> jt.Experiment:
    """Momentum SGD on the regression task with traced lr, batch size and step budget.

    The lr range reaches absurd values on purpose (divergence tests). Population
    sizes 2, 3 and 4 are used by several tests, so their programs are shared.
    """
    return jt.Experiment(
        data=ts_data,
        model=jt.models.MLP(width=16, depth=1, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-4, 1e7, log=True), batch_size=jt.Int(4, 32),
                       steps=jt.Int(1, 30)),
        steps=30, eval_every=10,
        defaults={"optimizer": "momentum", "momentum": 0.9},
        name="basic")


# --------------------------------------------------------------------------- reference
# An independent re-implementation of one member's run, written from the documented
# semantics (jaxtune/train.py, jaxtune/optimizers.py, jaxtune/schedules.py): keys derived
# with plain jax.random calls, a numpy float64 learning-rate schedule, a hand-written
# loss, gradient clipping and coupled weight decay, and the plain optax optimizers.


def np_schedule(hp: Mapping[str, Any], budget: int, length: int,
                boundaries: tuple[float, ...] = (0.5, 0.75)) -> np.ndarray:
    """Learning rate at steps ``0..length-1`` (float64), for the engine's families."""
    total = float(budget)
    warm = float(np.round(hp["warmup"] * total))
    decay = max(total - warm, 1.0)
    # the scaling rule: lr * (batch_size / reference_batch_size) ** lr_scaling
    scale = (float(hp["batch_size"]) / float(hp.get("reference_batch_size", 128))
             ) ** float(hp.get("lr_scaling", 0.0))
    peak = float(hp["lr"]) * scale
    end = peak * float(hp["end_lr_factor"])
    family = hp["schedule"]
    out = np.empty(length)
    for s in range(length):
        t = s - warm

        def after(t: float) -> float:
            frac = min(max(t / decay, 0.0), 1.0)
            if family == "constant":
                return peak
            if family == "linear":
                return peak + (end - peak) * frac
            if family == "cosine":
                return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
            if family == "exponential":
                return peak * float(hp["decay_rate"]) ** frac
            if family == "step":
                return peak * math.prod(float(hp["step_factor"]) for f in boundaries
                                        if t >= f * decay)
            raise NotImplementedError(family)

        out[s] = after(0.0) * min(max(s / max(warm, 1.0), 0.0), 1.0) if s < warm else after(t)
    return out


# Optimizer hyperparameters a configuration leaves unset take the optax function's own
# default, read here from optax's signatures: (optax function, {engine name: optax name}).
_OPTAX_NAMES = {"adam": ("adam", {"b1": "b1", "b2": "b2", "eps": "eps"}),
                "adamw": ("adamw", {"b1": "b1", "b2": "b2", "eps": "eps",
                                    "weight_decay": "weight_decay"}),
                "rmsprop": ("rmsprop", {"b2": "decay", "eps": "eps", "momentum": "momentum"}),
                "lion": ("lion", {"b1": "b1", "b2": "b2", "weight_decay": "weight_decay"})}


def with_optax_defaults(hp: dict[str, Any]) -> dict[str, Any]:
    """Fills unset (None) optimizer hyperparameters from optax's signatures."""
    import inspect

    fn, names = _OPTAX_NAMES.get(hp["optimizer"], (None, {}))
    params = inspect.signature(getattr(optax, fn)).parameters if fn else {}
    generic = {"momentum": 0.9 if hp["optimizer"] in ("momentum", "nesterov") else 0.0,
               "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_norm": math.inf}
    out = dict(hp)
    for k, v in generic.items():
        if out.get(k) is None:
            out[k] = (params[names[k]].default or 0.0) if k in names else v
    return out


def budget_of(hp: Mapping[str, Any], max_steps: int, n_train: int) -> int:
    if hp.get("epochs") is not None:
        return int(min(max(math.ceil(hp["epochs"] * n_train / hp["batch_size"]), 1), max_steps))
    return int(min(hp["steps"], max_steps))


def plain_optax(family: str, hp: Mapping[str, Any], lr) -> optax.GradientTransformation:
    """The plain optax optimizer of ``family`` (weight decay handled per the docs)."""
    if family == "sgd":
        return optax.sgd(lr)
    if family in ("momentum", "nesterov"):
        return optax.sgd(lr, momentum=hp["momentum"], nesterov=family == "nesterov")
    if family == "adam":
        return optax.adam(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
    if family == "adamw":
        return optax.adamw(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
                           weight_decay=hp["weight_decay"])
    if family == "rmsprop":
        return optax.rmsprop(lr, decay=hp["b2"], eps=hp["eps"], momentum=hp["momentum"])
    if family == "lion":
        return optax.lion(lr, b1=hp["b1"], b2=hp["b2"], weight_decay=hp["weight_decay"])
    raise NotImplementedError(family)


COUPLED_DECAY = ("sgd", "momentum", "nesterov", "adam", "rmsprop")


def _per_example(out, y, smoothing, task, num_classes):
    if task == "regression":
        return (out[:, 0] - y) ** 2
    logp = jax.nn.log_softmax(out, axis=-1)
    target = jax.nn.one_hot(y, num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return -jnp.sum(target * logp, axis=-1)


_STEP_FNS: dict[tuple, Any] = {}


def _ref_step_fn(module, family: str, task: str, num_classes: int, dropout: bool):
    """A jitted reference step on a given minibatch; hyperparameters are arguments.

    The minibatch holds exactly ``batch_size`` rows and the loss is their plain
    mean. Example ``j`` of the step is its own batch of one, with the dropout stream
    ``fold_in(dropout key, j)`` (jaxtune.batches).
    """
    cache_key = (module, family, task, num_classes, dropout)
    if cache_key in _STEP_FNS:
        return _STEP_FNS[cache_key]
    import inspect

    call = inspect.signature(type(module).__call__).parameters

    def loss_fn(params, x, y, w, hp, k_drop):
        # every example is its own batch of one (modules that draw no masks are
        # unaffected by it)
        def one(xj, j):
            return apply(params, xj[None], hp, jax.random.fold_in(k_drop, j))[0]

        out = jax.vmap(one)(x, jnp.arange(x.shape[0]))
        per = _per_example(out, y, hp["label_smoothing"], task, num_classes)
        sq = sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
        return jnp.sum(w * per) + 0.5 * hp["l2"] * sq

    def apply(params, x, hp, k_drop):
        if "dropout_rate" in call and dropout:
            out = module.apply(params, x, train=True, dropout_rate=hp["dropout"],
                               rngs={"dropout": k_drop})
        elif "train" in call:
            out = module.apply(params, x, train=True, rngs={"dropout": k_drop})
        elif "deterministic" in call:
            out = module.apply(params, x, deterministic=False, rngs={"dropout": k_drop})
        else:
            out = module.apply(params, x, rngs={"dropout": k_drop})
        return out

    @jax.jit
    def step(params, opt_state, s, train_key, hp, lr_table, x, y, w):
        k_drop = jax.random.split(jax.random.fold_in(train_key, s))[1]
        loss, g = jax.value_and_grad(loss_fn)(params, x, y, w, hp, k_drop)
        gnorm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g)))
        scale = jnp.minimum(1.0, hp["clip_norm"] / gnorm)        # inf disables clipping
        g = jax.tree.map(lambda v: v * scale, g)
        if family in COUPLED_DECAY:
            g = jax.tree.map(lambda v, p: v + hp["weight_decay"] * p, g, params)
        tx = plain_optax(family, hp, lambda count: lr_table[count])
        updates, opt_state = tx.update(g, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return new_params, opt_state, loss

    def init_opt(params, hp):
        return plain_optax(family, hp, lambda count: 0.0).init(params)

    _STEP_FNS[cache_key] = (step, init_opt)
    return step, init_opt


def reference_rows(order: str, train_key, step: int, seen: int, batch_size: int,
                   max_batch: int, n: int) -> np.ndarray:
    """The training rows of one step, from the documented data orders (jaxtune.batches):
    ``replacement`` draws row ``j`` as ``randint(fold_in(split(fold_in(key, step))[0], j),
    (), 0, n)``;
    ``shuffle`` walks one permutation per epoch (:func:`shuffle_rows`) from example
    position ``seen``; ``full_batch`` is every row."""
    if order == "full_batch":
        return np.arange(n)
    if order == "replacement":
        k = jax.random.split(jax.random.fold_in(train_key, step))[0]
        return np.asarray([jax.random.randint(jax.random.fold_in(k, j), (), 0, n)
                           for j in range(batch_size)])
    return shuffle_rows(train_key, seen, batch_size, n)


_EVAL_FNS: dict[tuple, Any] = {}


def _evaluate(module, params, x, y, task: str, num_classes: int) -> tuple[float, float]:
    """Mean loss (no smoothing) and accuracy (classification; NaN otherwise)."""
    cache_key = (module, task, num_classes)
    if cache_key not in _EVAL_FNS:
        def fn(params, x, y):
            out = module.apply(params, x)  # flags default to evaluation (no dropout)
            loss = jnp.mean(_per_example(out, y, 0.0, task, num_classes))
            acc = jnp.mean(jnp.argmax(out, -1) == y) if task == "classification" else jnp.nan
            return loss, acc
        _EVAL_FNS[cache_key] = jax.jit(fn)
    loss, acc = _EVAL_FNS[cache_key](params, x, y)
    return float(loss), float(acc)


def reference_run(exp: jt.Experiment, module, config: Mapping[str, Any], *, seed: int,
                  trial_id: int, replicate: int = 0, max_batch: int | None = None
                  ) -> dict[str, Any]:
    """Trains one member alone with a plain Python loop (see the module docstring).

    Returns ``params``, ``steps`` taken, ``diverged``, the step ``budget``, the
    ``val_curve`` (validation loss at every evaluation) and ``{split}_loss`` /
    ``{split}_accuracy`` of the final parameters for the train, val and test splits.
    """
    hp = with_optax_defaults({**jt.DEFAULTS, "steps": exp.steps, **exp.defaults, **config})
    max_b = int(max_batch or exp.max_batch_size or hp["batch_size"])

    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), trial_id), replicate)
    # The member program draws its randomness with the classic (non-partitionable)
    # threefry lowering (jaxtune.train._classic_threefry); split/randint/dropout masks
    # depend on that mode, so the reference draws in the same mode.
    with jax.threefry_partitionable(False):
        return _reference_loop(exp, module, hp, key, max_b)


def _reference_loop(exp, module, hp, key, max_b):
    ds = exp.data
    family = hp["optimizer"]
    if exp.data_order == "full_batch":
        hp = {**hp, "batch_size": ds.n_train}
    budget = budget_of(hp, exp.steps, ds.n_train)
    n_chunks = -(-exp.steps // exp.eval_every)
    length = n_chunks * exp.eval_every
    lr_table = jnp.asarray(np_schedule(hp, budget, length, tuple(exp.step_boundaries)),
                           jnp.float32)
    dropout = "dropout" in exp.space or hp["dropout"] != 0
    init_key, train_key = jax.random.split(key)
    params = module.init(init_key, ds.x_train[:1])
    num = {k: jnp.float32(hp[k]) for k in ("momentum", "b1", "b2", "eps", "weight_decay",
                                           "clip_norm", "l2", "label_smoothing", "dropout")}
    step, init_opt = _ref_step_fn(module, family, ds.task, ds.num_classes, dropout)
    opt_state = init_opt(params, {k: float(v) for k, v in num.items()})
    b = int(hp["batch_size"])
    x_train, y_train = np.asarray(ds.x_train), np.asarray(ds.y_train)
    taken, seen, diverged, val_curve = 0, 0, False, []
    start = (params, opt_state, taken, seen)  # the state at the start of the chunk
    for s in range(length):
        if taken < budget and not diverged:
            rows = reference_rows(exp.data_order, train_key, taken, seen, b, max_b, ds.n_train)
            w = np.full(len(rows), 1.0 / len(rows))
            new_params, new_opt, loss = step(params, opt_state, taken, train_key, num,
                                             lr_table, x_train[rows], y_train[rows],
                                             jnp.asarray(w, jnp.float32))
            if bool(jnp.isfinite(loss)):
                params, opt_state, taken, seen = new_params, new_opt, taken + 1, seen + b
            else:
                diverged = True
        if (s + 1) % exp.eval_every == 0:
            # divergence (a non-finite loss, or non-finite parameters) in this chunk:
            # back to the state at its start, and stop there
            finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params))
            if diverged or not finite:
                (params, opt_state, taken, seen), diverged = start, True
            start = (params, opt_state, taken, seen)
            val_curve.append(_evaluate(module, params, ds.x_val, ds.y_val, ds.task,
                                       ds.num_classes)[0])
    out = {"params": params, "steps": taken, "diverged": diverged, "budget": budget,
           "val_curve": np.asarray(val_curve)}
    for split in ("train", "val", "test"):
        loss, acc = _evaluate(module, params, getattr(ds, f"x_{split}"),
                              getattr(ds, f"y_{split}"), ds.task, ds.num_classes)
        out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
    return out


@pytest.fixture(scope="session")
def reference():
    """The :func:`reference_run` function (fixtures keep tests free of conftest imports)."""
    return reference_run


def member_index(result: jt.PopulationResult, trial_id: int, replicate: int = 0,
                 status: str | None = None) -> int:
    hits = [i for i, (t, r) in enumerate(zip(result.trial_ids, result.replicates))
            if t == trial_id and r == replicate and (status is None or result.status[i] == status)]
    assert len(hits) == 1, (trial_id, replicate, hits)
    return hits[0]


@pytest.fixture(scope="session")
def member():
    """``member(result, trial_id, replicate=0)``: the record index of a member."""
    return member_index
