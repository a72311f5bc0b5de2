"""Models with state and training details, each against a plain Flax/optax loop.

The reference below is written from the documented semantics (jaxtune/batches.py,
jaxtune/train.py): a member's key splits into its init key and its training key, the
shuffle order is a permutation per epoch, the loss is the batch mean plus the L2
penalty on the ``params`` collection only, and ``nn.BatchNorm`` is called the Flax
way (``mutable=["batch_stats"]`` while training, running averages in evaluation).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from shuffle_reference import shuffle_rows

import jaxtune as jt

RTOL, ATOL = 2e-4, 2e-5


class BNNet(nn.Module):
    """Dense -> BatchNorm -> relu -> Dense, the standard Flax train/eval convention."""

    use_running_average: bool | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(12, use_bias=False)(x.reshape(x.shape[0], -1))  # BN cancels a bias
        ura = not train if self.use_running_average is None else self.use_running_average
        h = nn.relu(nn.BatchNorm(use_running_average=ura, momentum=0.8)(h))
        return nn.Dense(10)(h)


@pytest.fixture(scope="module")
def small_digits():
    ds = jt.data.digits()
    return jt.data.arrays(ds.x_train[:400], ds.y_train[:400], ds.x_test[:100],
                          ds.y_test[:100], name="digits400")


def plain_loop(*args, **kwargs):
    """One member trained by a plain Flax/optax loop (adamw; classification), its random
    draws with the classic threefry lowering as jaxtune's programs."""
    with jax.threefry_partitionable(False):
        return _plain_loop(*args, **kwargs)


