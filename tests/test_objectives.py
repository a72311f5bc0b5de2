"""Pareto fronts, hypervolume, scalarization, constraints and ParEGO against
independent references (brute-force numpy, closed forms, counting unit cells)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import jaxtune as jt
from jaxtune.objectives import (
    Constraint,
    chebyshev,
    hypervolume,
    losses,
    normalise,
    pareto_mask,
    parse_objectives,
    steps_to_target,
)
from jaxtune.search import ParEGOSearcher, make_searcher


def brute_front(Y: np.ndarray) -> np.ndarray:
    n = len(Y)
    keep = np.ones(n, bool)
    for i in range(n):
        for j in range(n):
            if i != j and all(Y[j, k] <= Y[i, k] for k in range(Y.shape[1])) and any(
                    Y[j, k] < Y[i, k] for k in range(Y.shape[1])):
                keep[i] = False
    return keep


@pytest.mark.parametrize("m", [2, 3])
def test_pareto_mask_matches_brute_force(m):
    rng = np.random.default_rng(m)
    Y = rng.integers(0, 6, size=(60, m)).astype(float)  # ties and repeats included
    assert pareto_mask(Y).tolist() == brute_front(Y).tolist()


def test_pareto_mask_leaves_out_non_finite_rows():
    Y = np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 0.5]])
    assert pareto_mask(Y).tolist() == [False, True, True]


def test_hypervolume_2d_closed_form():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 1, 12))
    Y = np.column_stack([x, 1 - np.sqrt(x)])  # all on the ZDT1 front, sorted by f1
    ref = (1.5, 2.0)
    # staircase: each point owns the rectangle up to the previous point's f2
    prev = np.concatenate([[ref[1]], Y[:-1, 1]])
    expected = float(np.sum((ref[0] - Y[:, 0]) * (prev - Y[:, 1])))
    assert hypervolume(Y, ref) == pytest.approx(expected, rel=1e-12)
    assert hypervolume(np.vstack([Y, Y + 0.1, [[9.0, 0.0]]]), ref) == pytest.approx(expected)


def test_hypervolume_3d_counts_unit_cells():
    rng = np.random.default_rng(1)
    Y = rng.integers(0, 5, size=(15, 3)).astype(float)
    ref = (5.0, 5.0, 5.0)
    cells = sum(any(np.all(np.array(c) >= Y, axis=1))
                for c in itertools.product(range(5), repeat=3))
    assert hypervolume(Y, ref) == pytest.approx(float(cells))


def test_losses_normalise_and_chebyshev():
    objs = parse_objectives(["val_accuracy:max", "params:min"])
    Y = losses([[0.9, 10.0], [0.5, 30.0]], objs)
    np.testing.assert_allclose(Y, [[-0.9, 10.0], [-0.5, 30.0]])
    N = normalise(Y)
    np.testing.assert_allclose(N, [[0.0, 0.0], [1.0, 1.0]])
    w = np.array([0.3, 0.7])
    manual = [max(w * r) + 0.05 * sum(w * r) for r in N]
    np.testing.assert_allclose(chebyshev(N, w), manual)


@pytest.mark.parametrize("bad", [{"val_loss": "up"}, ["a:min", "a:max"], [],
                                 ["steps_to:val_accuracy"]])
def test_bad_objectives_are_refused(bad):
    with pytest.raises(ValueError):
        parse_objectives(bad)


def test_steps_to_target_against_a_loop():
    curves = {"step": [5, 10, 15, 20], "val_loss": [[0.9, 0.6, 0.4, 0.3], [0.8, 0.5, 0.5, 0.2]]}
    first = [next(s for s, v in zip(curves["step"], seed) if v <= 0.5)
             for seed in curves["val_loss"]]
    assert steps_to_target(curves, "steps_to:val_loss:0.5") == np.mean(first)
    assert steps_to_target(curves, "steps_to:val_loss:0.1") is None


def test_constraints_bind_and_check():
    c = Constraint("lr", "<", 0.1).bind(["lr"], ["val_loss"])
    assert c.on == "config" and c.check({"lr": 0.05}) and not c.check({"lr": 0.2})
    assert Constraint("val_loss", "<=", 1.0).bind(["lr"], ["val_loss"]).on == "metrics"
    assert not Constraint("params", "<=", 10).check({"params": float("nan")})
    with pytest.raises(ValueError, match="no such dimension"):
        Constraint("memory", "<=", 1).bind(["lr"], ["val_loss"])
    with pytest.raises(ValueError, match="operator"):
        Constraint("lr", "=<", 1)
    with pytest.raises(ValueError, match="on="):
        Constraint(lambda c: True)


def test_parego_checks_vectors_and_scalarizes_the_history():
    space = jt.Space(x=jt.Real(0.0, 1.0), y=jt.Real(0.0, 1.0))
    s = make_searcher("parego", space, seed=0, n_objectives=2, n_initial=4, n_candidates=128)
    assert isinstance(s, ParEGOSearcher)
    first = s.ask(4)
    with pytest.raises(ValueError, match="expected 2"):
        s.tell(first[:1], [[1.0, 2.0, 3.0]])
    Y = np.array([[c["x"], 1 - c["x"] + c["y"]] for c in first])
    s.tell(first[:3], Y[:3].tolist())
    s.tell(first[3:], [None])  # failed: the worst scalarized loss
    s.weights = np.array([0.25, 0.75])
    _, y = s.observations()
    expected = chebyshev(normalise(Y[:3]), s.weights)
    np.testing.assert_allclose(y, [*expected, expected.max()])
    batch = s.ask(4)
    keys = {space.key(c) for c in batch + first}
    assert len(batch) == 4 and len(keys) == 8
