"""Studies with several objectives, constraints, enqueued configurations and warm starts.

References: a brute-force Pareto front of the stored values, the parameter count of
the MLP written out by hand, a searcher that records what it is told."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

import jaxtune as jt
from jaxtune.objectives import Constraint
from jaxtune.search import RandomSearcher
from jaxtune.store import Store, TrialRecord


@pytest.fixture(scope="module")
def exp() -> jt.Experiment:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(4, 3)), -1).astype(np.int32)
    data = jt.data.arrays(x[:96], y[:96], x[96:], y[96:], name="tiny-mo")
    return jt.Experiment(
        data=data, model=lambda hp: jt.models.MLP(width=hp["width"], depth=1, num_outputs=3),
        space=jt.Space(lr=jt.Real(1e-2, 1.0, log=True), width=jt.Choice([2, 8], static=True)),
        steps=10, eval_every=5, defaults={"batch_size": 16, "optimizer": "sgd"},
        name="tiny-mo")


class Recording(RandomSearcher):
    def __init__(self, space, **kw):
        super().__init__(space, **kw)
        self.told: list = []

    def tell(self, configs, losses, fidelities=None):
        self.told += list(zip([dict(c) for c in configs], losses))
        super().tell(configs, losses, fidelities)


def mlp_params(width: int) -> int:
    return 4 * width + width + width * 3 + 3  # one hidden layer: 4 -> width -> 3


def study(exp, **kw):
    kw = {"population": 4, "top_k": 0, "verbose": False, "progress": False, "store": None,
          **kw}
    return jt.Study(exp, **kw)


def test_two_objectives_store_costs_and_keep_the_front(exp):
    s = study(exp, searcher=Recording(exp.space, seed=0),
              objectives={"val_loss": "minimize", "params": "minimize",
                          "steps_to:val_loss:1.0": "minimize"})
    s.enqueue([{"lr": 0.5, "width": 2}, {"lr": 0.5, "width": 8}])
    s.run(trials=8)
    trials = s.store.trials(s.study_id)
    first = [t.config for t in trials if t.batch == 0]  # the first round, each bucket's first
    assert first.index({"lr": 0.5, "width": 2}) == 0 and {"lr": 0.5, "width": 8} in first
    done = [t for t in trials if t.status == "complete"]
    name = "steps_to:val_loss:1.0"
    for t in done:
        assert t.metrics["params"]["mean"] == mlp_params(t.config["width"])
        first = [next((s for s, v in zip(t.curves["step"], seed) if v <= 1.0), None)
                 for seed in t.curves["val_loss"]]
        assert t.metrics.get(name, {}).get("mean") == (None if None in first else first[0])
    assert any(name in t.metrics for t in done)  # the target was reached by some
    Y = np.array([[t.metrics["val_loss"]["mean"], t.metrics["params"]["mean"],
                   t.metrics.get(name, {}).get("mean", np.inf)] for t in done])
    brute = {t.index for t, y in zip(done, Y) if np.isfinite(y).all()
             and not any((z <= y).all() and (z < y).any() for z in Y)}
    assert {t.index for t in s.pareto_front()} == brute
    # told one loss (the first objective) since this searcher takes no vectors
    assert all(v is None or np.isscalar(v) for _, v in s.searcher.told)


def test_several_objectives_make_bayes_parego_and_stay_out_of_single_specs(exp):
    s = study(exp, searcher="bayes", objectives=["val_accuracy:max", "params:min"])
    assert s.searcher.name == "parego" and s.searcher.n_objectives == 2
    assert s.spec["objectives"] == [["val_accuracy", "maximize"], ["params", "minimize"]]
    assert study(exp, searcher="parego").searcher.n_objectives == 1
    one = study(exp, searcher="random", objectives={"val_loss": "min"})
    assert "objectives" not in one.spec and one.spec == study(
        exp, searcher="random", objective="val_loss", direction="minimize").spec
    with pytest.raises(ValueError, match="must be a final metric"):
        study(exp, objectives=["params:min", "val_loss:min"])
    with pytest.raises(ValueError, match="not something this experiment records"):
        study(exp, objectives=["val_loss:min", "memory:min"])
    with pytest.raises(ValueError, match="not both"):
        study(exp, objective="val_loss", objectives=["val_loss:min"])


def test_a_configuration_constraint_refuses_before_compiling(exp):
    programs = jt.Programs(exp)
    rec = Recording(exp.space, seed=1)
    s = study(exp, searcher=rec, programs=programs,
              constraints=[Constraint("params", "<=", mlp_params(2))])
    s.enqueue([{"lr": 0.1, "width": 8}])
    s.run(trials=4)
    trials = s.store.trials(s.study_id)
    bad = [t for t in trials if t.status == "infeasible"]
    good = [t for t in trials if t.status != "infeasible"]
    assert bad and all(t.config["width"] == 8 and not t.curves for t in bad)
    assert len(good) == 4 and all(t.config["width"] == 2 for t in good)
    assert programs.compiles == 1  # only the width-2 bucket was ever compiled
    assert all(v is None for c, v in rec.told if c["width"] == 8)


def test_a_metric_constraint_marks_trained_trials_infeasible(exp):
    rec = Recording(exp.space, seed=2)
    s = study(exp, searcher=rec, constraints=[Constraint("val_loss", "<=", -1.0)])
    s.run(trials=4)
    trials = s.store.trials(s.study_id)
    assert {t.status for t in trials} == {"infeasible"}
    assert all("val_loss" in t.metrics for t in trials)  # trained, then refused
    assert [v for _, v in rec.told] == [None] * 4
    assert s.pareto_front() == []


def test_impossible_constraints_and_bad_enqueues_are_refused(exp):
    with pytest.raises(ValueError, match="no such dimension, cost or final metric"):
        study(exp, constraints=[Constraint("test_accuracy", ">=", 0.5)])
    with pytest.raises(ValueError, match="reads 'depth'"):
        study(exp, constraints=[Constraint(lambda c: c["depth"] < 3, on="config")])
    with pytest.raises(ValueError, match="reads 'test_loss'"):
        study(exp, constraints=[Constraint(lambda m: m["test_loss"] < 1, on="metrics")])
    s = study(exp, searcher="random", constraints=[
        Constraint(lambda c: c["lr"] * c["batch_size"] < 8, on="config"),
        Constraint(lambda m: m["val_loss"] / m["train_loss"] < 2, on="metrics")])  # 0/0: fine
    with pytest.raises(ValueError, match="enqueue: configuration 0"):
        s.enqueue([{"lr": 5.0, "width": 2}])


def _synthetic(c):
    return (np.log10(c["lr"]) + 1.0) ** 2 + (0.0 if c["width"] == 8 else 0.5)


def _trials_to_optimum(s, tol=0.02, limit=60):
    """ask/tell a study's searcher on a synthetic loss until within tol of its optimum 0."""
    n = 0
    while n < limit:
        batch = s.searcher.ask(4)
        s.searcher.tell(batch, [_synthetic(c) for c in batch])
        n += len(batch)
        if min(_synthetic(c) for c in batch) <= tol:
            return n
    return limit


