"""`jaxtune run --objective/--constraint/--enqueue/--warm-start` and the report's front."""

from __future__ import annotations

import json
import os

import jax
import pytest

from jaxtune import cli
from jaxtune.store import Store

EXPERIMENT = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.digits(), model=jt.models.Logistic(),
    space=jt.Space(lr=jt.Real(1e-2, 1.0, log=True), schedule=jt.Choice(["constant", "cosine"])),
    steps=20, eval_every=10, defaults={"batch_size": 32, "optimizer": "sgd"}, name="mo-digits")
"""
FAST = ["--population", "4", "--no-progress", "--top-k", "0", "--scheduler", "fifo"]


@pytest.fixture(autouse=True)
def _keep_xla_flags(monkeypatch):
    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def trials(db, name="default"):
    with Store(db, readonly=True) as s:
        return s.study(name), s.trials(s.study(name)["id"])


def test_objectives_constraints_enqueue_and_warm_start_from_the_command_line(capsys, tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text(EXPERIMENT)
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    assert cli.main(["run", str(exp), "--searcher", "random", "--trials", "4", "--store",
                     str(first), "--quiet", *FAST]) == 0
    capsys.readouterr()
    queue = tmp_path / "queue.json"
    queue.write_text(json.dumps([{"lr": 0.3, "schedule": "cosine"}]))
    code = cli.main(["run", str(exp), "--trials", "4", "--store", str(second), *FAST,
                     "--objective", "val_accuracy:max", "--objective", "flops:min",
                     "--constraint", "lr<=0.5", "--enqueue", str(queue),
                     "--warm-start", str(first)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "told the searcher 4 trials" in err
    study, stored = trials(second)
    assert study["spec"]["objectives"] == [["val_accuracy", "maximize"], ["flops", "minimize"]]
    assert study["spec"]["searcher"] == "parego"
    assert stored[0].config == {"lr": 0.3, "schedule": "cosine"}
    assert all(t.status == "infeasible" for t in stored if t.config["lr"] > 0.5)
    assert all(t.metrics["flops"]["mean"] > 0 for t in stored)
    assert " front" in out.splitlines()[0] and "flops" in out.splitlines()[0]
    assert cli.main(["report", str(second)]) == 0
    assert " front" in capsys.readouterr().out
    # resume rebuilds the objectives and constraints and tells the earlier study again
    assert cli.main(["resume", str(second), "--trials", "6", "--no-progress"]) == 0
    assert "told the searcher 4 trials" in capsys.readouterr().err
    _, again = trials(second)
    assert sum(t.status != "infeasible" for t in again) == 6


@pytest.mark.parametrize("args, message", [
    (["--enqueue", "QUEUE"], "enqueue: configuration 0"),
    (["--constraint", "lr=0.5"], "write NAME<=VALUE"),
    (["--objective", "val_loss:min", "--objective", "memory:min"], "not something"),
    (["--warm-start", "MISSING"], "does not exist"),
])
def test_bad_goals_exit_2_with_one_line(capsys, tmp_path, args, message):
    exp = tmp_path / "exp.py"
    exp.write_text(EXPERIMENT)
    queue = tmp_path / "q.json"
    queue.write_text(json.dumps([{"lr": 7.0, "schedule": "cosine"}]))
    args = [str(queue) if a == "QUEUE" else str(tmp_path / "x.db") if a == "MISSING" else a
            for a in args]
    code = cli.main(["run", str(exp), "--trials", "2", "--store", str(tmp_path / "r.db"),
                     *FAST, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_report_draws_the_front_and_marks_it(tmp_path):
    import jaxtune as jt
    from jaxtune.report import write_report
    from jaxtune.store import TrialRecord

    db = tmp_path / "mo.db"
    points = [(0.9, 300.0), (0.8, 100.0), (0.7, 200.0), (0.95, 900.0)]
    with Store(db) as st:
        sid = st.open_study("s", {"objective": "val_accuracy", "direction": "maximize",
                                  "objectives": [["val_accuracy", "maximize"],
                                                 ["params", "minimize"]],
                                  "experiment": {"name": "x", "space": jt.Space(
                                      w=jt.Int(1, 10)).spec()}})
        st.add_trials(sid, [TrialRecord(i, {"w": i + 1}, "complete", objective=a, metrics={
            "val_accuracy": {"mean": a}, "params": {"mean": p}})
            for i, (a, p) in enumerate(points)])
    report = write_report(str(db), tmp_path / "out")
    summary = report["studies"][0]
    assert summary["front"] == [3, 0, 1]  # (0.7, 200) is beaten by (0.8, 100)
    assert (tmp_path / "out" / summary["figures"]["pareto_front"]).exists()
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| front |" in text.replace("front|", "front |")
