"""The trained model is kept: stored by the final evaluation, given back by
StudyResult.load (Study.load) and `jaxtune export-model` in a later process."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import serialization

import jaxtune as jt
from jaxtune import cli

FILE = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.linear_classes(n_train=120, n_test=30),
    model=jt.models.MLP(width=6, num_outputs=3), space=jt.Space(lr=jt.Real(1e-2, 0.5, log=True)),
    steps=20, eval_every=10, defaults={"batch_size": 16, "optimizer": "sgd"}, name="kept")
"""


def accuracy(module, params, data) -> float:
    logits = module.apply(params, data.x_test)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(data.y_test)))


def same_tree(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def exp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("kept") / "exp.py"
    path.write_text(FILE)
    return path


def test_the_chosen_model_comes_back_from_the_store(exp_file, tmp_path):
    exp = jt.zoo.load(str(exp_file))[0]
    db = tmp_path / "runs.db"
    result = jt.Study(exp, searcher="random", store=str(db), population=4, top_k=2,
                      final_seeds=1, verbose=False, progress=False).run(trials=4)
    module, params = result.best_model
    loaded = jt.Study.load(str(db), experiment=exp)
    assert loaded.best["trial"] == result.best["trial"]
    again_module, again = loaded.best_model
    assert repr(again_module) == repr(module)
    same_tree(again, params)
    chosen = next(r for r in loaded.finals if r["chosen"])
    assert accuracy(again_module, again, exp.data) == pytest.approx(chosen["test_accuracy"],
                                                                    abs=1e-6)
    with pytest.raises(ValueError, match="pass the experiment"):
        jt.StudyResult.load(str(db))  # made through the API: the experiment is needed
    wider = dataclasses.replace(exp, model=jt.models.MLP(width=7, num_outputs=3))
    with pytest.raises(ValueError, match="stored model"):
        jt.StudyResult.load(str(db), experiment=wider)


def test_cli_study_model_loads_and_exports(exp_file, tmp_path, capsys):
    db, out = tmp_path / "runs.db", tmp_path / "model"
    assert cli.main(["run", str(exp_file), "--searcher", "random", "--trials", "4",
                     "--population", "4", "--scheduler", "fifo", "--top-k", "2",
                     "--final-seeds", "1", "--store", str(db), "--no-progress",
                     "--quiet"]) == 0
    loaded = jt.StudyResult.load(str(db))  # rebuilt from the file, whose hash is unchanged
    module, params = loaded.best_model
    assert cli.main(["export-model", str(db), str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["trial"] == loaded.best["trial"] and meta["repr"] == repr(module)
    same_tree(serialization.msgpack_restore((out / "params.msgpack").read_bytes()), params)
    capsys.readouterr()
    assert cli.main(["export-model", str(db), str(out), "--trial", "999"]) == 2
    assert "no stored model for trial 999" in capsys.readouterr().err
    exp_file.write_text(FILE + "\n# changed\n")
    try:
        with pytest.raises(ValueError, match="missing or changed"):
            jt.StudyResult.load(str(db))
    finally:
        exp_file.write_text(FILE)
