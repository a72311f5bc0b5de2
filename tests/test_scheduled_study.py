"""Trial schedulers inside studies and the slot mechanics they rely on.

A tiny 3-class problem (200 rows, 4 features), an 8-unit MLP, 40 steps with an
evaluation every 10: ASHA with ``eta=2`` has rungs at 10 and 20 steps.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune.pool import replay
from jaxtune.search import RandomSearcher
from jaxtune.slots import Member, Population, exploit_key_id, member_keys, train_keys

SPACE = jt.Space(lr=jt.Real(1e-3, 1.0, log=True), momentum=jt.Real(0.5, 0.95))


@pytest.fixture(scope="module")
def data() -> jt.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(4, 3)), -1).astype(np.int32)
    return jt.data.arrays(x[:160], y[:160], x[160:], y[160:], name="tiny3")


@pytest.fixture(scope="module")
def exp(data) -> jt.Experiment:
    return jt.Experiment(data=data, model=jt.models.MLP(width=8, num_outputs=3), space=SPACE,
                         steps=40, eval_every=10,
                         defaults={"batch_size": 16, "optimizer": "momentum"}, name="sched")


class Recording(RandomSearcher):
    """A random searcher that records what it is told."""

    def __init__(self, space: jt.Space = SPACE, *, seed: int = 0):
        super().__init__(space, seed=seed)
        self.told: list[tuple[dict, Any]] = []

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[Any]) -> None:
        self.told += [(dict(c), v) for c, v in zip(configs, losses)]
        super().tell(configs, losses)


def study(exp, scheduler, **kw) -> jt.Study:
    kw = {"population": 4, "top_k": 0, "verbose": False, "progress": False, "store": None,
          "programs": jt.Programs(exp), **kw}
    return jt.Study(exp, searcher=kw.pop("searcher", Recording()), scheduler=scheduler, **kw)


# --------------------------------------------------------------------------- studies


def test_asha_study_refills_slots_without_recompiling(exp):
    s = study(exp, "asha", scheduler_options={"eta": 2})
    assert s.scheduler.rungs == (10, 20)
    result = s.run(trials=16)
    assert result.compiles == 1  # one program for every refill
    trials = result.trials
    assert [t.index for t in trials] == list(range(16))  # every trial started is stored
    pruned = [t for t in trials if t.status == "pruned"]
    complete = [t for t in trials if t.status == "complete"]
    assert pruned and complete and len(pruned) + len(complete) == 16
    for t in pruned:  # stopped at a rung: the steps reached and the rung are stored
        steps = t.metrics["steps"]["mean"]
        assert steps in (10, 20) and t.metrics["rung"]["mean"] == (0 if steps == 10 else 1)
        assert t.objective is None
    for t in complete:
        assert t.metrics["steps"]["mean"] == 40 and t.objective is not None
    # the searcher was told every trial once: complete ones their objective, pruned ones
    # their objective when they were stopped (policy "last"), as losses
    told = {tuple(sorted(c.items())): v for c, v in s.searcher.told}
    assert len(told) == 16
    for t in trials:
        last = t.metrics["val_accuracy"]["mean"]
        assert told[tuple(sorted(t.config.items()))] == pytest.approx(-last)
    summary = result.summary()
    assert summary["pruned"] == len(pruned) and summary["trials"] == 16


def test_pruned_trials_can_be_kept_from_the_searcher(exp):
    s = study(exp, "asha", scheduler_options={"eta": 2}, pruned="exclude")
    result = s.run(trials=12)
    n_pruned = sum(t.status == "pruned" for t in result.trials)
    assert n_pruned and len(s.searcher.told) == 12 - n_pruned


def test_decisions_are_deterministic_for_a_seed(exp):
    a = study(exp, "hyperband", scheduler_options={"eta": 2}).run(trials=12)
    b = study(exp, "hyperband", scheduler_options={"eta": 2}).run(trials=12)
    assert [(t.config, t.status) for t in a.trials] == [(t.config, t.status) for t in b.trials]
    hb = jt.trial_schedulers.Hyperband(10, 2, 40, seed=0)  # the study's, rebuilt
    pruned = [t for t in a.trials if t.status == "pruned"]
    assert pruned
    for t in pruned:  # every pruned trial has its bracket and its rung in that bracket
        steps = t.metrics["steps"]["mean"]
        assert t.metrics["bracket"]["mean"] == hb.bracket(t.index)
        rungs = hb._brackets[hb.bracket(t.index)].rungs
        assert t.metrics["rung"]["mean"] == max(k for k, r in enumerate(rungs) if r <= steps)


class Logged:
    """Wraps a scheduler's decide to log (trial, steps) of every stop it decides."""

    def __init__(self, scheduler):
        self.log: list[tuple[int, int]] = []
        decide = scheduler.decide

        def logged(records, views, space=None):
            out = decide(records, views, space)
            self.log += [(v.trial, v.steps) for v in views if v.trial in out.stop]
            return out

        scheduler.decide = logged
        self.scheduler = scheduler


