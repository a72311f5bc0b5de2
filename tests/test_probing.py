"""Probes inside the engine (jaxtune.probing): every member measured at chosen chunk
boundaries, checked against float64 references computed from the returned parameters."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxtune as jt
from jaxtune import probes as P
from jaxtune.probing import probe_keys
from jaxtune.slots import member_keys

N_TRAIN = 48  # rows of the training split (the curvature probes read all of them)


@pytest.fixture(scope="module")
def tiny() -> jt.Experiment:
    """A 3-4-1 MLP on a small regression task; 21 parameters, so Lanczos of order 21
    is the whole spectrum."""
    data = jt.data.teacher_student(n_train=N_TRAIN + 6, n_test=8, dim=3, hidden=4,
                                   val_fraction=6 / (N_TRAIN + 6), seed=3)
    return jt.Experiment(
        data=data, model=jt.models.MLP(width=4, depth=1, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=8, eval_every=2,
        defaults={"batch_size": 8, "optimizer": "sgd"},
        probes=jt.Probes(every=2, order=21, examples=N_TRAIN, b_small=4, b_big=16, draws=2))


CONFIGS = [{"lr": 0.01}, {"lr": 0.05}, {"lr": 0.1}]


@pytest.fixture(scope="module")
def probed(tiny):
    return jt.train_population(tiny, CONFIGS, seed=5, keep_params=True, verbose=False,
                               programs=jt.Programs(tiny))


def test_probe_curves_are_nan_between_probed_boundaries(tiny, probed):
    assert probed.curves["probe_sharpness"].shape == (3, 4)
    for name in tiny.probes.names:
        c = probed.curves[name]
        assert np.isnan(c[:, [0, 2]]).all(), name          # chunks 1 and 3: not probed
        assert np.isfinite(c[:, [1, 3]]).all(), name         # chunks 2 and 4: probed
        np.testing.assert_array_equal(probed.final[name], c[:, 3])


def test_sharpness_is_top_eigenvalue_of_dense_float64_hessian(tiny, probed):
    static = tiny.static_config(CONFIGS[0])
    loss_fn = P.make_loss_fn(tiny, static)
    with jax.enable_x64(True):
        b64 = (jnp.asarray(tiny.data.x_train[:N_TRAIN], jnp.float64),
               jnp.asarray(tiny.data.y_train[:N_TRAIN], jnp.float64))
        for i, params in enumerate(probed.params):
            flat, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                                      params))
            hess = np.asarray(jax.hessian(lambda f, u=unravel: loss_fn(u(f), b64))(flat))
            want = np.linalg.eigh(hess)[0][-1]
            np.testing.assert_allclose(probed.final["probe_sharpness"][i], want, rtol=2e-3)


def test_norms_match_numpy_float64(tiny, probed):
    static = tiny.static_config(CONFIGS[0])
    member = jt.make_train(tiny, static)
    hp = tiny.member_arrays(CONFIGS, static)
    keys = member_keys(5, probed.trial_ids.tolist(), probed.replicates.tolist())
    for i, params in enumerate(probed.params):
        flat = np.concatenate([np.ravel(np.asarray(a, np.float64))
                               for a in jax.tree.leaves(params)])
        init = member.init({k: v[i] for k, v in hp.items()}, keys[i]).params
        flat0 = np.concatenate([np.ravel(np.asarray(a, np.float64))
                                for a in jax.tree.leaves(init)])
        np.testing.assert_allclose(probed.final["probe_weight_norm"][i],
                                   np.linalg.norm(flat), rtol=1e-5)
        np.testing.assert_allclose(probed.final["probe_distance"][i],
                                   np.linalg.norm(flat - flat0), rtol=1e-4)
        assert probed.final["probe_distance"][i] > 0


def test_noise_scale_equals_the_standalone_estimator_with_the_probe_key(tiny, probed):
    f = probed.final
    np.testing.assert_allclose(f["probe_noise_scale"],
                               f["probe_trace_cov"] / f["probe_grad_sq_norm"], rtol=1e-5)
    loss_fn = P.make_loss_fn(tiny, tiny.static_config(CONFIGS[0]))
    keys = member_keys(5, probed.trial_ids.tolist(), probed.replicates.tolist())
    data = (tiny.data.x_train, tiny.data.y_train)
    for i, params in enumerate(probed.params):
        key = probe_keys(keys[i], 3)[2]  # the last probed chunk (0-based index 3)
        ns = P.gradient_noise_scale(loss_fn, params, data, key, b_small=4, b_big=16, draws=2)
        np.testing.assert_allclose([f["probe_grad_sq_norm"][i], f["probe_trace_cov"][i]],
                                   [ns.grad_sq_norm, ns.trace_cov], rtol=1e-4, atol=1e-7)
        assert np.isfinite(f["probe_noise_scale_se"][i])    # 2 draws: a standard error
        np.testing.assert_allclose(f["probe_noise_scale_se"][i], ns.b_simple_se, rtol=1e-3)


def test_probes_do_not_change_training_and_cost_no_compile_when_off(tiny, probed):
    plain = jt.Experiment(**{**{f: getattr(tiny, f) for f in (
        "data", "model", "space", "steps", "eval_every", "defaults")}, "probes": None})
    programs = jt.Programs(plain)
    r = jt.train_population(plain, CONFIGS, seed=5, verbose=False, programs=programs)
    assert not any(k.startswith("probe_") for k in r.curves)
    program, _ = programs.get(plain.static_config(CONFIGS[0]), 3)
    assert program.build_probe is None
    with pytest.raises(ValueError, match="no probes"):
        _ = program.probe
    for k in ("val_loss", "train_loss"):
        np.testing.assert_allclose(r.curves[k], probed.curves[k], rtol=1e-6)


def test_probe_values_do_not_depend_on_the_population(tiny, probed):
    alone = jt.train_population(tiny, CONFIGS[1:2], seed=5, trial_ids=[1], verbose=False,
                                programs=jt.Programs(tiny))
    for name in tiny.probes.names:
        np.testing.assert_allclose(alone.final[name][0], probed.final[name][1], rtol=1e-4,
                                   err_msg=name)


def test_study_stores_probe_curves(tiny, tmp_path):
    db = tmp_path / "probes.db"
    study = jt.Study(tiny, searcher="random", population=2, store=db, top_k=0, verbose=False,
                     progress=False)
    study.run(trials=2)
    with jt.Store(db, readonly=True) as s:
        trials = s.trials(s.study("default")["id"])
    assert len(trials) == 2
    for t in trials:
        curve = t.curves["probe_sharpness"][0]
        assert len(curve) == 4 and curve[0] is None and math.isfinite(curve[1])  # NaN -> null
        assert math.isfinite(t.metrics["probe_sharpness"]["mean"])


@pytest.mark.parametrize("kw, match", [
    ({"every": 0}, "every"), ({"b_small": 8, "b_big": 8}, "b_big"),
    ({"b_small": 24, "b_big": 512}, "multiple of b_small"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"sharpness": False, "noise_scale": False, "norms": False}, "every probe is off"),
])
def test_bad_probe_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        jt.Probes(**kw)


def test_experiment_refuses_a_non_probes_value(tiny):
    with pytest.raises(ValueError, match=r"jaxtune\.Probes"):
        jt.Experiment(data=tiny.data, model=tiny.model, space=tiny.space, probes={"every": 1})


def test_final_probes_measure_each_member_where_it_ends(tiny):
    """every=None: a boundary is probed only when a member ends there; each member's final
    value is measured on its final parameters."""
    exp = jt.Experiment(data=tiny.data, model=tiny.model,
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
                                       epochs=jt.Real(0.1, 2.0)),
                        steps=8, eval_every=2, defaults={"batch_size": 8, "optimizer": "sgd"},
                        probes=jt.Probes(sharpness=False, noise_scale=False))
    # 48 rows / batch 8: 0.5 epoch = 3 steps (ends in chunk 2), 1 epoch = 6 steps (chunk 3)
    r = jt.train_population(exp, [{"lr": 0.05, "epochs": 0.5}, {"lr": 0.05, "epochs": 1.0}],
                            keep_params=True, verbose=False, programs=jt.Programs(exp))
    c = r.curves["probe_weight_norm"]
    assert np.isnan(c[:, 0]).all() and np.isnan(c[:, 3]).all()
    assert np.isfinite(c[:, 1:3]).all()
    for i, params in enumerate(r.params):
        flat = np.concatenate([np.ravel(np.asarray(a, np.float64))
                               for a in jax.tree.leaves(params)])
        np.testing.assert_allclose(r.final["probe_weight_norm"][i], np.linalg.norm(flat),
                                   rtol=1e-5)
    assert r.final["probe_weight_norm"][1] == c[1, 2] != c[1, 1]  # B moved on after chunk 2
