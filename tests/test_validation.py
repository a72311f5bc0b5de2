"""Bad Experiment arguments are refused before anything compiles, with one line
naming the argument; a searched rate reaches ``flax.linen.Dropout`` layers."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pytest

import jaxtune as jt


def make(data, **kw):
    kw = {"steps": 20, "eval_every": 10, "defaults": {"batch_size": 16}, **kw}
    return jt.Experiment(data=data, model=kw.pop("model", jt.models.MLP(width=8, num_outputs=1)),
                         space=jt.Space(lr=jt.Real(1e-3, 1.0)), **kw)


@pytest.mark.parametrize(("kw", "message"), [
    ({"eval_batch_size": 0}, "Experiment.eval_batch_size must be a whole number >= 1, got 0"),
    ({"eval_batch_size": -5}, "Experiment.eval_batch_size must be a whole number >= 1, got -5"),
    ({"eval_batch_size": 2.5}, "Experiment.eval_batch_size must be a whole number >= 1, got 2.5"),
    ({"eval_batch_size": "64"}, "Experiment.eval_batch_size must be a whole number >= 1, got "
                                "'64'"),
    ({"eval_every": 0}, "Experiment.eval_every must be a whole number >= 1, got 0"),
    ({"eval_every": True}, "Experiment.eval_every must be a whole number >= 1, got True"),
    ({"steps": 10.5}, "Experiment.steps must be a whole number >= 1, got 10.5"),
    ({"steps": float("inf")}, "Experiment.steps must be a whole number >= 1, got inf"),
    ({"max_batch_size": 0}, "Experiment.max_batch_size must be a whole number >= 1, got 0"),
    ({"patience": 0}, "Experiment.patience must be a whole number >= 1, got 0"),
    ({"defaults": [("lr", 0.1)]}, "Experiment.defaults must be a dict of hyperparameter "
                                  "values, got list"),
    ({"model": "mlp"}, "Experiment.model must be a flax Module or a function of the static "
                       "hyperparameters, got str"),
    ({"step_boundaries": (0.75, 0.5)}, "Experiment.step_boundaries must be increasing "
                                       "fractions in (0, 1), got (0.75, 0.5)"),
    ({"step_boundaries": (0.5, 1.5)}, "Experiment.step_boundaries must be increasing "
                                      "fractions in (0, 1), got (0.5, 1.5)"),
    ({"name": ""}, "Experiment.name must be a non-empty string, got ''"),
])
def test_bad_experiment_arguments_are_one_line_errors(ts_data, kw, message):
    with pytest.raises(ValueError) as err:
        make(ts_data, **kw)
    assert str(err.value) == message


def test_whole_numbers_of_other_types_are_accepted_as_ints(ts_data):
    exp = make(ts_data, steps=np.int64(20), eval_every=10.0, eval_batch_size=np.int32(7),
               patience=np.int64(2))
    values = (exp.steps, exp.eval_every, exp.eval_batch_size, exp.patience)
    assert values == (20, 10, 7, 2) and all(type(v) is int for v in values)


class TracedFlaxDropout(nn.Module):
    """A user module: the rate jaxtune passes goes straight into ``nn.Dropout``."""

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        h = nn.relu(nn.Dense(16)(x))
        h = nn.Dropout(rate=dropout_rate, deterministic=not train)(h)
        return nn.Dense(1)(h)


class FixedFlaxDropout(nn.Module):
    """The same network with a Python-float rate: Flax's own dropout."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(16)(x))
        h = nn.Dropout(rate=self.rate, deterministic=not train)(h)
        return nn.Dense(1)(h)


def test_a_searched_rate_works_in_flax_dropout(ts_data, reference, member):
    """One compiled population whose members have different traced rates matches, member
    by member, the plain-loop reference of Flax's own nn.Dropout at that rate."""
    exp = jt.Experiment(data=ts_data, model=TracedFlaxDropout(),
                        space=jt.Space(lr=jt.Real(1e-3, 1.0), dropout=jt.Real(0.0, 0.5)),
                        steps=20, eval_every=10, defaults={"optimizer": "sgd", "batch_size": 16})
    rates = (0.3, 0.0, 0.5)
    res = jt.train_population(exp, [{"lr": 0.05, "dropout": r} for r in rates], seed=2,
                              progress=False)
    assert res.status == ["complete"] * 3
    for t, rate in enumerate(rates):
        ref = reference(exp, FixedFlaxDropout(rate=rate), {"lr": 0.05, "dropout": rate},
                        seed=2, trial_id=t)
        np.testing.assert_allclose(res.final["val_loss"][member(res, t)], ref["val_loss"],
                                   rtol=1e-5, atol=1e-6)
    assert len(set(np.round(res.final["val_loss"], 6))) == 3  # the rates made a difference


def test_a_factory_reading_a_traced_rate_is_told_what_to_use(ts_data):
    exp = jt.Experiment(data=ts_data,
                        model=lambda hp: FixedFlaxDropout(rate=hp["dropout"]),
                        space=jt.Space(lr=jt.Real(1e-3, 1.0), dropout=jt.Real(0.0, 0.5)),
                        steps=10, eval_every=10, defaults={"batch_size": 16})
    programs = jt.Programs(exp)
    with pytest.raises(ValueError) as err:
        jt.train_population(exp, [{"lr": 0.05, "dropout": 0.1}], progress=False,
                            programs=programs)
    assert str(err.value) == (
        "bucket {'optimizer': 'adamw'}: Experiment.model reads hyperparameter 'dropout', but "
        "a model factory receives the "
        "static ones only (['optimizer']): declare it static=True (one bucket per value); a "
        "searched dropout rate reaches the module as its `dropout_rate` call argument (pass it "
        "on to nn.Dropout or jaxtune.models.dropout)")
    assert programs.compiles == 0
    # declared static, the factory's rate is a Python float: Flax's own dropout
    static = jt.Experiment(data=ts_data, model=lambda hp: FixedFlaxDropout(rate=hp["dropout"]),
                           space=jt.Space(lr=jt.Real(1e-3, 1.0),
                                          dropout=jt.Choice([0.0, 0.3], static=True)),
                           steps=10, eval_every=10, defaults={"batch_size": 16})
    assert static.build_model({"dropout": 0.3}).rate == 0.3