def test_the_median_rule_never_prunes_a_trial_that_trained_its_budget(exp):
    """The rule may decide to stop a trial at its last evaluation (its budget spent):
    that trial is stored complete, with its objective, and ranked. (A grace period of
    30 of the 40 steps lets many trials reach their last evaluation.)"""
    logged = Logged(jt.trial_schedulers.MedianStopping(grace=30, min_trials=2))
    s = study(exp, logged.scheduler, population=8, searcher="random", objective="val_loss",
              direction="minimize")
    result = s.run(trials=16)
    at_budget = {t for t, steps in logged.log if steps >= exp.steps}
    assert at_budget, "the rule should have voted against some trial at its last evaluation"
    by_index = {t.index: t for t in result.trials}
    for t in at_budget:
        assert by_index[t].status == "complete" and by_index[t].objective is not None
    for t in result.trials:
        steps = t.metrics["steps"]["mean"]
        assert (t.status == "pruned") == (steps < exp.steps), (t.index, t.status, steps)
    ranked = {t.index for t in result.ranked()}
    assert at_budget <= ranked


def test_asha_with_a_searched_step_budget_never_prunes_a_finished_trial(data):
    space = jt.Space(lr=jt.Real(1e-3, 1.0, log=True), steps=jt.Choice([10, 20, 40]))
    exp = jt.Experiment(data=data, model=jt.models.MLP(width=8, num_outputs=3), space=space,
                        steps=40, eval_every=10,
                        defaults={"batch_size": 16, "optimizer": "momentum"}, name="asha-steps")
    logged = Logged(jt.trial_schedulers.ASHA(min_steps=10, eta=2, max_steps=40))
    s = study(exp, logged.scheduler, population=8, searcher="random")
    result = s.run(trials=24)
    by_index = {t.index: t for t in result.trials}
    at_budget = {t for t, steps in logged.log if steps >= by_index[t].config["steps"]}
    assert at_budget, "ASHA should have voted against some trial at the end of its budget"
    for t in result.trials:
        steps, budget = t.metrics["steps"]["mean"], t.config["steps"]
        if t.status == "pruned":
            assert steps < budget and t.metrics["rung"]["mean"] == (0 if steps == 10 else 1)
        else:
            assert t.status == "complete" and steps == budget and t.objective is not None


def test_two_buckets_keep_fixed_slots_whatever_the_split(data):
    space = jt.Space(lr=jt.Real(1e-3, 1.0, log=True),
                     optimizer=jt.Choice(["sgd", "adam"], static=True))
    exp = jt.Experiment(data=data, model=jt.models.MLP(width=8, num_outputs=3), space=space,
                        steps=20, eval_every=10, defaults={"batch_size": 16})
    s = jt.Study(exp, searcher="random", scheduler="median", population=4, store=None,
                 top_k=0, verbose=False, programs=jt.Programs(exp),
                 scheduler_options={"min_trials": 2})
    result = s.run(trials=14)
    assert result.compiles == 2  # one per bucket, 2 slots each, however trials split
    # the stored batches account for those compiles (what `jaxtune report` sums)
    assert sum(b["compiles"] for b in s.store.batches(s.study_id)) == 2
    per_bucket = {o: sum(t.config["optimizer"] == o for t in result.trials)
                  for o in ("sgd", "adam")}
    assert per_bucket["sgd"] >= 6 and per_bucket["adam"] >= 6  # refills stay in their bucket


