"""Tests of jaxtune.study: the ask / train / store / tell loop, resume and final evaluation.

One tiny classification experiment is shared by the whole module so its bucket
program (4 members; 2 for the partial last batch of one test) is compiled once
per test process.

Its space reaches learning rates at which SGD diverges (``lr`` up to 1e6); the
searchers of most tests therefore sample a *safe* sub-space (``SAFE``, ``lr <= 1``)
whose configurations are valid in the experiment's space, and divergence is
forced on purpose by a searcher that proposes fixed configurations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import jaxtune as jt
from jaxtune.search import RandomSearcher, Searcher, config_key
from jaxtune.store import Store, StoreError, TrialRecord
from jaxtune.study import FINAL_SEED_OFFSET, Study

POP = 4
SAFE = jt.Space(lr=jt.Real(1e-2, 1.0, log=True), schedule=jt.Choice(["constant", "cosine"]))
BAD = [{"lr": lr, "schedule": "constant"} for lr in (1e6, 1e5, 5e5, 2e5)]  # SGD diverges


@pytest.fixture(scope="module")
def exp() -> jt.Experiment:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(4, 3)), -1).astype(np.int32)
    data = jt.data.arrays(x[:160], y[:160], x[160:], y[160:], name="tiny3")
    return jt.Experiment(
        data=data, model=jt.models.MLP(width=8, num_outputs=3),
        space=jt.Space(lr=jt.Real(1e-3, 1e6, log=True),
                       schedule=jt.Choice(["constant", "cosine"])),
        steps=20, eval_every=10, defaults={"batch_size": 16, "optimizer": "sgd"},
        name="tiny-study")


class Recording(RandomSearcher):
    """A random searcher that records every ask and tell."""

    def __init__(self, space: jt.Space = SAFE, *, seed: int = 0):
        super().__init__(space, seed=seed)
        self.asked: list[list[dict]] = []
        self.told: list[tuple[list[dict], list[Any]]] = []

    def ask(self, n: int) -> list[dict]:
        out = super().ask(n)
        self.asked.append(out)
        return out

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[Any]) -> None:
        self.told.append(([dict(c) for c in configs], list(losses)))
        super().tell(configs, losses)

    def all_told(self) -> list[tuple[dict, Any]]:
        return [(c, v) for cs, vs in self.told for c, v in zip(cs, vs)]


class Fixed(Recording):
    """Proposes the given configurations, in order (then nothing)."""

    def __init__(self, space: jt.Space, configs: Sequence[dict]):
        super().__init__(space)
        self._todo = [dict(c) for c in configs]

    def _propose(self, n: int) -> list[dict]:
        out, self._todo = self._todo[:n], self._todo[n:]
        return out


def make_study(exp: jt.Experiment, store: Any, searcher: Searcher | None = None,
               **kw: Any) -> Study:
    kw = {"population": POP, "top_k": 0, "verbose": False, "progress": False, **kw}
    return Study(exp, searcher=searcher if searcher is not None else Recording(), store=store,
                 **kw)


def stored(db: Any, name: str = "default") -> list[TrialRecord]:
    with Store(db, readonly=True) as s:
        return s.trials(s.study(name)["id"])


def assert_unique_configs(trials: Sequence[TrialRecord]) -> None:
    keys = [json.dumps(t.config, sort_keys=True) for t in trials]
    assert len(set(keys)) == len(keys), f"duplicate configurations: {[t.config for t in trials]}"


# --------------------------------------------------------------------------- trial counts


@pytest.mark.parametrize("n", [8, 6])  # 6: the last trials leave 2 of the 4 slots free
def test_runs_exactly_n_trials(exp, tmp_path, n):
    db = tmp_path / "runs.db"
    study = make_study(exp, db)
    result = study.run(trials=n)
    assert result.n_complete == n and len(result.trials) == n
    trials = stored(db)
    assert [t.index for t in trials] == list(range(n))
    assert all(t.status == "complete" for t in trials)
    assert_unique_configs(trials)
    # every configuration asked was stored and told exactly once, with its objective
    assert sum(len(a) for a in study.searcher.asked) == n
    told = study.searcher.all_told()
    assert len(told) == n
    for t in trials:
        assert t.objective is not None and math.isfinite(t.objective)
        assert t.objective == pytest.approx(t.metrics["val_accuracy"]["mean"])
        assert t.seeds == [0] and t.finished is not None and t.wall_s is not None
        assert len(t.curves["val_accuracy"]) == 1 and len(t.curves["val_accuracy"][0]) == 2
    with Store(db, readonly=True) as s:
        sid = s.study("default")["id"]
        batches = s.batches(sid)
        # one row per round (one chunk of every population; trials here last 2 chunks),
        # committed with the trials that ended in it
        rounds = 2 * math.ceil(n / POP)
        assert [b["batch"] for b in batches] == list(range(rounds))
        assert sum(b["ended"] for b in batches) == n
        assert s.integrity_check() == "ok"
    # each trial records the round it started in; slots freed at a round are refilled
    assert sorted({t.batch for t in trials}) == list(range(0, rounds, 2))
    assert result.store == str(db)
    json.dumps(result.summary())  # serialisable


def test_curves_step_axis_is_the_evaluation_steps(exp, tmp_path):
    result = make_study(exp, tmp_path / "runs.db").run(trials=4)
    for t in result.trials:
        assert t.curves["step"] == [10, 20]


def test_in_memory_study(exp):
    study = make_study(exp, None)
    result = study.run(trials=4)
    assert result.store is None and result.n_complete == 4
    assert [t.index for t in result.trials] == [0, 1, 2, 3]
    assert result.summary()["store"] is None


def test_run_needs_trials_or_budget(exp, tmp_path):
    with pytest.raises(ValueError, match="trials"):
        make_study(exp, tmp_path / "runs.db").run()


# --------------------------------------------------------------------------- direction


@pytest.mark.parametrize(("objective", "direction"), [
    ("val_accuracy", "maximize"), ("val_loss", "minimize"), ("val_loss", "maximize"),
    ("train_loss", "minimize")])
def test_direction_is_told_as_loss(exp, tmp_path, objective, direction):
    searcher = Recording(seed=3)
    study = make_study(exp, tmp_path / "runs.db", searcher, objective=objective,
                       direction=direction)
    result = study.run(trials=4)
    by_key = {config_key(SAFE, t.config): t for t in result.trials}
    told = searcher.all_told()
    assert len(told) == 4
    for config, loss in told:
        t = by_key[config_key(SAFE, config)]
        assert t.objective == pytest.approx(t.metrics[objective]["mean"])
        expected = -t.objective if direction == "maximize" else t.objective
        assert loss == pytest.approx(expected)
    sign = -1 if direction == "maximize" else 1
    best = min(result.trials, key=lambda t: sign * t.objective)
    assert result.ranked()[0].index == best.index
    assert result.best["trial"] == best.index
    assert result.summary()["direction"] == direction


def test_default_direction_and_objective(exp, tmp_path):
    study = make_study(exp, tmp_path / "a.db")
    assert (study.objective, study.direction) == ("val_accuracy", "maximize")
    study = make_study(exp, tmp_path / "b.db", objective="val_loss")
    assert (study.objective, study.direction) == ("val_loss", "minimize")


@pytest.mark.parametrize("kw", [
    {"objective": "test_accuracy"}, {"objective": "test_loss"}, {"objective": "accuracy"},
    {"direction": "up"}, {"seeds": 0}, {"seeds": 5, "population": 4}])
def test_invalid_study_arguments_are_refused_before_the_store_exists(exp, tmp_path, kw):
    db = tmp_path / "runs.db"
    with pytest.raises(ValueError) as err:
        make_study(exp, db, **kw)
    if "objective" in kw:
        assert "test split" in str(err.value)
    assert not db.exists()


def test_a_population_not_a_multiple_of_seeds_is_refused(exp, tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(ValueError, match=r"^population 3 is not a multiple of seeds 2: a trial "
                                         r"trains as 2 members, so 1 slot\(s\) would train "
                                         r"nothing; use population 2 or 4$"):
        make_study(exp, db, seeds=2, population=3)
    assert not db.exists()
    assert make_study(exp, None, seeds=2, population=4).population == 4


def test_negative_top_k_is_refused(exp, tmp_path):
    with pytest.raises(ValueError):
        make_study(exp, tmp_path / "runs.db", top_k=-1)


# --------------------------------------------------------------------------- divergence


def test_diverged_trials_are_stored_without_objective_and_told_none(exp, tmp_path):
    db = tmp_path / "runs.db"
    good = [{"lr": 0.05, "schedule": "constant"}, {"lr": 0.3, "schedule": "cosine"}]
    configs = [BAD[0], good[0], BAD[1], good[1]]
    searcher = Fixed(exp.space, configs)
    result = make_study(exp, db, searcher).run(trials=4)
    trials = stored(db)
    assert [t.config for t in trials] == configs
    assert [t.status for t in trials] == ["diverged", "complete", "diverged", "complete"]
    for t in trials:
        if t.status == "diverged":
            assert t.objective is None
        else:
            assert t.objective is not None and math.isfinite(t.objective)
    with sqlite3.connect(db) as conn:  # the objective column holds NULL, never NaN
        col = conn.execute("SELECT idx, objective FROM trials ORDER BY idx").fetchall()
    assert [o is None for _, o in col] == [True, False, True, False]
    told = dict((json.dumps(c, sort_keys=True), v) for c, v in searcher.all_told())
    assert len(told) == 4
    for t in trials:
        loss = told[json.dumps(t.config, sort_keys=True)]
        if t.status == "diverged":
            assert loss is None
        else:
            assert loss == pytest.approx(-t.objective)
    summary = result.summary()
    assert summary["diverged"] == 2 and summary["complete"] == 2 and summary["trials"] == 4
    assert {t.index for t in result.ranked()} == {1, 3}
    assert summary["best"]["trial"] in (1, 3)
    assert "1" in result.table() and "3" in result.table()
    # a diverged trial counts as finished: nothing more is asked for trials=4
    assert result.n_complete == 2 and len(result.trials) == 4


def test_all_diverged_study_has_no_best(exp, tmp_path):
    result = make_study(exp, tmp_path / "runs.db", Fixed(exp.space, BAD), top_k=2,
                        final_seeds=2).run(trials=4)
    assert [t.status for t in result.trials] == ["diverged"] * 4
    assert result.best is None and result.finals == []
    summary = result.summary()
    assert summary["best"] is None and summary["variance"] is None
    json.dumps(summary)


# --------------------------------------------------------------------------- seeds


def test_seeds_are_aggregated_mean_and_std(exp, tmp_path):
    searcher = Recording(seed=5)
    study = make_study(exp, tmp_path / "runs.db", searcher, seeds=2, seed=7,
                       objective="val_loss")
    result = study.run(trials=4)  # 2 configurations x 2 seeds at a time, twice
    assert result.n_complete == 4 and len({t.batch for t in result.trials}) == 2
    first = result.trials[:2]
    for t in result.trials:
        assert t.seeds == [0, 1]
        for name in ("val_loss", "train_loss", "val_accuracy", "train_accuracy"):
            m = t.metrics[name]
            assert len(m["per_seed"]) == 2
            assert m["mean"] == pytest.approx(np.mean(m["per_seed"]))
            assert m["std"] == pytest.approx(np.std(m["per_seed"]))
        assert t.objective == pytest.approx(t.metrics["val_loss"]["mean"])
        assert len(t.curves["val_loss"]) == 2
        assert t.curves["val_loss"][0][-1] == pytest.approx(t.metrics["val_loss"]["per_seed"][0])
        # replicates are different members (different keys)
        assert t.metrics["val_loss"]["per_seed"][0] != t.metrics["val_loss"]["per_seed"][1]
    # the per-seed values are those of the engine for (seed, trial id, replicate)
    pop = jt.train_population(exp, [t.config for t in first], seeds=2, seed=7,
                              trial_ids=[t.index for t in first], progress=False,
                              verbose=False)
    for t in first:
        rows = [i for i, tid in enumerate(pop.trial_ids) if tid == t.index]
        assert list(pop.replicates[rows]) == [0, 1]
        np.testing.assert_allclose(pop.final["val_loss"][rows],
                                   t.metrics["val_loss"]["per_seed"], rtol=1e-6)
    # the searcher is told the mean over seeds
    for config, loss in searcher.all_told():
        t = next(t for t in result.trials if t.config == config)
        assert loss == pytest.approx(t.metrics["val_loss"]["mean"])


# --------------------------------------------------------------------------- final evaluation


def test_final_top_k_reevaluation_on_test(exp, tmp_path):
    db = tmp_path / "runs.db"
    study = make_study(exp, db, top_k=2, final_seeds=2, seed=11)
    result = study.run(trials=8)
    ranked = result.ranked()
    assert len(result.finals) == 2
    with Store(db, readonly=True) as s:
        assert s.finals(s.study("default")["id"]) == result.finals
    for rank, (row, t) in enumerate(zip(result.finals, ranked[:2])):
        assert row["rank"] == rank and row["trial"] == t.index and row["config"] == t.config
        assert row["seeds"] == 2 and row["seed"] == 11 + FINAL_SEED_OFFSET
        assert row["search_objective"] == pytest.approx(t.objective)
        assert row["status"] == "complete"
        for name in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
            assert math.isfinite(row[name]) and row[name + "_std"] >= 0
        assert 0.0 <= row["test_accuracy"] <= 1.0
    # the final choice is the top trial with the best re-trained validation accuracy
    chosen = max(result.finals, key=lambda r: (r["val_accuracy"], -r["rank"]))
    assert [r["chosen"] for r in result.finals] == [r is chosen for r in result.finals]
    assert f"trial {chosen['trial']}" in chosen["chosen_because"]
    won = next(t for t in ranked if t.index == chosen["trial"])
    summary = result.summary()
    best = summary["best"]
    assert best["trial"] == won.index and best["config"] == won.config
    assert best["val_accuracy"] == pytest.approx(won.metrics["val_accuracy"]["mean"])
    assert best["test_accuracy"] == pytest.approx(chosen["test_accuracy"])
    assert best["final_val_accuracy"] == pytest.approx(chosen["val_accuracy"])
    assert best["final_seeds"] == 2
    assert summary["variance"]["metric"] == "test_accuracy"
    assert summary["variance"]["top_k"] == 2
    json.loads(json.dumps(summary))

    # reopening the finished study reuses the stored final evaluation
    again = make_study(exp, db, top_k=2, final_seeds=2, seed=11).run(trials=8)
    assert again.finals == result.finals and again.compiles == 0
    assert [t.index for t in stored(db)] == list(range(8))


def test_search_trials_do_not_read_the_test_split(exp, tmp_path):
    result = make_study(exp, tmp_path / "runs.db").run(trials=4)
    leaked = sorted({k for t in result.trials for k in t.metrics if k.startswith("test_")})
    assert leaked == []


def test_best_reports_the_search_objective(exp, tmp_path):
    result = make_study(exp, tmp_path / "runs.db", objective="val_loss", top_k=2,
                        final_seeds=2).run(trials=4)
    chosen = next(r for r in result.finals if r["chosen"])
    assert chosen["val_loss"] == min(r["val_loss"] for r in result.finals)
    top = next(t for t in result.ranked() if t.index == chosen["trial"])
    assert result.best["val_loss"] == top.objective
    assert result.summary()["best"]["val_loss"] == top.objective


def test_final_evaluation_follows_final_seeds(exp, tmp_path):
    db = tmp_path / "runs.db"
    make_study(exp, db, top_k=2, final_seeds=2).run(trials=4)
    result = make_study(exp, db, top_k=2, final_seeds=1).run(trials=4)
    assert [r["seeds"] for r in result.finals] == [1, 1]


# --------------------------------------------------------------------------- time budget


def test_time_budget_stops_before_the_trial_target(exp, tmp_path):
    db = tmp_path / "runs.db"
    study = make_study(exp, db)
    study.run(trials=4)  # warm: the program is compiled and the first batch done
    result = study.run(trials=10_000, time_budget=0.5, started=time.perf_counter())
    n = len(result.trials)
    finished = result.finished
    assert 4 < len(finished) <= n < 10_000
    assert result.wall_s < 30
    assert [t.index for t in stored(db)] == list(range(n))
    # it stopped at a chunk boundary: what ended is stored, what ran is left to a resume
    assert all(t.status == "complete" for t in finished)
    assert {t.status for t in stored(db)} <= {"complete", "running"}
    assert result.summary()["trials"] == len(finished)

    # a spent budget starts no batch at all
    nothing = make_study(exp, tmp_path / "other.db").run(time_budget=1e-9)
    assert nothing.trials == [] and nothing.best is None


def test_member_step_budget_is_never_exceeded(exp, tmp_path):
    # 20 steps per trial, 4 slots: 130 member-steps fit 6 trials (120), not 7
    db = tmp_path / "runs.db"
    result = make_study(exp, db).run(member_steps=130)
    trials = stored(db)
    assert len(trials) == 6 and all(t.status == "complete" for t in trials)
    assert sum(sum(t.metrics["steps"]["per_seed"]) for t in trials) == 120
    assert result.n_complete == 6
    # a resumed study counts what the store holds: room for one more trial
    assert len(make_study(exp, db).run(member_steps=140).trials) == 7
    with pytest.raises(ValueError, match="member_steps"):
        make_study(exp, tmp_path / "zero.db").run(member_steps=0)


def test_member_step_budget_is_refilled_with_what_pruning_saves(exp, tmp_path):
    # ASHA (rungs at 10 and 20 steps) stops trials at 10 steps; their unspent steps
    # start new trials, so more trials end than the budget holds at full length
    db = tmp_path / "runs.db"
    make_study(exp, db, scheduler="asha", scheduler_options={"eta": 2}).run(member_steps=200)
    trials = stored(db)
    spent = sum(sum(t.metrics["steps"]["per_seed"]) for t in trials if t.status != "running")
    assert spent <= 200 and any(t.status == "pruned" for t in trials)
    assert len(trials) > 200 // 20


def test_target_stops_the_study_once_reached(exp, tmp_path):
    # any accuracy reaches 0: the study stops when its first trials complete
    # (round 2 of trials lasting 2 rounds), asking no others
    study = make_study(exp, tmp_path / "runs.db")
    result = study.run(trials=10_000, target=0.0)
    assert len(result.trials) == POP and len(result.finished) == POP
    assert sum(len(a) for a in study.searcher.asked) == POP
    # an unreachable target leaves the study to its other budgets
    other = make_study(exp, tmp_path / "other.db")
    assert len(other.run(trials=8, target=1.01).finished) == 8


# --------------------------------------------------------------------------- reopen / resume


@pytest.mark.parametrize("change", ["steps", "population", "objective", "seed"])
def test_reopen_with_a_different_spec_is_refused(exp, tmp_path, change):
    db = tmp_path / "runs.db"
    make_study(exp, db).run(trials=4)
    before = stored(db)
    experiment, kw = exp, {}
    if change == "steps":
        experiment = dataclasses.replace(exp, steps=10)
    elif change == "population":
        kw = {"population": 2}
    elif change == "objective":
        kw = {"objective": "val_loss"}
    else:
        kw = {"seed": 1}
    with pytest.raises(StoreError, match="different spec"):
        make_study(experiment, db, **kw)
    assert stored(db) == before
    with Store(db, readonly=True) as s:
        assert s.integrity_check() == "ok" and len(s.studies()) == 1
    # another name in the same store is another study
    other = make_study(experiment, db, name="other", **kw)
    assert other.study_id != make_study(exp, db).study_id
    assert stored(db, "other") == [] and stored(db) == before


def test_continue_to_more_trials_with_a_fresh_searcher(exp, tmp_path):
    db = tmp_path / "runs.db"
    make_study(exp, db).run(trials=4)
    before = stored(db)
    searcher = Recording()
    result = make_study(exp, db, searcher).run(trials=12)
    after = stored(db)
    assert [t.index for t in after] == list(range(12))
    assert all(t.status == "complete" for t in after)
    assert after[:4] == before  # committed trials are untouched
    assert_unique_configs(after)
    # the stored history was told first, then only new configurations were asked
    first_configs, first_losses = searcher.told[0]
    assert first_configs == [t.config for t in before]
    assert first_losses == pytest.approx([-t.objective for t in before])
    assert sum(len(a) for a in searcher.asked) == 8
    assert result.n_complete == 12
    # asking for fewer (or as many) trials than stored does nothing
    for n in (4, 12):
        searcher = Recording()
        again = make_study(exp, db, searcher).run(trials=n)
        assert again.trials == after and searcher.asked == []
    assert stored(db) == after


def test_resume_is_equivalent_to_an_uninterrupted_run(exp, tmp_path):
    """Member keys depend on (seed, trial id, replicate) only, and a fresh random
    searcher told the history skips the configurations already tried: stopping and
    resuming gives the trials of a run that never stopped."""
    whole = make_study(exp, tmp_path / "a.db", Recording(seed=9)).run(trials=8)
    make_study(exp, tmp_path / "b.db", Recording(seed=9)).run(trials=4)
    resumed = make_study(exp, tmp_path / "b.db", Recording(seed=9)).run(trials=8)
    assert [t.config for t in resumed.trials] == [t.config for t in whole.trials]
    assert [t.objective for t in resumed.trials] == pytest.approx(
        [t.objective for t in whole.trials], rel=1e-6)


def test_running_trials_are_trained_again_with_the_same_ids(exp, tmp_path):
    """A batch interrupted by a kill is left ``running``; the next run trains it first."""
    db = tmp_path / "runs.db"
    make_study(exp, db).run(trials=4)
    study = make_study(exp, db, Recording(seed=1))
    interrupted = SAFE.sample(4, seed=123)
    study.store.add_trials(study.study_id, [
        TrialRecord(index=4 + i, config=c, status="running", seeds=[0], batch=1)
        for i, c in enumerate(interrupted)])
    result = study.run(trials=8)
    after = stored(db)
    assert [t.index for t in after] == list(range(8))
    assert all(t.status == "complete" for t in after)
    assert [t.config for t in after[4:]] == interrupted
    assert study.searcher.asked == []  # nothing new was needed
    told = [c for c, _ in study.searcher.all_told()]
    assert told == [t.config for t in after]
    assert result.n_complete == 8


def test_run_twice_on_one_study_continues(exp, tmp_path):
    db = tmp_path / "runs.db"
    study = make_study(exp, db)
    study.run(trials=4)
    study.run(trials=8)
    after = stored(db)
    assert [t.index for t in after] == list(range(8))
    assert_unique_configs(after)


def test_run_twice_does_not_tell_the_searcher_twice(exp, tmp_path):
    study = make_study(exp, tmp_path / "runs.db")
    study.run(trials=4)
    study.run(trials=8)
    assert study.searcher.n_told == 8


def test_study_without_a_file_uses_an_in_memory_store(exp):
    study = make_study(exp, None)
    assert study.store.in_memory
    result = study.run(trials=4)
    assert result.store is None and result.n_complete == 4
    assert len(study.store.trials(study.study_id)) == 4
    # a second run continues from the same in-memory store
    assert len(study.run(trials=6).trials) == 6


def test_best_trial_trained_model_is_returned(exp):
    study = make_study(exp, None, searcher=Fixed(SAFE, [{"lr": 0.3, "schedule": "constant"},
                                                        {"lr": 0.05, "schedule": "cosine"}]),
                       top_k=1, final_seeds=1)
    result = study.run(trials=2)
    module, params = result.best_model
    logits = module.apply(params, exp.data.x_test)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(exp.data.y_test)))
    assert accuracy == pytest.approx(result.finals[0]["test_accuracy"], abs=1e-6)
    assert result.finals[0]["trial"] == result.ranked()[0].index
    # read back from the store, the final evaluation does not re-train: no model
    assert study.run(trials=2).best_model is None


def test_capped_epoch_budgets_warn_once_per_study(ts_data, recwarn):
    exp = jt.Experiment(data=ts_data, model=jt.models.MLP(width=4, num_outputs=1),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                                       epochs=jt.Real(0.1, 50.0)),
                        steps=10, eval_every=10, defaults={"batch_size": 16})
    configs = [{"lr": 0.01, "epochs": e} for e in (0.1, 40.0, 0.2, 30.0, 0.3, 20.0)]
    study = make_study(exp, None, searcher=Fixed(exp.space, configs), population=2)
    result = study.run(trials=6)
    capped = [w for w in recwarn if "more epochs" in str(w.message)]
    assert len(capped) == 1  # three batches hold capped members, one warning
    by_epochs = {t.config["epochs"]: t for t in result.trials}
    assert by_epochs[40.0].metrics["budget"]["mean"] == 10  # the steps it really had
    assert by_epochs[40.0].metrics["budget_capped"]["mean"] == 1.0
    assert by_epochs[0.1].metrics["budget"]["mean"] == math.ceil(0.1 * ts_data.n_train / 16)


def test_replay_is_exact_at_the_population_size_a_trial_ran_in(exp):
    """As the README's Randomness bullet and replay's docstring say: bit for bit in a
    program of the size the trial trained in, whatever its slot; to float32 rounding
    in a program of another size."""
    from jaxtune.pool import replay

    study = make_study(exp, None, searcher=Recording(seed=3))
    result = study.run(trials=POP)
    trials = [t for t in result.trials if t.status == "complete"]
    static = exp.static_config(trials[0].config)
    for size in (POP, 1):
        for t in trials[::-1]:  # the last trial replayed in slot 0
            (m,) = replay(exp, study.programs, static, [(t.index, t.config, [])], seeds=1,
                          seed=study.seed, evaluate_test=False, size_multiple=size)
            for name in ("val_loss", "train_loss"):
                if size == POP:
                    assert m.final[name] == t.metrics[name]["mean"], (t.index, name)
                else:
                    np.testing.assert_allclose(m.final[name], t.metrics[name]["mean"],
                                               rtol=1e-5)


def test_enqueued_configurations_survive_a_stop_and_run_once_each_in_order(exp, tmp_path,
                                                                         monkeypatch):
    """Enqueued configurations are kept in the store until they start: a study stopped (or
    killed) before they start runs them first when it resumes, in order, and those that
    had started are not run again (nor enqueued again by a script run a second time)."""
    path = str(tmp_path / "q.db")
    queue = [{"lr": lr, "schedule": "constant"} for lr in (0.011, 0.022, 0.033, 0.044,
                                                            0.055, 0.066)]

    def study() -> Study:
        return Study(exp, searcher=RandomSearcher(SAFE, seed=0), store=path, population=POP,
                     top_k=0, verbose=False, checkpoint_rounds=None, checkpoint_seconds=None)

    study().enqueue(queue[:1])  # a process that enqueued and was killed before running
    s = study()
    s.enqueue(queue)  # the script run again: the first is not enqueued twice
    assert [c for _, c in s.store.queued(s.study_id)] == queue
    calls = []  # the clock says "time is up" after the first round, whatever the machine

    def past(deadline):
        calls.append(deadline)
        return deadline is not None and len(calls) > 1

    with monkeypatch.context() as m:
        m.setattr(Study, "_past", staticmethod(past))
        stopped = s.run(trials=10, time_budget=60)
    assert [(t.index, t.config, t.status) for t in stopped.trials] == \
        [(i, c, "running") for i, c in enumerate(queue[:POP])]
    again = study()
    again.enqueue(queue)  # already trials or still enqueued: nothing new
    assert [c for _, c in again.store.queued(again.study_id)] == queue[POP:]
    trials = again.run(trials=10).trials
    assert [t.config for t in trials[:len(queue)]] == queue  # first, in order
    assert all(t.config not in queue for t in trials[len(queue):])  # then the searcher's
    assert [t.status for t in trials] == ["complete"] * 10
    assert again.store.queued(again.study_id) == []


def test_a_queued_configuration_leaves_the_queue_with_its_trial(tmp_path):
    """The insert of the trials that start enqueued configurations removes them from the
    queue in the same transaction; a refused insert leaves both as they were."""
    with Store(tmp_path / "x.db") as store:
        sid = store.open_study("default", {})
        assert store.enqueue(sid, [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}]) == [0, 1, 2]
        store.add_trials(sid, [TrialRecord(0, {"lr": 0.1}, "running")], dequeued=[0])
        with pytest.raises(StoreError, match="already has trial"):
            store.add_trials(sid, [TrialRecord(0, {"lr": 0.2}, "running")], dequeued=[1])
        with pytest.raises(StoreError, match="no enqueued configuration at position 0"):
            store.add_trials(sid, [TrialRecord(1, {"lr": 0.1}, "running")], dequeued=[0])
        assert store.queued(sid) == [(1, {"lr": 0.2}), (2, {"lr": 0.3})]
        assert [t.index for t in store.trials(sid)] == [0]
        assert store.enqueue(sid, [{"lr": 0.4}]) == [3]
    with Store(tmp_path / "old.db") as old:  # a store made before the queue was kept
        old._db.execute("DROP TABLE queue")
        sid = old.open_study("default", {})
    with Store(tmp_path / "old.db", readonly=True) as r:
        assert r.queued(sid) == []
    with Store(tmp_path / "old.db") as w:  # gains the table when opened for writing
        assert w.enqueue(sid, [{"lr": 0.5}]) == [0] and w.queued(sid) == [(0, {"lr": 0.5})]