def _plain_loop(module, data, key, *, lr, batch, steps, eval_every, weight_decay=0.0, l2=0.0,
                augment=None, compute=None):
    x, y, n = data["x_train"], data["y_train"], data["x_train"].shape[0]
    init_key, train_key = jax.random.split(key)
    variables = module.init(init_key, x[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adamw(lr, weight_decay=weight_decay)
    opt_state = tx.init(params)
    cast = ((lambda t: t) if compute is None
            else (lambda t: jax.tree.map(lambda a: a.astype(compute), t)))

    def loss_fn(params, stats, xb, yb):
        out, new = module.apply({"params": cast(params), "batch_stats": stats}, cast(xb),
                                train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(out.astype(jnp.float32), yb)
        sq = sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
        return jnp.mean(ce) + 0.5 * l2 * sq, new["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    @jax.jit
    def val_loss(params, stats):
        out = module.apply({"params": cast(params), "batch_stats": stats}, cast(data["x_val"]),
                           train=False)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            out.astype(jnp.float32), data["y_val"]))

    curve = []
    for s in range(steps):
        rows = shuffle_rows(train_key, s * batch, batch, n)
        xb = x[rows]
        if augment is not None:
            k = jax.random.fold_in(jax.random.fold_in(train_key, s), 0x61756720)
            xb = jnp.stack([augment(jax.random.fold_in(k, j), xb[j]) for j in range(batch)])
        params, stats, opt_state = step(params, stats, opt_state, xb, y[rows])
        if (s + 1) % eval_every == 0:
            curve.append(float(val_loss(params, stats)))
    return params, stats, np.asarray(curve)


def _member(tree, m):
    return jax.tree.map(lambda a: a[m], tree)


def test_batchnorm_population_matches_plain_flax_loops(small_digits):
    """A vmapped population of BatchNorm members (masked batches of 8, 16 and 12 of 16,
    adamw with weight decay and an L2 penalty): each member's params, batch statistics
    and validation curve equal those of its own plain Flax/optax loop; the statistics
    are those of the member's own rows, and only ``params`` carries optimizer state."""
    exp = jt.Experiment(data=small_digits, model=BNNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                                       batch_size=jt.Int(8, 16)),
                        steps=20, eval_every=10,
                        defaults={"optimizer": "adamw", "weight_decay": 0.1, "l2": 1e-3})
    configs = [{"lr": 0.01, "batch_size": 8}, {"lr": 0.03, "batch_size": 16},
               {"lr": 0.003, "batch_size": 12}]
    static = exp.static_config(configs[0])
    member = jt.make_train(exp, static)
    hp = exp.member_arrays(configs, static)
    keys = jax.random.split(jax.random.key(7), len(configs))
    data = jt.data.train_arrays(small_digits)
    state, curves = jax.jit(jax.vmap(member.train, in_axes=(0, 0, None)))(hp, keys, data)
    assert set(state.params) == {"params"} and set(state.model_state) == {"batch_stats"}
    # the optimizer holds moments for the params collection only
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert any("Dense_0" in p for p in paths)
    assert not any("batch_stats" in p for p in paths)
    for m, cfg in enumerate(configs):
        params, stats, curve = plain_loop(BNNet(), data, keys[m], lr=cfg["lr"],
                                          batch=cfg["batch_size"], steps=20, eval_every=10,
                                          weight_decay=0.1, l2=1e-3)
        chex.assert_trees_all_close(_member(state.params, m)["params"], params, rtol=RTOL,
                                    atol=ATOL)
        chex.assert_trees_all_close(_member(state.model_state, m)["batch_stats"], stats,
                                    rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(curves["val_loss"][m], curve, rtol=RTOL, atol=ATOL)


def test_population_engine_keeps_the_model_state(small_digits):
    """Through ``train_population``: a member's kept variables hold its batch statistics
    (``module.apply`` works on them), which training moved away from their start."""
    exp = jt.Experiment(data=small_digits, model=BNNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
                        steps=10, eval_every=10, defaults={"batch_size": 16})
    res = jt.train_population(exp, [{"lr": 0.01}], keep_params=True, progress=False,
                              verbose=False)
    kept = res.params[0]
    assert set(kept) == {"params", "batch_stats"}
    var = np.asarray(kept["batch_stats"]["BatchNorm_0"]["var"])
    assert not np.allclose(var, 1.0)
    out = BNNet().apply(kept, small_digits.x_test[:5], train=False)
    assert out.shape == (5, 10)


def test_frozen_batch_statistics_are_not_optimised(small_digits):
    """``BatchNorm(use_running_average=True)``: the statistics are state, not weights, so
    gradients, weight decay and the L2 penalty leave them exactly at their start."""
    exp = jt.Experiment(data=small_digits, model=BNNet(use_running_average=True),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=20,
                        eval_every=10,
                        defaults={"batch_size": 16, "weight_decay": 0.5, "l2": 0.1})
    static = exp.static_config({"lr": 0.05})
    member = jt.make_train(exp, static)
    hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.05}], static).items()}
    state, _ = jax.jit(member.train)(hp, jax.random.key(0), jt.data.train_arrays(small_digits))
    stats = state.model_state["batch_stats"]["BatchNorm_0"]
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)
    assert int(state.step) == 20


class AlwaysBatchStats(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=False)(nn.Dense(8)(x))
        return nn.Dense(10)(h)


