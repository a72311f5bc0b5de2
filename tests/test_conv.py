"""The patches convolution against ``lax.conv_general_dilated`` (float64 values and
gradients, under vmap), Flax's ``nn.Conv`` through :func:`jaxtune.conv.conv_mode`, and
the engine's ``Experiment(conv=...)`` switch."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxtune as jt
from jaxtune.conv import conv_general_dilated, conv_mode, resolve_conv

# (input shape, kernel shape, strides, padding, lhs_dilation, rhs_dilation, layouts, groups)
CASES = {
    "1d-same-stride": ((2, 11, 3), (3, 3, 4), (2,), "SAME", None, None,
                       ("NWC", "WIO", "NWC"), 1),
    "1d-explicit-groups": ((2, 13, 6), (5, 2, 9), (3,), [(1, 2)], None, (2,),
                           ("NWC", "WIO", "NWC"), 3),
    "2d-valid": ((2, 8, 7, 3), (3, 2, 3, 5), (1, 1), "VALID", None, None,
                 ("NHWC", "HWIO", "NHWC"), 1),
    "2d-explicit-dilations": ((2, 9, 10, 4), (3, 2, 2, 6), (2, 1), [(1, 2), (0, -1)], (2, 1),
                              (1, 2), ("NHWC", "HWIO", "NHWC"), 2),
    "2d-depthwise-same": ((1, 6, 6, 4), (3, 3, 1, 8), (2, 2), "SAME", None, None,
                          ("NHWC", "HWIO", "NHWC"), 4),
    "2d-nchw": ((2, 3, 7, 6), (4, 3, 3, 3), (1, 2), "SAME", None, (2, 1),
                ("NCHW", "OIHW", "NCHW"), 1),
    "3d-valid-dilated": ((2, 5, 6, 7, 3), (2, 2, 3, 3, 4), (1, 2, 1), "VALID", None, (2, 1, 1),
                         ("NDHWC", "DHWIO", "NDHWC"), 1),
    "3d-same-lhs-dilation": ((1, 4, 3, 5, 2), (3, 2, 2, 2, 3), (2, 1, 1),
                             [(1, 1), (0, 1), (2, 0)], (1, 2, 2), None,
                             ("NDHWC", "DHWIO", "NDHWC"), 1),
}


def _kwargs(case):
    _, _, strides, padding, lhs_dil, rhs_dil, layouts, groups = case
    return dict(window_strides=strides, padding=padding, lhs_dilation=lhs_dil,
                rhs_dilation=rhs_dil, dimension_numbers=layouts, feature_group_count=groups)


def _arrays(case, members=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if members is None else (members,)
    return rng.normal(size=lead + case[0]), rng.normal(size=lead + case[1])


@pytest.mark.parametrize("name", list(CASES))
def test_values_and_gradients_match_lax_in_float64(name):
    case = CASES[name]
    kw = _kwargs(case)
    with jax.enable_x64(True):
        x, w = _arrays(case)
        ref = lax.conv_general_dilated(x, w, **kw)
        got = jax.jit(lambda x, w: conv_general_dilated(x, w, **kw))(x, w)
        assert got.dtype == jnp.float64 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
        cot = np.random.default_rng(1).normal(size=ref.shape)

        def loss(fn):
            return lambda x, w: jnp.sum(cot * jnp.tanh(fn(x, w, **kw)))

        g_ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
        g_got = jax.jit(jax.grad(loss(conv_general_dilated), (0, 1)))(x, w)
        for a, b in zip(g_got, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", ["1d-explicit-groups", "2d-explicit-dilations",
                                  "3d-valid-dilated"])
def test_vmap_over_kernels_and_inputs_matches_a_loop(name):
    case = CASES[name]
    kw = _kwargs(case)
    with jax.enable_x64(True):
        xs, ws = _arrays(case, members=3)
        ours = lambda x, w: conv_general_dilated(x, w, **kw)
        # the population case: members' kernels on a shared input, then members' own inputs
        shared = jax.jit(jax.vmap(ours, in_axes=(None, 0)))(xs[0], ws)
        own = jax.jit(jax.vmap(ours))(xs, ws)
        grads = jax.jit(jax.vmap(jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2), (0, 1))))(
            xs, ws)
        for m in range(3):
            np.testing.assert_allclose(shared[m], lax.conv_general_dilated(xs[0], ws[m], **kw),
                                       rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(own[m], lax.conv_general_dilated(xs[m], ws[m], **kw),
                                       rtol=1e-12, atol=1e-12)
            ref = jax.grad(lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, **kw) ** 2),
                           (0, 1))(xs[m], ws[m])
            for a, b in zip((grads[0][m], grads[1][m]), ref):
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def _conv_primitives(fn, *args):
    text = str(jax.make_jaxpr(fn)(*args))
    return text.count("conv_general_dilated")


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR", "CAUSAL", [(2, 0)]])
def test_flax_conv_through_conv_mode(padding):
    layer = nn.Conv(6, (3,), strides=(2,), kernel_dilation=(2,), padding=padding,
                    feature_group_count=2)
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 11, 4)))  # two batch dims
        v = layer.init(jax.random.key(0), x)
        v = jax.tree.map(lambda a: a.astype(jnp.float64), v)
        ref = layer.apply(v, x)
        with conv_mode("patches") as used:
            got = layer.apply(v, x)
            assert _conv_primitives(lambda v: layer.apply(v, x), v) == 0
        assert used == "patches"
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
        with conv_mode("native"):
            assert _conv_primitives(lambda v: layer.apply(v, x), v) == 1
    # the interceptor leaves the module as it was
    assert layer.conv_general_dilated is None


def test_a_conv_with_its_own_function_is_left_alone():
    calls = []

    def mine(*args, **kwargs):
        calls.append(1)
        return lax.conv_general_dilated(*args, **kwargs)

    layer = nn.Conv(2, (3, 3), conv_general_dilated=mine)
    x = jnp.ones((1, 5, 5, 1))
    v = layer.init(jax.random.key(0), x)
    calls.clear()
    with conv_mode("patches"):
        layer.apply(v, x)
    assert calls == [1]


def test_resolve_and_bad_input():
    assert resolve_conv("auto", "cpu") == "patches"
    assert resolve_conv("auto", "gpu") == "native"
    assert resolve_conv("auto", "some_new_backend") == "native"
    with pytest.raises(ValueError, match="conv must be one of"):
        resolve_conv("fast")
    x, w = jnp.ones((1, 8, 4)), jnp.ones((3, 2, 6))
    dn = ("NWC", "WIO", "NWC")
    with pytest.raises(ValueError, match="feature_group_count=3"):
        conv_general_dilated(x, w, (1,), "SAME", dimension_numbers=dn, feature_group_count=3)
    with pytest.raises(ValueError, match="batch_group_count"):
        conv_general_dilated(x, jnp.ones((3, 4, 6)), (1,), "SAME", dimension_numbers=dn,
                             batch_group_count=2)
    with pytest.raises(ValueError, match="string padding with lhs_dilation"):
        conv_general_dilated(x, jnp.ones((3, 4, 6)), (1,), "SAME", lhs_dilation=(2,),
                             dimension_numbers=dn)
    with pytest.raises(ValueError, match="window_strides"):
        conv_general_dilated(x, jnp.ones((3, 4, 6)), (0,), "SAME", dimension_numbers=dn)
    with pytest.raises(ValueError, match=r"\(low, high\) pairs"):
        conv_general_dilated(x, jnp.ones((3, 4, 6)), (1,), [(1, 1), (1, 1)],
                             dimension_numbers=dn)


def _small_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 40)).astype(np.float32)
    y = (x[:, :10].sum(1) > 0).astype(np.int32) + 2 * (x[:, 10:20].sum(1) > 0)
    return jt.data.arrays(x[:64], y[:64], x[64:], y[64:], num_classes=4)


def _experiment(conv, data):
    return jt.Experiment(data=data, model=jt.models.CNN1D(channels=4, num_outputs=4),
                         space=jt.Space(lr=jt.Real(1e-3, 3e-2, log=True)), steps=8,
                         eval_every=4, batch_mode="bucketed", defaults={"batch_size": 16},
                         conv=conv)


def test_experiment_conv_switch_trains_the_same_population():
    data = _small_data()
    with pytest.raises(ValueError, match="conv must be one of"):
        _experiment("grouped", data)
    configs = [{"lr": 1e-3}, {"lr": 3e-2}]
    results = {}
    for conv in ("patches", "native"):
        exp = _experiment(conv, data)
        programs = jt.Programs(exp)
        static = exp.static_config(configs[0])
        member = programs.member(static)
        assert member.conv == conv
        hp = {k: v[0] for k, v in exp.member_arrays(configs[:1], static).items()}
        state = member.init(hp, jax.random.key(0))
        jaxpr = str(jax.make_jaxpr(member.chunk)(state, jt.data.train_arrays(data)))
        assert ("conv_general_dilated" in jaxpr) == (conv == "native")
        results[conv] = jt.train_population(exp, configs, programs=programs, progress=False,
                                            verbose=False)
    for name in ("train_loss", "val_loss"):
        np.testing.assert_allclose(results["patches"].curves[name],
                                   results["native"].curves[name], rtol=2e-4, atol=2e-5)


def test_memory_estimate_covers_the_patches():
    """The per-member estimate sees the patch buffers: it stays above XLA's peak of the
    compiled population program, and above the native program's estimate."""
    from jaxtune.benchmarks.memory import peak_bytes

    data = _small_data()
    estimates = {}
    for conv in ("patches", "native"):
        exp = _experiment(conv, data)
        programs = jt.Programs(exp)
        static = exp.static_config({"lr": 1e-2})
        estimates[conv] = programs.member_bytes(static)
    exp = _experiment("patches", data)
    programs = jt.Programs(exp)
    program, _ = programs.get(static, 4)
    peak = peak_bytes(program.chunk.memory_analysis()) * len(jax.devices())
    assert 4 * estimates["patches"] >= peak
    assert estimates["patches"] > estimates["native"]
