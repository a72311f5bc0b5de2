"""experiments/sharp_minima.py with ``--model cnn``: the whole script at a tiny size, and
its curvature probes on a 1-D CNN's parameters against a dense Hessian."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxtune as jt

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "sharp_minima.py"
STEPS, TARGET = 100, 0.4


def load_script():
    spec = importlib.util.spec_from_file_location("sharp_minima_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def run(script, tmp_path_factory):
    figure = tmp_path_factory.mktemp("sharp") / "cnn.png"
    out = script.main(["--model", "cnn", "--large", "64", "--target", str(TARGET),
                       "--steps", str(STEPS), "--eval-every", "50", "--seeds", "2",
                       "--examples", "64", "--order", "4", "--ascent-steps", "2",
                       "--alphas", "4", "--figure", str(figure)])
    return out, figure


def test_cnn_members_stop_at_the_target_or_the_step_cap(run):
    out, figure = run
    assert out["model"] == "cnn" and figure.stat().st_size > 0
    members = [m for a in out["results"] for m in a["members"]]
    assert len(members) == 5 * 2  # batch 32 tuned; batch 64 x four arms; two seeds each
    for m in members:
        if m["reached"]:
            assert m["train_accuracy"] >= TARGET and m["steps"] <= STEPS
            assert np.isfinite(m["sharpness"]) and m["eps_sharpness"] >= 0
        elif m["status"] == "complete":  # trained every step without reaching the target
            assert m["steps"] == STEPS and m["train_accuracy"] < TARGET
        else:  # stopped as dead by the give-up scheduler, or diverged
            assert m["status"] in ("pruned", "diverged")
    assert any(m["reached"] for m in members)


def test_cnn_interpolation_ends_are_the_two_solutions(run):
    """At a = 0 and a = 1 the curve is seed 0 of batch 32 and seed 0 of the batch-64 arm,
    as the engine measured them at the end of training (its own evaluation program)."""
    out, _ = run
    small = out["results"][0]["members"][0]
    for a in out["results"][1:]:
        name = f"{a['batch']}: {a['arm']}"
        if a["arm"] not in ("same lr", "tuned"):
            assert name not in out["interpolation"]
            continue
        curve = {k: np.asarray(v) for k, v in out["interpolation"][name].items()}
        np.testing.assert_array_equal(curve["alpha"], [-1.0, 0.0, 1.0, 2.0])
        for end, m in ((1, small), (2, a["members"][0])):
            np.testing.assert_allclose(curve["train_loss"][end], m["train_loss"], rtol=1e-4)
            np.testing.assert_allclose(curve["train_accuracy"][end], m["train_accuracy"],
                                       atol=1e-6)
            np.testing.assert_allclose(curve["test_accuracy"][end], m["test_accuracy"],
                                       atol=1e-6)


def test_curvature_of_cnn_parameters_matches_a_dense_hessian(script):
    """The script's vmapped Lanczos on two members of a narrow CNN1D (the engine's conv
    path) against ``eigvalsh`` of the Hessian of a plain Flax/optax loss (native conv)."""
    exp = jt.Experiment(data=jt.data.mnist1d(), model=jt.models.CNN1D(channels=3),
                        space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True)), steps=10,
                        eval_every=5, defaults={"batch_size": 32, "optimizer": "sgd"})
    static = exp.static_config({"lr": 0.1})
    hp = {k: v[0] for k, v in exp.member_arrays([{"lr": 0.1}], static).items()}
    init = jax.jit(jt.make_train(exp, static).init)
    params = [init(hp, jax.random.key(s)).params for s in (0, 1)]
    n = 32
    top, eps = script.curvature(exp, static, params, examples=n, order=20, epsilon=1e-3,
                                ascent_steps=3, seed=0)
    x, y = exp.data.x_train[:n], exp.data.y_train[:n]
    module = jt.models.CNN1D(channels=3)
    _, unravel = ravel_pytree(params[0])

    @jax.jit
    def hessian(v):
        def loss(w):
            logits = module.apply(unravel(w), x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        return jax.hessian(loss)(v)

    for i, p in enumerate(params):
        h = hessian(ravel_pytree(p)[0])
        dense = np.linalg.eigvalsh(np.asarray(h, np.float64))
        np.testing.assert_allclose(top[i], dense[-1], rtol=1e-3)
        assert 0 <= eps[i] < 100
