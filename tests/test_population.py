"""Tests for jaxtune.population: the population engine against members trained alone.

The reference of every member is ``reference_run`` (tests/conftest.py): a plain
Python loop with a hand-written loss, keys derived with ``jax.random`` in the
test, a numpy learning-rate schedule and the plain ``optax`` optimizers.
"""

from __future__ import annotations

import contextlib
import math

import chex
import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.memory import parse_bytes
from jaxtune.population import member_keys

RTOL, ATOL = 1e-4, 1e-5
BASIC_STEPS, BASIC_EVAL = 30, 10  # the `basic_exp` fixture's steps and eval_every
TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def basic_config(lr: float = 0.05, batch_size: int = 16, steps: int = BASIC_STEPS) -> dict:
    """A configuration of the `basic_exp` fixture's space."""
    return {"lr": lr, "batch_size": batch_size, "steps": steps}


@contextlib.contextmanager
def count_backend_compiles():
    """Counts XLA backend compiles (of anything) inside the block."""
    events: list[float] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def assert_same_member(a: jt.PopulationResult, i: int, b: jt.PopulationResult, j: int,
                       **tol) -> None:
    for k in a.curves:
        np.testing.assert_allclose(a.curves[k][i], b.curves[k][j], err_msg=k, **tol)
    for k in a.final:
        np.testing.assert_allclose(a.final[k][i], b.final[k][j], err_msg=k, **tol)
    assert a.status[i] == b.status[j]


# --------------------------------------------------------------------------- 1, 5. reference

FAMILIES = ("sgd", "momentum", "adam", "adamw", "rmsprop", "lion")
# (lr, schedule, warmup, batch_size, l2, weight_decay, clip_norm) per member; two per family.
MEMBER_SETTINGS = {
    "sgd": [(0.05, "constant", 0.0, 8, 0.01, 0.02, 1e3),
            (0.1, "cosine", 0.2, 32, 0.0, 0.05, 0.5)],
    "momentum": [(0.02, "linear", 0.1, 16, 0.001, 0.0, 1e3),
                 (0.01, "step", 0.2, 32, 0.0, 0.1, 1.0)],
    "adam": [(0.01, "cosine", 0.1, 32, 0.01, 0.01, 1e3),
             (0.003, "step", 0.0, 8, 0.0, 0.0, 0.5)],
    "adamw": [(0.01, "linear", 0.2, 16, 0.0, 0.1, 1e3),
              (0.02, "constant", 0.0, 32, 0.01, 0.3, 1.0)],
    "rmsprop": [(0.003, "step", 0.1, 16, 0.01, 0.02, 1e3),
                (0.001, "cosine", 0.2, 8, 0.0, 0.0, 0.5)],
    "lion": [(0.001, "constant", 0.1, 32, 0.0, 0.1, 1e3),
             (0.003, "linear", 0.0, 16, 0.01, 0.2, 1.0)],
}
SETTING_NAMES = ("lr", "schedule", "warmup", "batch_size", "l2", "weight_decay", "clip_norm")


def opt_configs(families=FAMILIES):
    return [{"optimizer": fam, **dict(zip(SETTING_NAMES, s))}
            for fam in families for s in MEMBER_SETTINGS[fam]]


