"""Tests for jaxtune.train (Experiment, make_train) and jaxtune.models."""

from __future__ import annotations

import inspect
import json
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.data import train_arrays as train_data
from jaxtune.experiment import PROGRAM_HPARAMS

RTOL, ATOL = 1e-4, 1e-5


def tiny_mlp(num_outputs=1):
    return jt.models.MLP(width=16, depth=1, num_outputs=num_outputs)


# --------------------------------------------------------------------------- member program


def test_make_train_matches_reference_classification(digits_data, reference):
    """Members under ``jax.jit(jax.vmap(make_train(...).train))``: adamw with a traced
    dropout rate, label smoothing, L2, a cosine schedule with warmup and masked batches of
    16 and 32 (of 32), against the plain optax loop: final parameters and curves agree."""
    exp = jt.Experiment(
        data=digits_data, model=tiny_mlp(10),
        space=jt.Space(lr=jt.Real(1e-4, 1.0, log=True), dropout=jt.Real(0.0, 0.5),
                       batch_size=jt.Choice([16, 32])),
        steps=20, eval_every=10,
        defaults={"optimizer": "adamw", "label_smoothing": 0.1, "l2": 1e-3,
                  "weight_decay": 0.05, "schedule": "cosine", "warmup": 0.1,
                  "end_lr_factor": 0.05, "b1": 0.85})
    configs = [{"lr": 0.01, "dropout": 0.2, "batch_size": 16},
               {"lr": 0.003, "dropout": 0.0, "batch_size": 32}]
    members = [(5, 1), (8, 0)]  # (trial id, replicate)
    static = exp.static_config(configs[0])
    assert static == {"optimizer": "adamw"}
    member = jt.make_train(exp, static)
    assert member.max_batch == 32 and member.families == ("cosine",)
    assert member.metric_names == ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
    hp = exp.member_arrays(configs, static)
    assert set(hp) == set(PROGRAM_HPARAMS)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.key(3), t), r)
                      for t, r in members])
    state, curves = jax.jit(jax.vmap(member.train, in_axes=(0, 0, None)))(
        hp, keys, train_data(digits_data))
    test = jax.jit(jax.vmap(member.test, in_axes=(0, None)))(
        state, {"x_test": digits_data.x_test, "y_test": digits_data.y_test})

    for m, (cfg, (tid, rep)) in enumerate(zip(configs, members)):
        ref = reference(exp, tiny_mlp(10), cfg, seed=3, trial_id=tid, replicate=rep)
        assert int(state.step[m]) == ref["steps"] == 20
        assert not bool(state.diverged[m]) and not bool(state.stopped[m])
        chex.assert_trees_all_close(jax.tree.map(lambda a, m=m: a[m], state.params),
                                    ref["params"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(curves["val_loss"][m], ref["val_curve"], rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(curves["step"][m], [10, 20])
        assert float(curves["val_accuracy"][m, -1]) == pytest.approx(ref["val_accuracy"],
                                                                     abs=1e-6)
        assert float(curves["train_loss"][m, -1]) == pytest.approx(ref["train_loss"], rel=RTOL)
        assert float(test["test_loss"][m]) == pytest.approx(ref["test_loss"], rel=RTOL)
        assert float(test["test_accuracy"][m]) == pytest.approx(ref["test_accuracy"], abs=1e-6)
        # the hyperparameters live in the state (a later chunk can continue from it)
        assert float(state.opt_state.hyperparams["b1"][m]) == pytest.approx(0.85)
        assert float(state.best[m]) == pytest.approx(float(np.min(curves["val_loss"][m])))


def test_chunk_at_every_row_capacity_matches_reference(ts_data, reference):
    """Masked batch sizes 16 and 24 of 64 with a traced dropout rate: a member's chunk at
    every row capacity that holds its batch (16/32/64; the engine runs a group at the
    smallest that holds it) equals the plain optax loop, which draws exactly the
    member's rows, one dropout stream per example."""
    exp = jt.Experiment(
        data=ts_data, model=tiny_mlp(),
        space=jt.Space(lr=jt.Real(1e-4, 1.0, log=True), dropout=jt.Real(0.0, 0.5),
                       batch_size=jt.Int(16, 64)),
        steps=10, eval_every=10, defaults={"optimizer": "adamw", "steps": 10})
    configs = [{"lr": 0.01, "dropout": 0.3, "batch_size": 16},
               {"lr": 0.02, "dropout": 0.1, "batch_size": 24}]
    static = exp.static_config(configs[0])
    member = jt.make_train(exp, static)
    assert member.capacities == (16, 32, 64) and member.max_batch == 64
    assert jt.make_train(exp, static, own_batch=False).capacities == (64,)
    hp = exp.member_arrays(configs, static)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.key(1), t), 0)
                      for t in range(2)])
    state = jax.jit(jax.vmap(member.init))(hp, keys)
    np.testing.assert_array_equal(jax.vmap(member.needs)(state), [16, 24])
    chunk = jax.jit(jax.vmap(member.chunk, in_axes=(0, None, None)))
    refs = [reference(exp, tiny_mlp(), c, seed=1, trial_id=t) for t, c in enumerate(configs)]
    for index, capacity in enumerate(member.capacities):
        out, metrics = chunk(state, train_data(ts_data), jnp.int32(index))
        for m, (cfg, ref) in enumerate(zip(configs, refs)):
            if capacity < cfg["batch_size"]:
                continue
            chex.assert_trees_all_close(jax.tree.map(lambda a, m=m: a[m], out.params),
                                        ref["params"], rtol=RTOL, atol=ATOL)
            assert float(metrics["val_loss"][m]) == pytest.approx(ref["val_curve"][0],
                                                                  rel=RTOL)
    # a member whose budget is spent needs no rows
    np.testing.assert_array_equal(jax.vmap(member.needs)(out), [0, 0])


