"""Tests for jaxtune.space: dimensions, validation, sampling, stacking, buckets, specs."""

from __future__ import annotations

import doctest
import json
import math

import jax
import numpy as np
import pytest

import jaxtune.space as S
from jaxtune import Choice, Int, Real, Space


def mixed_space() -> Space:
    return Space(
        lr=Real(1e-5, 1e-1, log=True),
        momentum=Real(0.0, 0.99),
        batch_size=Int(8, 64),
        width=Int(16, 1024, log=True, static=True),
        schedule=Choice(["cosine", "constant", "step"]),
        dropout=Choice([0.0, 0.1, 0.5]),
        residual=Choice([True, False], static=True),
    )


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(("build", "match"), [
    (lambda: Space(lr=Real(1.0, 1.0)), r"'lr'.*low \(1.0\) must be < high"),
    (lambda: Space(lr=Real(2.0, 1.0)), "'lr'"),
    (lambda: Space(lr=Real(0.0, 1.0, log=True)), "'lr'.*log=True needs low > 0"),
    (lambda: Space(lr=Real(-1.0, 1.0, log=True)), "'lr'"),
    (lambda: Space(lr=Real(0.0, math.inf)), "'lr'.*finite"),
    (lambda: Space(n=Int(1.5, 3)), "'n'.*integers"),
    (lambda: Space(n=Int(0, 10, log=True)), "'n'"),
    (lambda: Space(n=Int(5, 5)), "'n'"),
    (lambda: Space(act=Choice([])), "'act'.*at least one"),
    (lambda: Space(act=Choice(["relu", "relu"])), "'act'.*distinct"),
    (lambda: Space({"lr": Real(0.1, 1.0)}, lr=Real(0.1, 1.0)), "'lr' is defined twice"),
    (lambda: Space({"my-lr": Real(0.1, 1.0)}), "'my-lr'.*identifier"),
    (lambda: Space(lr=(0.1, 1.0)), "'lr'.*Real, Int or Choice"),
    (lambda: Space(), "at least one"),
])
def test_invalid_spaces(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_names_and_mapping():
    space = mixed_space()
    assert space.names == ("lr", "momentum", "batch_size", "width", "schedule", "dropout",
                           "residual")
    assert space.static_names == ("width", "residual")
    assert space.traced_names == ("lr", "momentum", "batch_size", "schedule", "dropout")
    assert len(space) == 7 and "lr" in space and "nope" not in space
    assert list(space) == list(space.names)
    assert isinstance(space["width"], Int)
    assert "Space(lr=Real(" in repr(space)


# --------------------------------------------------------------------------- validation


def test_validate_canonicalises():
    space = mixed_space()
    cfg = space.validate({"lr": "0.01", "momentum": 0, "batch_size": 16.0, "width": 32,
                          "schedule": "step", "dropout": 0.1, "residual": False})
    assert cfg["lr"] == 0.01 and isinstance(cfg["lr"], float)
    assert cfg["batch_size"] == 16 and isinstance(cfg["batch_size"], int)
    assert isinstance(cfg["momentum"], float)
    assert cfg["residual"] is False
    assert list(cfg) == list(space.names)


@pytest.mark.parametrize(("change", "match"), [
    ({"lr": 1.0}, r"'lr'.*outside"),
    ({"lr": "fast"}, "'lr'.*real number"),
    ({"batch_size": 7}, "'batch_size'.*outside"),
    ({"batch_size": 65}, "'batch_size'"),
    ({"batch_size": 8.5}, "'batch_size'.*integer"),
    ({"batch_size": True}, "'batch_size'.*integer"),
    ({"schedule": "linear"}, "'schedule'.*not one of"),
    ({"residual": 1}, "'residual'"),           # 1 is not True for a Choice of booleans
    ({"dropout": 0.2}, "'dropout'"),
    ({"extra": 1}, "unknown hyperparameter 'extra'"),
])
def test_validate_rejects(change, match):
    space = mixed_space()
    good = space.sample(1, seed=0)[0]
    with pytest.raises(ValueError, match=match):
        space.validate({**good, **change})


def test_validate_missing_and_all():
    space = mixed_space()
    good = space.sample(2, seed=0)
    bad = dict(good[1])
    del bad["lr"]
    with pytest.raises(ValueError, match="missing hyperparameter 'lr'"):
        space.validate(bad)
    with pytest.raises(ValueError, match=r"configuration 1: .*'lr'"):
        space.validate_all([good[0], bad])
    with pytest.raises(ValueError, match="no configurations"):
        space.validate_all([])
    with pytest.raises(ValueError, match="dict"):
        space.validate([("lr", 0.1)])


@pytest.mark.parametrize("value", [None, "abc"])
def test_int_check_rejects_non_numbers_naming_hyperparameter(value):
    with pytest.raises(ValueError, match="'batch_size'"):
        Space(batch_size=Int(8, 64)).validate({"batch_size": value})


# --------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_by_seed_generator_and_key():
    space = mixed_space()
    a = space.sample(20, seed=3)
    assert a == space.sample(20, seed=3)
    assert a != space.sample(20, seed=4)
    assert a == space.sample(20, seed=np.random.default_rng(3))
    k = space.sample(20, seed=jax.random.key(7))
    assert k == space.sample(20, seed=jax.random.key(7))
    assert k != space.sample(20, seed=jax.random.key(8))
    # a raw uint32 key and the typed key with the same bits agree
    assert space.sample(5, seed=jax.random.PRNGKey(7)) == space.sample(5, seed=jax.random.key(7))
    # a shared generator advances: two draws differ
    rng = np.random.default_rng(0)
    assert space.sample(3, seed=rng) != space.sample(3, seed=rng)
    for cfg in a + k:
        assert space.validate(cfg) == cfg


def test_log_uniform_covers_decades():
    space = Space(lr=Real(1e-5, 1e-1, log=True), n=Int(1, 1000, log=True))
    cfgs = space.sample(4000, seed=0)
    lr = np.log10([c["lr"] for c in cfgs])
    assert lr.min() >= -5 and lr.max() <= -1
    np.testing.assert_allclose(np.quantile(lr, [0.1, 0.25, 0.5, 0.75, 0.9]),
                               [-4.6, -4.0, -3.0, -2.0, -1.4], atol=0.12)
    counts = np.histogram(lr, bins=[-5, -4, -3, -2, -1])[0] / len(lr)
    np.testing.assert_allclose(counts, 0.25, atol=0.03)
    n = np.asarray([c["n"] for c in cfgs])
    assert n.min() == 1 and 900 < n.max() <= 1000
    assert 20 < np.median(n) < 45  # about sqrt(1000)
    assert np.mean(n < 10) == pytest.approx(np.log(9.5 / 0.5) / np.log(1000.5 / 0.5), abs=0.03)


def test_uniform_real_and_int_inclusive_bounds():
    space = Space(x=Real(-2.0, 6.0), k=Int(1, 3), c=Choice(["a", "b", "c", "d"]))
    cfgs = space.sample(3000, seed=1)
    x = np.asarray([c["x"] for c in cfgs])
    assert x.min() >= -2.0 and x.max() <= 6.0
    assert np.mean(x) == pytest.approx(2.0, abs=0.15)
    k = np.asarray([c["k"] for c in cfgs])
    assert set(k.tolist()) == {1, 2, 3}
    np.testing.assert_allclose(np.bincount(k)[1:] / len(k), 1 / 3, atol=0.03)
    letters = [c["c"] for c in cfgs]
    for v in "abcd":
        assert letters.count(v) / len(letters) == pytest.approx(0.25, abs=0.03)


def test_unit_cube_round_trip():
    space = mixed_space()
    for cfg in space.sample(50, seed=2):
        u = space.to_unit(cfg)
        assert u.shape == (len(space),) and np.all((u >= 0) & (u <= 1))
        back = space.from_unit(u)
        assert back["schedule"] == cfg["schedule"] and back["residual"] == cfg["residual"]
        assert back["batch_size"] == cfg["batch_size"] and back["width"] == cfg["width"]
        assert back["lr"] == pytest.approx(cfg["lr"], rel=1e-9)
    assert Real(1e-4, 1e-1, log=True).from_unit(0.0) == pytest.approx(1e-4, rel=1e-12)
    assert 1e-4 <= Real(1e-4, 1e-1, log=True).from_unit(-0.5) <= 1.0001e-4
    assert Real(1e-4, 1e-1, log=True).from_unit(1.0) == pytest.approx(1e-1, rel=1e-12)
    assert Real(1e-4, 1e-1, log=True).from_unit(1.5) <= 1e-1
    assert Int(1, 4, log=True).from_unit(0.0) == 1 and Int(1, 4, log=True).from_unit(1.0) == 4
    assert Int(16, 512, log=True).from_unit(0.0) == 16
    assert Int(16, 512, log=True).from_unit(1.0) == 512
    assert Choice(["a", "b"]).from_unit(1.0) == "b"
    with pytest.raises(ValueError, match="coordinates"):
        space.from_unit([0.5])


# --------------------------------------------------------------------------- stack, buckets


def test_stack_dtypes_and_values():
    space = mixed_space()
    cfgs = [
        {"lr": 0.01, "momentum": 0.9, "batch_size": 32, "width": 64, "schedule": "step",
         "dropout": 0.1, "residual": True},
        {"lr": 0.001, "momentum": 0.5, "batch_size": 8, "width": 64, "schedule": "cosine",
         "dropout": 0.5, "residual": True},
    ]
    arrays = space.stack(cfgs)
    assert set(arrays) == set(space.traced_names)  # static values are not stacked
    assert arrays["lr"].dtype == np.float32 and arrays["momentum"].dtype == np.float32
    assert arrays["batch_size"].dtype == np.int32
    assert arrays["schedule"].dtype == np.int32  # index into the Choice's values
    np.testing.assert_array_equal(arrays["schedule"], [2, 0])
    assert arrays["dropout"].dtype == np.float32  # numeric choice: the value itself
    np.testing.assert_allclose(arrays["dropout"], [0.1, 0.5])
    np.testing.assert_array_equal(arrays["batch_size"], [32, 8])
    np.testing.assert_allclose(arrays["lr"], [0.01, 0.001])
    assert all(a.shape == (2,) for a in arrays.values())
    # booleans are not numeric: a traced boolean Choice stacks as an index
    b = Space(flag=Choice([False, True])).stack([{"flag": True}, {"flag": False}])
    np.testing.assert_array_equal(b["flag"], [1, 0])
    assert b["flag"].dtype == np.int32


def test_buckets_group_by_static_values():
    space = mixed_space()
    cfgs = space.sample(30, seed=5)
    for c in cfgs[::3]:
        c["width"], c["residual"] = 64, True
    buckets = space.buckets(cfgs)
    assert sorted(i for idx in buckets.values() for i in idx) == list(range(30))
    for key, idx in buckets.items():
        assert all(space.static_key(cfgs[i]) == key for i in idx)
        assert idx == sorted(idx)
        assert [n for n, _ in key] == ["width", "residual"]
    assert buckets[(("width", 64), ("residual", True))][:3] == [0, 3, 6]
    # insertion order: the first configuration's bucket comes first
    assert next(iter(buckets)) == space.static_key(cfgs[0])
    traced_only = Space(lr=Real(0.1, 1.0))
    assert traced_only.buckets([{"lr": 0.2}, {"lr": 0.3}]) == {(): [0, 1]}


def test_spec_round_trip():
    space = mixed_space()
    spec = json.loads(json.dumps(space.spec()))
    back = Space.from_spec(spec)
    assert back == space
    assert back.static_names == space.static_names
    assert back["residual"].values == (True, False)
    assert back.sample(5, seed=1) == space.sample(5, seed=1)
    assert space != Space(lr=Real(1e-5, 1e-1))
    with pytest.raises(ValueError, match=r"'x'.*unknown dimension type"):
        Space.from_spec({"x": {"type": "normal"}})


# --------------------------------------------------------------------------- conversions


def test_dimension_keys_points_and_types():
    lr, n, sched = Real(1e-4, 1e-1, log=True), Int(2, 9, log=True), Choice(["a", "b", "c"])
    assert lr.key(0.1 + 1e-15) == 0.1 and lr.key(1 / 3) == 0.333333333333
    assert n.key(5.0) == 5 and type(n.key(5.0)) is int
    assert sched.key("c") == 2
    assert lr.to_point(0.01) == 0.01 and n.to_point(4) == 4 and sched.to_point("b") == 1
    # back from a coordinate: Python types, clipped to the bounds
    assert lr.from_point(5.0) == 0.1 and lr.from_point(-1.0) == 1e-4
    assert type(lr.from_point(np.float64(0.01))) is float
    assert n.from_point(3.6) == 4 and n.from_point(100) == 9 and type(n.from_point(3.6)) is int
    assert sched.from_point(np.int64(2)) == "c" and sched.from_point(7) == "c"
    assert lr.point_key(5.0) == 0.1 and n.point_key(3.6) == 4 and sched.point_key(1) == 1


def test_dimension_skopt_dimensions():
    from skopt.space import Categorical, Integer
    from skopt.space import Real as SkReal

    space = Space(lr=Real(1e-4, 1e-1, log=True), m=Real(0.0, 0.9), n=Int(2, 9, log=True),
                  k=Int(1, 3), c=Choice([0.5, "x", True]))
    dims = space.skopt_dimensions()
    assert [type(d) for d in dims] == [SkReal, SkReal, Integer, Integer, Categorical]
    assert [d.name for d in dims] == list(space.names)
    assert [getattr(d, "prior", None) for d in dims[:4]] == ["log-uniform", "uniform",
                                                             "log-uniform", "uniform"]
    assert (dims[0].low, dims[0].high) == (1e-4, 1e-1) and (dims[2].low, dims[2].high) == (2, 9)
    assert list(dims[4].categories) == [0, 1, 2]  # indices, not values


def test_dimension_cardinality_values_extremes():
    assert Real(0.0, 1.0).cardinality == math.inf
    assert Int(3, 7).cardinality == 5 and Choice("xyz").cardinality == 3
    assert Int(3, 5).all_values() == [3, 4, 5] and Choice([1, "a"]).all_values() == [1, "a"]
    with pytest.raises(ValueError, match="no finite list"):
        Real(0.0, 1.0).all_values()
    assert Real(0.1, 2.0).extremes() == [0.1, 2.0] and Int(8, 64).extremes() == [8, 64]
    assert Choice(["x", "y"]).extremes() == ["x", "y"]
    assert mixed_space().cardinality == math.inf
    assert Space(a=Int(1, 4), b=Choice("xyz"), c=Choice([True, False])).cardinality == 24


def test_dimension_grid_axes():
    assert Real(1e-3, 1e-1, log=True).grid_axis("lr", 3) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert Real(0.0, 1.0).grid_axis("m", 1) == [0.5]
    assert Real(1e-4, 1e-2, log=True).grid_axis("lr", 1) == pytest.approx([1e-3])
    assert Int(1, 3).grid_axis("d") == [1, 2, 3]  # small ranges: every integer
    assert Int(1, 3).grid_axis("d", 2) == [1, 2, 3]
    assert Int(8, 4096, log=True).grid_axis("w", 5) == [8, 38, 181, 861, 4096]
    assert Int(0, 100).grid_axis("w", 300) == list(range(101))  # duplicates dropped
    assert Choice(["x", "y"]).grid_axis("c", 7) == ["x", "y"]
    with pytest.raises(ValueError, match=r"Real hyperparameter 'lr'; pass resolution=N"):
        Real(0.0, 1.0).grid_axis("lr")
    with pytest.raises(ValueError, match=r"Int hyperparameter 'w' with 1000 values \(more than 64"):
        Int(1, 1000).grid_axis("w")


def test_dimension_stacking_encoding():
    assert Real(0.0, 1.0).dtype == np.float32 and Int(1, 3).dtype == np.int32
    assert Choice([0.1, 0.5]).dtype == np.float32 and Choice([0.1, 0.5]).encode(0.5) == 0.5
    assert Choice(["a", "b"]).dtype == np.int32 and Choice(["a", "b"]).encode("b") == 1
    assert Choice([True, False]).dtype == np.int32 and Choice([True, False]).encode(False) == 1


def test_space_keys_and_points_round_trip():
    space = Space(a=Choice([3, 2.5, "x", False]), n=Int(2, 9, log=True),
                  r=Real(0.1, 10, log=True))
    for c in [{"a": 3, "n": 2, "r": 0.1}, {"a": False, "n": 9, "r": 10.0},
              {"a": "x", "n": 5, "r": 1.0}, {"a": 2.5, "n": 3, "r": 3.3}]:
        point = space.to_point(c)
        back = space.from_point(point)
        assert back == c and [type(v) for v in back.values()] == [type(v) for v in c.values()]
        assert space.key(c) == space.point_key(point) == space.key(back)
    assert space.key({"a": False, "n": 4.0, "r": 1 / 3}) == (3, 4, 0.333333333333)
    assert space.from_point([0, 20.0, 0.01]) == {"a": 3, "n": 9, "r": 0.1}
    with pytest.raises(ValueError):
        space.from_point([0, 2])


# --------------------------------------------------------------------------- subspaces


def test_subspace_narrows_and_pins():
    space = mixed_space()
    sub = space.subspace(lr=Real(1e-3, 1e-2, log=True), batch_size=Int(16, 32),
                         width=64, schedule=Choice(["step", "cosine"]), residual=True,
                         dropout=Choice([0.5, 0.0]))
    assert sub.names == space.names and sub.static_names == space.static_names
    assert sub["momentum"] is space["momentum"]
    assert sub["width"] == Choice([64], static=True)
    assert sub["residual"] == Choice([True], static=True)
    assert sub["schedule"].values == ("step", "cosine")
    for c in sub.sample(200, seed=0):
        assert sub.contains(c) and space.contains(c)
        assert 1e-3 <= c["lr"] <= 1e-2 and 16 <= c["batch_size"] <= 32
        assert c["width"] == 64 and c["residual"] is True and type(c["width"]) is int
    outside = {**sub.sample(1, seed=1)[0], "lr": 0.05}
    assert space.contains(outside) and not sub.contains(outside)
    assert not sub.contains({"lr": 0.005})  # missing hyperparameters
    # values are canonicalised by the original dimension (a float 32.0 of an Int is 32)
    assert space.subspace(width=Choice([32.0, 64], static=True))["width"].values == (32, 64)
    assert space.subspace() == space


@pytest.mark.parametrize(("dims", "match"), [
    ({"lr": Real(1e-6, 1e-2, log=True)}, r"'lr'.*not inside"),
    ({"lr": Real(1e-3, 1e-2)}, r"'lr'.*same kind \(Real, log=True\)"),
    ({"lr": 0.5}, r"'lr'.*outside"),
    ({"batch_size": Int(4, 32)}, r"'batch_size'.*not inside"),
    ({"batch_size": Real(8.0, 16.0)}, r"'batch_size'.*same kind \(Int"),
    ({"batch_size": 8.5}, r"'batch_size'.*integer"),
    ({"width": Int(32, 64, log=True)}, r"'width'.*static=True"),
    ({"width": Int(32, 64, static=True)}, r"'width'.*log=True"),
    ({"schedule": Choice(["cosine", "linear"])}, r"'schedule'.*'linear' is not one of"),
    ({"schedule": Choice(["cosine"], static=True)}, r"'schedule'.*static=False"),
    ({"residual": 1}, "'residual'"),
    ({"dropout": Real(0.0, 0.5)}, r"'dropout'.*Choice of its values"),
    ({"depth": Int(1, 3)}, "unknown hyperparameter 'depth'"),
    ({"schedule": Choice([])}, "'schedule'.*at least one"),
])
def test_subspace_rejects_what_is_not_inside(dims, match):
    with pytest.raises(ValueError, match=match):
        mixed_space().subspace(**dims)


def test_no_dimension_type_ladder_outside_space():
    """Only the space package asks which kind a dimension is (dimensions own their
    conversions)."""
    import pathlib
    import re

    root = pathlib.Path(S.__file__).parent.parent
    ladder = re.compile(r"isinstance\([^)]*\b(Real|Int|Choice)\b")
    offenders = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py"))
                 if p.parent.name != "space"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if ladder.search(line)]
    assert offenders == []


def test_docstring_examples():
    runner = doctest.DocTestRunner(verbose=False)
    from jaxtune.space import dimensions, spaces

    for module in (S, dimensions, spaces):
        for t in doctest.DocTestFinder().find(module):
            runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 5

