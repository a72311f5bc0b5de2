"""Train to a target: each member stops where its training loss (or accuracy) reaches
it, in one population of several batch sizes, as it would alone and as its own
untargeted run says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jaxtune as jt


@pytest.fixture(scope="module")
def exp() -> jt.Experiment:
    return jt.Experiment(data=jt.data.linear_classes(n_train=240, n_test=60, dim=6),
                         model=jt.models.MLP(width=16, depth=1, num_outputs=3),
                         space=jt.Space(batch_size=jt.Int(8, 64, log=True),
                                        lr=jt.Real(1e-3, 1.0, log=True)),
                         steps=200, eval_every=10,
                         defaults={"optimizer": "sgd"}, name="train-target")


CONFIGS = [{"batch_size": 8, "lr": 0.1}, {"batch_size": 32, "lr": 0.1},
           {"batch_size": 64, "lr": 0.05}]
TARGET = 0.45


def test_each_member_stops_where_its_own_run_reaches_the_training_loss(exp):
    free = jt.train_population(exp, CONFIGS, progress=False, evaluate_test=False)
    targeted = dataclasses.replace(exp, defaults={**exp.defaults, "stop_train_loss": TARGET})
    res = jt.train_population(targeted, CONFIGS, progress=False, evaluate_test=False)
    stops = []
    for i in range(len(CONFIGS)):
        curve = free.curves["train_loss"][i]
        hit = np.flatnonzero(curve <= TARGET)
        want = (hit[0] + 1) * 10 if hit.size else 200
        stops.append(want)
        assert res.final["steps"][i] == want and res.status[i] == "complete"
        c = want // 10 - 1
        np.testing.assert_allclose(res.curves["train_loss"][i][: c + 1], curve[: c + 1],
                                   rtol=1e-5)
        np.testing.assert_allclose(res.curves["train_loss"][i][c:], curve[c], rtol=1e-5)
    assert len(set(stops)) > 1 and min(stops) < 200  # the setup exercises the rule
    # a member alone stops at the same step with the same loss
    alone = jt.train_population(targeted, CONFIGS[1:2], trial_ids=[1], progress=False,
                                evaluate_test=False)
    assert alone.final["steps"][0] == res.final["steps"][1]
    np.testing.assert_allclose(alone.final["train_loss"][0], res.final["train_loss"][1],
                               rtol=1e-5)


def test_accuracy_target_searched_per_member(exp):
    space = jt.Space(stop_train_accuracy=jt.Real(0.5, 0.99))
    targeted = dataclasses.replace(exp, space=space,
                                   defaults={**exp.defaults, "batch_size": 32, "lr": 0.1})
    res = jt.train_population(targeted, [{"stop_train_accuracy": 0.6},
                                         {"stop_train_accuracy": 0.99}], progress=False,
                              evaluate_test=False)
    acc = res.curves["train_accuracy"]
    first = np.flatnonzero(acc[0] >= 0.6)[0]
    assert res.final["steps"][0] == (first + 1) * 10 < res.final["steps"][1]


def test_an_accuracy_target_needs_classification():
    data = jt.data.teacher_student(n_train=60, n_test=10, dim=3)
    with pytest.raises(ValueError, match="stop_train_accuracy"):
        jt.train_population(jt.Experiment(
            data=data, model=jt.models.MLP(width=4, num_outputs=1),
            space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=20, eval_every=10,
            defaults={"batch_size": 8, "stop_train_accuracy": 0.9}), [{"lr": 0.01}],
            progress=False)