def test_learning_rate_scaling_rule_matches_reference(digits_data, reference):
    """lr * (batch_size / reference_batch_size) ** k with k traced (none, square-root and
    linear scaling in one population) and warmup, against the plain optax loop whose
    schedule applies the rule in float64."""
    exp = jt.Experiment(
        data=digits_data, model=tiny_mlp(10),
        space=jt.Space(lr=jt.Real(1e-4, 1.0, log=True), lr_scaling=jt.Real(0.0, 1.0),
                       batch_size=jt.Choice([8, 32])),
        steps=20, eval_every=10,
        defaults={"optimizer": "sgd", "reference_batch_size": 16, "warmup": 0.2,
                  "schedule": "linear"})
    configs = [{"lr": 0.05, "lr_scaling": k, "batch_size": b}
               for k, b in ((0.0, 32), (0.5, 32), (1.0, 8))]
    static = exp.static_config(configs[0])
    member = jt.make_train(exp, static)
    hp = exp.member_arrays(configs, static)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.key(3), t), 0)
                      for t in range(3)])
    state, _ = jax.jit(jax.vmap(member.train, in_axes=(0, 0, None)))(
        hp, keys, train_data(digits_data))
    for m, cfg in enumerate(configs):
        ref = reference(exp, tiny_mlp(10), cfg, seed=3, trial_id=m, replicate=0)
        chex.assert_trees_all_close(jax.tree.map(lambda a, m=m: a[m], state.params),
                                    ref["params"], rtol=RTOL, atol=ATOL)
    # the rule changes training: k = 0.5 at twice the reference batch is a larger step
    assert not np.allclose(jax.tree.leaves(state.params)[0][0],
                           jax.tree.leaves(state.params)[0][1])


