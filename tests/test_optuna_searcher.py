"""Optuna's samplers as jaxtune searchers: the searcher conventions, what Optuna is told,
and a study driven by ``optuna:tpe`` with ASHA."""

from __future__ import annotations

import importlib.util
import math

import pytest
from integration_helpers import small_experiment

import jaxtune as jt
from jaxtune.search import make_searcher
from jaxtune.space import Choice, Int, Real, Space

optuna = pytest.importorskip("optuna")

SPACE = Space(lr=Real(1e-4, 1e-1, log=True), width=Int(8, 64, log=True),
              opt=Choice(["adam", "sgd"], static=True))


def _states(s):
    return [t.state.name for t in s.study.trials]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "nsga2", "random"])
def test_each_sampler_asks_new_configurations_and_is_told_the_losses(sampler):
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        pytest.skip("cmaes is not installed")
    s = make_searcher(f"optuna:{sampler}", SPACE, seed=1)
    seen = set()
    for _ in range(3):
        batch = s.ask(6)
        assert len(batch) == 6
        keys = {SPACE.key(c) for c in batch}
        assert len(keys) == 6 and not keys & seen
        seen |= keys
        losses = [math.log(c["lr"]) ** 2 + c["width"] / 64 + (c["opt"] == "sgd") for c in batch]
        s.tell(batch, losses)
        told = {tuple(sorted(t.params.items())): t.value for t in s.study.trials
                if t.state.name == "COMPLETE"}
        for c, v in zip(batch, losses, strict=True):
            assert told[tuple(sorted(c.items()))] == v
    assert s.n_told == 18


def test_same_seed_same_proposals():
    a, b = (make_searcher("optuna:tpe", SPACE, seed=4) for _ in range(2))
    for _ in range(2):
        ba, bb = a.ask(5), b.ask(5)
        assert ba == bb
        a.tell(ba, [c["lr"] for c in ba])
        b.tell(bb, [c["lr"] for c in bb])


def test_a_finite_space_is_exhausted_without_repeats():
    space = Space(a=Choice([1, 2, 3]), b=Int(0, 3))  # 12 configurations
    s = make_searcher("optuna:tpe", space, seed=0)
    got = []
    while batch := s.ask(5):
        got += batch
        s.tell(batch, [c["a"] * c["b"] for c in batch])
    assert len(got) == 12 and len({space.key(c) for c in got}) == 12


def test_sub_space_asks_stay_inside_and_optuna_keeps_the_full_distributions():
    s = make_searcher("optuna:tpe", SPACE, seed=2)
    s.tell(s.ask(8), [0.1 * i for i in range(8)])
    sub = SPACE.subspace(opt="sgd", width=Int(16, 32, log=True))
    batch = s.ask(6, within=sub)
    assert len(batch) == 6 and all(sub.contains(c) for c in batch)
    for t in s.study.trials:
        assert t.distributions == {n: d.optuna_distribution() for n, d in SPACE.items()}


def test_a_conditional_space_is_asked_define_by_run():
    space = Space(opt=Choice(["adam", "sgd"]), lr=Real(1e-4, 1e-1, log=True),
                  momentum=Real(0.5, 0.99, when={"opt": "sgd"}))
    s = make_searcher("optuna:tpe", space, seed=0)
    for _ in range(3):
        batch = s.ask(6)
        assert all(space.validate(c) == c for c in batch)  # active values only
        s.tell(batch, [c["lr"] + c.get("momentum", 0.0) for c in batch])
    assert {c["opt"] for c in s.observations()[0]} == {"adam", "sgd"}
    for t in s.study.trials:  # Optuna holds each trial's active hyperparameters only
        assert ("momentum" in t.params) == (t.params["opt"] == "sgd")
    s.tell([{"opt": "adam", "lr": 0.05}], [0.3])  # a resumed history, momentum absent
    assert s.study.trials[-1].params == {"opt": "adam", "lr": 0.05}


def test_diverged_trials_are_told_the_penalty_or_fail():
    for diverged, expected in (("penalty", 3.0), ("exclude", None)):
        s = make_searcher("optuna:tpe", SPACE, seed=0, diverged=diverged)
        batch = s.ask(3)
        s.tell(batch, [1.0, 3.0, None])
        last = s.study.trials[-1]
        assert last.params == batch[2]
        assert last.value == expected
        assert last.state.name == ("COMPLETE" if expected is not None else "FAIL")
    s = make_searcher("optuna:tpe", SPACE, seed=0)
    (c,) = s.ask(1)
    s.tell([c], [float("nan")])  # no finite loss yet: nothing to penalise with
    assert _states(s) == ["FAIL"]


