"""Tests of jaxtune.analysis and jaxtune.surrogate: importance on planted objectives,
partial dependence, boundary hits, isolation, seed noise and the trials table."""

from __future__ import annotations

import doctest
import sys

import numpy as np
import pytest
import report_stores

from jaxtune import analysis, plots, render, report, surrogate, surrogate_plots
from jaxtune.analysis import StudyData
from jaxtune.space import Choice, Int, Real, Space
from jaxtune.store import Store, TrialRecord

PLANTED = Space(lr=Real(1e-4, 1e-1, log=True), a=Real(0.0, 1.0), b=Real(0.0, 1.0),
                c=Real(0.0, 1.0), opt=Choice(["x", "y", "z"]))


def planted(u: np.ndarray) -> np.ndarray:
    """A dominant ``lr`` (linear in log lr) plus a pure interaction of ``a`` and ``b``.

    ``(2a - 1)(2b - 1)`` averages to zero over ``a`` for every ``b`` and vice
    versa: ``a`` and ``b`` have no main effect at all. Exact shares of the
    variance: lr 9/12 / (9/12 + 4/9) = 0.628, a x b 0.372, c and opt nothing.
    """
    return 3.0 * u[:, 0] + 2.0 * (2 * u[:, 1] - 1) * (2 * u[:, 2] - 1)


def planted_study(n: int, seed: int) -> StudyData:
    rng = np.random.default_rng(seed)
    configs = PLANTED.sample(n, seed=seed)
    y = planted(np.stack([PLANTED.to_unit(c) for c in configs])) + 0.05 * rng.normal(size=n)
    trials = [TrialRecord(i, c, "complete", objective=float(v))
              for i, (c, v) in enumerate(zip(configs, y))]
    return StudyData("planted", {"experiment": {"space": PLANTED.spec()},
                                 "objective": "val_loss", "direction": "minimize"}, {}, trials)


class _Exact:
    """A 'surrogate' that is the planted function itself (tests the decomposition alone)."""

    space, names = PLANTED, PLANTED.names

    def predict(self, U):
        return planted(np.asarray(U))

    def snap(self, U):
        return np.stack([PLANTED.to_unit(PLANTED.from_unit(u)) for u in U])


def test_functional_anova_of_a_known_function_matches_the_exact_shares():
    main, pairs = surrogate.functional_anova(_Exact(), samples=256, seed=0)
    assert main["lr"] == pytest.approx(0.628, abs=0.03)
    assert pairs[("a", "b")] == pytest.approx(0.372, abs=0.03)
    assert main["a"] < 0.01 and main["b"] < 0.01
    assert main["c"] == pytest.approx(0.0, abs=1e-12) and main["opt"] == pytest.approx(0, abs=1e-12)
    others = [v for k, v in pairs.items() if k != ("a", "b")]
    assert max(others) < 1e-9
    assert sum(main.values()) + sum(pairs.values()) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_importance_finds_the_planted_dominant_hyperparameter_and_interaction(seed):
    imp = surrogate.importance(planted_study(160, seed), seed=seed)
    assert imp.n_trials == 160 and imp.r2_oob > 0.4
    # functional ANOVA: lr dominates the main effects, a and b have (almost) none,
    # and a x b is clearly the strongest pair.
    assert imp.ranked()[0] == "lr" and imp.main["lr"] > 0.5
    assert imp.main["a"] < 0.05 and imp.main["b"] < 0.05
    a, b, share = imp.interaction
    assert {a, b} == {"a", "b"}
    second = sorted(imp.pairs.values())[-2]
    assert share > 2 * second
    # permutation importance counts interactions too: a and b rank right after lr
    perm = sorted(imp.permutation, key=lambda k: -imp.permutation[k][0])
    assert perm[0] == "lr" and set(perm[1:3]) == {"a", "b"}
    d = imp.to_dict()
    assert set(d["interaction"]["pair"]) == {"a", "b"} and "a*b" in d["pairs"]


def test_surrogate_needs_enough_complete_trials():
    data = planted_study(5, 0)
    with pytest.raises(ValueError, match="at least"):
        surrogate.fit_surrogate(data)


def test_flat_forest_predicts_exactly_like_sklearn():
    s = surrogate.fit_surrogate(planted_study(60, 0), n_trees=30)
    U = np.random.default_rng(3).random((200, len(PLANTED)))
    np.testing.assert_array_equal(surrogate._FlatForest(s.forest).predict(U),
                                  s.forest.predict(U))
    np.testing.assert_array_equal(s.predict(U[:5]), s.forest.predict(U[:5]))


def test_partial_dependence_follows_the_planted_main_effect():
    s = surrogate.fit_surrogate(planted_study(120, 0))
    pd = surrogate.partial_dependence(s, "lr", grid=12)
    assert np.corrcoef(pd["unit"], pd["mean"])[0, 1] > 0.95  # 3 * unit(lr), rising
    assert pd["value"][0] == pytest.approx(1e-4, rel=0.5) and pd["value"][-1] < 0.1
    flat = surrogate.partial_dependence(s, "c", grid=12)
    assert np.ptp(flat["mean"]) < 0.25 * np.ptp(pd["mean"])


def test_boundary_hits_flag_the_edge_the_best_trials_sit_at(tmp_path):
    with report_stores.build(tmp_path / "runs.db") as store:
        data = analysis.load_study(store)
    hits = analysis.boundary_hits(data)
    assert [(h.name, h.edge) for h in hits] == [("lr", "high")]
    (hit,) = hits
    assert hit.bound == 1.0 and "widen" in hit.advice and "above 1" in hit.advice
    best = data.ranked()[0]
    assert best.index in hit.trials
    assert all(analysis.edge_position(SPACE_LR, v) >= 0.95 for v in hit.values)


