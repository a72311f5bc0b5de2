"""Checkpoints of running populations, with real processes.

A ``jaxtune run`` is killed with SIGKILL mid-training, after it wrote a
checkpoint; ``jaxtune resume`` restores the running trials from it (not from step
0) and stores the same final trials as an uninterrupted run of the same seed
(started alongside). A damaged checkpoint is reported in one line and the running
trials retrain from the store, with every stored trial kept and the same final
results. Every subprocess runs under a timeout.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxtune import checkpoint
from jaxtune.store import Store

EXPERIMENT = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    model=jt.models.MLP(width=8, num_outputs=1),
    space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    steps=1500, eval_every=10, defaults={"batch_size": 16}, name="checkpoint-ts")
"""
ARGS = ["exp.py", "--searcher", "random", "--trials", "4", "--population", "4",
        "--scheduler", "asha", "--checkpoint-rounds", "3", "--top-k", "1", "--final-seeds", "1",
        "--no-progress"]
TIMEOUT_S = 150
ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    return e


def jaxtune(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxtune", *args], cwd=cwd, env=env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(p: subprocess.Popen, timeout: float = TIMEOUT_S) -> int | None:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def stored(path: Path) -> tuple[list, list]:
    with Store(path, readonly=True) as store:
        sid = store.study("default")["id"]
        return store.trials(sid), store.finals(sid)


def kill_after_a_checkpoint(tmp_path: Path) -> tuple[list, list]:
    """Runs the study until a checkpoint of a round past the third exists, kills it with
    SIGKILL; returns the stored trials and batches at that moment."""
    p = jaxtune(["run", *ARGS, "--store", "x.db"], tmp_path, tmp_path / "run.log")
    folder = checkpoint.checkpoint_dir(tmp_path / "x.db", "default")
    try:
        end = time.monotonic() + TIMEOUT_S
        while time.monotonic() < end and p.poll() is None:
            if (checkpoint.latest(folder) or 0) >= 5:
                break
            time.sleep(0.05)
        assert p.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        p.send_signal(signal.SIGKILL)
    finally:
        finish(p, 10)
    trials, _ = stored(tmp_path / "x.db")
    assert any(t.status == "running" for t in trials)
    return trials, [f for f in os.listdir(folder) if f.isdigit()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list, list]:
    """The same study run without interruption (in the background, while a test runs)."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "exp.py").write_text(EXPERIMENT)
    p = jaxtune(["run", *ARGS, "--store", "ref.db", "--quiet"], folder, folder / "ref.log")

    def result() -> tuple[list, list]:
        if not hasattr(result, "value"):
            assert finish(p) == 0, (folder / "ref.log").read_text()[-2000:]
            assert not os.path.exists(checkpoint.checkpoint_dir(folder / "ref.db", "default"))
            result.value = stored(folder / "ref.db")
        return result.value

    yield result
    finish(p, 1)


def same_results(got: tuple[list, list], want: tuple[list, list]) -> None:
    (trials, finals), (ref_trials, ref_finals) = got, want
    assert [(t.index, t.config, t.status) for t in trials] == \
        [(t.index, t.config, t.status) for t in ref_trials]
    for a, b in zip(trials, ref_trials):
        assert a.metrics["steps"] == b.metrics["steps"]
        np.testing.assert_allclose(a.metrics["val_loss"]["per_seed"],
                                   b.metrics["val_loss"]["per_seed"], rtol=1e-6)
        assert len(a.curves["val_loss"][0]) == len(b.curves["val_loss"][0])
    assert [r["trial"] for r in finals] == [r["trial"] for r in ref_finals]
    assert math.isclose(finals[0]["test_loss"], ref_finals[0]["test_loss"], rel_tol=1e-6)


def test_a_killed_study_resumes_from_its_last_checkpoint(tmp_path, reference):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    before, kept = kill_after_a_checkpoint(tmp_path)
    assert len(kept) <= 2  # older checkpoints are pruned (the last may not be yet)
    p = jaxtune(["resume", "x.db", "--no-progress"], tmp_path, tmp_path / "resume.log")
    code = finish(p)
    log = (tmp_path / "resume.log").read_text()
    assert code == 0, log[-2000:]
    lines = [x for x in log.splitlines() if "from the checkpoint of round" in x]
    assert len(lines) == 1 and "warning" not in log, log[-2000:]
    running = sum(t.status == "running" for t in before)
    assert f"resumed {running} running trials" in lines[0]
    assert not os.path.exists(checkpoint.checkpoint_dir(tmp_path / "x.db", "default"))
    same_results(stored(tmp_path / "x.db"), reference())


def test_a_damaged_checkpoint_is_reported_and_the_trials_retrain(tmp_path, reference):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    before, _ = kill_after_a_checkpoint(tmp_path)
    folder = Path(checkpoint.checkpoint_dir(tmp_path / "x.db", "default"))
    damaged = 0
    for f in folder.rglob("*"):  # the array data: zeros over each file's second half
        if f.is_file() and f.parent.name == "d" and f.stat().st_size > 8:
            data = bytearray(f.read_bytes())
            data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
            f.write_bytes(bytes(data))
            damaged += 1
    assert damaged
    p = jaxtune(["resume", "x.db", "--no-progress"], tmp_path, tmp_path / "resume.log")
    code = finish(p)
    log = (tmp_path / "resume.log").read_text()
    assert code == 0, log[-2000:]
    warnings = [x for x in log.splitlines() if x.startswith("jaxtune: warning: checkpoint")]
    assert len(warnings) == 1 and "retrain from the store" in warnings[0], log[-2000:]
    assert "from the checkpoint of round" not in log
    after, _ = stored(tmp_path / "x.db")
    for t in before:  # nothing stored is lost
        if t.status != "running":
            assert next(a for a in after if a.index == t.index).metrics == t.metrics
    same_results(stored(tmp_path / "x.db"), reference())


def test_a_study_stopped_at_its_target_goes_on_as_if_uninterrupted(tmp_path, capsys):
    """The checkpoint of the last committed round restores the scheduler's records and
    the searcher (its random state and pending asks), not re-told: the trials asked
    after the resume are those of an uninterrupted run."""
    import jaxtune as jt

    exp = jt.Experiment(data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
                        model=jt.models.MLP(width=8, num_outputs=1),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
                        steps=60, eval_every=10, defaults={"batch_size": 16})
    programs = jt.Programs(exp)

    def study(path: Path, **kw) -> jt.Study:
        return jt.Study(exp, searcher="random", scheduler="asha", population=4, store=str(path),
                        top_k=0, programs=programs, checkpoint_rounds=1000, **kw)

    study(tmp_path / "ref.db", verbose=False).run(trials=12)
    ref = stored(tmp_path / "ref.db")[0]
    first = min((t for t in ref if t.status == "complete"), key=lambda t: t.finished)
    stopped = study(tmp_path / "x.db", verbose=False).run(trials=12, target=first.objective)
    assert any(t.status == "running" for t in stopped.trials)
    assert checkpoint.latest(checkpoint.checkpoint_dir(tmp_path / "x.db", "default")) is not None
    capsys.readouterr()
    study(tmp_path / "x.db", verbose=True).run(trials=12)
    err = capsys.readouterr().err
    assert "from the checkpoint of round" in err and "re-told" not in err, err
    got = stored(tmp_path / "x.db")[0]
    assert [(t.index, t.config, t.status) for t in got] == \
        [(t.index, t.config, t.status) for t in ref]
    np.testing.assert_allclose([t.metrics["val_loss"]["mean"] for t in got],
                               [t.metrics["val_loss"]["mean"] for t in ref], rtol=1e-6)


def test_checkpoint_flags_are_checked():
    with pytest.raises(ValueError, match="checkpoint rounds must be >= 1"):
        checkpoint.Policy(rounds=0)
    with pytest.raises(ValueError, match="checkpoint seconds must be > 0"):
        checkpoint.Policy(seconds=-1.0)
    assert not checkpoint.Policy(rounds=None, seconds=None).enabled


def test_model_state_is_checkpointed_with_the_rest(tmp_path, capsys, monkeypatch):
    """BatchNorm's running statistics are part of the member state pytree: a study
    resumed from a checkpoint evaluates with the statistics it had trained, bit for
    bit as an uninterrupted one."""
    import flax.linen as nn

    import jaxtune as jt

    class BatchNormMLP(nn.Module):
        @nn.compact
        def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
            h = nn.Dense(8)(x)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
            return nn.Dense(1)(h)

    exp = jt.Experiment(data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
                        model=lambda hp: BatchNormMLP(),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
                        steps=40, eval_every=10, defaults={"batch_size": 16})
    programs = jt.Programs(exp)

    def study(path: Path, **kw) -> jt.Study:
        return jt.Study(exp, searcher="grid", searcher_options={"resolution": 8},
                        scheduler="fifo", population=4, store=str(path), top_k=0,
                        programs=programs, checkpoint_rounds=1000, **kw)

    calls = []  # the clock says "time is up" after the first round, whatever the machine

    def past(deadline):
        calls.append(deadline)
        return len(calls) > 1

    with monkeypatch.context() as m:
        m.setattr(jt.Study, "_past", staticmethod(past))
        stopped = study(tmp_path / "x.db", verbose=False).run(trials=4, time_budget=60)
    assert sum(t.status == "running" for t in stopped.trials) == 4
    ref = study(tmp_path / "ref.db", verbose=False).run(trials=4)
    capsys.readouterr()
    got = study(tmp_path / "x.db", verbose=True).run(trials=4)
    assert "resumed 4 running trials from the checkpoint" in capsys.readouterr().err
    assert [t.metrics["val_loss"]["mean"] for t in got.trials] == \
        [t.metrics["val_loss"]["mean"] for t in ref.trials]


def _tiny() -> tuple:
    import jaxtune as jt

    exp = jt.Experiment(data=jt.data.teacher_student(n_train=64, n_test=16, dim=4),
                        model=jt.models.MLP(width=4, num_outputs=1),
                        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
                        steps=30, eval_every=10, defaults={"batch_size": 16})
    return exp, jt.Programs(exp)


def _stop_after(rounds: int):
    """A clock that says "time is up" after ``rounds`` rounds, whatever the machine."""
    calls = []

    def past(deadline):
        calls.append(deadline)
        return deadline is not None and len(calls) > 2 * rounds - 1

    return staticmethod(past)


def _delete_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")


def test_a_new_study_clears_the_stale_checkpoints_of_a_deleted_store(tmp_path, capsys,
                                                                    monkeypatch):
    """The checkpoints of a study whose store was deleted neither break a new study of the
    same name and settings (orbax refuses a step that exists) nor are resumed into it: a
    study created new removes them at once, in one line."""
    import jaxtune as jt

    exp, programs = _tiny()

    def study(path: Path, **kw) -> jt.Study:
        kw.setdefault("checkpoint_rounds", 1)
        return jt.Study(exp, searcher="random", population=4, store=str(path), top_k=0,
                        programs=programs, verbose=False, **kw)

    path, folder = tmp_path / "x.db", checkpoint.checkpoint_dir(tmp_path / "x.db", "default")
    ref = study(tmp_path / "ref.db").run(trials=8)
    with monkeypatch.context() as m:  # stopped after two rounds: its checkpoint stays
        m.setattr(jt.Study, "_past", _stop_after(2))
        stopped = study(path).run(trials=8, time_budget=60)
    assert sum(t.status == "running" for t in stopped.trials) == 4
    assert checkpoint.latest(folder) == 1
    _delete_store(path)
    capsys.readouterr()
    # the same study again, from scratch: it runs through the rounds the stale one saved
    again = study(path).run(trials=8)
    err = capsys.readouterr().err
    assert err.count("stale checkpoints") == 1 and folder in err, err
    assert [(t.index, t.config, t.metrics["val_loss"]["mean"]) for t in again.trials] == \
        [(t.index, t.config, t.metrics["val_loss"]["mean"]) for t in ref.trials]
    assert not os.path.exists(folder)

    # a stale checkpoint of a later round is not resumed into a new study killed before
    # its own first checkpoint (here: one that writes none)
    with monkeypatch.context() as m:
        m.setattr(jt.Study, "_past", _stop_after(2))
        study(path).run(trials=8, time_budget=60)
    _delete_store(path)
    with monkeypatch.context() as m:
        m.setattr(jt.Study, "_past", _stop_after(1))
        study(path, checkpoint_rounds=None, checkpoint_seconds=None).run(trials=8,
                                                                       time_budget=60)
    capsys.readouterr()
    resumed = jt.Study(exp, searcher="random", population=4, store=str(path), top_k=0,
                       programs=programs, verbose=True, checkpoint_rounds=1).run(trials=8)
    err = capsys.readouterr().err
    assert "from the checkpoint" not in err, err
    assert [(t.index, t.config, t.metrics["val_loss"]["mean"]) for t in resumed.trials] == \
        [(t.index, t.config, t.metrics["val_loss"]["mean"]) for t in ref.trials]


def test_save_replaces_a_step_that_exists(tmp_path):
    """A step folder already there (left by an earlier study, or the same round saved
    twice) is replaced, never an error; newer steps of another run are removed first."""
    folder = str(tmp_path / "runs.db.checkpoints" / "default")
    ident = {"study": "default"}
    checkpoint.save(folder, 4, {"p": [np.arange(3.0)]}, b"old", ident)
    checkpoint._managers.clear()  # another process wrote it
    checkpoint.save(folder, 2, {"p": [np.arange(2.0)]}, b"new", ident)
    checkpoint.save(folder, 2, {"p": [np.arange(4.0)]}, b"again", ident)
    round_, arrays, host = checkpoint.load(folder, ident)
    assert (round_, arrays["p"][0].tolist(), host) == (2, [0.0, 1.0, 2.0, 3.0], b"again")
    assert [n for n in os.listdir(folder) if n.isdigit()] == ["2"]


def test_identity_keys_an_older_checkpoint_lacks(tmp_path):
    """A key of the identity a checkpoint does not record (written before the key
    existed) is checked only when the caller requires it; a recorded one must match."""
    folder = str(tmp_path / "runs.db.checkpoints" / "default")
    checkpoint.save(folder, 0, {"p": [np.arange(2.0)]}, b"h", {"study": "default"})
    with pytest.raises(checkpoint.CheckpointError, match=r"another study \(created differs\)"):
        checkpoint.load(folder, {"study": "default", "created": 1.5})
    assert checkpoint.load(folder, {"study": "default", "created": 1.5},
                           optional=("created",))[2] == b"h"
    checkpoint.save(folder, 1, {"p": [np.arange(2.0)]}, b"h", {"study": "default",
                                                                "created": 1.0})
    with pytest.raises(checkpoint.CheckpointError, match=r"created differs"):
        checkpoint.load(folder, {"study": "default", "created": 1.5}, optional=("created",))