def test_traced_optimizer_family_matches_reference(digits_data, reference, member):
    """A traced optimizer Choice: one bucket, one compiled program holding the union of
    adamw, nesterov and lion; each member trains exactly as the plain optax loop of its
    own family, with that family's own defaults (adamw decays weights by 1e-4 and
    lion by 1e-3, nesterov not at all) since the space leaves them unset."""
    exp = jt.Experiment(
        data=digits_data, model=tiny_mlp(10),
        space=jt.Space(lr=jt.Real(1e-4, 1.0, log=True),
                       optimizer=jt.Choice(["adamw", "nesterov", "lion"])),
        steps=20, eval_every=10, defaults={"batch_size": 16, "schedule": "cosine"})
    assert exp.buckets() == [{}] and exp.optimizer_families({}) == ("adamw", "nesterov", "lion")
    configs = [{"lr": 0.01, "optimizer": "adamw"}, {"lr": 0.05, "optimizer": "nesterov"},
               {"lr": 0.001, "optimizer": "lion"}, {"lr": 0.003, "optimizer": "adamw"}]
    arrays = exp.member_arrays(configs, {})
    np.testing.assert_array_equal(arrays["optimizer"], [0, 1, 2, 0])
    for k in ("weight_decay", "momentum"):
        want = [jt.optimizers.family_defaults(c["optimizer"]).get(k, 0.0) for c in configs]
        np.testing.assert_allclose(arrays[k], want)
    assert arrays["weight_decay"][1] == 0.0 and arrays["weight_decay"][0] > 0.0
    programs = jt.Programs(exp)
    res = jt.train_population(exp, configs, seed=4, progress=False, programs=programs)
    assert res.compiles == 1 and len(res.buckets) == 1
    assert res.status == ["complete"] * 4
    for t, cfg in enumerate(configs):
        ref = reference(exp, tiny_mlp(10), cfg, seed=4, trial_id=t)
        i = member(res, t)
        assert res.configs[i]["optimizer"] == cfg["optimizer"]
        np.testing.assert_allclose(res.curves["val_loss"][i], ref["val_curve"], rtol=RTOL,
                                   atol=ATOL)
        np.testing.assert_allclose(res.final["test_loss"][i], ref["test_loss"], rtol=RTOL,
                                   atol=ATOL)
    # the families trained differently (the comparison is not vacuous)
    finals = [res.final["val_loss"][member(res, t)] for t in range(3)]
    assert len({round(float(v), 4) for v in finals}) == 3
    # a traced Choice of one family is that family alone; static=True is a bucket per family
    one = make_exp(digits_data, jt.Space(optimizer=jt.Choice(["lion"])))
    assert one.buckets() == [{}] and one.optimizer_families({}) == ("lion",)
    assert one.member_arrays([{"optimizer": "lion"}], {})["b2"][0] == pytest.approx(0.99)
    static = make_exp(digits_data, jt.Space(optimizer=jt.Choice(["adamw", "nesterov"],
                                                                static=True)))
    assert static.buckets() == [{"optimizer": "adamw"}, {"optimizer": "nesterov"}]
    assert static.optimizer_families({"optimizer": "nesterov"}) == ("nesterov",)


def test_retune_to_another_optimizer_family_starts_it_afresh(ts_data):
    """Population-based training may change a member's family: the member keeps its
    parameters and, for the same family, its optimizer state; for a new family it
    starts from that family's fresh state (no other family's moments)."""
    exp = jt.Experiment(
        data=ts_data, model=tiny_mlp(),
        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                       optimizer=jt.Choice(["nesterov", "adamw"])),
        steps=10, eval_every=10, defaults={"batch_size": 16})
    member = jt.make_train(exp, {})
    data = train_data(ts_data)
    hp = exp.member_arrays([{"lr": 0.05, "optimizer": "nesterov"}], {})
    one = {k: v[0] for k, v in hp.items()}
    state, _ = jax.jit(member.chunk)(jax.jit(member.init)(one, jax.random.key(0)), data)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(state.opt_state.inner_state))
    for family, fresh in (("nesterov", False), ("adamw", True)):
        new = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01, "optimizer": family}],
                                                     {}).items()}
        moved = jax.jit(member.retune)(state, new)
        chex.assert_trees_all_equal(moved.params, state.params)
        assert int(moved.opt_state.hyperparams["family"]) == int(new["optimizer"])
        assert float(moved.opt_state.hyperparams["weight_decay"]) == float(new["weight_decay"])
        want = member.init(new, jax.random.key(1)).opt_state.inner_state if fresh else \
            state.opt_state.inner_state
        chex.assert_trees_all_equal(moved.opt_state.inner_state, want)


def test_traced_optimizer_study_one_population(ts_data, tmp_path):
    """A study over a traced optimizer family runs one population (one bucket, one
    compile) and stores each trial's family by name; per-family defaults reach the
    members (adamw's decoupled decay is used, nesterov's coupled decay is not)."""
    exp = jt.Experiment(
        data=ts_data, model=tiny_mlp(),
        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                       optimizer=jt.Choice(["adamw", "nesterov"])),
        steps=10, eval_every=10, defaults={"batch_size": 16})
    assert exp.uses("weight_decay", {}) and exp.uses("weight_decay", {"optimizer": "adamw"})
    assert not exp.uses("weight_decay", {"optimizer": "nesterov"})
    db = tmp_path / "runs.db"
    study = jt.Study(exp, searcher="random", store=db, population=4, top_k=0, verbose=False,
                     progress=False, seed=1)
    result = study.run(trials=8)
    assert result.n_complete == 8
    with jt.Store(db, readonly=True) as s:
        sid = s.study("default")["id"]
        trials = s.trials(sid)
        assert {b["populations"] for b in s.batches(sid)} == {1}
        assert sum(b["compiles"] for b in s.batches(sid)) == 1
    assert {t.config["optimizer"] for t in trials} == {"adamw", "nesterov"}
    assert all(t.status == "complete" for t in trials)


