"""jaxtune.layers against Flax and jnp references in float64: values and gradients, one
member and vmapped over members (own and shared inputs), each member equal to its own
unbatched reference."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.layers import Embed, take_rows

VOCAB = 11


def _take(table, ids):
    return jnp.take(table, ids, axis=0)


def _loss(lookup):
    # nan_to_num: out-of-range ids read NaN; their rows must get no gradient
    return lambda table, ids, cot: jnp.sum(jnp.tanh(jnp.nan_to_num(lookup(table, ids))) * cot)


def _embedding_arrays(members, seed=0):
    rng = np.random.default_rng(seed)
    tables = rng.normal(size=(members, VOCAB, 3, 2))
    ids = rng.integers(-VOCAB - 3, VOCAB + 3, size=(members, 4, 5))  # out of range too
    cot = rng.normal(size=(members, 4, 5, 3, 2))
    return tables, ids, cot


def _assert_same(got, ref):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(ref), rtol=1e-13, atol=1e-13)


def test_take_rows_equals_take_in_float64():
    with jax.enable_x64(True):
        tables, ids, cot = _embedding_arrays(1)
        table, ids, cot = tables[0], ids[0], cot[0]
        _assert_same(jax.jit(take_rows)(table, ids), _take(table, ids))
        grad = jax.grad(_loss(_take))(table, ids, cot)
        _assert_same(jax.jit(jax.grad(_loss(take_rows)))(table, ids, cot), grad)
        # second order (reverse over reverse): the backward's own gradient is the gather
        def outer(lookup):
            return lambda t: jnp.sum(jax.grad(_loss(lookup))(t, ids, cot) ** 2)

        _assert_same(jax.jit(jax.grad(outer(take_rows)))(table), jax.grad(outer(_take))(table))


@pytest.mark.parametrize("shared", ["none", "ids", "table"])
def test_take_rows_vmapped_equals_each_member(shared):
    with jax.enable_x64(True):
        tables, ids, cot = _embedding_arrays(4, seed=1)
        axes = {"none": (0, 0, 0), "ids": (0, None, 0), "table": (None, 0, 0)}[shared]
        args = (tables[0] if axes[0] is None else tables, ids[0] if axes[1] is None else ids,
                cot)
        values = jax.jit(jax.vmap(take_rows, in_axes=axes[:2]))(*args[:2])
        grads = jax.jit(jax.vmap(jax.grad(_loss(take_rows)), in_axes=axes))(*args)
        for m in range(4):
            t = tables[0] if axes[0] is None else tables[m]
            i = ids[0] if axes[1] is None else ids[m]
            _assert_same(values[m], _take(t, i))
            _assert_same(grads[m], jax.grad(_loss(_take))(t, i, cot[m]))
        # members of members (a vmap inside a vmap): each row its own reference
        nested = jax.jit(jax.vmap(jax.vmap(jax.grad(_loss(take_rows)))))(
            tables.reshape(2, 2, *tables.shape[1:]), ids.reshape(2, 2, *ids.shape[1:]),
            cot.reshape(2, 2, *cot.shape[1:]))
        for m in range(4):
            _assert_same(nested[m // 2, m % 2],
                         jax.grad(_loss(_take))(tables[m], ids[m], cot[m]))


def test_population_gradient_is_one_flat_scatter():
    """The vmapped gradient scatters through one row index (member * vocab + id); jnp.take's
    scatters through two (member, id)."""
    tables, ids, cot = (jnp.asarray(a, jnp.float32) for a in _embedding_arrays(3))
    ids = ids.astype(jnp.int32)

    def scatters(lookup):
        text = jax.jit(jax.vmap(jax.grad(_loss(lookup)))).lower(tables, ids, cot).as_text()
        return [line for line in text.splitlines() if "stablehlo.scatter" in line]

    ours, ref = scatters(take_rows), scatters(_take)
    assert len(ours) == 1 and "scatter_dims_to_operand_dims = [0]," in ours[0]
    assert "input_batching_dims" not in ours[0]
    assert len(ref) == 1 and "input_batching_dims = [0]" in ref[0]


def test_embed_module_equals_flax_embed_in_float64():
    with jax.enable_x64(True):
        ids = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, size=(3, 6)))
        ref_layer = nn.Embed(VOCAB, 5, param_dtype=jnp.float64)
        layer = Embed(VOCAB, 5, param_dtype=jnp.float64)
        v = ref_layer.init(jax.random.key(0), ids)
        _assert_same(layer.init(jax.random.key(0), ids)["params"]["embedding"],
                     v["params"]["embedding"])
        members = jax.vmap(lambda k: ref_layer.init(k, ids))(jax.random.split(jax.random.key(1),
                                                                               3))
        cot = np.random.default_rng(3).normal(size=(3, 3, 6, 5))

        def loss(module):
            return lambda v, c: jnp.sum(jnp.sin(module.apply(v, ids)) * c)

        got = jax.jit(jax.vmap(jax.value_and_grad(loss(layer))))(members, cot)
        for m in range(3):
            vm = jax.tree.map(lambda a, m=m: a[m], members)
            ref = jax.value_and_grad(loss(ref_layer))(vm, cot[m])
            _assert_same(got[0][m], ref[0])
            _assert_same(got[1]["params"]["embedding"][m], ref[1]["params"]["embedding"])
        x = jnp.ones((2, 5))
        np.testing.assert_allclose(layer.apply(v, x, method="attend"),
                                   ref_layer.apply(v, x, method="attend"))


def test_bad_input():
    with pytest.raises(ValueError, match="ids must be integers"):
        take_rows(jnp.ones((4, 2)), jnp.ones(3))
    with pytest.raises(ValueError, match="at least one axis"):
        take_rows(jnp.ones(()), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        Embed(4, 2).init(jax.random.key(0), jnp.ones(3))
    # an integer table has no gradient: looked up as jnp.take
    table = jnp.arange(8).reshape(4, 2)
    np.testing.assert_array_equal(take_rows(table, jnp.array([3, -1])), table[jnp.array([3, 3])])


def test_hoisted_lstm_equals_flax_rnn_in_float64():
    """The benchmark's alternative LSTM computes what nn.RNN(nn.OptimizedLSTMCell) does:
    same parameters, values and gradients, one member and vmapped."""
    from jaxtune.benchmarks.hoisted_lstm import HoistedLSTM

    with jax.enable_x64(True):
        xs = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2, 6, 5)))
        ref = nn.RNN(nn.OptimizedLSTMCell(4, param_dtype=jnp.float64))
        ours = HoistedLSTM(4, param_dtype=jnp.float64)
        keys = jax.random.split(jax.random.key(0), 3)
        members = jax.vmap(lambda k: ref.init(k, xs[0]))(keys)
        own = jax.vmap(lambda k: ours.init(k, xs[0]))(keys)
        jax.tree.map(_assert_same, own, members)

        def loss(module):
            return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)) * jnp.arange(4.0))

        got = jax.jit(jax.vmap(jax.value_and_grad(loss(ours), (0, 1))))(members, xs)
        for m in range(3):
            vm = jax.tree.map(lambda a, m=m: a[m], members)
            value, grads = jax.value_and_grad(loss(ref), (0, 1))(vm, xs[m])
            np.testing.assert_allclose(got[0][m], value, rtol=1e-13)
            jax.tree.map(lambda a, b, m=m: np.testing.assert_allclose(a[m], b, rtol=1e-12,
                                                                      atol=1e-13),
                         got[1], grads)
        with pytest.raises(ValueError, match="time, features"):
            ours.init(jax.random.key(0), jnp.ones(3))


def test_docstring_examples():
    import doctest

    import jaxtune.benchmarks.hoisted_lstm
    import jaxtune.layers

    for module in (jaxtune.layers, jaxtune.benchmarks.hoisted_lstm):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_layers_benchmark_rows_run():
    """The benchmark's new rows build and train (speed claims live in the benchmark)."""
    from jaxtune.benchmarks.layers import run

    rows = run(["embedding-flat", "lstm-hoisted"], population=2, steps=2, batch=4, reps=1)
    assert [r["layer"] for r in rows] == ["embedding-flat", "lstm-hoisted"]
    assert all(r[k] > 0 for r in rows for k in ("vmap_member_steps_s", "loop_member_steps_s"))
    with pytest.raises(ValueError, match="unknown layers"):
        run(["lstm2"])