def test_time_budget_needs_no_trial_count_and_a_resume_continues(exp, tmp_path):
    db = tmp_path / "runs.db"
    first = study(exp, "asha", store=str(db), scheduler_options={"eta": 2})
    first.run(trials=8)
    records = first.scheduler.rebuild([first._view(t) for t in first._trials()])
    # a new study object on the same store (a resume) rebuilds the same records
    again = study(exp, "asha", store=str(db), scheduler_options={"eta": 2})
    assert again.scheduler.rebuild([again._view(t) for t in again._trials()]) == records
    # counted from the call (not from the study's creation): a loaded machine still
    # starts new trials before the budget ends
    result = again.run(time_budget=1.0, started=time.perf_counter())
    assert len(result.finished) > 8 and not result.interrupted


def test_ctrl_c_keeps_a_consistent_store_and_still_evaluates(exp, tmp_path):
    class Interrupting(Recording):
        def ask(self, n, within=None):
            if self.n_told >= 6:
                raise KeyboardInterrupt
            return super().ask(n)

    db = tmp_path / "runs.db"
    s = study(exp, "fifo", searcher=Interrupting(), store=str(db), top_k=1, final_seeds=1)
    result = s.run(trials=100)
    assert result.interrupted
    assert result.finals and result.finals[0]["trial"] == result.ranked()[0].index
    with jt.Store(db, readonly=True) as store:
        assert store.integrity_check() == "ok"
        stored = store.trials(store.studies()[0]["id"])
    assert [t.index for t in stored] == [t.index for t in result.trials]


def test_a_ctrl_c_swallowed_by_a_callback_still_stops_the_study(exp, tmp_path):
    """Python runs the SIGINT handler wherever the main thread is; a KeyboardInterrupt
    raised inside a callback that ignores exceptions (JAX's garbage-collection
    callback does) is lost, yet the study stops at the next chunk boundary."""
    import os
    import signal

    class Swallowing(Recording):
        sent = False

        def ask(self, n, within=None):
            if self.n_told >= 6 and not self.sent:
                self.sent = True
                try:  # a callback that ignores exceptions
                    os.kill(os.getpid(), signal.SIGINT)
                    for _ in range(10_000):
                        pass
                except KeyboardInterrupt:
                    pass
            return super().ask(n)

    s = study(exp, "fifo", searcher=Swallowing(), store=str(tmp_path / "runs.db"))
    result = s.run(trials=100)
    assert s.searcher.sent and result.interrupted
    assert len(result.finished) < 20  # stopped within a round of the lost Ctrl-C
    assert s.store.writer(s.study_id) is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# --------------------------------------------------------------------------- PBT


def test_pbt_study_records_lineage_and_the_winner_replays_as_one_run(exp):
    s = study(exp, "pbt", scheduler_options={"interval": 10, "quantile": 0.25},
              searcher=Recording(seed=2))
    result = s.run()
    assert len(result.trials) == 4 and result.compiles == 1
    lineages = [t.curves["lineage"] for t in result.trials if "lineage" in t.curves]
    assert lineages, "the bottom quarter was exploited at least once"
    for t in result.trials:  # an exploited trial stores every segment it trained
        if "lineage" in t.curves:
            segments = t.curves["segments"]
            assert segments[0]["start"] == 0 and segments[0]["source"] is None
            assert all(seg["source"] is not None for seg in segments[1:])
            assert segments[-1]["config"] == t.config
    best = result.ranked()[0]
    lineage = best.curves.get("lineage") or []
    static = exp.static_config(best.config)
    (member,) = replay(exp, s.programs, static, [(best.index, best.config, lineage)],
                       seeds=1, seed=s.seed, evaluate_test=False)
    np.testing.assert_allclose(member.final["val_accuracy"],
                               best.metrics["val_accuracy"]["mean"], atol=1e-6)
    np.testing.assert_allclose(member.final["val_loss"], best.metrics["val_loss"]["mean"],
                               rtol=1e-5)


def test_an_exploited_copy_with_the_same_configuration_trains_its_own_stream(exp):
    """Exploit with exploration that changes nothing: the copy must not be a duplicate."""
    configs = [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.2, "momentum": 0.6}]
    pop = _population(exp, configs, size=2)
    pop.run_chunk()
    pop.reassign({1: (0, configs[0])})
    pop.run_chunk()
    a, b = (jax.tree.map(lambda x, i=i: np.asarray(x)[i], jax.device_get(pop.state.params))
            for i in (0, 1))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                         jax.tree.leaves(b)))