class Linear(nn.Module):
    """A user module whose ``__call__`` takes neither ``train`` nor ``dropout_rate``."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)


def test_user_module_without_call_kwargs(ts_data, reference, member):
    exp = jt.Experiment(data=ts_data, model=Linear(), space=jt.Space(lr=jt.Real(1e-3, 1.0)),
                        steps=20, eval_every=10,
                        defaults={"optimizer": "sgd", "batch_size": 16, "schedule": "linear"})
    res = jt.train_population(exp, [{"lr": 0.05}, {"lr": 0.2}], seed=1, progress=False)
    assert res.status == ["complete", "complete"]
    for t, lr in enumerate((0.05, 0.2)):
        i = member(res, t)
        assert res.curves["val_loss"][i][-1] < res.curves["val_loss"][i][0]
        ref = reference(exp, Linear(), {"lr": lr}, seed=1, trial_id=t)
        np.testing.assert_allclose(res.final["val_loss"][i], ref["val_loss"], rtol=RTOL,
                                   atol=ATOL)
    assert "val_accuracy" not in res.curves  # regression


class FlaxDropoutMLP(nn.Module):
    """A standard Flax module: ``nn.Dropout`` driven by a ``train`` (or ``deterministic``)
    call argument and the ``"dropout"`` RNG stream."""

    flag: str = "train"

    @nn.compact
    def __call__(self, x, **kwargs):
        deterministic = (not kwargs.get("train", False) if self.flag == "train"
                         else kwargs.get("deterministic", True))
        h = nn.relu(nn.Dense(16)(x))
        h = nn.Dropout(rate=0.3, deterministic=deterministic)(h)
        return nn.Dense(1)(h)


class TrainFlagMLP(FlaxDropoutMLP):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return FlaxDropoutMLP.__call__.__wrapped__(self, x, train=train)


class DeterministicFlagMLP(FlaxDropoutMLP):
    flag: str = "deterministic"

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return FlaxDropoutMLP.__call__.__wrapped__(self, x, deterministic=deterministic)


@pytest.mark.parametrize("module", [TrainFlagMLP(), DeterministicFlagMLP()])
def test_standard_flax_dropout_conventions(ts_data, reference, module):
    """`train`/`deterministic` flags are set and a "dropout" stream is passed while
    training (one batch size, so the engine's masks have the reference's shape)."""
    exp = jt.Experiment(data=ts_data, model=module, space=jt.Space(lr=jt.Real(1e-3, 1.0)),
                        steps=20, eval_every=10,
                        defaults={"optimizer": "sgd", "batch_size": 16})
    res = jt.train_population(exp, [{"lr": 0.05}], seed=2, progress=False)
    assert res.status == ["complete"]
    ref = reference(exp, module, {"lr": 0.05}, seed=2, trial_id=0)
    np.testing.assert_allclose(res.final["val_loss"][0], ref["val_loss"], rtol=RTOL, atol=ATOL)


def test_searched_dropout_needs_a_dropout_rate_argument(ts_data):
    exp = jt.Experiment(data=ts_data, model=TrainFlagMLP(),
                        space=jt.Space(lr=jt.Real(1e-3, 1.0), dropout=jt.Real(0.0, 0.5)),
                        steps=10, eval_every=10, defaults={"batch_size": 16})
    programs = jt.Programs(exp)
    with pytest.raises(ValueError, match="dropout_rate"):
        jt.train_population(exp, [{"lr": 0.05, "dropout": 0.1}], progress=False,
                            programs=programs)
    assert programs.compiles == 0


# --------------------------------------------------------------------------- Experiment


def make_exp(data, space, **kw):
    kw.setdefault("steps", 10)
    kw.setdefault("eval_every", 10)
    return jt.Experiment(data=data, model=kw.pop("model", tiny_mlp()), space=space, **kw)


@pytest.mark.parametrize(("space", "kwargs", "match"), [
    (jt.Space(width=jt.Choice([8, 16])), {}, "'width'"),
    (jt.Space(optimizer=jt.Choice(["adam", "sgdd"])), {}, "'optimizer'"),
    (jt.Space(optimizer=jt.Choice(["adam", "sgdd"], static=True)), {}, "'optimizer'"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"defaults": {"optimizer": "adagrad"}}, "'optimizer'"),
    (jt.Space(schedule=jt.Choice(["cosine", "warp"])), {}, "schedule family 'warp'"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"defaults": {"schedule": "warp"}}, "'warp'"),
    (jt.Space(batch_size=jt.Choice([8, 1000])), {}, "'batch_size'"),
    (jt.Space(batch_size=jt.Int(8, 64)), {"batch_mode": "bucketed"}, "batch_size"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"max_batch_size": 10_000}, "max_batch_size"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"batch_mode": "padded"}, "batch_mode"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"steps": 0}, "steps"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"eval_every": 0}, "eval_every"),
    (jt.Space(lr=jt.Real(1e-3, 1.0)), {"patience": 0}, "patience"),
])
def test_experiment_validation(ts_data, space, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_exp(ts_data, space, **kwargs)


def test_experiment_type_errors(ts_data):
    with pytest.raises(ValueError, match="Space"):
        make_exp(ts_data, {"lr": jt.Real(1e-3, 1.0)})
    with pytest.raises(ValueError, match="Dataset"):
        make_exp({"x": 1}, jt.Space(lr=jt.Real(1e-3, 1.0)))
    exp = make_exp(ts_data, jt.Space(width=jt.Choice([8, 16], static=True)),
                   model=lambda hp: "not a module")
    with pytest.raises(ValueError, match="flax"):
        exp.build_model({"width": 8})


@pytest.mark.parametrize(("defaults", "match"), [
    ({"dropout": 1.0}, "'dropout'"),
    ({"lr": math.nan}, "'lr'"),
    ({"steps": 11}, "'steps'"),
    ({"lr_scaling": math.nan}, "'lr_scaling'"),
    ({"reference_batch_size": 0}, "'reference_batch_size'"),
])
def test_member_values_rejected_before_compiling(ts_data, defaults, match):
    exp = make_exp(ts_data, jt.Space(batch_size=jt.Int(4, 16)), defaults=defaults)
    with pytest.raises(ValueError, match=match):
        jt.train_population(exp, [{"batch_size": 8}], progress=False)
    assert jt.Programs.default(exp).compiles == 0


def test_experiment_resolution(ts_data):
    space = jt.Space(lr=jt.Real(1e-3, 1.0, log=True), width=jt.Choice([8, 16], static=True),
                     batch_size=jt.Choice([8, 32]))
    exp = make_exp(ts_data, space, model=lambda hp: tiny_mlp(), steps=25,
                   defaults={"depth": 2, "clip_norm": math.inf, "optimizer": "lion"})
    assert exp.static_names == ("width",)
    assert exp.max_batch_size == 32
    assert not exp.uses_epochs
    hp = exp.resolve({"lr": 0.1, "width": 8, "batch_size": 8})
    assert hp["steps"] == 25 and hp["lr"] == 0.1 and hp["optimizer"] == "lion"
    # an unset optimizer hyperparameter takes the family's own optax default
    assert hp["b2"] == inspect.signature(optax.lion).parameters["b2"].default == 0.99
    assert hp["weight_decay"] == inspect.signature(optax.lion).parameters["weight_decay"].default
    # model factory sees static values plus model defaults, and the optimizer
    assert exp.static_config({"lr": 0.1, "width": 8, "batch_size": 8}) == {
        "depth": 2, "width": 8, "optimizer": "lion"}
    spec = json.loads(json.dumps(exp.spec()))
    assert spec["space"] == space.spec() and spec["steps"] == 25
    assert spec["defaults"]["clip_norm"] == "inf"
    arrays = exp.member_arrays([{"lr": 0.1, "width": 8, "batch_size": 8}],
                               {"width": 8, "optimizer": "lion"})
    assert arrays["batch_size"].dtype == np.int32 and arrays["lr"].dtype == np.float32
    assert np.isnan(arrays["epochs"][0]) and arrays["steps"][0] == 25


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("model", [
    jt.models.Logistic(num_outputs=10),
    jt.models.MLP(width=16, depth=2, num_outputs=10),
    jt.models.MLP(width=16, depth=3, num_outputs=10, residual=True, activation="gelu"),
    jt.models.CNN2D(channels=4, num_outputs=10),
])
def test_model_output_shapes_on_digits(model, digits_data):
    x = digits_data.x_train[:5]
    variables = jax.jit(model.init)(jax.random.key(0), x)
    out = jax.jit(model.apply)(variables, x)
    assert out.shape == (5, 10) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))


def test_cnn1d_output_shape_mnist1d_like():
    model = jt.models.CNN1D(channels=5, num_outputs=10)
    x = jax.random.normal(jax.random.key(1), (3, 40))
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def run(variables, x):
        return model.apply(variables, x), model.apply(variables, x, train=True,
                                                      dropout_rate=0.5,
                                                      rngs={"dropout": jax.random.key(2)})

    plain, dropped = run(variables, x)
    assert plain.shape == dropped.shape == (3, 10)
    assert not np.allclose(plain, dropped)


def test_dropout_rate_zero_is_deterministic(digits_data):
    model = jt.models.MLP(width=32, depth=2, num_outputs=10)
    x = digits_data.x_train[:8]
    variables = jax.jit(model.init)(jax.random.key(0), x)
    plain = jax.jit(model.apply)(variables, x)

    @jax.jit
    def run(rate, key):
        return model.apply(variables, x, train=True, dropout_rate=rate, rngs={"dropout": key})

    # a Python zero skips dropout entirely
    np.testing.assert_array_equal(
        jax.jit(lambda v: model.apply(v, x, train=True, dropout_rate=0.0))(variables), plain)
    # a traced zero draws a mask but keeps everything
    np.testing.assert_allclose(run(jnp.float32(0.0), jax.random.key(1)), plain, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(run(jnp.float32(0.0), jax.random.key(2)), plain, rtol=1e-5,
                               atol=1e-6)
    a, b = run(jnp.float32(0.5), jax.random.key(1)), run(jnp.float32(0.5), jax.random.key(2))
    assert not np.allclose(a, plain) and not np.allclose(a, b)


def test_dropout_function():
    x = jnp.ones(20_000)
    y = jt.models.dropout(x, 0.25, jax.random.key(0))
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(jt.models.dropout(x, 0.0, jax.random.key(0)), x)


def test_unknown_activation():
    model = jt.models.MLP(width=4, activation="swishy")
    with pytest.raises(ValueError, match="'activation'"):
        model.init(jax.random.key(0), jnp.zeros((1, 3)))


@pytest.mark.parametrize(("data", "outputs", "match"), [
    ("digits", 5, r"shape \(1, 5\).*10 logits per example"),
    ("ts", 2, r"shape \(1, 2\).*one output per example"),
])
def test_model_output_checked_before_compiling(digits_data, ts_data, data, outputs, match):
    ds = digits_data if data == "digits" else ts_data
    exp = jt.Experiment(data=ds, model=jt.models.MLP(width=4, num_outputs=outputs),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10,
                        eval_every=10, defaults={"batch_size": 8})
    programs = jt.Programs(exp)
    with pytest.raises(ValueError, match=match):
        jt.train_population(exp, [{"lr": 0.01}], progress=False, programs=programs)
    assert programs.compiles == 0


def test_programs_cache_is_per_experiment_and_shared(ts_data):
    make = lambda: jt.Experiment(data=ts_data, model=jt.models.MLP(width=4, num_outputs=1),
                                 space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10,
                                 eval_every=10, defaults={"batch_size": 8})
    exp, other = make(), make()
    programs = jt.Programs(exp)
    a = jt.train_population(exp, [{"lr": 0.01}], progress=False, programs=programs)
    b = jt.train_population(exp, [{"lr": 0.02}], progress=False, programs=programs)
    assert (a.compiles, b.compiles, programs.compiles) == (1, 0, 1)
    assert programs.compile_s > 0
    with pytest.raises(ValueError, match="another Experiment"):
        jt.train_population(other, [{"lr": 0.01}], progress=False, programs=programs)
    # the process-wide default cache holds experiments weakly
    import gc
    import weakref

    ref = weakref.ref(other)
    jt.Programs.default(other)
    del other
    gc.collect()
    assert ref() is None