def test_population_matches_members_trained_alone_and_compiles_once_per_bucket(
        ts_data, reference, member):
    """Six optimizer buckets (static), traced schedule family, warmup, masked batch size
    (8/16/32 of 32), L2, weight decay and clipping differing per member. Every member
    equals the plain optax loop of tests/conftest.py. The compile counts are checked on
    the same experiment, so its six bucket programs are compiled once for both purposes."""
    exp = jt.Experiment(
        data=ts_data,
        model=jt.models.MLP(width=16, depth=1, num_outputs=1),
        space=jt.Space(
            optimizer=jt.Choice((*FAMILIES, "nesterov"), static=True),
            lr=jt.Real(1e-4, 1.0, log=True),
            schedule=jt.Choice(["constant", "cosine", "linear", "step"]),
            warmup=jt.Real(0.0, 0.5),
            batch_size=jt.Choice([8, 16, 32]),
            l2=jt.Real(0.0, 0.1),
            weight_decay=jt.Real(0.0, 0.5),
            clip_norm=jt.Real(0.1, 1e3, log=True),
        ),
        steps=30, eval_every=10, defaults={"momentum": 0.8, "end_lr_factor": 0.1},
        name="optimizers")
    configs = opt_configs()
    trial_ids = [10 + i for i in range(len(configs))]
    res = jt.train_population(exp, configs, seed=7, trial_ids=trial_ids, progress=False)
    # one compile per bucket (the optimizer family is static)
    assert res.compiles == len(FAMILIES) == len(res.buckets) == jt.Programs.default(
        exp).compiles
    assert [b["static"]["optimizer"] for b in res.buckets] == list(FAMILIES)
    assert [b["members"] for b in res.buckets] == [2] * len(FAMILIES)
    np.testing.assert_array_equal(res.eval_steps, [10, 20, 30])
    module = jt.models.MLP(width=16, depth=1, num_outputs=1)
    for tid, cfg in zip(trial_ids, configs):
        i = member(res, tid)
        assert res.configs[i] == cfg
        ref = reference(exp, module, cfg, seed=7, trial_id=tid)
        assert res.status[i] == "complete" and not ref["diverged"]
        assert res.final["steps"][i] == ref["steps"] == 30
        np.testing.assert_allclose(res.curves["val_loss"][i], ref["val_curve"], rtol=RTOL,
                                   atol=ATOL, err_msg=str(cfg))
        for k in ("val_loss", "train_loss", "test_loss"):
            np.testing.assert_allclose(res.final[k][i], ref[k], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{k} {cfg}")
        assert res.final["best_val_loss"][i] == pytest.approx(
            np.min(res.curves["val_loss"][i]), rel=1e-6)
        assert not res.final["early_stopped"][i]

    # same buckets and population sizes, other traced values: nothing compiles at all
    swap = {8: 16, 16: 32, 32: 8}
    again = [{**c, "lr": c["lr"] / 2, "batch_size": swap[c["batch_size"]]} for c in configs]
    with count_backend_compiles() as events:
        r2 = jt.train_population(exp, again, seed=7, trial_ids=trial_ids, progress=False)
    assert r2.compiles == 0 and jt.Programs.default(exp).compiles == len(FAMILIES)
    assert not events, "re-running cached buckets compiled an XLA program"
    assert not np.any(r2.final["val_loss"] == res.final["val_loss"])
    # a new static value compiles exactly one more program (cached ones are reused)
    r3 = jt.train_population(exp, opt_configs(["adam"]) + [
        {**c, "optimizer": "nesterov"} for c in opt_configs(["momentum"])], progress=False)
    assert r3.compiles == 1 and jt.Programs.default(exp).compiles == len(FAMILIES) + 1
    assert [b["static"]["optimizer"] for b in r3.buckets] == ["adam", "nesterov"]
    i = member(r3, 2)
    ref = reference(exp, module, r3.configs[i], seed=0, trial_id=2)
    np.testing.assert_allclose(r3.final["val_loss"][i], ref["val_loss"], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- 2-4. isolation


def test_member_independent_of_neighbours(basic_exp, reference, member):
    target = basic_config(lr=0.03, batch_size=12)
    big = jt.train_population(
        basic_exp, [basic_config(0.01, 4), basic_config(0.1, 32), target], trial_ids=[0, 1, 3],
        seed=5, progress=False)
    small = jt.train_population(basic_exp, [target, basic_config(0.2, 7)], trial_ids=[3, 11],
                                seed=5, progress=False)
    i, j = member(big, 3), member(small, 3)
    assert big.configs[i] == small.configs[j] == target
    assert_same_member(big, i, small, j, rtol=1e-5, atol=1e-6)
    # ... and both equal the member trained alone
    ref = reference(basic_exp, basic_exp.build_model({}), target, seed=5, trial_id=3)
    np.testing.assert_allclose(big.final["val_loss"][i], ref["val_loss"], rtol=RTOL, atol=ATOL)


def test_deterministic_given_seed(basic_exp):
    configs = [basic_config(0.01, 4)]
    a = jt.train_population(basic_exp, configs, seeds=2, seed=1, trial_ids=[4], progress=False)
    b = jt.train_population(basic_exp, configs, seeds=2, seed=1, trial_ids=[4], progress=False)
    assert b.compiles == 0
    for k in a.curves:
        np.testing.assert_array_equal(a.curves[k], b.curves[k])
    for k in a.final:
        np.testing.assert_array_equal(a.final[k], b.final[k])
    assert a.status == b.status and a.configs == b.configs == configs * 2
    np.testing.assert_array_equal(a.trial_ids, [4, 4])
    np.testing.assert_array_equal(a.replicates, [0, 1])
    # replicates and seeds change the member (its key), not only its label
    assert a.final["val_loss"][0] != a.final["val_loss"][1]
    c = jt.train_population(basic_exp, configs, seeds=2, seed=2, trial_ids=[4], progress=False)
    assert not np.any(a.final["val_loss"] == c.final["val_loss"])
    # aggregate / table over replicates
    agg = a.aggregate("val_loss")
    assert set(agg) == {4}
    mean, std, n = agg[4]
    assert n == 2
    assert mean == pytest.approx(np.mean(a.final["val_loss"]))
    assert std == pytest.approx(np.std(a.final["val_loss"]))
    table = a.table("val_loss", maximize=False)
    assert len(table.splitlines()) == 2 and "lr=0.01" in table


def test_diverged_member_is_isolated(basic_exp, member):
    good = [basic_config(0.02, 8), basic_config(0.05, 24)]
    blowup = basic_config(lr=1e6, batch_size=16)
    with_nan = jt.train_population(basic_exp, [good[0], blowup, good[1]], trial_ids=[0, 1, 2],
                                   seed=3, progress=False)
    without = jt.train_population(basic_exp, good, trial_ids=[0, 2], seed=3, progress=False)
    k = member(with_nan, 1)
    assert with_nan.status[k] == "diverged"
    assert with_nan.final["steps"][k] < BASIC_STEPS
    # it keeps its last finite state: finite parameters, finite metrics
    for name in ("val_loss", "train_loss", "test_loss"):
        assert np.isfinite(with_nan.final[name][k]), name
    assert np.all(np.isfinite(with_nan.curves["val_loss"][k]))
    # its step count froze when it diverged
    assert np.all(with_nan.curves["step"][k] == with_nan.final["steps"][k])
    for t in (0, 2):
        i, j = member(with_nan, t), member(without, t)
        assert with_nan.status[i] == "complete"
        assert_same_member(with_nan, i, without, j, rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(with_nan.curves["val_loss"][i]))
    assert 1 not in with_nan.aggregate("val_loss")


# --------------------------------------------------------------------------- 6. budgets


def test_per_member_step_budgets(basic_exp, reference, member):
    configs = [basic_config(0.05, 16, steps=10), basic_config(0.05, 16, steps=25),
               basic_config(0.05, 16, steps=30)]
    res = jt.train_population(basic_exp, configs, seed=2, progress=False)
    np.testing.assert_array_equal(res.final["steps"], [10, 25, 30])
    np.testing.assert_array_equal(res.curves["step"], [[10, 10, 10], [10, 20, 25],
                                                       [10, 20, 30]])
    assert res.status == ["complete"] * 3
    # a frozen member's metrics stop changing once its budget is spent
    assert res.curves["val_loss"][0][1] == res.curves["val_loss"][0][2]
    for t in (0, 1):
        ref = reference(basic_exp, basic_exp.build_model({}), configs[t], seed=2, trial_id=t)
        i = member(res, t)
        assert ref["steps"] == configs[t]["steps"]
        np.testing.assert_allclose(res.final["val_loss"][i], ref["val_loss"], rtol=RTOL,
                                   atol=ATOL)


def test_epoch_budgets(ts_data, reference):
    exp = jt.Experiment(
        data=ts_data, model=jt.models.MLP(width=16, depth=1, num_outputs=1),
        space=jt.Space(epochs=jt.Real(0.05, 10.0), batch_size=jt.Choice([8, 16, 32])),
        steps=35, eval_every=10, defaults={"lr": 0.01, "schedule": "cosine", "warmup": 0.25})
    assert exp.uses_epochs
    configs = [{"epochs": 1.0, "batch_size": 16}, {"epochs": 0.5, "batch_size": 32},
               {"epochs": 3.0, "batch_size": 8}, {"epochs": 0.05, "batch_size": 8}]
    n = ts_data.n_train
    expected = [min(math.ceil(c["epochs"] * n / c["batch_size"]), 35) for c in configs]
    assert expected == [15, 4, 35, 2]
    with pytest.warns(UserWarning, match="1 of 4 members asked for more epochs"):
        res = jt.train_population(exp, configs, seed=0, progress=False)
    np.testing.assert_array_equal(res.final["steps"], expected)
    np.testing.assert_array_equal(res.final["budget"], expected)
    np.testing.assert_array_equal(res.final["budget_capped"], [False, False, True, False])
    # steps not a multiple of eval_every: the last evaluation is at the step budget
    np.testing.assert_array_equal(res.eval_steps, [10, 20, 30, 35])
    np.testing.assert_array_equal(res.curves["step"][2], [10, 20, 30, 35])
    np.testing.assert_array_equal(res.curves["step"][0], [10, 15, 15, 15])
    # the schedule spans the member's own budget: compare one member with its reference
    ref = reference(exp, jt.models.MLP(width=16, depth=1, num_outputs=1), configs[0], seed=0,
                    trial_id=0)
    assert ref["budget"] == 15
    np.testing.assert_allclose(res.final["val_loss"][0], ref["val_loss"], rtol=RTOL, atol=ATOL)


def test_bucketed_batch_mode(ts_data, reference, member):
    """One bucket per static batch size; each member draws exactly batch_size indices.
    The space's sample (what programs are built from) has batch size 32, larger than the
    bucket of 8: the program must still be built with the bucket's own batch size."""
    space = jt.Space(batch_size=jt.Choice([8, 32], static=True), lr=jt.Real(1e-3, 1.0, log=True))
    assert space.sample(1, seed=0)[0]["batch_size"] == 32
    exp = jt.Experiment(data=ts_data, model=jt.models.MLP(width=16, depth=1, num_outputs=1),
                        space=space, steps=20, eval_every=10, batch_mode="bucketed",
                        defaults={"optimizer": "adam"})
    assert exp.max_batch({"batch_size": 8}) == 8
    configs = [{"lr": 0.01, "batch_size": 8}, {"lr": 0.01, "batch_size": 32},
               {"lr": 0.03, "batch_size": 8}]
    res = jt.train_population(exp, configs, seed=4, progress=False)
    assert res.compiles == 2 == len(res.buckets)
    assert {b["static"]["batch_size"]: b["members"] for b in res.buckets} == {8: 2, 32: 1}
    module = jt.models.MLP(width=16, depth=1, num_outputs=1)
    for t, cfg in enumerate(configs):
        i = member(res, t)
        ref = reference(exp, module, cfg, seed=4, trial_id=t, max_batch=cfg["batch_size"])
        np.testing.assert_allclose(res.final["val_loss"][i], ref["val_loss"], rtol=RTOL,
                                   atol=ATOL)
        assert res.final["steps"][i] == 20
    # a scheduler may only refill a slot with a configuration of the same bucket
    def cross_bucket(report):
        return jt.Actions(replace={0: (9, {"lr": 0.01, "batch_size": 32})})

    with pytest.raises(ValueError, match="another bucket"):
        jt.train_population(exp, configs[:1] + configs[2:], scheduler=cross_bucket,
                            progress=False)
    assert jt.Programs.default(exp).compiles == 2


def test_explicit_max_batch_size_below_space_maximum(ts_data):
    space = jt.Space(batch_size=jt.Int(4, 64))
    assert space.sample(1, seed=0)[0]["batch_size"] > 16  # the premise
    exp = jt.Experiment(data=ts_data, model=jt.models.MLP(width=16, depth=1, num_outputs=1),
                        space=space, steps=10, eval_every=10, max_batch_size=16)
    res = jt.train_population(exp, [{"batch_size": 8}], progress=False)
    assert res.final["steps"][0] == 10


# --------------------------------------------------------------------------- 7. early stop


def test_early_stopping_freezes_members(ts_data):
    exp = jt.Experiment(
        data=ts_data, model=jt.models.MLP(width=16, depth=1, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-4, 10.0, log=True)), steps=50, eval_every=10,
        patience=1, defaults={"optimizer": "adam", "batch_size": 16})
    res = jt.train_population(exp, [{"lr": 0.003}, {"lr": 0.03}, {"lr": 3.0}], seed=1,
                              trial_ids=[0, 1, 5], progress=False)
    stopped = res.final["early_stopped"].astype(bool)
    assert not stopped[0] and stopped[1:].any()  # the setup exercises both branches
    for i in range(3):
        val, steps = res.curves["val_loss"][i], res.curves["step"][i]
        # documented rule: stop at the first evaluation that does not improve on the best
        worse = [c for c in range(1, len(val)) if val[c] >= np.min(val[:c])]
        if stopped[i]:
            c = worse[0]
            assert c < 4  # stopped before the end of its budget
            assert res.final["steps"][i] == (c + 1) * 10
            np.testing.assert_array_equal(steps[c:], (c + 1) * 10)
            np.testing.assert_array_equal(val[c:], val[c])
            assert res.final["best_val_loss"][i] == pytest.approx(np.min(val[:c]))
            assert res.status[i] == "complete"
        else:
            assert not worse
            assert res.final["steps"][i] == 50


# --------------------------------------------------------------------------- 8. scheduler


def _stop_and_replace(reports):
    def scheduler(report: jt.ChunkReport):
        reports.append(report)
        if report.chunk == 0:
            return jt.Actions(stop=[0], replace={1: (99, basic_config(0.04, 10))})
        return None
    return scheduler


def test_scheduler_stop_and_replace(basic_exp, member):
    configs = [basic_config(0.01, 8), basic_config(0.02, 16), basic_config(0.03, 24)]
    reports: list[jt.ChunkReport] = []
    before = jt.Programs.default(basic_exp).compiles
    res = jt.train_population(basic_exp, configs, seed=9, scheduler=_stop_and_replace(reports),
                              progress=False)
    assert res.compiles == jt.Programs.default(basic_exp).compiles - before <= 1
    # the scheduler saw every chunk boundary but the last
    assert [r.chunk for r in reports] == [0, 1]
    np.testing.assert_array_equal(reports[0].trial_ids, [0, 1, 2])
    np.testing.assert_array_equal(reports[1].trial_ids, [0, 99, 2])
    assert reports[0].history["val_loss"].shape == (3, 1)
    assert reports[1].history["val_loss"].shape == (3, 2)
    assert np.isnan(reports[1].history["val_loss"][1, 0])
    assert reports[1].alive.tolist() == [False, True, True]
    np.testing.assert_array_equal(reports[0].steps, [10, 10, 10])

    assert len(res) == 4
    new = member(res, 99)
    assert res.configs[new] == basic_config(0.04, 10)
    assert res.status[member(res, 1)] == "pruned"
    assert res.status[new] == "complete" and res.status[member(res, 2)] == "complete"
    assert np.isnan(res.curves["val_loss"][new][0])
    assert np.all(np.isfinite(res.curves["val_loss"][new][1:]))
    np.testing.assert_array_equal(res.curves["step"][new][1:], [10, 20])
    assert res.final["steps"][member(res, 0)] == 10
    assert res.final["steps"][member(res, 1)] == 10
    assert res.final["steps"][new] == 20
    assert res.final["steps"][member(res, 2)] == 30
    np.testing.assert_array_equal(res.curves["step"][member(res, 0)], [10, 10, 10])
    # the replacement is a fresh member (own key from seed, trial id 99, replicate 0):
    # its curve is a plain run of that trial shifted by one chunk
    fresh = jt.train_population(basic_exp, [basic_config(0.04, 10), configs[0]],
                                trial_ids=[99, 0], seed=9, progress=False)
    np.testing.assert_allclose(res.curves["val_loss"][new][1:],
                               fresh.curves["val_loss"][member(fresh, 99)][:2], **TIGHT)
    # running it again compiles nothing at all (no program is rebuilt for replacements)
    with count_backend_compiles() as events:
        again = jt.train_population(basic_exp, configs, seed=9,
                                    scheduler=_stop_and_replace([]), progress=False)
    assert again.compiles == 0 and not events
    np.testing.assert_array_equal(again.curves["val_loss"], res.curves["val_loss"])


def test_scheduler_stopped_member_is_pruned(basic_exp, member):
    configs = [basic_config(0.01, 8), basic_config(0.02, 16), basic_config(0.03, 24)]
    res = jt.train_population(basic_exp, configs, seed=9, scheduler=_stop_and_replace([]),
                              progress=False)
    assert res.status[member(res, 0)] == "pruned"


# --------------------------------------------------------------------------- 9. memory


def test_memory_limit_splits_population(basic_exp, capsys, member):
    configs = [basic_config(0.01, 8), basic_config(0.02, 16), basic_config(0.03, 24)]
    static = basic_exp.static_config(configs[0])
    per = jt.estimate_member_bytes(basic_exp, static)
    assert per > 0
    whole = jt.train_population(basic_exp, configs, seed=6, progress=False)
    capsys.readouterr()
    split = jt.train_population(basic_exp, configs, seed=6, progress=False,
                                memory_limit=int(2.5 * per))
    err = capsys.readouterr().err
    assert "2 sub-populations of 2" in err
    assert split.buckets[0]["subpopulations"] == 2 and split.buckets[0]["size"] == 2
    assert whole.buckets[0]["subpopulations"] == 1
    for t in range(3):
        assert_same_member(whole, member(whole, t), split, member(split, t), rtol=1e-5,
                           atol=1e-6)
    # max_population caps the members per program the same way; verbose=False is silent
    capped = jt.train_population(basic_exp, configs, seed=6, progress=False,
                                 max_population=2, verbose=False)
    assert capped.buckets[0]["subpopulations"] == 2
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(capped.final["val_loss"], split.final["val_loss"])
    # a limit below one member fails before anything compiles
    before = jt.Programs.default(basic_exp).compiles
    with pytest.raises(ValueError, match="memory limit"):
        jt.train_population(basic_exp, configs, progress=False, memory_limit=per // 2)
    assert jt.Programs.default(basic_exp).compiles == before


def test_parse_bytes():
    assert parse_bytes("4GB") == 4 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(1e6) == 10**6
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")


# --------------------------------------------------------------------------- 10. validation


@pytest.mark.parametrize(("config", "match"), [
    ({"lr": 0.1, "batch_size": 8}, "missing hyperparameter 'steps'"),
    ({**basic_config(), "width": 3}, "unknown hyperparameter 'width'"),
    ({**basic_config(), "batch_size": 64}, "'batch_size'"),
    ({**basic_config(), "lr": 1e9}, "'lr'"),
    ({**basic_config(), "steps": 31}, "'steps'"),
])
def test_invalid_configs_rejected_before_compiling(basic_exp, config, match):
    before = jt.Programs.default(basic_exp).compiles
    with pytest.raises(ValueError, match=match):
        jt.train_population(basic_exp, [basic_config(), config], progress=False)
    assert jt.Programs.default(basic_exp).compiles == before


def test_population_argument_errors(basic_exp):
    before = jt.Programs.default(basic_exp).compiles
    with pytest.raises(ValueError, match="no configurations"):
        jt.train_population(basic_exp, [], progress=False)
    with pytest.raises(ValueError, match="seeds"):
        jt.train_population(basic_exp, [basic_config()], seeds=0, progress=False)
    with pytest.raises(ValueError, match="trial ids"):
        jt.train_population(basic_exp, [basic_config()], trial_ids=[1, 2], progress=False)
    assert jt.Programs.default(basic_exp).compiles == before


def test_batch_size_above_explicit_max_rejected(ts_data):
    exp = jt.Experiment(data=ts_data, model=jt.models.MLP(width=4, depth=1, num_outputs=1),
                        space=jt.Space(batch_size=jt.Int(4, 64)), steps=10, eval_every=10,
                        max_batch_size=16)
    with pytest.raises(ValueError, match="'batch_size'"):
        jt.train_population(exp, [{"batch_size": 8}, {"batch_size": 32}], progress=False)
    assert jt.Programs.default(exp).compiles == 0


def test_member_keys_derivation():
    keys = member_keys(4, [2, 7], [0, 3])
    expected = [jax.random.fold_in(jax.random.fold_in(jax.random.key(4), t), r)
                for t, r in ((2, 0), (7, 3))]
    for k, e in zip(keys, expected):
        np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(e))


def test_basic_exp_matches_constants(basic_exp):
    assert (basic_exp.steps, basic_exp.eval_every) == (BASIC_STEPS, BASIC_EVAL)


def test_keep_params_returns_each_members_trained_parameters(basic_exp, reference, member):
    configs = [basic_config(0.02, 8), basic_config(0.05, 24, steps=20)]
    res = jt.train_population(basic_exp, configs, seed=4, progress=False, keep_params=True)
    assert res.best_params is None  # no early stopping in this experiment
    module = basic_exp.build_model({})
    for t, cfg in enumerate(configs):
        ref = reference(basic_exp, module, cfg, seed=4, trial_id=t)
        chex.assert_trees_all_close(res.params[member(res, t)], ref["params"], rtol=1e-4,
                                    atol=1e-5)
    assert jt.train_population(basic_exp, configs, seed=4, progress=False).params is None


def test_keep_params_with_early_stopping_returns_the_best_parameters(ts_data):
    exp = jt.Experiment(
        data=ts_data, model=jt.models.MLP(width=16, depth=1, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-4, 10.0, log=True)), steps=50, eval_every=10,
        patience=1, defaults={"optimizer": "adam", "batch_size": 16})
    res = jt.train_population(exp, [{"lr": 0.003}, {"lr": 0.03}, {"lr": 3.0}], seed=0,
                              trial_ids=[0, 1, 5], progress=False, keep_params=True)
    module = exp.build_model({})
    for i in range(3):
        out = module.apply(res.best_params[i], ts_data.x_val)[:, 0]
        best = float(np.mean((np.asarray(out) - np.asarray(ts_data.y_val)) ** 2))
        assert best == pytest.approx(res.final["best_val_loss"][i], rel=1e-4)
        chex.assert_tree_all_finite(res.params[i])
        # the test split is evaluated on the kept (best) parameters, not the last ones
        out = module.apply(res.best_params[i], ts_data.x_test)[:, 0]
        test = float(np.mean((np.asarray(out) - np.asarray(ts_data.y_test)) ** 2))
        assert test == pytest.approx(res.final["test_loss"][i], rel=1e-4)