def test_pruned_trials_are_told_as_optuna_expects():
    s = make_searcher("optuna:tpe", SPACE, seed=0)
    batch = s.ask(2)
    s.tell(batch, [0.7, 0.2], fidelities=[0.25, 1.0])
    pruned, complete = s.study.trials
    assert pruned.state.name == "PRUNED" and pruned.intermediate_values == {250_000: 0.7}
    assert pruned.value == 0.7  # Optuna's value of a pruned trial: its last report
    assert complete.state.name == "COMPLETE" and complete.value == 0.2


def test_a_resumed_history_is_added_and_never_proposed_again():
    space = Space(a=Choice([1, 2, 3]), b=Int(0, 1))
    history = [{"a": a, "b": b} for a in (1, 2, 3) for b in (0, 1)][:5]
    s = make_searcher("optuna:tpe", space, seed=0)
    s.tell(history, [1.0, None, 3.0, 4.0, 5.0], fidelities=[1.0, 1.0, 1.0, 0.5, 1.0])
    assert _states(s) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert [t.value for t in s.study.trials] == [1.0, 5.0, 3.0, 4.0, 5.0]  # worst finite
    assert s.ask(3) == [{"a": 3, "b": 1}]


def test_a_sampler_object_and_bad_names():
    sampler = optuna.samplers.RandomSampler(seed=0)
    s = make_searcher("optuna", SPACE, sampler=sampler)
    assert s.sampler is sampler and len(s.ask(3)) == 3
    with pytest.raises(ValueError, match="unknown Optuna sampler 'bogus'"):
        make_searcher("optuna", SPACE, sampler="bogus")
    with pytest.raises(ValueError, match="an Optuna sampler"):
        make_searcher("optuna", SPACE, sampler=3)


def test_gp_needs_torch():
    if importlib.util.find_spec("torch") is not None:
        s = make_searcher("optuna:gp", SPACE, seed=0)
        assert len(s.ask(2)) == 2
    else:
        with pytest.raises(ImportError, match=r"optuna:gp needs torch .*pip install torch$"):
            make_searcher("optuna:gp", SPACE, seed=0)


def test_a_study_driven_by_tpe_with_asha(tmp_path):
    study = jt.Study(small_experiment(lr_high=1.0), searcher="optuna:tpe", scheduler="asha",
                     population=4, store=str(tmp_path / "runs.db"), objective="val_loss",
                     seed=0, top_k=0, verbose=False)
    result = study.run(trials=10)
    assert len(result.trials) == 10
    ended = {tuple(sorted(t.config.items())): t for t in result.trials}
    told = [t for t in study.searcher.study.trials if t.state.name != "FAIL"]
    assert len(told) == 10
    for ft in told:
        t = ended[tuple(sorted(ft.params.items()))]
        assert ft.state.name == {"complete": "COMPLETE", "pruned": "PRUNED"}[t.status]
        last = t.metrics["val_loss"]["mean"]
        assert ft.value == pytest.approx(last, rel=1e-12)
    assert any(t.status == "pruned" for t in result.trials)


def test_a_resumed_study_re_tells_the_store_to_a_fresh_sampler(tmp_path):
    db = str(tmp_path / "runs.db")

    def study():
        return jt.Study(small_experiment(lr_high=1.0), searcher="optuna:tpe", population=4,
                        store=db, objective="val_loss", seed=0, top_k=0, verbose=False)

    first = study().run(trials=4)
    again = study()
    result = again.run(trials=8)
    assert [t.index for t in result.trials] == list(range(8))
    keys = [again.experiment.space.key(t.config) for t in result.trials]
    assert len(set(keys)) == 8  # nothing proposed twice across the two runs
    told = {tuple(sorted(ft.params.items())): ft.value for ft in again.searcher.study.trials
            if ft.state.name != "FAIL"}  # (its repeats of them were told FAIL and asked again)
    for t in first.trials:  # the first run's trials, added to the fresh Optuna study
        assert told[tuple(sorted(t.config.items()))] == pytest.approx(t.objective, rel=1e-12)
