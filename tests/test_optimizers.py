"""Tests for jaxtune.optimizers against plain optax and float64 numpy references."""

from __future__ import annotations

import doctest

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtune import optimizers as O

HP = {"momentum": 0.8, "b1": 0.85, "b2": 0.95, "eps": 1e-6, "weight_decay": 0.05,
      "clip_norm": 2.0}
A = {"w": np.array([1.0, 3.0, 0.5]), "b": np.array([2.0, 0.2])}
B = {"w": np.array([0.5, -1.0, 0.2]), "b": np.array([0.3, -2.0])}
P0 = {"w": np.array([1.0, -2.0, 0.5]), "b": np.array([0.3, -0.7])}
STEPS = 6


def lr_at(t: int) -> float:
    return 0.1 * (0.5 + 0.1 * t)


def grad(p):
    """Gradient of the quadratic sum(0.5 * A * p**2 + B * p)."""
    return {k: A[k] * p[k] + B[k] for k in p}


# --------------------------------------------------------------------------- references


def numpy_reference(family: str, hp=HP, clip=True) -> dict[str, np.ndarray]:
    """The documented update rules, written out in float64."""
    p = {k: v.astype(np.float64).copy() for k, v in P0.items()}
    zeros = {k: np.zeros_like(v) for k, v in p.items()}
    mu, nu, tr = dict(zeros), dict(zeros), dict(zeros)
    m, b1, b2, eps, wd = (hp[k] for k in ("momentum", "b1", "b2", "eps", "weight_decay"))
    for t in range(STEPS):
        lr = lr_at(t)
        g = grad(p)
        norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
        if clip and norm >= hp["clip_norm"]:
            g = {k: v * hp["clip_norm"] / norm for k, v in g.items()}
        if family in ("sgd", "momentum", "nesterov", "adam", "rmsprop"):  # coupled decay
            g = {k: g[k] + wd * p[k] for k in p}
        for k in p:
            if family == "sgd":
                p[k] = p[k] - lr * g[k]
            elif family == "momentum":
                tr[k] = g[k] + m * tr[k]
                p[k] = p[k] - lr * tr[k]
            elif family == "nesterov":
                tr[k] = g[k] + m * tr[k]
                p[k] = p[k] - lr * (g[k] + m * tr[k])
            elif family in ("adam", "adamw"):
                mu[k] = b1 * mu[k] + (1 - b1) * g[k]
                nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
                mhat, vhat = mu[k] / (1 - b1 ** (t + 1)), nu[k] / (1 - b2 ** (t + 1))
                u = mhat / (np.sqrt(vhat) + eps)
                if family == "adamw":  # decoupled: p -= lr * wd * p
                    u = u + wd * p[k]
                p[k] = p[k] - lr * u
            elif family == "rmsprop":  # optax: eps inside the sqrt, lr before momentum
                nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
                tr[k] = -lr * g[k] / np.sqrt(nu[k] + eps) + m * tr[k]
                p[k] = p[k] + tr[k]
            elif family == "lion":
                u = np.sign((1 - b1) * g[k] + b1 * mu[k]) + wd * p[k]
                mu[k] = b2 * mu[k] + (1 - b2) * g[k]
                p[k] = p[k] - lr * u
    return p


def plain_optax(family: str, hp=HP) -> optax.GradientTransformation:
    lr = lambda count: 0.1 * (0.5 + 0.1 * count)
    wd = optax.add_decayed_weights(hp["weight_decay"])
    inner = {
        "sgd": lambda: optax.chain(wd, optax.sgd(lr)),
        "momentum": lambda: optax.chain(wd, optax.sgd(lr, momentum=hp["momentum"])),
        "nesterov": lambda: optax.chain(wd, optax.sgd(lr, momentum=hp["momentum"],
                                                      nesterov=True)),
        "adam": lambda: optax.chain(wd, optax.adam(lr, hp["b1"], hp["b2"], hp["eps"])),
        "adamw": lambda: optax.adamw(lr, hp["b1"], hp["b2"], hp["eps"],
                                     weight_decay=hp["weight_decay"]),
        "rmsprop": lambda: optax.chain(wd, optax.rmsprop(lr, decay=hp["b2"], eps=hp["eps"],
                                                         momentum=hp["momentum"])),
        "lion": lambda: optax.lion(lr, hp["b1"], hp["b2"], weight_decay=hp["weight_decay"]),
    }[family]()
    return optax.chain(optax.clip_by_global_norm(hp["clip_norm"]), inner)