SPACE_LR = report_stores.SPACE["lr"]


def test_edge_position_is_log_aware_and_ignores_choices():
    assert analysis.edge_position(Real(1e-4, 1.0, log=True), 1e-2) == pytest.approx(0.5)
    assert analysis.edge_position(Int(16, 256, log=True), 16) == 0.0
    assert analysis.edge_position(Int(16, 256, log=True), 256) == 1.0
    assert analysis.edge_position(Choice(["a", "b"]), "a") is None


def test_isolation_is_the_best_trial_per_value(tmp_path):
    with report_stores.build(tmp_path / "runs.db", n=64) as store:
        data = analysis.load_study(store)
    rows = analysis.isolation(data, "schedule")
    for r in rows:
        group = [t for t in data.ranked() if t.config["schedule"] == r["value"]]
        assert r["objective"] == max(t.objective for t in group) and r["n"] == len(group)
    rows = analysis.isolation(data, "lr", bins=4)
    assert sum(r["n"] for r in rows) == len(data.ranked()) and len(rows) <= 4
    assert all(r["low"] <= r["value"] <= r["high"] for r in rows)
    assert max(r["objective"] for r in rows) == data.ranked()[0].objective
    with pytest.raises(ValueError, match="no hyperparameter"):
        analysis.isolation(data, "momentum")


def test_seed_noise_compares_the_best_two_with_their_seed_spread():
    def trial(i, per_seed):
        m = {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
             "per_seed": per_seed}
        return TrialRecord(i, {"lr": 0.1}, "complete", objective=m["mean"],
                           metrics={"val_accuracy": m})

    data = StudyData("s", {"objective": "val_accuracy"}, {},
                     [trial(0, [0.80, 0.70]), trial(1, [0.76, 0.72]), trial(2, [0.5, 0.5])])
    noise = analysis.seed_noise(data)
    assert noise["search"]["trials"] == [0, 1] and noise["search"]["within_noise"]
    assert "final" not in noise
    data.trials[1] = trial(1, [0.60, 0.61])
    assert not analysis.seed_noise(data)["search"]["within_noise"]


def test_divergence_driver_names_the_hyperparameter_that_diverges(tmp_path):
    with report_stores.build(tmp_path / "runs.db", n=80) as store:
        data = analysis.load_study(store)
    assert data.counts()["diverged"] > 5
    driver = analysis.divergence_driver(data)
    assert driver["name"] == "lr" and driver["side"] == "high"
    assert driver["diverged_median"] > driver["complete_median"]


def test_best_so_far_is_monotone_by_trial_and_by_time(tmp_path):
    with report_stores.build(tmp_path / "runs.db") as store:
        data = analysis.load_study(store)
    b = analysis.best_so_far(data)
    assert np.all(np.diff(b["best"]) >= 0) and b["best"][-1] == data.ranked()[0].objective
    assert np.all(np.diff(b["seconds"]) >= 0) and b["best_by_time"][-1] == b["best"][-1]


def test_trials_dataframe_without_pandas_is_a_list_of_dicts(tmp_path, monkeypatch):
    report_stores.build(tmp_path / "runs.db", n=20, pruned=3, running=2).close()
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.warns(UserWarning, match="pandas is not installed"):
        rows = analysis.trials_dataframe(tmp_path / "runs.db")
    assert len(rows) == 25 and [r["trial"] for r in rows] == list(range(25))
    assert set(report_stores.SPACE.names) <= set(rows[0])
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert len(pruned) == 3 and all(r["steps"] == 10 and r["rung"] == 0 for r in pruned)
    assert rows[0]["val_accuracy_std"] is not None
    assert rows[-1]["status"] == "running" and rows[-1]["objective"] is None
    with pytest.raises(ImportError, match="pip install pandas"):
        analysis.trials_dataframe(tmp_path / "runs.db", as_pandas=True)


def test_trials_dataframe_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    with report_stores.build(tmp_path / "runs.db", n=20) as store:
        df = analysis.trials_dataframe(store)
    assert isinstance(df, pd.DataFrame) and len(df) == 20
    assert list(df.columns[:7]) == ["trial", "status", "objective", "batch", "started",
                                    "finished", "wall_s"]


def test_load_study_picks_by_name_and_refuses_ambiguity(tmp_path):
    path = tmp_path / "runs.db"
    report_stores.build(path, name="a").close()
    report_stores.build(path, name="b", seed=1, n=10).close()
    with pytest.raises(ValueError, match="several studies"):
        analysis.load_study(path)
    assert len(analysis.load_study(path, "b").trials) == 10
    assert [s.name for s in analysis.load_studies(path)] == ["a", "b"]
    with Store(path, readonly=True) as store, pytest.raises(ValueError, match="no study"):
        analysis.load_study(store, "c")


def test_a_spec_without_space_or_objective_still_loads(tmp_path):
    path = tmp_path / "runs.db"
    with Store(path) as store:
        sid = store.open_study("bare", {"steps": 20})
        store.add_trials(sid, [TrialRecord(i, {"lr": 10.0 ** -i, "opt": "sgd"}, "complete",
                                           objective=float(i)) for i in range(4)])
    data = analysis.load_study(path)
    assert data.objective == "objective" and data.direction == "minimize"
    assert isinstance(data.space["lr"], Real) and data.space["lr"].log
    assert isinstance(data.space["opt"], Choice)


@pytest.mark.parametrize("module", [analysis, surrogate, plots, surrogate_plots, render, report],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