def test_frozen_members_get_no_update_with_momentum_after_the_learning_rate(ts_data):
    """rmsprop applies its momentum after the learning rate: a member whose budget is
    spent must still not move (its update is masked, not merely its learning rate)."""
    exp = jt.Experiment(data=ts_data, model=jt.models.MLP(width=8, depth=1, num_outputs=1),
                        space=jt.Space(steps=jt.Int(1, 30)), steps=30, eval_every=10,
                        defaults={"optimizer": "rmsprop", "momentum": 0.9, "lr": 0.01,
                                  "batch_size": 16})
    res = jt.train_population(exp, [{"steps": 10}, {"steps": 30}], progress=False,
                              keep_params=True)
    np.testing.assert_array_equal(res.final["steps"], [10, 30])
    frozen = res.curves["val_loss"][0]
    assert frozen[0] == frozen[1] == frozen[2]
    assert res.curves["val_loss"][1][1] != res.curves["val_loss"][1][2]


def test_members_trained_in_cpu_groups_equal_members_trained_together(basic_exp, member):
    """On CPU a device trains its members group after group (programs.CPU_GROUP); a
    population of 8 (two groups) equals its members trained in populations of 2."""
    from jaxtune.programs import CPU_GROUP

    assert 8 % CPU_GROUP == 0 and CPU_GROUP < 8
    configs = [basic_config(0.005 * (i + 1), 4 + 3 * i) for i in range(8)]
    whole = jt.train_population(basic_exp, configs, seed=11, progress=False)
    assert whole.buckets[0]["size"] == 8
    for i in range(0, 8, 2):
        pair = jt.train_population(basic_exp, configs[i:i + 2], trial_ids=[i, i + 1], seed=11,
                                   progress=False)
        for t in (i, i + 1):
            assert_same_member(whole, member(whole, t), pair, member(pair, t), rtol=1e-5,
                               atol=1e-6)