def run_transform(tx, per_step_lr: bool) -> dict:
    params = {k: jnp.asarray(v, jnp.float32) for k, v in P0.items()}
    state = tx.init(params)
    if per_step_lr:
        state = O.set_hyperparams(state, **HP)

    @jax.jit
    def step(params, state, lr):
        if per_step_lr:
            state = O.set_hyperparams(state, learning_rate=lr)
        g = jax.tree.map(lambda a, b, p: jnp.float32(a) * p + jnp.float32(b), A, B, params)
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(STEPS):
        params, state = step(params, state, lr_at(t))
    return params


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("family", O.OPTIMIZERS)
def test_family_matches_plain_optax_and_numpy(family):
    got = run_transform(O.make_optimizer(family), per_step_lr=True)
    ref_optax = run_transform(plain_optax(family), per_step_lr=False)
    ref_np = numpy_reference(family)
    for k in P0:
        np.testing.assert_allclose(got[k], ref_optax[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(got[k], ref_np[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the quadratic moved (so the comparison is not vacuous) and clipping was active
    # (lion's sign update is blind to a positive rescaling of the gradient)
    assert not np.allclose(got["w"], P0["w"])
    if family != "lion":
        assert not np.allclose(ref_np["w"], numpy_reference(family, clip=False)["w"])


def test_infinite_clip_norm_disables_clipping():
    hp = {**HP, "clip_norm": float("inf")}
    tx = O.make_optimizer("sgd")
    params = {k: jnp.asarray(v, jnp.float32) for k, v in P0.items()}
    state = O.set_hyperparams(tx.init(params), learning_rate=0.1, **hp)
    g = {k: jnp.asarray(grad(P0)[k], jnp.float32) * 1e3 for k in P0}
    updates, _ = jax.jit(tx.update)(g, state, params)
    for k in P0:
        expected = -0.1 * (np.asarray(g[k]) + hp["weight_decay"] * P0[k])
        np.testing.assert_allclose(updates[k], expected, rtol=1e-6)


def test_state_hyperparams_per_family():
    params = {"w": jnp.zeros(3)}
    for family in O.OPTIMIZERS:
        state = O.make_optimizer(family).init(params)
        assert set(state.hyperparams) == set(O.OPTIMIZER_HPARAMS[family])
    assert set(O.OPTIMIZER_HPARAMS) == set(O.OPTIMIZERS)
    assert O.make_optimizer("adam") is O.make_optimizer("adam")  # cached, static


def test_set_hyperparams_ignores_unknown_and_keeps_dtype():
    state = O.make_optimizer("sgd").init({"w": jnp.zeros(2)})
    new = O.set_hyperparams(state, learning_rate=np.float64(0.5), b1=0.3, not_a_name=1)
    assert set(new.hyperparams) == set(state.hyperparams)
    assert new.hyperparams["learning_rate"].dtype == state.hyperparams["learning_rate"].dtype
    assert float(new.hyperparams["learning_rate"]) == 0.5
    assert float(state.hyperparams["learning_rate"]) == 0.0  # not mutated


def test_unknown_family():
    with pytest.raises(ValueError, match=r"'optimizer'.*'adagrad'"):
        O.make_optimizer("adagrad")


@pytest.mark.parametrize("family", ["adamw", "momentum"])
def test_state_leaves_jit_vmap_and_trains_further(family):
    """A population state built and updated under jit(vmap) holds concrete arrays (no
    leaked tracers) that later jitted updates, batched or per member, accept."""
    tx = O.make_optimizer(family)
    params = {"w": jnp.asarray(P0["w"], jnp.float32)}
    lrs = jnp.asarray([0.01, 0.1, 0.3])

    def init(lr, wd):
        return O.set_hyperparams(tx.init(params), learning_rate=lr, weight_decay=wd, **{
            k: v for k, v in HP.items() if k != "weight_decay"})

    def step(p, s):
        g = {"w": jnp.asarray(A["w"], jnp.float32) * p["w"]}
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    states = jax.jit(jax.vmap(init))(lrs, jnp.asarray([0.0, 0.01, 0.1]))
    ps = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *x.shape)), params)
    ps, states = jax.jit(jax.vmap(step))(ps, states)
    for leaf in jax.tree.leaves(states):
        assert isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
    np.testing.assert_allclose(states.hyperparams["learning_rate"], lrs)
    # further training: batched, and member 1 alone in a differently traced program
    ps2, _ = jax.jit(jax.vmap(step))(ps, states)
    member = jax.tree.map(lambda x: x[1], (ps, states))
    p1, s1 = jax.jit(step)(*member)
    chex.assert_trees_all_close(p1, jax.tree.map(lambda x: x[1], ps2), rtol=1e-6)
    chex.assert_tree_all_finite((ps2, p1))
    # the members differ only by their state's hyperparameters
    assert not np.allclose(ps2["w"][0], ps2["w"][2])
    assert float(s1.hyperparams["learning_rate"]) == pytest.approx(0.1)


def test_docstring_examples():
    result = doctest.testmod(O, verbose=False)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("family", ["sgd", "momentum", "adam", "rmsprop"])
def test_parts_no_member_uses_are_left_out(family):
    """Without clipping and coupled decay the transformation is the plain optax one."""
    params = {k: jnp.asarray(v, jnp.float32) for k, v in P0.items()}
    lean = O.make_optimizer(family, clip=False, coupled_decay=False)
    state = O.set_hyperparams(lean.init(params), **HP, learning_rate=0.05)
    plain = {"sgd": lambda: optax.sgd(0.05),
             "momentum": lambda: optax.sgd(0.05, momentum=HP["momentum"]),
             "adam": lambda: optax.adam(0.05, HP["b1"], HP["b2"], HP["eps"]),
             "rmsprop": lambda: optax.rmsprop(0.05, decay=HP["b2"], eps=HP["eps"],
                                              momentum=HP["momentum"])}[family]()
    ref_state = plain.init(params)
    g = jax.tree.map(lambda p: 0.3 * p + 0.1, params)
    u, state = lean.update(g, state, params)
    v, ref_state = plain.update(g, ref_state, params)
    chex.assert_trees_all_close(u, v, rtol=1e-6)


# --------------------------------------------------------------------------- unions of families


@pytest.mark.parametrize("layout", ["moments", "tuple"])
def test_union_member_trains_as_its_family_alone(layout):
    """One jit(vmap) program of the union of all seven families, one member per family:
    each member matches its family alone, the plain optax optimizer and the float64
    reference (clipping and coupled decay active, hyperparameters in the state)."""
    union = O.make_optimizer(O.OPTIMIZERS, layout=layout)
    n = len(O.OPTIMIZERS)
    params = {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n, *v.shape))
              for k, v in P0.items()}

    def init(p, family):
        return O.set_hyperparams(union.init(p), **HP, family=family)

    @jax.jit
    @jax.vmap
    def step(p, state, lr):
        state = O.set_hyperparams(state, learning_rate=lr)
        g = jax.tree.map(lambda a, b, x: jnp.float32(a) * x + jnp.float32(b), A, B, p)
        updates, state = union.update(g, state, p)
        return optax.apply_updates(p, updates), state

    state = jax.jit(jax.vmap(init))(params, jnp.arange(n))
    for t in range(STEPS):
        params, state = step(params, state, jnp.full((n,), lr_at(t)))
    np.testing.assert_array_equal(state.hyperparams["family"], np.arange(n))
    for i, family in enumerate(O.OPTIMIZERS):
        got = {k: np.asarray(v[i]) for k, v in params.items()}
        alone = run_transform(O.make_optimizer(family), per_step_lr=True)
        ref_optax = run_transform(plain_optax(family), per_step_lr=False)
        ref_np = numpy_reference(family)
        for k in P0:
            np.testing.assert_allclose(got[k], alone[k], rtol=1e-6, atol=1e-7, err_msg=family)
            np.testing.assert_allclose(got[k], ref_optax[k], rtol=1e-5, atol=1e-6,
                                       err_msg=family)
            np.testing.assert_allclose(got[k], ref_np[k], rtol=1e-5, atol=1e-6, err_msg=family)


