"""Tests for jaxtune.schedules against independent float64 numpy references."""

from __future__ import annotations

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune import schedules as S

RTOL, ATOL = 1e-5, 1e-7

# Integer steps through and past every schedule end, plus a few fractional/far steps.
STEPS = np.concatenate([np.arange(0, 111), [2.5, 7.25, 333.0, 1000.0]]).astype(np.float64)
K = 3


# --------------------------------------------------------------------------- references
# Written independently of the module (scalar Python, float64), following the spec.
# Lengths below one step count as one step (the module's documented guard).


def _frac(s, n):
    return min(max(s / max(n, 1.0), 0.0), 1.0)


def ref_constant(s, value):
    return value


def ref_linear(s, init, end, n):
    return init + (end - init) * _frac(s, n)


def ref_cosine(s, init, end, n):
    return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * _frac(s, n)))


def ref_exponential(s, init, rate, n):
    return init * rate ** _frac(s, n)


def ref_piecewise(s, init, boundaries, scales):
    value = init
    for b, sc in zip(boundaries, scales, strict=True):
        if s >= b:
            value *= sc
    return value


def _annealing_cos(start, stop, pct):  # as torch.optim.lr_scheduler.OneCycleLR
    return stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def ref_one_cycle(s, peak, total, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    initial = peak / div_factor
    final = initial / final_div_factor
    up_end = pct_start * total
    if s < up_end:
        return _annealing_cos(initial, peak, _frac(s, up_end))
    return _annealing_cos(peak, final, _frac(s - up_end, total - up_end))


def ref_triangular(s, low, high, cycle):
    c = max(cycle, 1.0)
    half = c / 2.0
    pos = s - c * math.floor(s / c)
    if pos <= half:
        return low + (high - low) * pos / half
    return high - (high - low) * (pos - half) / half


def ref_inverse_sqrt(s, peak, timescale):
    ts = max(timescale, 1.0)
    return peak if s <= ts else peak / math.sqrt(s / ts)


def ref_knots(s, values, n):
    pos = _frac(s, n) * (len(values) - 1)
    i = min(int(math.floor(pos)), len(values) - 2)
    return values[i] + (values[i + 1] - values[i]) * (pos - i)


def ref_with_warmup(s, w, fn):
    if s < w:
        return fn(0.0) * s / w
    return fn(s - w)


def ref_family(name, s, m):
    """Reference value of family ``name`` for member ``m`` (a dict of floats/arrays)."""
    w, peak, end = m["warmup_steps"], m["peak"], m["end"]
    d = m["total_steps"] - w
    shapes = {
        "constant": lambda t: peak,
        "linear": lambda t: ref_linear(t, peak, end, d),
        "cosine": lambda t: ref_cosine(t, peak, end, d),
        "exponential": lambda t: ref_exponential(t, peak, m["decay_rate"], d),
        "step": lambda t: ref_piecewise(
            t, peak, m["boundaries"], [m["step_factor"]] * len(m["boundaries"])
        ),
        "one_cycle": lambda t: ref_one_cycle(t, peak, d),
        "cyclic": lambda t: ref_triangular(t, end, peak, m["cycle_steps"]),
        "knots": lambda t: peak * ref_knots(t, m.get("knots", [1.0, 1.0]), d),
    }
    if name == "inverse_sqrt":  # transformer rule on the raw step
        if s < w:
            return peak * s / w
        ts = max(w, 1.0)
        return peak * math.sqrt(ts / max(s, ts))
    return ref_with_warmup(s, w, shapes[name])


# --------------------------------------------------------------------------- populations

# Nine members (one per family), every argument different per member; member 4 has zero
# warmup and zero total (zero-length decay), member 6 has total == warmup, member 5 a
# fractional warmup.
POP = {
    "peak": [1e-3, 3e-2, 0.5, 1.0, 0.2, 5e-3, 0.07, 0.9, 0.3],
    "end": [0.0, 1e-4, 0.05, 0.1, 0.0, 1e-3, 0.01, 0.3, 0.02],
    "warmup_steps": [0.0, 5.0, 10.0, 3.0, 0.0, 7.5, 20.0, 12.0, 4.0],
    "total_steps": [40.0, 60.0, 10.0, 80.0, 0.0, 50.0, 20.0, 90.0, 70.0],
    "decay_rate": [0.1, 0.5, 0.01, 0.9, 0.3, 0.2, 0.05, 0.6, 0.4],
    "boundaries": [
        [10, 20, 30],
        [0, 25, 50],
        [5, 5, 40],
        [30, 10, 60],
        [0, 0, 0],
        [15, 35, 45],
        [1, 2, 3],
        [50, 70, 100],
        [20, 40, 60],
    ],
    "step_factor": [0.1, 0.5, 0.3, 0.2, 0.9, 0.25, 0.7, 0.4, 0.5],
    "cycle_steps": [10.0, 16.0, 7.0, 0.0, 1.0, 25.0, 12.5, 30.0, 9.0],
    "knots": [
        [1.0, 0.5, 0.1, 0.0],
        [0.2, 1.0, 1.0, 0.3],
        [1.0, 1.0, 1.0, 1.0],
        [0.0, 2.0, 0.5, 0.01],
        [0.7, 0.1, 0.9, 0.2],
        [1.0, 0.0, 1.0, 0.0],
        [0.3, 0.3, 0.6, 0.9],
        [1.5, 1.0, 0.5, 0.25],
        [0.5, 1.0, 0.2, 0.0],
    ],
}
P = len(POP["peak"])


def _member(i, pop=POP):
    return {
        k: (list(map(float, v[i])) if k in ("boundaries", "knots") else float(v[i]))
        for k, v in pop.items()
    }


def _args(pop=POP):
    return S.ScheduleArgs(**{k: jnp.asarray(v, jnp.float32) for k, v in pop.items()})


def _ref_population(names, pop=POP, steps=STEPS):
    return np.array(
        [[ref_family(names[i], s, _member(i, pop)) for s in steps] for i in range(len(names))]
    )


# One compiled program shared by every test that evaluates the full family switch on the
# population (the family index is a traced, per-member input).
_POP_FAMILY = jax.jit(
    jax.vmap(lambda f, a: S.schedule_value(f, jnp.asarray(STEPS, jnp.float32), a))
)


# --------------------------------------------------------------------------- primitives

PRIM_P = 6
PRIM = {
    "init": np.array([1.0, 0.3, 2e-3, 0.05, 0.8, 0.6]),
    "end": np.array([0.0, 0.03, 1e-5, 0.1, 0.2, 0.6]),
    "n": np.array([50.0, 0.0, 1.0, 17.5, 100.0, 64.0]),
    "rate": np.array([0.1, 0.5, 0.01, 0.9, 0.001, 1.0]),
    "boundaries": np.array(
        [[10, 20, 30], [0, 50, 100], [40, 5, 5], [0, 0, 0], [200, 300, 400], [7, 33, 64]],
        dtype=np.float64,
    ),
    "scales": np.array(
        [
            [0.5, 0.5, 0.5],
            [0.1, 0.2, 0.3],
            [2.0, 0.1, 0.7],
            [0.9, 0.9, 0.9],
            [0.1, 0.1, 0.1],
            [1.5, 0.25, 0.01],
        ]
    ),
    "total": np.array([100.0, 40.0, 0.0, 10.0, 73.0, 1.0]),
    "pct": np.array([0.3, 0.25, 0.5, 0.1, 0.45, 0.3]),
    "div": np.array([25.0, 10.0, 4.0, 100.0, 25.0, 2.0]),
    "fdiv": np.array([1e4, 100.0, 1.0, 1e3, 10.0, 5.0]),
    "cycle": np.array([20.0, 0.0, 7.0, 12.5, 1.0, 50.0]),
    "timescale": np.array([10.0, 0.0, 1.0, 37.5, 100.0, 4.0]),
    "warmup": np.array([0.0, 10.0, 2.5, 1.0, 50.0, 120.0]),
}

PRIMITIVES = {
    "constant": (S.constant, ref_constant, ("init",)),
    "linear_decay": (S.linear_decay, ref_linear, ("init", "end", "n")),
    "cosine_decay": (S.cosine_decay, ref_cosine, ("init", "end", "n")),
    "exponential_decay": (S.exponential_decay, ref_exponential, ("init", "rate", "n")),
    "piecewise_constant": (S.piecewise_constant, ref_piecewise, ("init", "boundaries", "scales")),
    "one_cycle": (S.one_cycle, ref_one_cycle, ("init", "total", "pct", "div", "fdiv")),
    "one_cycle_defaults": (S.one_cycle, ref_one_cycle, ("init", "total")),
    "triangular": (S.triangular, ref_triangular, ("end", "init", "cycle")),
    "inverse_sqrt": (S.inverse_sqrt, ref_inverse_sqrt, ("init", "timescale")),
    "knots": (S.knots, ref_knots, ("scales", "total")),
    "with_warmup": (
        lambda s, w, i, e, n: S.with_warmup(s, w, lambda t: S.cosine_decay(t, i, e, n)),
        lambda s, w, i, e, n: ref_with_warmup(s, w, lambda t: ref_cosine(t, i, e, n)),
        ("warmup", "init", "end", "n"),
    ),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_primitive_matches_reference(name):
    fn, ref, keys = PRIMITIVES[name]
    arrays = [jnp.asarray(PRIM[k], jnp.float32) for k in keys]
    steps = jnp.asarray(STEPS, jnp.float32)
    got = jax.jit(jax.vmap(lambda *a: fn(steps, *a)))(*arrays)
    assert got.shape == (PRIM_P, len(STEPS))
    assert got.dtype == jnp.float32
    want = np.array([[ref(s, *(PRIM[k][i] for k in keys)) for s in STEPS] for i in range(PRIM_P)])
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=ATOL)


def test_primitive_shapes_and_known_values():
    # Eager (no jit), scalar and int inputs.
    assert S.constant(3, 0.25).shape == ()
    assert S.constant(3, 0.25).dtype == jnp.float32
    v = S.linear_decay(jnp.arange(4, dtype=jnp.int32), 1.0, 0.0, 2)
    np.testing.assert_allclose(v, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(S.exponential_decay(np.array([0, 10, 20]), 2.0, 0.5, 10), [2, 1, 1])
    np.testing.assert_allclose(S.triangular(np.array([0, 5, 10, 15]), 1.0, 3.0, 10), [1, 3, 1, 3])
    # Empty boundaries: constant init.
    np.testing.assert_allclose(S.piecewise_constant(np.arange(3), 0.5, np.zeros(0), []), 0.5)
    with pytest.raises(ValueError, match="one entry per boundary"):
        S.piecewise_constant(0, 1.0, [1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="1-D"):
        S.piecewise_constant(0, 1.0, 3.0, 0.5)


# --------------------------------------------------------------------------- families


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_family_matches_reference(name):
    index = jnp.full((P,), S.family_index(name), jnp.int32)
    got = _POP_FAMILY(index, _args())
    assert got.shape == (P, len(STEPS))
    assert got.dtype == jnp.float32
    want = _ref_population([name] * P)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=ATOL)


def test_mixed_family_population():
    names = [
        "one_cycle",
        "cyclic",
        "constant",
        "inverse_sqrt",
        "step",
        "cosine",
        "linear",
        "exponential",
        "knots",
    ]
    index = jnp.asarray([S.family_index(n) for n in names], jnp.int32)
    got = _POP_FAMILY(index, _args())
    np.testing.assert_allclose(
        np.asarray(got, np.float64), _ref_population(names), rtol=RTOL, atol=ATOL
    )


def test_traced_scalar_family_index_selects_branch():
    member = {k: np.asarray(v[3]) for k, v in POP.items()}
    args = S.ScheduleArgs(**{k: jnp.asarray(v, jnp.float32) for k, v in member.items()})
    steps = jnp.asarray(STEPS, jnp.float32)
    pick = jax.jit(lambda f: S.schedule_value(f, steps, args))  # unbatched lax.switch
    for i, name in enumerate(S.SCHEDULES):
        got = pick(jnp.int32(i))
        want = [ref_family(name, s, _member(3)) for s in STEPS]
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=ATOL)


def test_families_subset_and_order():
    fams = ("step", "one_cycle", "constant")
    index = jnp.asarray([0, 1, 2, 1, 0, 2, 1, 0, 2], jnp.int32)
    steps = jnp.asarray(STEPS, jnp.float32)
    fn = jax.jit(jax.vmap(lambda f, a: S.schedule_value(f, steps, a, families=fams)))
    got = fn(index, _args())
    names = [fams[int(i)] for i in index]
    np.testing.assert_allclose(
        np.asarray(got, np.float64), _ref_population(names), rtol=RTOL, atol=ATOL
    )


def test_switch_only_over_requested_families():
    args = S.ScheduleArgs(*(jnp.float32(1.0),) * 5, jnp.ones(2), jnp.float32(0.5), jnp.float32(4))
    jaxpr_multi = jax.make_jaxpr(lambda f: S.schedule_value(f, 3, args, ("cosine", "step")))
    multi = jaxpr_multi(jnp.int32(0)).jaxpr
    conds = [e for e in multi.eqns if e.primitive.name == "cond"]
    assert len(conds) == 1 and len(conds[0].params["branches"]) == 2
    single = jax.make_jaxpr(lambda f: S.schedule_value(f, 3, args, ("cosine",)))(jnp.int32(0))
    assert all(e.primitive.name != "cond" for e in single.jaxpr.eqns)
    # A single family also accepts a bare string for `families`.
    a = S.schedule_value(0, 3, args, "cosine")
    b = S.schedule_value(0, 3, args, ("cosine",))
    assert float(a) == float(b)


def test_family_names_and_errors():
    assert S.SCHEDULES == (
        "constant",
        "linear",
        "cosine",
        "exponential",
        "step",
        "one_cycle",
        "cyclic",
        "inverse_sqrt",
        "knots",
    )
    assert [S.family_index(n) for n in S.SCHEDULES] == list(range(len(S.SCHEDULES)))
    assert S.family_index("cosine", families=("step", "cosine")) == 1
    with pytest.raises(ValueError, match=r"'warmup_cosine'.*valid families.*cosine"):
        S.family_index("warmup_cosine")
    with pytest.raises(ValueError, match="not among"):
        S.family_index("linear", families=("cosine", "step"))
    args = _args()
    with pytest.raises(ValueError, match=r"'bogus'.*valid families.*one_cycle"):
        S.schedule_value(0, 0, args, families=("cosine", "bogus"))
    with pytest.raises(ValueError, match="at least one"):
        S.schedule_value(0, 0, args, families=())
    with pytest.raises(ValueError, match="out of range"):
        S.schedule_value(5, 0, args, families=("cosine", "linear"))
    with pytest.raises(ValueError, match="1-D"):
        S.schedule_value(0, 0, args._replace(boundaries=jnp.float32(3.0)))


def test_family_name_and_scalar_step():
    m = _member(1)
    args = S.ScheduleArgs(**{k: np.asarray(v) for k, v in m.items()})
    out = jax.jit(lambda s: S.schedule_value("cosine", s, args))(jnp.int32(30))
    assert out.shape == () and out.dtype == jnp.float32
    np.testing.assert_allclose(float(out), ref_family("cosine", 30.0, m), rtol=RTOL)


def test_zero_lengths_are_finite():
    # Every length zero (warmup, decay, cycle, boundaries); member i uses family i.
    member = {"peak": 0.5, "decay_rate": 0.1, "boundaries": [0.0, 0.0, 0.0], "step_factor": 0.5}
    member |= dict.fromkeys(("end", "warmup_steps", "total_steps", "cycle_steps"), 0.0)
    pop = {k: [v] * len(S.SCHEDULES) for k, v in member.items()}
    got = np.asarray(_POP_FAMILY(jnp.arange(len(S.SCHEDULES), dtype=jnp.int32), _args(pop)))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _ref_population(list(S.SCHEDULES), pop), rtol=RTOL, atol=ATOL)
    # Zero warmup: value at step 0 is the family's start; zero decay: final value from step 1.
    lin = got[S.family_index("linear")]
    assert lin[0] == pytest.approx(0.5) and lin[1] == 0.0 and lin[-1] == 0.0