def test_warm_start_reaches_a_known_optimum_in_fewer_trials(exp, tmp_path, capsys):
    old = str(tmp_path / "old.db")
    with Store(old) as st:
        sid = st.open_study("default", {"experiment": {"space": exp.space.spec()}})
        configs = [*exp.space.sample(24, seed=5), {"lr": 3e-4, "width": 8}]  # one outside
        st.add_trials(sid, [TrialRecord(i, c, "complete", objective=_synthetic(c), metrics={
            "val_loss": {"mean": _synthetic(c)}}) for i, c in enumerate(configs)])
    cold, warm = [], []
    for seed in range(3):
        opts = {"n_initial": 8, "n_candidates": 512}
        a = study(exp, searcher="bayes", objective="val_loss", seed=seed,
                  searcher_options=opts)
        b = study(exp, searcher="bayes", objective="val_loss", seed=seed,
                  searcher_options=opts)
        assert b.warm_start(old) == 24
        cold.append(_trials_to_optimum(a))
        warm.append(_trials_to_optimum(b))
    assert "1 of 25 trials" in capsys.readouterr().err
    assert np.mean(warm) < np.mean(cold), (warm, cold)


def test_warm_start_needs_the_same_names(exp, tmp_path):
    old = str(tmp_path / "other.db")
    with Store(old) as st:
        st.open_study("default", {"experiment": {"space": {"lr": {}}}})
    with pytest.raises(ValueError, match="same hyperparameter names"):
        study(exp, searcher="random").warm_start(old)


def test_an_older_store_gains_the_infeasible_status(tmp_path):
    import jaxtune.store_schema as store_mod

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    old = store_mod._SCHEMA.replace(", 'infeasible'", "")
    conn.executescript(old)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("format", store_mod.FORMAT),
                                                       ("schema_version", "1")])
    conn.execute("INSERT INTO studies VALUES (1, 's', ?, '{}', 0)", (json.dumps({"a": 1}),))
    conn.execute("INSERT INTO trials (study_id, idx, config, status, seeds, metrics, curves) "
                 "VALUES (1, 0, '{}', 'complete', '[]', '{}', '{}')")
    conn.commit()
    conn.close()
    with Store(db) as st:
        st.add_trials(1, [TrialRecord(1, {}, "infeasible")])
        assert [t.status for t in st.trials(1)] == ["complete", "infeasible"]
        assert st.integrity_check() == "ok"


def test_costs_against_a_hand_count_and_the_compiled_step(exp):
    from jaxtune.benchmarks.population import flops_per_member
    from jaxtune.objectives import costs

    programs = jt.Programs(exp)
    assert costs(exp, programs, {"width": 2}, ["params"])["params"] == mlp_params(2)
    config = {"lr": 0.1, "width": 8}
    got = costs(exp, programs, exp.static_config(config))
    assert got["params"] == mlp_params(8)
    compiled = flops_per_member(exp, programs, config)["step"]  # the compiled step's analysis
    assert got["flops"] == pytest.approx(compiled, rel=0.1)  # lowered: before optimization