class KeepsLastBatch(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        last = self.variable("cache", "x", lambda: jnp.zeros((1, x.shape[-1])))
        if train:
            last.value = x  # a whole batch where initialization put one row
        self.sow("intermediates", "x", x)  # sown values are not state: left alone
        return nn.Dense(10)(x)


@pytest.mark.parametrize("model,match", [
    (AlwaysBatchStats(), "updates its 'batch_stats' collection in evaluation mode.*"
                         "use_running_average=not train"),
    (KeepsLastBatch(), "'cache' collection changes its structure, shapes"),
])
def test_collection_errors_are_explained_before_compiling(small_digits, model, match):
    exp = jt.Experiment(data=small_digits, model=model,
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10,
                        eval_every=10, defaults={"batch_size": 16})
    with pytest.raises(ValueError, match=match):
        jt.make_train(exp, exp.static_config({"lr": 0.01}))


def _noise_and_flip(key, x):
    k1, k2 = jax.random.split(key)
    img = x.reshape(8, 8)
    img = jnp.where(jax.random.bernoulli(k1), img[:, ::-1], img)
    return (img + 0.1 * jax.random.normal(k2, img.shape)).reshape(x.shape)


def test_augmentation_matches_plain_loop_with_the_same_keys(small_digits):
    """``Experiment(augment=fn)``: each example ``j`` of step ``s`` is augmented with
    ``fold_in(fold_in(fold_in(train_key, s), 0x61756720), j)``; the run equals the plain
    loop that augments its batches with those keys, and differs from no augmentation."""
    exp = jt.Experiment(data=small_digits, model=BNNet(), augment=_noise_and_flip,
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10,
                        eval_every=5, defaults={"batch_size": 16, "weight_decay": 0.0})
    static = exp.static_config({"lr": 0.01})
    member = jt.make_train(exp, static)
    hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01}], static).items()}
    data = jt.data.train_arrays(small_digits)
    key = jax.random.key(3)
    state, curves = jax.jit(member.train)(hp, key, data)
    params, stats, curve = plain_loop(BNNet(), data, key, lr=0.01, batch=16, steps=10,
                                      eval_every=5, augment=_noise_and_flip)
    chex.assert_trees_all_close(state.params["params"], params, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(state.model_state["batch_stats"], stats, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(curves["val_loss"], curve, rtol=RTOL, atol=ATOL)
    plain, _, _ = plain_loop(BNNet(), data, key, lr=0.01, batch=16, steps=10, eval_every=5)
    assert not np.allclose(params["Dense_0"]["kernel"], plain["Dense_0"]["kernel"], atol=1e-4)


def test_augment_is_checked_before_compiling(small_digits):
    with pytest.raises(ValueError, match="one example of shape"):
        jt.Experiment(data=small_digits, model=BNNet(), augment=lambda k, x: x[:3],
                      space=jt.Space(lr=jt.Real(1e-3, 1e-1)))
    with pytest.raises(ValueError, match="compute_dtype"):
        jt.Experiment(data=small_digits, model=BNNet(), compute_dtype="float16",
                      space=jt.Space(lr=jt.Real(1e-3, 1e-1)))
    with pytest.raises(ValueError, match="accumulate"):
        jt.Experiment(data=small_digits, model=BNNet(), accumulate=0,
                      space=jt.Space(lr=jt.Real(1e-3, 1e-1)))


def test_bfloat16_compute_with_float32_parameters(small_digits):
    """``compute_dtype="bfloat16"``: parameters, optimizer state and batch statistics stay
    float32; the run equals a plain loop that casts params and inputs to bfloat16, and
    stays close to the float32 run."""
    exp = jt.Experiment(data=small_digits, model=BNNet(), compute_dtype="bfloat16",
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=20,
                        eval_every=10, defaults={"batch_size": 16, "weight_decay": 0.0})
    static = exp.static_config({"lr": 0.01})
    member = jt.make_train(exp, static)
    hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01}], static).items()}
    data = jt.data.train_arrays(small_digits)
    key = jax.random.key(5)
    state, curves = jax.jit(member.train)(hp, key, data)
    leaves = jax.tree.leaves((state.params, state.model_state, state.opt_state))
    assert all(a.dtype != jnp.bfloat16 for a in leaves)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.params))
    # the model runs in bfloat16: its matmuls take bfloat16 operands
    assert "bf16[16,64]" in str(jax.make_jaxpr(member.train)(hp, key, data))
    # Within bfloat16 rounding (Adam amplifies it on small parameters; measured 3e-4 to
    # 4e-2 on parameters of magnitude ~1 for seeds 5 and 6, validation losses within 0.2%)
    _, _, curve = plain_loop(BNNet(), data, key, lr=0.01, batch=16, steps=20, eval_every=10,
                             compute=jnp.bfloat16)
    np.testing.assert_allclose(curves["val_loss"], curve, rtol=1e-2)
    p32, _, c32 = plain_loop(BNNet(), data, key, lr=0.01, batch=16, steps=20, eval_every=10)
    chex.assert_trees_all_close(state.params["params"], p32, atol=0.1)
    np.testing.assert_allclose(curves["val_loss"], c32, rtol=1e-2)