def test_union_state_holds_only_its_families():
    params = {"w": jnp.zeros(3)}
    families = ("adamw", "nesterov")
    union = O.make_optimizer(families, layout="tuple")
    state = union.init(params)
    assert set(state.hyperparams) == set(O.union_hparams(families)) == {
        *O.OPTIMIZER_HPARAMS["adamw"], *O.OPTIMIZER_HPARAMS["nesterov"], "family"}
    assert state.hyperparams["family"].dtype == jnp.int32
    # clipping, then one state per family: the same structure as each family alone
    per_family = state.inner_state[-1]
    assert len(per_family) == len(families)
    for family, inner in zip(families, per_family):
        alone = O.make_optimizer(family, clip=False).init(params).inner_state
        assert jax.tree.structure(inner) == jax.tree.structure(alone)
    assert O.make_optimizer(["adamw", "nesterov"], layout="tuple") is union  # cached, static
    # shared moments: one first moment (adamw's mu, nesterov's trace) and adamw's nu
    shared = O.make_optimizer(families).init(params)
    assert set(shared.hyperparams) == set(O.union_hparams(families))
    moments = shared.inner_state[-1]
    assert moments.mu is not None and moments.nu is not None and moments.count is not None
    lean = O.make_optimizer(("sgd", "nesterov")).init(params).inner_state[-1]
    assert lean.mu is not None and lean.nu is None and lean.count is None
    assert O.make_optimizer(("sgd",)) is O.make_optimizer("sgd")  # a union of one: the family


def test_union_other_families_states_stay_at_init():
    """A member's update touches only its own family's state (lax.switch)."""
    union = O.make_optimizer(("momentum", "adam"), clip=False, coupled_decay=False,
                             layout="tuple")
    params = {"w": jnp.asarray(P0["w"], jnp.float32)}
    state = O.set_hyperparams(union.init(params), learning_rate=0.1, momentum=0.9, family=0)
    g = {"w": jnp.ones(3)}
    _, state = jax.jit(union.update)(g, state, params)
    trace, adam = state.inner_state[-1]
    np.testing.assert_allclose(jax.tree.leaves(trace)[0], np.ones(3))
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(adam))


@pytest.mark.parametrize(("families", "kwargs", "match"), [
    (("adamw", "adagrad"), {}, r"'optimizer'.*'adagrad'"),
    (("adamw", "adamw"), {}, "repeat"),
    ((), {}, "no family"),
    (("adamw", "sgd"), {"coupled_decay": (True,)}, "coupled_decay"),
    (("adamw", "sgd"), {"layout": "dict"}, "layout"),
])
def test_union_validation(families, kwargs, match):
    with pytest.raises(ValueError, match=match):
        O.make_optimizer(families, **kwargs)
