"""Tests for jaxtune.trial_schedulers: decisions against hand-computed examples.

No training here: views are built by hand (lower values are better).
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import jaxtune as jt
from jaxtune import trial_schedulers as ts
from jaxtune.trial_schedulers import TrialView


def view(trial: int, *values: float, every: int = 10, config=None) -> TrialView:
    history = tuple(((i + 1) * every, v) for i, v in enumerate(values))
    return TrialView(trial, config or {}, history[-1][0] if history else 0, history)


def run(scheduler, arrivals):
    """Feeds views one at a time (each as its own report) and returns the stopped ids."""
    records, stopped = scheduler.init(), []
    for v in arrivals:
        records = scheduler.observe(records, v)
        stopped += sorted(scheduler.decide(records, [v]).stop)
    return records, stopped


def test_asha_promotions_match_a_hand_computed_example():
    """eta=3, rungs at 10 and 30 steps (budget 90). Values arrive trial by trial; a
    trial continues if it ranks among the best keep = max(floor(n/3), 1) (the paper's
    floor(n/eta); while n < eta only the best so far, as Optuna does).

    Rung 10, in arrival order (value, n, keep, rank -> decision):
      t0 0.50 n=1 keep 1 rank 0 -> continue
      t1 0.40 n=2 keep 1 rank 0 -> continue
      t2 0.60 n=3 keep 1 rank 2 -> stop
      t3 0.45 n=4 keep 1 rank 1 -> stop   (ceil(4/3) = 2 would keep it)
      t4 0.55 n=5 keep 1 rank 3 -> stop
      t5 0.30 n=6 keep 2 rank 0 -> continue
    Rung 30 (t0, t1, t5 carry on):
      t0 0.35 n=1 keep 1 -> continue; t1 0.20 n=2 keep 1 rank 0 -> continue;
      t5 0.25 n=3 keep 1 rank 1 -> stop.
    """
    asha = ts.ASHA(min_steps=10, eta=3, max_steps=90)
    assert asha.rungs == (10, 30)
    first = [view(0, .5), view(1, .4), view(2, .6), view(3, .45), view(4, .55), view(5, .3)]
    records, stopped = run(asha, first)
    assert stopped == [2, 3, 4]
    later = [view(t, v10, 0.0, v30) for t, v10, v30 in
             [(0, .5, .35), (1, .4, .2), (5, .3, .25)]]
    records, stopped = run(asha, first + later)
    assert stopped == [2, 3, 4, 5]
    assert records[1] == {0: .35, 1: .2, 5: .25}
    assert [asha.rung(0, s) for s in (5, 10, 29, 30, 60)] == [None, 0, 0, 1, 1]


def test_asha_continues_the_paper_fraction_past_rung_0():
    """With arrivals in every order, the fraction that continues past a rung equals
    an independent count of the rule keep = max(floor(n / eta), 1)."""
    import itertools

    asha = ts.ASHA(min_steps=10, eta=3, max_steps=90)
    n, kept, total = 6, 0, 0
    expected = 0
    for order in itertools.permutations(range(n)):
        _, stopped = run(asha, [view(t, float(t)) for t in order])
        kept += n - len(stopped)
        total += n
        expected += sum(sum(x < t for x in order[:i]) < max((i + 1) // 3, 1)
                        for i, t in enumerate(order))
    assert kept == expected
    assert kept / total < 0.45  # ceil(n/3) would let about half continue


def test_asha_observation_is_idempotent_and_rebuild_equals_the_live_records():
    asha = ts.ASHA(min_steps=10, eta=2, max_steps=100)
    views = [view(t, *np.random.default_rng(t).random(5)) for t in range(6)]
    live = asha.init()
    for v in views:
        live = asha.observe(asha.observe(live, v), v)
    assert asha.rebuild(views[::-1]) == live  # order of arrival does not matter
    # the same evidence gives the same decision
    assert asha.decide(live, views).stop == asha.decide(asha.rebuild(views), views).stop


def test_asha_stops_a_diverged_trial_at_its_rung():
    asha = ts.ASHA(min_steps=10, eta=3, max_steps=90)
    _, stopped = run(asha, [view(0, 0.5), view(1, math.nan)])
    assert stopped == [1]


def test_median_stopping_rule():
    """Stop when the best value so far is worse than the median of the others at the
    same step, once min_trials others reported there and after the grace period."""
    med = ts.MedianStopping(grace=20, min_trials=3)
    others = [view(t, v1, v2) for t, v1, v2 in [(0, .5, .4), (1, .6, .3), (2, .7, .2)]]
    records = med.rebuild(others)
    worse = view(3, .9, .5)        # best 0.5 > median(0.4, 0.3, 0.2) = 0.3 -> stop
    better = view(4, .9, .25)      # best 0.25 <= 0.3 -> continue
    early = view(5, .9)            # step 10 < grace 20 -> continue
    for v in (worse, better, early):
        records = med.observe(records, v)
    assert med.decide(records, [worse, better, early]).stop == {3}
    assert med.decide(med.rebuild([*others[:2], worse]), [worse]).stop == set()  # 2 others


def test_hyperband_brackets_are_deterministic_and_weighted():
    hb = ts.Hyperband(min_steps=10, eta=3, max_steps=270, seed=4)
    assert [b.min_steps for b in hb._brackets] == [10, 30, 90, 270]
    counts = np.bincount([hb.bracket(t) for t in range(4000)], minlength=4)
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0  # aggressive brackets get more
    assert [hb.bracket(t) for t in range(50)] == [ts.Hyperband(
        10, 3, 270, seed=4).bracket(t) for t in range(50)]
    assert [hb.bracket(t) for t in range(50)] != [ts.Hyperband(
        10, 3, 270, seed=5).bracket(t) for t in range(50)]
    # in the last bracket (min resource 270 = budget) nothing is ever stopped
    last = next(t for t in range(100) if hb.bracket(t) == 3)
    records = hb.rebuild([view(last, 9.0, 9.0, 9.0)])
    assert hb.decide(records, [view(last, 9.0, 9.0, 9.0)]).stop == set()
    # a trial's rung is counted in its own bracket's rungs
    second = next(t for t in range(100) if hb.bracket(t) == 1)  # rungs 30, 90
    assert [hb.rung(second, s) for s in (10, 30, 90)] == [None, 0, 1]
    assert hb.rung(last, 270) is None


def test_pbt_exploits_the_bottom_from_the_top_and_explores_within_bounds():
    space = jt.Space(lr=jt.Real(1e-4, 1e-1, log=True), momentum=jt.Real(0.5, 0.99),
                     batch_size=jt.Int(16, 64), schedule=jt.Choice(["constant", "cosine"]))
    configs = space.sample(8, seed=0)
    pbt = ts.PBT(interval=20, quantile=0.25, resample_probability=0.0, seed=3)
    views = [view(t, 1.0, float(t), config=configs[t]) for t in range(8)]
    d = pbt.decide({}, views, space)
    assert set(d.exploit) == {6, 7}                       # bottom quarter
    assert {src for src, _ in d.exploit.values()} <= {0, 1}  # from the top quarter
    for src, new in d.exploit.values():
        assert space.contains(new)
        old = configs[src]
        for name in ("lr", "momentum", "batch_size"):  # x 0.8 or x 1.2, clipped to bounds
            dim = space[name]
            options = {min(max(old[name] * f, dim.low), dim.high) for f in (0.8, 1.2)}
            if dim.integral:
                options = {round(o) for o in options}
            assert any(np.isclose(new[name], o) for o in options), (name, old, new)
        assert new["schedule"] == old["schedule"]  # categories only change by resampling
    again = pbt.decide({}, views, space)
    assert again.exploit == d.exploit  # deterministic for a seed
    assert pbt.decide({}, [view(t, 1.0, config=configs[t]) for t in range(8)], space).exploit \
        == {}  # step 10 is not a multiple of the interval
    assert not pbt.refills


def test_pbt_perturbation_factors():
    space = jt.Space(lr=jt.Real(1e-4, 1.0, log=True))
    pbt = ts.PBT(interval=10, resample_probability=0.0, factors=(0.8, 1.2))
    rng = np.random.default_rng(0)
    values = {round(pbt.explore({"lr": 0.01}, space, rng)["lr"], 9) for _ in range(50)}
    assert values == {0.008, 0.012}
    assert pbt.explore({"lr": 0.95}, space, np.random.default_rng(1))["lr"] <= 1.0


def test_factory_and_errors():
    assert isinstance(ts.make_trial_scheduler("fifo"), ts.TrialScheduler)
    with pytest.raises(ValueError, match="unknown trial scheduler"):
        ts.make_trial_scheduler("sha")
    with pytest.raises(ValueError, match="eta"):
        ts.make_trial_scheduler("asha", min_steps=10, eta=1)
    with pytest.raises(ValueError, match="asha"):
        ts.make_trial_scheduler("asha", min_step=10)
    assert ts.make_trial_scheduler("asha", min_steps=10).spec()["name"] == "asha"


def test_docstring_examples():
    assert doctest.testmod(ts).failed == 0