def test_accumulation_equals_the_large_batch_sgd_step_in_float64():
    """``accumulate=4`` micro-batches of 8 rows per SGD step on a linear model in float64:
    every step equals one plain SGD step on the 32 rows of its micro-batches (drawn with
    replacement by the documented rule, micro-batch ``i`` of step ``s`` at index
    ``4 s + i``)."""
    with jax.enable_x64(True), jax.threefry_partitionable(False):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(120, 5))
        y = x @ rng.normal(size=5) + 0.1 * rng.normal(size=120)
        ds = jt.data.arrays(x[:100], y[:100], x[100:], y[100:], task="regression")
        model = nn.Dense(1, param_dtype=jnp.float64)
        exp = jt.Experiment(data=ds, model=model, space=jt.Space(lr=jt.Real(1e-3, 1e-1)),
                            steps=5, eval_every=5, accumulate=4, data_order="replacement",
                            defaults={"batch_size": 8, "optimizer": "sgd"})
        static = exp.static_config({"lr": 0.05})
        member = jt.make_train(exp, static)
        hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.05}], static).items()}
        data = jt.data.train_arrays(ds)
        key = jax.random.key(1)
        state = member.init(hp, key)
        step = jax.jit(lambda s: member.train_step(s, data, None))
        params = model.init(jax.random.split(key)[0], data["x_train"][:1])
        train_key = jax.random.split(key)[1]
        lr = float(hp["lr"])  # the float32 value the member holds
        n = data["x_train"].shape[0]

        def mse(p, xb, yb):
            return jnp.mean((model.apply(p, xb)[:, 0] - yb) ** 2)

        for s in range(5):
            rows = []
            for i in range(4):
                k_batch = jax.random.split(jax.random.fold_in(train_key, 4 * s + i))[0]
                rows += [int(jax.random.randint(jax.random.fold_in(k_batch, j), (), 0, n))
                         for j in range(8)]
            grads = jax.grad(mse)(params, data["x_train"][np.asarray(rows)],
                                  data["y_train"][np.asarray(rows)])
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
            state = step(state)
            chex.assert_trees_all_close(state.params, params, rtol=1e-12, atol=1e-12)
        assert int(state.step) == 5 and int(state.seen) == 5 * 32
        assert state.params["params"]["kernel"].dtype == jnp.float64


