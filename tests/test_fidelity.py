"""Losses measured on part of the budget: searchers told fidelities, Bayesian search
with the fidelity as a surrogate input, and studies that tell pruned trials that way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import jaxtune as jt
from jaxtune.search import BayesSearcher, RandomSearcher
from jaxtune.space import Choice, Real, Space

SPACE = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0), c=Choice(["a", "b"]))


def full(c: Mapping[str, Any]) -> float:
    return (c["x"] - 0.3) ** 2 + (c["y"] - 0.6) ** 2 + 0.2 * (c["c"] == "b")


def partial(c: Mapping[str, Any], fidelity: float) -> float:
    """A learning curve: the full-budget loss plus a gap that closes with the budget."""
    return full(c) + 0.5 * (1.0 - fidelity)


def test_tell_records_fidelities_aligned_with_observations():
    s = RandomSearcher(SPACE, seed=0, diverged="exclude")
    batch = s.ask(3)
    s.tell(batch, [0.1, None, 0.3], fidelities=[0.25, 1.0, 0.5])
    s.tell(s.ask(1), [0.2])  # default: the full budget
    configs, y, fid = s.observations_with_fidelity()
    assert y.tolist() == [0.1, 0.3, 0.2] and fid.tolist() == [0.25, 0.5, 1.0]
    assert configs[1] == batch[2]
    with pytest.raises(ValueError, match="fidelities"):
        s.tell(s.ask(1), [0.1], fidelities=[0.0])
    with pytest.raises(ValueError, match="fidelities"):
        s.tell(s.ask(2), [0.1, 0.2], fidelities=[1.0])


def test_bayes_predicts_the_full_budget_from_partial_losses():
    s = BayesSearcher(SPACE, seed=0, n_initial=8, n_candidates=256)
    low = s.ask(24)
    s.tell(low, [partial(c, 1 / 3) for c in low], fidelities=[1 / 3] * 24)
    high = s.ask(6)
    s.tell(high, [full(c) for c in high])
    s.ask(2)
    assert s._fidelity_input
    # the low-budget trials' full-budget losses, which the searcher never saw, are
    # predicted well (their told values are off by 0.33)
    err = np.abs(s.predict(low) - np.array([full(c) for c in low]))
    assert np.median(err) < 0.05 and err.max() < 0.15


def test_bayes_without_partial_losses_has_no_fidelity_input():
    s = BayesSearcher(SPACE, seed=0, n_initial=4, n_candidates=128)
    b = s.ask(6)
    s.tell(b, [full(c) for c in b], fidelities=[1.0] * 6)
    s.ask(2)
    assert not s._fidelity_input
    assert s.fit().X_train_.shape[1] == s._opt.space.transformed_n_dims


class Recording(RandomSearcher):
    """A random searcher that records the fidelities it is told."""

    def __init__(self, space: jt.Space, *, seed: int = 0):
        super().__init__(space, seed=seed)
        self.told: list[tuple[dict, float, float]] = []

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[Any],
             fidelities: Sequence[float] | None = None) -> None:
        fids = [1.0] * len(losses) if fidelities is None else list(fidelities)
        self.told += [(dict(c), v, f) for c, v, f in zip(configs, losses, fids)]
        super().tell(configs, losses, fidelities)


class OldStyle(RandomSearcher):
    """A user's searcher whose ``tell`` takes no fidelities."""

    def tell(self, configs, losses):
        super().tell(configs, losses)


@pytest.fixture(scope="module")
def exp() -> jt.Experiment:
    return jt.Experiment(data=jt.data.linear_classes(n_train=160, n_test=40),
                         model=jt.models.MLP(width=8, num_outputs=3),
                         space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True)), steps=40,
                         eval_every=10, defaults={"batch_size": 16, "optimizer": "sgd"},
                         name="fidelity")


def test_study_tells_pruned_trials_with_the_fraction_of_budget_they_trained(exp):
    searcher = Recording(exp.space)
    study = jt.Study(exp, searcher=searcher, scheduler="asha", scheduler_options={"eta": 2},
                     pruned="fidelity", population=4, top_k=0, store=None, verbose=False,
                     progress=False)
    result = study.run(trials=12)
    told = {tuple(c.items()): (v, f) for c, v, f in searcher.told}
    assert len(told) == 12
    pruned = [t for t in result.trials if t.status == "pruned"]
    assert pruned and len(pruned) < 12
    for t in result.trials:
        loss, fid = told[tuple(t.config.items())]
        assert loss == pytest.approx(-t.metrics["val_accuracy"]["mean"])
        want = t.metrics["steps"]["mean"] / 40 if t.status == "pruned" else 1.0
        assert fid == pytest.approx(want) and (fid < 1) == (t.status == "pruned")
    # a searcher whose tell takes no fidelities is told as with pruned="last"
    old = jt.Study(exp, searcher=OldStyle(exp.space), scheduler="asha",
                   scheduler_options={"eta": 2}, pruned="fidelity", population=4, top_k=0,
                   store=None, verbose=False, progress=False)
    assert old.run(trials=6).trials
    with pytest.raises(ValueError, match="pruned must be one of"):
        jt.Study(exp, pruned="partial", store=None)