def test_member_computes_its_own_batch_and_equals_itself_alone(ts_data, reference, member):
    """Masked batch sizes 10-64 in one program with row capacities 16/32/64, a
    traced dropout rate and rows drawn with replacement: in a population of 8 of mixed
    batch sizes (two CPU groups, members sorted by batch size inside the program, each
    group at its own capacity) every member equals itself trained alone (at its own
    capacity), whatever its slot, and the plain optax loop."""
    exp = jt.Experiment(
        data=ts_data, model=jt.models.MLP(width=16, depth=1, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-3, 0.1, log=True), batch_size=jt.Int(10, 64, log=True),
                       dropout=jt.Real(0.0, 0.5)),
        steps=20, eval_every=10, data_order="replacement",
        defaults={"optimizer": "adam"}, name="own-batch")
    programs = jt.Programs(exp)
    assert programs.member(exp.static_config({})).capacities == (16, 32, 64)
    batches = [64, 12, 40, 16, 33, 10, 64, 17]
    configs = [{"lr": 0.01 * (1 + i % 3), "batch_size": b, "dropout": 0.1 * (i % 4)}
               for i, b in enumerate(batches)]
    ids = list(range(len(configs)))

    def run(cfgs, tids):
        return jt.train_population(exp, cfgs, trial_ids=tids, seed=4, programs=programs,
                                   progress=False)

    mixed = run(configs, ids)
    turned = run(configs[::-1], ids[::-1])  # other slots, other neighbours
    assert programs.compiles == 1
    module = jt.models.MLP(width=16, depth=1, num_outputs=1)
    for t in (1, 4):  # batch 12 and 33: grouped with larger and smaller ones
        alone = run([configs[t]], [t])
        assert_same_member(mixed, member(mixed, t), alone, 0, rtol=1e-5, atol=1e-6)
        assert_same_member(mixed, member(mixed, t), turned, member(turned, t), rtol=1e-5,
                           atol=1e-6)
        ref = reference(exp, module, configs[t], seed=4, trial_id=t)
        np.testing.assert_allclose(mixed.curves["val_loss"][member(mixed, t)],
                                   ref["val_curve"], rtol=RTOL, atol=ATOL)
    assert programs.compiles == 2  # the population of 1 (no program per batch size)


def test_sorted_groups_are_dealt_to_devices_in_a_snake():
    """Members sorted by batch size form groups of consecutive members; device d gets
    groups d, 2D-1-d, 2D+d, ... so every device gets small and large batches alike."""
    from jaxtune.programs import _balanced_layout

    layout = _balanced_layout(32, 2, 4)
    np.testing.assert_array_equal(np.sort(layout), np.arange(32))  # a permutation
    groups = layout.reshape(2, 4, 4) // 4  # (device, group on the device, member)
    assert np.all(groups == groups[..., :1])  # a group stays together
    np.testing.assert_array_equal(groups[..., 0], [[0, 3, 4, 7], [1, 2, 5, 6]])
    batches = np.sort(np.random.default_rng(0).integers(16, 257, 32))[layout]
    loads = [sum(g.max() for g in d.reshape(4, 4)) for d in batches.reshape(2, 16)]
    assert max(loads) / min(loads) < 1.3
    np.testing.assert_array_equal(_balanced_layout(8, 1, 4), np.arange(8))