def test_digits_cnn_with_batchnorm_learns(small_digits):
    """The zoo's ``digits-cnn-bn`` (a CNN with BatchNorm after each convolution) trains
    in a population; its kept variables include batch statistics that evaluate the
    test split as the engine did."""
    from jaxtune import zoo

    assert "digits-cnn-bn" in zoo.EXPERIMENTS
    exp = zoo.digits_cnn_bn(steps=20, eval_every=20)
    exp = jt.Experiment(data=small_digits, model=exp.model, space=exp.space, steps=20,
                        eval_every=20, max_batch_size=16)
    configs = [{"lr": 0.01, "weight_decay": 1e-4, "schedule": "constant", "batch_size": 16},
               {"lr": 0.003, "weight_decay": 1e-3, "schedule": "cosine", "batch_size": 16}]
    res = jt.train_population(exp, configs, keep_params=True, progress=False, verbose=False)
    assert np.all(res.final["val_accuracy"] > 0.5)  # ten classes: chance is 0.1
    module = exp.build_model({})
    for m in range(2):
        out = module.apply(res.params[m], small_digits.x_test, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(out, small_digits.y_test)
        assert float(jnp.mean(ce)) == pytest.approx(float(res.final["test_loss"][m]),
                                                    rel=1e-4)


def test_probes_hold_the_model_state_fixed(small_digits):
    """Curvature probes of a BatchNorm model read its batch statistics (evaluation
    mode): the probed top Hessian eigenvalue is finite and positive."""
    exp = jt.Experiment(data=small_digits, model=BNNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10,
                        eval_every=10, defaults={"batch_size": 16},
                        probes=jt.Probes(order=4, examples=64, noise_scale=False))
    res = jt.train_population(exp, [{"lr": 0.01}], progress=False, verbose=False)
    top = float(res.final["probe_sharpness"][0])
    assert np.isfinite(top) and top > 0


def test_batch_statistics_do_not_depend_on_the_row_capacity(small_digits):
    """A member with batch size 12 runs its chunk at 16 or at 32 gathered rows: its
    batch statistics come from its own 12 rows either way, so params and statistics
    agree (without the mask, rows 12-15 or 12-31 would enter the statistics)."""
    exp = jt.Experiment(data=small_digits, model=BNNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                                       batch_size=jt.Int(16, 32)),
                        steps=5, eval_every=5, defaults={"weight_decay": 0.0})
    static = exp.static_config({"lr": 0.01, "batch_size": 16})
    member = jt.make_train(exp, static)
    assert member.capacities == (16, 32)
    hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.01, "batch_size": 16}],
                                                static).items()}
    hp["batch_size"] = jnp.int32(12)
    data = jt.data.train_arrays(small_digits)
    state = member.init(hp, jax.random.key(2))
    at16, _ = jax.jit(lambda s: member.chunk(s, data, 0))(state)
    at32, _ = jax.jit(lambda s: member.chunk(s, data, 1))(state)
    chex.assert_trees_all_close(at16.model_state, at32.model_state, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(at16.params, at32.params, rtol=RTOL, atol=ATOL)
    params, stats, _ = plain_loop(BNNet(), data, jax.random.key(2), lr=0.01, batch=12,
                                  steps=5, eval_every=5)
    chex.assert_trees_all_close(at16.model_state["batch_stats"], stats, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(at16.params["params"], params, rtol=RTOL, atol=ATOL)


def test_early_stopping_keeps_the_model_state_of_its_best_evaluation(small_digits):
    """With ``patience`` the test split is evaluated on the params *and* batch statistics
    of the best validation loss: the same numbers as ``module.apply`` on them."""
    exp = jt.Experiment(data=small_digits, model=BNNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True)), steps=30,
                        eval_every=5, patience=2, defaults={"batch_size": 16})
    static = exp.static_config({"lr": 0.5})
    member = jt.make_train(exp, static)
    hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.5}], static).items()}
    state, curves = jax.jit(member.train)(hp, jax.random.key(7),
                                          jt.data.train_arrays(small_digits))
    assert float(state.best) == pytest.approx(float(np.min(curves["val_loss"])))
    test = member.test(state, jt.data.test_arrays(small_digits))
    variables = {**state.best_params, **state.best_model_state}
    out = BNNet().apply(variables, small_digits.x_test, train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(out, small_digits.y_test)
    assert float(test["test_loss"]) == pytest.approx(float(jnp.mean(ce)), rel=1e-5)
    # the member stopped after two worse evaluations: its last state is another one
    assert bool(state.stopped) and int(np.argmin(curves["val_loss"])) < 5
    last = BNNet().apply({**state.params, **state.model_state}, small_digits.x_test,
                         train=False)
    assert not np.allclose(out, last, atol=1e-3)


def test_a_study_stores_and_gives_back_the_batch_statistics(small_digits, tmp_path):
    """The chosen trial's stored model holds params and batch statistics; loaded back
    from the store, ``module.apply(..., train=False)`` gives its stored test accuracy."""
    exp = jt.Experiment(data=small_digits, model=BNNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10,
                        eval_every=10, defaults={"batch_size": 16}, name="bn-kept")
    db = str(tmp_path / "runs.db")
    jt.Study(exp, searcher="random", store=db, population=2, top_k=1, final_seeds=1,
             verbose=False, progress=False).run(trials=2)
    loaded = jt.Study.load(db, experiment=exp)
    module, variables = loaded.best_model
    assert set(variables) == {"params", "batch_stats"}
    assert not np.allclose(variables["batch_stats"]["BatchNorm_0"]["var"], 1.0)
    chosen = next(r for r in loaded.finals if r["chosen"])
    out = module.apply(variables, small_digits.x_test, train=False)
    acc = float(np.mean(np.argmax(np.asarray(out), -1) == np.asarray(small_digits.y_test)))
    assert acc == pytest.approx(chosen["test_accuracy"], abs=1e-6)


class BNDropNet(nn.Module):
    """BNNet with a dropout layer that takes a traced rate."""

    @nn.compact
    def __call__(self, x, train: bool = False, dropout_rate=0.0):
        h = nn.Dense(12, use_bias=False)(x.reshape(x.shape[0], -1))
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.8)(h))
        h = jt.models.dropout(h, dropout_rate, self.make_rng("dropout")) if train else h
        return nn.Dense(10)(h)


