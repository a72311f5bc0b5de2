"""A study's identity: the model joins the stored specification, the experiment file's
hash is checked by `jaxtune run` as by `resume`, and older stores still reopen."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

import jaxtune as jt
from jaxtune import cli
from jaxtune.store import Store, StoreError


def experiment(width: int, depth: int = 1) -> jt.Experiment:
    return jt.Experiment(data=jt.data.linear_classes(n_train=100, n_test=20),
                         model=jt.models.MLP(width=width, depth=depth, num_outputs=3),
                         space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=20,
                         eval_every=10, defaults={"batch_size": 8, "optimizer": "sgd"},
                         name="identity")


def study(exp: jt.Experiment, db) -> jt.Study:
    return jt.Study(exp, searcher="random", store=str(db), population=2, top_k=0,
                    verbose=False, progress=False)


def test_model_spec_names_the_module_and_its_parameter_shapes():
    (spec,) = experiment(8).model_spec.values()
    assert spec["repr"].startswith("MLP(") and "width = 8" in spec["repr"]
    assert spec["params"]["['params']['Dense_0']['kernel']"] == [[4, 8], "float32"]
    assert experiment(8).model_spec == experiment(8).model_spec
    assert experiment(8).model_spec != experiment(16).model_spec


def test_another_model_is_refused_and_the_trials_stay(tmp_path):
    db = tmp_path / "runs.db"
    study(experiment(8), db).run(trials=2)
    with pytest.raises(StoreError) as err:
        study(experiment(16, depth=2), db)
    msg = str(err.value)
    assert "experiment.model" in msg and "another name" in msg
    with Store(db, readonly=True) as s:
        assert len(s.trials(s.study("default")["id"])) == 2
    assert len(study(experiment(8), db).run(trials=3).trials) == 3  # the same model goes on


def test_another_convolution_mode_is_refused(tmp_path):
    db = tmp_path / "runs.db"
    study(experiment(8), db).run(trials=2)
    with pytest.raises(StoreError, match=r"experiment\.conv"):
        study(dataclasses.replace(experiment(8), conv="native"), db)


def test_a_study_stored_before_model_identity_reopens(tmp_path):
    db = tmp_path / "runs.db"
    study(experiment(8), db).run(trials=2)
    with sqlite3.connect(db) as conn:  # what an older jaxtune stored: no model key
        (spec,) = conn.execute("SELECT spec FROM studies").fetchone()
        spec = json.loads(spec)
        del spec["experiment"]["model"], spec["experiment"]["conv"]
        conn.execute("UPDATE studies SET spec = ?",
                     (json.dumps(spec, sort_keys=True, separators=(",", ":")),))
    again = study(experiment(8), db)
    assert "model" not in again.spec["experiment"] and "conv" not in again.spec["experiment"]
    assert len(again.run(trials=3).trials) == 3


FILE = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.linear_classes(n_train=100, n_test=20),
    model=jt.models.MLP(width=4, num_outputs=3), space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    steps=20, eval_every=10, defaults={"batch_size": 8, "optimizer": "sgd"}, name="idfile")
"""


def test_run_refuses_a_changed_experiment_file(tmp_path, capsys):
    exp, db = tmp_path / "exp.py", tmp_path / "runs.db"
    exp.write_text(FILE)
    args = ["run", str(exp), "--searcher", "random", "--store", str(db), "--population", "2",
            "--scheduler", "fifo", "--top-k", "0", "--no-progress", "--quiet"]
    assert cli.main([*args, "--trials", "2"]) == 0
    marker = tmp_path / "executed"
    exp.write_text(FILE + f"\nopen({str(marker)!r}, 'w').close()\n")
    assert cli.main([*args, "--trials", "4"]) == 2
    err = capsys.readouterr().err
    assert "another experiment file" in err and "--name" in err
    assert not marker.exists()  # refused before the changed file ran