def test_engine_init_member_by_member_equals_vmapped_init():
    """On CPU the engine initializes members one by one (a vmapped LAPACK initializer,
    as in nn.OptimizedLSTMCell, deadlocked XLA:CPU's pool): same state as vmap(init)."""
    import jaxtune as jt

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.RNN(nn.OptimizedLSTMCell(6))(x.reshape(x.shape[0], 4, 5))
            return nn.Dense(3)(h[:, -1])

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 20)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    data = jt.data.arrays(x[:32], y[:32], x[32:], y[32:], num_classes=3)
    exp = jt.Experiment(data=data, model=Net(), space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
                        steps=4, eval_every=2, batch_mode="bucketed",
                        defaults={"batch_size": 8})
    configs = [{"lr": 1e-3}, {"lr": 1e-2}]
    programs = jt.Programs(exp)
    static = exp.static_config(configs[0])
    program, _ = programs.get(static, 2)
    hp = exp.member_arrays(configs, static)
    keys = jax.random.split(jax.random.key(3), 2)
    got = program.init(hp, keys)
    ref = jax.vmap(programs.member(static).init)(hp, keys)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 jax.tree.map(lambda k: jax.random.key_data(k) if jnp.issubdtype(
                     k.dtype, jax.dtypes.prng_key) else k, got),
                 jax.tree.map(lambda k: jax.random.key_data(k) if jnp.issubdtype(
                     k.dtype, jax.dtypes.prng_key) else k, ref))