def test_batchnorm_with_a_searched_dropout_rate_matches_plain_loops(small_digits):
    """A module with state and a traced dropout rate sees the whole batch at once, its
    masks drawn with the step's dropout key (``Sampler.dropout_key``), and the bucket
    runs at one row capacity; each member equals its plain loop."""
    exp = jt.Experiment(data=small_digits, model=BNDropNet(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                                       dropout=jt.Real(0.0, 0.5), batch_size=jt.Int(16, 32)),
                        steps=10, eval_every=10, defaults={"weight_decay": 0.0})
    configs = [{"lr": 0.01, "dropout": 0.3, "batch_size": 32},
               {"lr": 0.02, "dropout": 0.1, "batch_size": 32}]
    static = exp.static_config(configs[0])
    member = jt.make_train(exp, static)
    assert member.capacities == (32,)
    hp = exp.member_arrays(configs, static)
    keys = jax.random.split(jax.random.key(9), 2)
    data = jt.data.train_arrays(small_digits)
    state, _ = jax.jit(jax.vmap(member.train, in_axes=(0, 0, None)))(hp, keys, data)
    x, y, n = data["x_train"], data["y_train"], data["x_train"].shape[0]
    module = BNDropNet()

    def loss_fn(p, st, xb, yb, k, rate):
        out, new = module.apply({"params": p, "batch_stats": st}, xb, train=True,
                                dropout_rate=rate, rngs={"dropout": k},
                                mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(out, yb)
        return jnp.mean(ce), new["batch_stats"]

    for m, cfg in enumerate(configs):
        tx = optax.adamw(cfg["lr"], weight_decay=0.0)

        @jax.jit
        def step(p, st, opt, xb, yb, k, rate, tx=tx):
            (_, st), g = jax.value_and_grad(loss_fn, has_aux=True)(p, st, xb, yb, k, rate)
            upd, opt = tx.update(g, opt, p)
            return optax.apply_updates(p, upd), st, opt

        with jax.threefry_partitionable(False):
            init_key, train_key = jax.random.split(keys[m])
            v = module.init(init_key, x[:1], train=False)
            params, stats = v["params"], v["batch_stats"]
            opt = tx.init(params)
            for s in range(10):
                rows = shuffle_rows(train_key, s * 32, 32, n)
                k = jax.random.split(jax.random.fold_in(train_key, s))[1]
                params, stats, opt = step(params, stats, opt, x[rows], y[rows], k,
                                          hp["dropout"][m])
        chex.assert_trees_all_close(_member(state.params, m)["params"], params, rtol=RTOL,
                                    atol=ATOL)
        chex.assert_trees_all_close(_member(state.model_state, m)["batch_stats"], stats,
                                    rtol=RTOL, atol=ATOL)
