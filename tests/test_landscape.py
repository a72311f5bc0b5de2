"""Keskar's 1-D interpolation between two trained members, against a float64 numpy
forward pass of the same MLP and against the engine's own final training metrics."""

from __future__ import annotations

import numpy as np
import pytest

import jaxtune as jt
from jaxtune import landscape

ALPHAS = [-1.0, -0.25, 0.0, 0.4, 1.0, 1.6, 2.0]


@pytest.fixture(scope="module")
def trained():
    exp = jt.Experiment(data=jt.data.linear_classes(n_train=200, n_test=40, dim=5),
                        model=jt.models.MLP(width=12, depth=1, num_outputs=3),
                        space=jt.Space(batch_size=jt.Int(8, 64, log=True),
                                       lr=jt.Real(1e-3, 1.0, log=True)),
                        steps=60, eval_every=30, defaults={"optimizer": "sgd"},
                        name="landscape")
    res = jt.train_population(exp, [{"batch_size": 8, "lr": 0.1}, {"batch_size": 64, "lr": 0.3}],
                              keep_params=True, progress=False, evaluate_test=False)
    return exp, res


def numpy_metrics(params, x, y):
    """Mean cross-entropy and accuracy of a 1-hidden-layer ReLU MLP, in float64."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()}
         for k, layer in params["params"].items()}
    h = np.maximum(np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    y = np.asarray(y)
    return -np.mean(logp[np.arange(len(y)), y]), np.mean(logits.argmax(-1) == y)


def test_curve_matches_a_direct_float64_computation(trained):
    exp, res = trained
    static = exp.static_config({"batch_size": 8, "lr": 0.1})
    pa, pb = res.params
    x, y = exp.data.x_train, exp.data.y_train
    curve = landscape.interpolation_curve(landscape.make_metrics_fn(exp, static), pa, pb,
                                          (x, y), ALPHAS)
    np.testing.assert_array_equal(curve["alpha"], ALPHAS)
    for i, a in enumerate(ALPHAS):
        mixed = {"params": {k: {n: (1 - a) * np.asarray(v, np.float64)
                                + a * np.asarray(pb["params"][k][n], np.float64)
                                for n, v in layer.items()}
                            for k, layer in pa["params"].items()}}
        loss, acc = numpy_metrics(mixed, x, y)
        np.testing.assert_allclose(curve["loss"][i], loss, rtol=2e-5, atol=1e-6)
        assert abs(curve["accuracy"][i] - acc) <= 1.0 / len(y) + 1e-9  # a tie may flip
    # the two ends are the members themselves, as the engine measured them
    for end, member in ((2, 0), (4, 1)):
        np.testing.assert_allclose(curve["loss"][end], res.final["train_loss"][member],
                                   rtol=1e-5)
        np.testing.assert_allclose(curve["accuracy"][end], res.final["train_accuracy"][member],
                                   atol=1e-6)
    assert curve["loss"][0] > curve["loss"][2]  # the line leaves the trained region
    # another pair with the same metrics function and shapes: the same program, and
    # the curve of the swapped pair is the same curve read from the other end
    fn = landscape.make_metrics_fn(exp, static)
    first = landscape.interpolation_curve(fn, pa, pb, (x, y), ALPHAS)
    compiled = landscape._along._cache_size()
    swapped = landscape.interpolation_curve(fn, pb, pa, (x, y), [1 - a for a in ALPHAS])
    assert landscape._along._cache_size() == compiled
    np.testing.assert_allclose(swapped["loss"], first["loss"], rtol=1e-5)


def test_interpolate_and_bad_input(trained):
    _, res = trained
    pa, pb = res.params
    mid = landscape.interpolate(pa, pb, 0.25)
    k = pa["params"]["Dense_0"]["kernel"]
    np.testing.assert_allclose(mid["params"]["Dense_0"]["kernel"],
                               0.75 * k + 0.25 * pb["params"]["Dense_0"]["kernel"], rtol=1e-6)
    def fn(p, b):
        return {"w": p["params"]["Dense_0"]["bias"].sum()}

    with pytest.raises(ValueError, match="alphas"):
        landscape.interpolation_curve(fn, pa, pb, None, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="alphas"):
        landscape.interpolation_curve(fn, pa, pb, None, [0.0, float("nan")])
    with pytest.raises(ValueError, match="one structure"):
        landscape.interpolation_curve(fn, pa, {"w": 1.0}, None, [0.0])
    bad = {"params": {**pb["params"], "Dense_0": {**pb["params"]["Dense_0"],
                                                  "bias": np.zeros(3, np.float32)}}}
    with pytest.raises(ValueError, match="shapes"):
        landscape.interpolation_curve(fn, pa, bad, None, [0.0])
