"""The refining searchers (es, gradient) and chains (bayes+es, bayes+gradient):
the ES estimate against the closed-form gradient of a quadratic, antithetic pairs,
diverged members, the switch of a chain, the gradient searcher's first Adam step
against the hypergradient, and a short chained study."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import jaxtune as jt
from jaxtune import hypergrad
from jaxtune.search import SEARCHERS, make_searcher
from jaxtune.search import es as es_module
from jaxtune.search import refine as refine_module
from jaxtune.search.es import EvolutionSearcher
from jaxtune.search.gradient import GradientSearcher
from jaxtune.space import Choice, Real, Space

SPACE = Space(x=Real(-2.0, 2.0), lr=Real(1e-4, 1.0, log=True), opt=Choice(["a", "b"]))
CENTER = {"x": 0.5, "lr": 1e-2, "opt": "b"}


def _quadratic_unit(space, c):
    """A quadratic of the unit coordinates: (zx - 0.2)^2 + 3 (zlr - 0.9)^2."""
    zx, zl = space["x"].to_unit(c["x"]), space["lr"].to_unit(c["lr"])
    return (zx - 0.2) ** 2 + 3.0 * (zl - 0.9) ** 2


def test_registered_names():
    assert {"es", "gradient", "bayes+es", "bayes+gradient"} <= set(SEARCHERS)


def test_es_estimate_matches_the_gradient_of_a_quadratic():
    # For a quadratic the Gaussian-smoothed gradient is the gradient itself.
    es = EvolutionSearcher(SPACE, starts=[CENTER], sigma=0.02, pairs=3000, lr=0.01, seed=1)
    batch = es.ask(6000)
    assert len(batch) == 6000 and all(c["opt"] == "b" for c in batch)
    es.tell(batch, [_quadratic_unit(SPACE, c) for c in batch])
    assert es.steps_taken == 1
    z = np.array([SPACE["x"].to_unit(0.5), SPACE["lr"].to_unit(1e-2)])
    exact = np.array([2 * (z[0] - 0.2), 6 * (z[1] - 0.9)])
    np.testing.assert_allclose(es.last_gradients[0], exact, rtol=0.1)
    # Adam's first step: -lr * sign(g) in each coordinate
    moved = np.array([SPACE["x"].to_unit(es.center(0)["x"]),
                      SPACE["lr"].to_unit(es.center(0)["lr"])])
    np.testing.assert_allclose(moved - z, -0.01 * np.sign(exact), atol=1e-9)


def test_es_pairs_are_antithetic_and_never_repeat():
    es = EvolutionSearcher(SPACE, starts=[CENTER], sigma=0.05, pairs=2, seed=0)
    batch = es.ask(8)
    z = np.array([[SPACE["x"].to_unit(c["x"]), SPACE["lr"].to_unit(c["lr"])] for c in batch])
    center = np.array([SPACE["x"].to_unit(0.5), SPACE["lr"].to_unit(1e-2)])
    np.testing.assert_allclose(z[0::2] + z[1::2], np.tile(2 * center, (4, 1)), atol=1e-9)
    keys = {SPACE.key(c) for c in batch}
    assert len(keys) == 8


def test_es_diverged_members_count_as_the_worst_loss():
    es = EvolutionSearcher(SPACE, starts=[CENTER], sigma=0.05, pairs=2, seed=0)
    batch = es.ask(4)
    es.tell(batch, [1.0, None, 2.0, 3.0])  # the first pair: 1.0 against the worst, 3.0
    assert es.steps_taken == 1
    g = es.last_gradients[0]
    assert np.all(np.isfinite(g))
    more = es.ask(4)
    assert not {SPACE.key(c) for c in more} & {SPACE.key(c) for c in batch}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="sigma"):
        EvolutionSearcher(SPACE, sigma=0.0)
    with pytest.raises(ValueError, match="'opt' is not a traced Real"):
        EvolutionSearcher(SPACE, names=["opt"])
    with pytest.raises(ValueError, match="pass experiment="):
        make_searcher("gradient", SPACE).ask(1)
    with pytest.raises(ValueError, match="switch_after"):
        make_searcher("bayes+es", SPACE, switch_after=0)


def test_chain_switches_to_the_refiner_at_the_best_configuration():
    chain = make_searcher("bayes+es", SPACE, seed=0, switch_after=8, top=2,
                          then_options={"pairs": 2})
    told = []
    for _ in range(2):
        batch = chain.ask(4)
        losses = [_quadratic_unit(SPACE, c) for c in batch]
        told += list(zip(batch, losses))
        chain.tell(batch, losses)
    assert chain.phase == "first"
    refined = chain.ask(4)
    assert chain.phase == "es" and len(refined) == 4
    best = sorted(told, key=lambda t: t[1])[:2]
    tracks = chain.refiner.tracks
    assert [t.base for t in tracks] == [SPACE.validate(c) for c, _ in best]
    assert [t.loss for t in tracks] == [v for _, v in best]
    seen = {SPACE.key(c) for c, _ in told}
    assert not seen & {SPACE.key(c) for c in refined}


def test_a_resumed_chain_refines_at_once():
    # a resumed study tells its stored history to a fresh searcher, then asks
    told = [SPACE.from_unit([u, v, 0.9]) for u, v in np.random.default_rng(0).random((8, 2))]
    chain = make_searcher("bayes+es", SPACE, seed=0, switch_after=8, top=1)
    chain.tell(told, [_quadratic_unit(SPACE, c) for c in told])
    refined = chain.ask(2)
    assert chain.phase == "es" and len(refined) == 2
    best = min(told, key=lambda c: _quadratic_unit(SPACE, c))
    assert chain.refiner.tracks[0].base == SPACE.validate(best)


@pytest.fixture(scope="module")
def small_exp():
    return jt.Experiment(
        data=jt.data.teacher_student(n_train=64, n_test=16, dim=3),
        model=jt.models.MLP(width=8, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True), momentum=jt.Real(0.0, 0.95)),
        steps=10, eval_every=10, defaults={"batch_size": 16, "optimizer": "momentum"})


def test_gradient_searcher_first_step_follows_the_hypergradient(small_exp):
    starts = [{"lr": 0.01, "momentum": 0.5}, {"lr": 0.1, "momentum": 0.2}]
    s = GradientSearcher(small_exp.space, experiment=small_exp, starts=starts, mode="forward",
                         lr=0.05, seed=0)
    batch = s.ask(4)
    assert s.runs == 2 and len(batch) == 4
    hg = hypergrad.hypergradient(small_exp, starts, mode="forward", seed=0)
    for i, start in enumerate(starts):
        proposal = batch[i]                       # scale 1 of track i
        z0 = np.array([small_exp.space[n].to_unit(start[n]) for n in hg.names])
        z1 = np.array([small_exp.space[n].to_unit(proposal[n]) for n in hg.names])
        want = np.clip(z0 - 0.05 * np.sign(hg.grad[i]), 0, 1)   # Adam's first step
        np.testing.assert_allclose(z1, want, atol=1e-6)
    s.tell(batch, [0.5, 0.4, 0.3, 0.2])
    assert [t.round for t in s.tracks] == [1, 1]
    assert s.tracks[0].loss == 0.3 and s.tracks[1].loss == 0.2   # the better scale, 0.5
    with pytest.raises(ValueError, match="'batch_size': it is not in the space"):
        GradientSearcher(small_exp.space, experiment=small_exp, names=["batch_size"])


def test_chained_study_runs_both_phases(small_exp, tmp_path):
    study = jt.Study(small_exp, searcher="bayes+gradient", population=4, seed=0, top_k=0,
                     store=str(tmp_path / "s.db"),
                     searcher_options={"switch_after": 4, "top": 1,
                                       "then_options": {"mode": "forward"}})
    result = study.run(trials=8)
    assert result.n_complete == 8
    assert study.searcher.phase == "gradient" and study.searcher.refiner.runs >= 1
    assert math.isfinite(result.best[result.objective])


@pytest.mark.parametrize("module", [es_module, refine_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
