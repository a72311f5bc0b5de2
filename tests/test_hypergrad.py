"""Hypergradients (jaxtune.hypergrad): forward and reverse mode against each other and
against central finite differences of the engine's own training run, in float64, on
logistic regression on digits (50 steps)."""

from __future__ import annotations

import doctest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtune as jt
from jaxtune import hypergrad as hg

CONFIGS = [{"lr": 0.05, "momentum": 0.5, "l2": 1e-3, "batch_size": 32},
           {"lr": 0.2, "momentum": 0.8, "l2": 1e-4, "batch_size": 16}]


class LogReg(nn.Module):
    """Logistic regression in float64 (the checks need double precision)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, dtype=jnp.float64, param_dtype=jnp.float64)(x)


@pytest.fixture(scope="module")
def exp(digits_data):
    return jt.Experiment(
        data=digits_data, model=LogReg(),
        space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True), momentum=jt.Real(0.0, 0.99),
                       l2=jt.Real(1e-6, 1e-1, log=True), batch_size=jt.Int(16, 32),
                       width=jt.Choice([1, 2], static=True)),
        steps=50, eval_every=25, defaults={"optimizer": "momentum", "schedule": "cosine"})


def _configs():
    return [{**c, "width": 1} for c in CONFIGS]


def _final_val_losses(exp, configs, keys):
    """The final validation loss of each configuration, from the member's own train()."""
    static = exp.static_config(configs[0])
    member = jt.make_train(exp, static)
    hp = exp.member_arrays(configs, static)
    for name in ("lr", "momentum", "l2"):  # float64 values, not member_arrays' float32 ones
        hp[name] = np.asarray([c[name] for c in configs], np.float64)
    run = jax.jit(jax.vmap(member.train, in_axes=(0, 0, None)))
    _, curves = run(hp, keys, jt.data.train_arrays(exp.data))
    return np.asarray(curves["val_loss"][:, -1])


def test_forward_mode_matches_central_differences(exp):
    with jax.enable_x64(True):
        configs = _configs()
        got = hg.hypergradient(exp, configs, mode="forward", seed=3)
        assert got.names == ("lr", "momentum", "l2")
        keys = jax.random.split(jax.random.key(3), len(configs))
        h = 1e-5
        shifted, rows = [], []
        for j in range(len(got.names)):
            for sign in (1.0, -1.0):
                u = got.point.copy()
                u[:, j] += sign * h
                shifted += hg.from_unconstrained(exp.space, got.names, u, configs)
                rows.append(keys)
        values = _final_val_losses(exp, shifted, jnp.concatenate(rows)).reshape(-1, 2, 2)
        fd = ((values[:, 0] - values[:, 1]) / (2 * h)).T        # (configs, names)
        np.testing.assert_allclose(got.value, _final_val_losses(exp, configs, keys),
                                   rtol=1e-12)
        np.testing.assert_allclose(got.grad, fd, rtol=1e-4)
        assert np.all(np.abs(got.grad) > 1e-6)  # every direction is measured, none vanishes


def test_reverse_mode_matches_forward_mode(exp):
    with jax.enable_x64(True):
        fwd = hg.hypergradient(exp, _configs(), mode="forward", seed=3)
        rev = hg.hypergradient(exp, _configs(), mode="reverse", seed=3)
    np.testing.assert_allclose(rev.value, fwd.value, rtol=1e-12)
    np.testing.assert_allclose(rev.grad, fwd.grad, rtol=1e-9)


def test_truncated_modes_agree_and_differ_from_the_full_gradient(exp):
    with jax.enable_x64(True):
        fwd = hg.hypergradient(exp, _configs(), mode="forward", truncate=25, seed=3)
        rev = hg.hypergradient(exp, _configs(), mode="reverse", truncate=25, seed=3)
        exact = hg.hypergradient(exp, _configs(), mode="reverse", seed=3)  # built above
    np.testing.assert_allclose(rev.grad, fwd.grad, rtol=1e-9)
    np.testing.assert_allclose(rev.value, exact.value, rtol=1e-12)  # the same run
    assert not np.allclose(rev.grad, exact.grad, rtol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"names": ["batch_size"]}, "'batch_size': it is discrete"),
    ({"names": ["width"]}, "'width': it is static"),
    ({"names": ["dropout"]}, "'dropout': it is not in the space"),
    ({"names": ["lr", "lr"]}, "distinct"),
    ({"mode": "sideways"}, "mode must be one of"),
    ({"truncate": 10}, "multiple of eval_every"),
])
def test_bad_requests_are_refused_before_compiling(exp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        hg.hypergradient(exp, _configs(), **kwargs)


def test_several_buckets_are_refused(exp):
    configs = _configs()
    configs[1]["width"] = 2
    with pytest.raises(ValueError, match="several buckets"):
        hg.hypergradient(exp, configs)


def test_unconstrained_round_trip(exp):
    u = hg.to_unconstrained(exp.space, ("lr", "momentum"), _configs())
    np.testing.assert_allclose(u[:, 0], np.log([0.05, 0.2]))
    back = hg.from_unconstrained(exp.space, ("lr", "momentum"), u, _configs())
    assert back[1]["lr"] == pytest.approx(0.2) and back[1]["momentum"] == 0.8
    assert hg.from_unconstrained(exp.space, ("lr",), [[9.0], [-99.0]], _configs())[1]["lr"] \
        == 1e-3


def test_knot_schedule_hypergradient_matches_central_differences(digits_data):
    names = [f"knot_{i}" for i in range(8)]
    exp = jt.Experiment(
        data=digits_data, model=LogReg(),
        space=jt.Space({n: jt.Real(0.05, 2.0, log=True) for n in names}),
        steps=50, eval_every=25,
        defaults={"optimizer": "momentum", "schedule": "knots", "lr": 0.1, "batch_size": 32})
    config = {n: v for n, v in zip(names, np.geomspace(1.0, 0.1, 8))}
    u0 = hg.to_unconstrained(exp.space, names, [config])
    h = 1e-5
    shifted = []
    for j in range(8):
        for sign in (1.0, -1.0):
            u = u0.copy()
            u[0, j] += sign * h
            shifted += hg.from_unconstrained(exp.space, names, u, [config])
    # one program: the configuration and its 16 shifts, every member with the same key
    keys = jnp.stack([jax.random.key(1)] * 17)
    with jax.enable_x64(True):
        got = hg.hypergradient(exp, [config, *shifted], mode="forward", keys=keys)
    assert got.names == tuple(names) and got.grad.shape == (17, 8)
    values = got.value[1:]
    fd = (values[0::2] - values[1::2]) / (2 * h)
    np.testing.assert_allclose(got.grad[0], fd, rtol=1e-4)
    assert np.all(np.abs(fd) > 1e-6)


def test_knot_schedule_needs_two_knots(digits_data):
    with pytest.raises(ValueError, match="schedule 'knots' needs knot_0"):
        jt.Experiment(data=digits_data, model=LogReg(),
                      space=jt.Space(knot_0=jt.Real(0.1, 1.0)), defaults={"schedule": "knots"})


def test_docstring_examples():
    result = doctest.testmod(hg, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