def test_a_pbt_study_with_running_trials_refuses_to_resume(exp, tmp_path):
    db = tmp_path / "runs.db"
    s = study(exp, "pbt", store=str(db), scheduler_options={"interval": 10, "quantile": 0.25})
    s.run()
    with sqlite3.connect(db) as conn:  # as a kill -9 mid-run leaves them
        conn.execute("UPDATE trials SET status = 'running', objective = NULL")
    with jt.Store(str(db), readonly=True) as st:
        running = st.trials(st.study("default")["id"])
    again = study(exp, "pbt", store=str(db), scheduler_options={"interval": 10, "quantile": 0.25})
    with pytest.raises(ValueError, match="restart every lineage from step 0"):
        again.run()
    with jt.Store(str(db), readonly=True) as st:  # nothing stored was touched
        assert len(st.trials(st.study("default")["id"])) == len(running)


# --------------------------------------------------------------------------- slot mechanics


def _population(exp, configs, size=4, trial_ids=None):
    static = exp.static_config(configs[0])
    program, _ = jt.Programs.default(exp).get(static, size)
    members = [Member(config=c, trial_id=i, replicate=0)
               for i, c in zip(trial_ids or range(len(configs)), configs)]
    return Population(exp, static, program, members, seed=0)


def test_exploit_copies_parameters_and_optimizer_state(exp):
    configs = [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.2, "momentum": 0.6},
               {"lr": 0.01, "momentum": 0.8}]
    pop = _population(exp, configs)
    pop.run_chunk()
    before = jax.device_get(pop.state)
    new = {"lr": 0.1, "momentum": 0.7}
    pop.reassign({2: (0, new)})
    after = jax.device_get(pop.state)
    take = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    chex.assert_trees_all_equal(take(after.params, 2), take(before.params, 0))
    chex.assert_trees_all_equal(take(after.opt_state.inner_state, 2),
                                take(before.opt_state.inner_state, 0))
    assert int(after.step[2]) == int(before.step[0])
    np.testing.assert_allclose(after.hparams["lr"][2], 0.1)
    np.testing.assert_allclose(after.opt_state.hyperparams["momentum"][2], 0.7)
    chex.assert_trees_all_equal(take(after.params, 1), take(before.params, 1))  # untouched
    # the exploited member draws its own stream from now on (its trial id and the step),
    # not the source's minibatches and dropout masks
    fresh = exploit_key_id(2, 10)
    assert pop.slots[2].config == new and pop.slots[2].key_id == fresh
    assert pop.slots[2].lineage == [{"step": 0, "config": configs[0], "key_id": 0},
                                    {"step": 10, "config": new, "key_id": fresh}]
    want = train_keys(member_keys(0, [0, 1, fresh], [0, 0, 0]))
    np.testing.assert_array_equal(jax.random.key_data(after.key[:3]),
                                  jax.random.key_data(want))
    # what this trial trained: its own first configuration, then the copy of trial 0
    assert pop.slots[2].segments == [
        {"start": 0, "end": 10, "config": configs[2], "source": None},
        {"start": 10, "config": new, "source": 0}]


def test_stopped_members_get_no_updates_and_survivors_are_unaffected(exp):
    configs = [{"lr": 0.05, "momentum": 0.9}, {"lr": 0.2, "momentum": 0.6},
               {"lr": 0.01, "momentum": 0.8}]
    pop = _population(exp, configs)
    pop.run_chunk()
    pop.stop([0])
    frozen = jax.device_get(pop.state.params)
    pop.release([2])  # and a slot freed and refilled with a fresh member
    pop.start({2: Member(config={"lr": 0.3, "momentum": 0.5}, trial_id=9, replicate=0)})
    for _ in range(3):
        pop.run_chunk()
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[0], jax.device_get(pop.state.params)),
                                jax.tree.map(lambda a: a[0], frozen))
    alone = _population(exp, [configs[1]], size=1, trial_ids=[1])
    for _ in range(4):
        alone.run_chunk()
    np.testing.assert_allclose(pop.slots[1].curves["val_loss"],
                               alone.slots[0].curves["val_loss"], rtol=1e-5, atol=1e-6)
    # the refilled member is a fresh run of its own trial (its key from trial 9)
    fresh = _population(exp, [{"lr": 0.3, "momentum": 0.5}], size=1, trial_ids=[9])
    for _ in range(3):
        fresh.run_chunk()
    np.testing.assert_allclose(pop.slots[2].curves["val_loss"], fresh.slots[0].curves["val_loss"],
                               rtol=1e-5, atol=1e-6)