def test_grad_wrt_peak_is_finite_and_correct():
    steps = jnp.asarray(STEPS, jnp.float32)

    def total(peak, a, f):
        return jnp.sum(S.schedule_value(f, steps, a._replace(peak=peak)))

    args = _args()  # member i uses family i; members 4 and 6 have zero-length decays
    grads = jax.jit(jax.vmap(jax.grad(total)))(args.peak, args, jnp.arange(P, dtype=jnp.int32))
    assert np.isfinite(np.asarray(grads)).all()
    # Every family is affine in peak, so a central difference of the reference is exact.
    for i, name in enumerate(S.SCHEDULES):
        m = _member(i)
        h = 0.25 * m["peak"]
        hi = sum(ref_family(name, s, {**m, "peak": m["peak"] + h}) for s in STEPS)
        lo = sum(ref_family(name, s, {**m, "peak": m["peak"] - h}) for s in STEPS)
        assert float(grads[i]) == pytest.approx((hi - lo) / (2 * h), rel=1e-4), name


def test_docstring_examples():
    result = doctest.testmod(S, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_knots_need_two_values_and_default_to_a_constant():
    with pytest.raises(ValueError, match="at least two knot values"):
        S.knots(0, [1.0], 10)
    args = S.ScheduleArgs(peak=0.5, end=0.0, warmup_steps=0, total_steps=10, decay_rate=0.1,
                          boundaries=jnp.array([5.0]), step_factor=0.1, cycle_steps=4)
    np.testing.assert_allclose(S.schedule_value("knots", jnp.arange(12), args), 0.5)
    with pytest.raises(ValueError, match="K >= 2"):
        S.schedule_value("knots", 0, args._replace(knots=jnp.ones(1)))


def test_knot_values_have_their_own_gradient():
    # d value / d knot_i: the linear interpolation weights, (1 - frac) and frac
    step, total = 7.5, 30.0          # position 0.25 * 3 = 0.75 between knots 0 and 1
    grad = jax.grad(lambda v: S.knots(step, v, total))(jnp.ones(4))
    np.testing.assert_allclose(grad, [0.25, 0.75, 0.0, 0.0], rtol=1e-6)
