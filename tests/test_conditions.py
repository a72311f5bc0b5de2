"""Conditional hyperparameters (``when=``): the space's checks, sampling, grid and
quasi-random designs, the Bayesian searcher's encoding, the engine's neutral values,
bucketing, PBT, the store and the ranked table.

References are independent: brute-force enumeration of the flattened product for
cardinalities, the condition evaluated by hand, the plain optax loop of
tests/conftest.py for training.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import jaxtune as jt
from jaxtune.benchmarks import conditional as bench
from jaxtune.search import make_searcher
from jaxtune.search.bayes import INACTIVE_NUMERIC
from jaxtune.space import Choice, Int, Real, Space
from jaxtune.store import Store
from jaxtune.trial_schedulers import PBT


def nested_space() -> Space:
    """optimizer -> momentum (sgd, nesterov) and b1 (adam); depth -> width2 (depth >= 2);
    nested: shape (a choice under depth >= 2) -> width3 (shape 'wide' only)."""
    return Space(
        optimizer=Choice(["adam", "sgd", "nesterov"]),
        lr=Real(1e-4, 1e-1, log=True),
        momentum=Real(0.5, 0.99, when={"optimizer": ("sgd", "nesterov")}),
        b1=Real(0.8, 0.99, when={"optimizer": "adam"}),
        depth=Int(1, 3),
        width2=Int(8, 64, log=True, when={"depth": range(2, 4)}),
        shape=Choice(["flat", "wide"], when={"depth": (2, 3)}),
        width3=Int(8, 64, when={"shape": "wide"}),
    )


def expected_active(c: dict) -> set[str]:
    """The conditions of :func:`nested_space`, written out by hand."""
    out = {"optimizer", "lr", "depth"}
    out |= {"momentum"} if c["optimizer"] in ("sgd", "nesterov") else {"b1"}
    if c["depth"] >= 2:
        out |= {"width2", "shape"}
        if c["shape"] == "wide":
            out.add("width3")
    return out


# ----------------------------------------------------------------------------- the space


@pytest.mark.parametrize("dims, match", [
    ({"a": Real(0, 1, when={"b": 1})}, "names 'b', which the space does not define"),
    ({"a": Real(0, 1), "b": Real(0, 1, when={"a": 0.5})}, "'a', a Real; a parent must be"),
    ({"a": Choice([1, 2], when={"b": 1}), "b": Choice([1, 2], when={"a": 1})},
     r"cycle: (a -> b -> a|b -> a -> b)"),
    ({"a": Choice([1, 2], when={"c": 1}), "b": Choice([1, 2], when={"a": 1}),
      "c": Choice([1, 2], when={"b": 2})}, "cycle"),
    ({"a": Int(0, 3, when={"a": 1})}, "names itself"),
    ({"a": Choice(["x", "y"]), "b": Real(0, 1, when={"a": "z"})}, "'z', which is not a value"),
    ({"a": Int(1, 3), "b": Real(0, 1, when={"a": range(2, 5)})}, "4, which is not a value"),
    ({"a": Choice([1, 2]), "b": Int(1, 4, static=True, when={"a": 1})},
     "static, so its condition may name static hyperparameters only"),
])
def test_bad_conditions_are_refused_when_the_space_is_built(dims, match):
    with pytest.raises(ValueError, match=match):
        Space(dims)


def test_validate_keeps_active_values_and_refuses_inactive_ones():
    space = nested_space()
    c = {"optimizer": "adam", "lr": 0.01, "b1": 0.9, "depth": 1}
    assert space.validate({**c, "momentum": None, "width2": None}) == c
    with pytest.raises(ValueError, match=r"'momentum' is inactive .*optimizer in \('sgd', "
                                         r"'nesterov'\)"):
        space.validate({**c, "momentum": 0.9})
    with pytest.raises(ValueError, match="missing hyperparameter 'b1'"):
        space.validate({"optimizer": "adam", "lr": 0.01, "depth": 1})
    with pytest.raises(ValueError, match="missing hyperparameter 'shape'"):
        space.validate({**c, "depth": 2, "width2": 16})


@pytest.mark.parametrize("design", ["sample", "halton", "grid"])
def test_designs_hold_exactly_the_active_values(design):
    space = nested_space()
    if design == "sample":
        configs = space.sample(300, seed=1)
    else:
        kw = {"resolution": 3} if design == "grid" else {}
        s = make_searcher("grid" if design == "grid" else "quasirandom", space, seed=1, **kw)
        configs = s.ask(300)
    assert len(configs) == 300
    for c in configs:
        assert set(c) == expected_active(c), c
        assert space.validate(c) == c
    keys = [space.key(c) for c in configs]
    assert len(set(keys)) == len(keys)  # grid points differing in inactive values: once
    if design != "grid":  # every branch is reached (the grid's first points are adam's)
        assert {c["optimizer"] for c in configs} == {"adam", "sgd", "nesterov"}
        assert any("width3" in c for c in configs) and any(c["depth"] == 1 for c in configs)


def test_a_grid_searcher_pickles_mid_way():
    import pickle

    space = Space(opt=Choice(["a", "b"]), k=Int(1, 3, when={"opt": "b"}))
    grid = make_searcher("grid", space)
    assert grid.ask(2) == [{"opt": "a"}, {"opt": "b", "k": 1}]
    again = pickle.loads(pickle.dumps(grid))
    assert again.ask(5) == grid.ask(5) == [{"opt": "b", "k": 2}, {"opt": "b", "k": 3}]


def test_cardinality_counts_distinct_active_configurations():
    space = Space(opt=Choice(["a", "b", "c"]), k=Int(1, 4, when={"opt": ("b", "c")}),
                  j=Choice([0, 1], when={"k": (3, 4)}), z=Choice(["u", "v"]))
    flat = itertools.product(*(d.all_values() for _, d in space.items()))
    distinct = {space.key(space.prune(dict(zip(space.names, v)))) for v in flat}
    assert space.cardinality == len(distinct) == 2 * (1 + 2 * (2 + 2 * 2))
    grid = make_searcher("grid", space)
    assert grid.size == len(distinct) and len(grid.ask(1000)) == len(distinct)
    rnd = make_searcher("random", space, seed=0)
    assert len(rnd.ask(1000)) == len(distinct) and rnd.ask(5) == []  # exhausted, not stuck


def test_spec_round_trip_and_subspace_keep_conditions():
    space = nested_space()
    again = Space.from_spec(json.loads(json.dumps(space.spec())))
    assert again == space and again["width2"].conditions == {"depth": (2, 3)}
    assert "when" not in Space(x=Real(0, 1)).spec()["x"]  # unconditional specs unchanged
    sub = space.subspace(optimizer="sgd", depth=1)
    assert all(set(c) == {"optimizer", "lr", "momentum", "depth"} for c in sub.sample(20))
    assert sub["momentum"].conditions == {"optimizer": ("sgd", "nesterov")}


def test_complete_draws_newly_active_and_drops_newly_inactive():
    space = nested_space()
    c = space.complete({"optimizer": "sgd", "lr": 0.01, "b1": 0.9, "depth": 3}, seed=0)
    assert set(c) == expected_active(c) and "momentum" in c and "b1" not in c
    assert space.validate(c) == c


# ----------------------------------------------------------------------------- searchers


def test_bayes_encodes_inactive_dimensions_with_one_fixed_value():
    """The surrogate's inputs at an inactive dimension are the same fixed code for every
    point (whatever placeholder the point carried), so a searcher told two histories that
    differ only in how inactive values would have been drawn sees the same data."""
    space = nested_space()
    s = make_searcher("bayes", space, seed=0, n_initial=4, n_candidates=256)
    configs = space.sample(12, seed=3)
    X = s._transform(configs)
    for (cols, code), name in zip(s._inactive_codes, space.names):
        for row, c in zip(X, configs):
            if name not in c:
                assert np.all(row[cols] == code), (name, c)
            elif not space[name].categorical:
                assert 0.0 <= row[cols][0] <= 1.0
    assert [code for _, code in s._inactive_codes][2] == INACTIVE_NUMERIC
    s.tell(configs, [np.log10(c["lr"]) ** 2 + c.get("momentum", 0.9) for c in configs])
    with pytest.raises(ValueError, match="'momentum' is inactive"):
        s.tell([{**configs[0], "optimizer": "adam", "b1": 0.9, "momentum": 0.7}], [1.0])
    batch = s.ask(6)
    assert s._model is not None and len(batch) == 6
    for c in batch + s.ask(4, within=space.subspace(optimizer="nesterov")):
        assert set(c) == expected_active(c)


def test_the_benchmark_runs_and_a_conditional_space_tells_only_values_read():
    """Tiny: the benchmark runs and never tells a value the function did not read; the
    comparison itself (median over seeds) is docs/benchmarks.md's, from
    experiments/bench_conditional.py."""
    r = bench.run(seeds=[0], q=4, budget=16, searcher="random")
    assert r["conditional"]["evals"][0] <= 17 and r["flattened"]["evals"][0] <= 17
    assert bench.evals_to_target(bench.CONDITIONAL_SPACE, searcher="quasirandom", q=4,
                                 budget=8)["inactive_told"] == 0
    assert bench.evals_to_target(bench.FLAT_SPACE, searcher="quasirandom", q=4,
                                 budget=8)["inactive_told"] > 0


# ----------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def cond_exp(ts_data) -> jt.Experiment:
    """One program for members with different active sets: the optimizer and schedule
    families are traced choices; momentum, b1 and warmup are conditional."""
    return jt.Experiment(
        data=ts_data, model=jt.models.MLP(width=8, depth=1, num_outputs=1),
        space=Space(optimizer=Choice(["adamw", "nesterov"]),
                    momentum=Real(0.5, 0.95, when={"optimizer": "nesterov"}),
                    b1=Real(0.8, 0.95, when={"optimizer": "adamw"}),
                    schedule=Choice(["constant", "cosine"]),
                    warmup=Real(0.2, 0.4, when={"schedule": "cosine"}),
                    lr=Real(1e-3, 1e-1, log=True)),
        steps=20, eval_every=10, defaults={"batch_size": 16}, name="conditional")


def test_inactive_traced_values_are_the_defaults_and_training_equals_plain_optax(
        cond_exp, reference, member):
    """An inactive warmup is 0 (not its range's 0.2), an inactive momentum/b1 the family's
    own default: every member equals the plain optax loop of a configuration without
    the inactive hyperparameters, all in one compiled program."""
    configs = [{"optimizer": "adamw", "b1": 0.85, "schedule": "constant", "lr": 0.02},
               {"optimizer": "nesterov", "momentum": 0.7, "schedule": "cosine", "warmup": 0.3,
                "lr": 0.01},
               {"optimizer": "nesterov", "momentum": 0.9, "schedule": "constant", "lr": 0.03},
               {"optimizer": "adamw", "b1": 0.9, "schedule": "cosine", "warmup": 0.25,
                "lr": 0.005}]
    arrays = cond_exp.member_arrays(configs, cond_exp.static_config(configs[0]))
    np.testing.assert_array_equal(arrays["warmup"], np.float32([0.0, 0.3, 0.0, 0.25]))
    np.testing.assert_allclose(arrays["momentum"][[1, 2]], [0.7, 0.9], rtol=1e-6)
    assert np.all(np.isfinite(arrays["b1"])) and np.all(np.isfinite(arrays["momentum"]))
    res = jt.train_population(cond_exp, configs, seed=3, trial_ids=[0, 1, 2, 3],
                              progress=False)
    assert len(res.buckets) == 1 and res.configs == configs
    module = jt.models.MLP(width=8, depth=1, num_outputs=1)
    for tid, cfg in enumerate(configs):
        i = member(res, tid)
        ref = reference(cond_exp, module, cfg, seed=3, trial_id=tid)
        np.testing.assert_allclose(res.curves["val_loss"][i], ref["val_curve"], rtol=1e-4,
                                   atol=1e-5, err_msg=str(cfg))
    with pytest.raises(ValueError, match="'warmup' is inactive"):
        jt.train_population(cond_exp, [{**configs[0], "warmup": 0.3}], progress=False)


def test_a_conditional_traced_choice_needs_its_default_among_its_values(ts_data):
    with pytest.raises(ValueError, match=r"'schedule' is conditional .* default 'constant'"):
        jt.Experiment(data=ts_data, model=jt.models.MLP(width=4, num_outputs=1),
                      space=Space(optimizer=Choice(["adamw", "sgd"]),
                                  schedule=Choice(["cosine", "linear"],
                                                  when={"optimizer": "sgd"})))


def test_static_conditions_in_buckets_and_the_model_factory(ts_data):
    seen = []

    def model(hp):
        seen.append(dict(hp))
        widths = (8,) if hp["depth"] == 1 else (8, hp["width2"])
        return jt.models.MLP(width=widths[-1], depth=len(widths), num_outputs=1)

    exp = jt.Experiment(
        data=ts_data, model=model,
        space=Space(depth=Int(1, 2, static=True),
                    width2=Choice([4, 8], static=True, when={"depth": 2}),
                    lr=Real(1e-3, 1e-1, log=True)),
        steps=10, eval_every=10, defaults={"batch_size": 16})
    assert exp.buckets() == [{"depth": 1, "width2": None, "optimizer": "adamw"},
                             {"depth": 2, "width2": 4, "optimizer": "adamw"},
                             {"depth": 2, "width2": 8, "optimizer": "adamw"}]
    region = exp.region({"depth": 1, "width2": None})
    assert all(set(c) == {"depth", "lr"} for c in region.sample(5))
    assert set(exp.example_config({"depth": 2, "width2": 8})) == {"depth", "width2", "lr"}
    configs = [{"depth": 1, "lr": 0.01}, {"depth": 2, "width2": 8, "lr": 0.01},
               {"depth": 1, "lr": 0.02}]
    res = jt.train_population(exp, configs, progress=False)
    assert [b["members"] for b in res.buckets] == [2, 1]
    assert {"depth": 1, "width2": None} in [{k: s[k] for k in ("depth", "width2")}
                                            for s in seen]


def test_pbt_explore_keeps_configurations_consistent():
    space = nested_space()
    pbt = PBT(interval=10, resample_probability=0.5)
    rng = np.random.default_rng(0)
    for c in space.sample(40, seed=2):
        out = pbt.explore(c, space, rng)
        assert set(out) == expected_active(out) and space.validate(out) == out


# ----------------------------------------------------------------------------- the store


def test_store_and_ranked_table_hold_active_values_only(cond_exp, tmp_path):
    db = tmp_path / "cond.db"
    study = jt.Study(cond_exp, searcher="random", store=db, population=4, top_k=0,
                     verbose=False, progress=False)
    result = study.run(trials=4)
    with Store(db, readonly=True) as s:
        trials = s.trials(s.study("default")["id"])
    assert len(trials) == 4
    for t in trials:
        assert cond_exp.space.validate(t.config) == t.config
        assert ("momentum" in t.config) == (t.config["optimizer"] == "nesterov")
        assert ("warmup" in t.config) == (t.config["schedule"] == "cosine")
    rows = {int(ln.split()[1]): ln for ln in result.table().splitlines()[1:]}
    assert sorted(rows) == sorted(t.index for t in trials)
    for t in trials:
        line = rows[t.index]
        for name in cond_exp.space.names:
            assert (f"{name}=" in line) == (name in t.config), (name, line)
        assert "None" not in line
