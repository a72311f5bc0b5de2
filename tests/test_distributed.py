"""Several processes through ``jax.distributed``, with real processes on 127.0.0.1.

Two ``jaxtune run`` processes of one device each store the same trials
(configurations, statuses, objectives) as one process of two devices; a process
killed mid-study ends the other with a one-line error within a bounded time and
leaves process 0's store consistent; an unreachable coordinator is reported after
the join timeout. Every subprocess runs under a timeout.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxtune import distributed
from jaxtune.store import Store

EXPERIMENT = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    model=jt.models.MLP(width=8, num_outputs=1),
    space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    steps=30, eval_every=10, defaults={"batch_size": 16}, name="distributed-ts")
"""
TIMEOUT_S = 150
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0")
    for names in distributed.ENV.values():
        for name in names:
            e.pop(name, None)
    return e


def jaxtune(args: list[str], devices: int, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxtune", *args], cwd=cwd, env=env(devices),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def processes(port: int, i: int, n: int = 2) -> list[str]:
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
            "--process-id", str(i)]


def wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[int | None]:
    """Exit codes (``None``: still running after ``timeout``, then killed)."""
    end = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(end - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return codes


def stored(path: Path) -> list:
    with Store(path, readonly=True) as store:
        return store.trials(store.study("default")["id"])


def test_options_from_flags_and_environment():
    assert distributed.options_from_env("h:1", 2, 0, environ={}) == {
        "coordinator": "h:1", "num_processes": 2, "process_id": 0}
    assert distributed.options_from_env(None, None, 1, environ={
        "JAX_COORDINATOR_ADDRESS": "h:2", "JAXTUNE_NUM_PROCESSES": "3"})["num_processes"] == 3
    with pytest.raises(ValueError, match="missing --num-processes"):
        distributed.options_from_env("h:1", None, 0, environ={})
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("nohost", 2, 0)
    with pytest.raises(ValueError, match="process id 2 of 2"):
        distributed.initialize("127.0.0.1:1", 2, 2)


def test_two_processes_store_what_one_process_stores(tmp_path):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    args = ["run", "exp.py", "--searcher", "random", "--trials", "6", "--population", "4",
            "--scheduler", "asha", "--top-k", "1", "--final-seeds", "1", "--no-progress",
            "--quiet"]
    port = free_port()
    procs = [jaxtune([*args, "--store", "one.db"], 2, tmp_path, tmp_path / "one.log")]
    procs += [jaxtune([*args, "--store", "two.db", *processes(port, i)], 1, tmp_path,
                      tmp_path / f"p{i}.log") for i in (1, 0)]
    codes = wait(procs)
    logs = {p: (tmp_path / p).read_text()[-2000:] for p in ("one.log", "p0.log", "p1.log")}
    assert codes == [0, 0, 0], logs
    assert "process 1 of 2: followed process 0 for 6 trials" in logs["p1.log"]
    one, two = stored(tmp_path / "one.db"), stored(tmp_path / "two.db")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert (a.index, a.config, a.status) == (b.index, b.config, b.status)
        assert a.metrics["steps"] == b.metrics["steps"]
        for name in ("val_loss", "train_loss"):
            assert math.isclose(a.metrics[name]["mean"], b.metrics[name]["mean"],
                                rel_tol=1e-5, abs_tol=1e-7), (a.index, name)
    assert {t.status for t in two} >= {"complete", "pruned"}  # ASHA decided on both
    with Store(tmp_path / "one.db", readonly=True) as s1, \
            Store(tmp_path / "two.db", readonly=True) as s2:
        f1, f2 = s1.finals(s1.study("default")["id"]), s2.finals(s2.study("default")["id"])
    assert [r["trial"] for r in f1] == [r["trial"] for r in f2]
    assert math.isclose(f1[0]["test_loss"], f2[0]["test_loss"], rel_tol=1e-5)


def test_a_killed_process_stops_the_other_with_one_line(tmp_path):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    args = ["run", "exp.py", "--searcher", "random", "--trials", "100000", "--steps", "100000",
            "--population", "2", "--scheduler", "fifo", "--top-k", "0", "--no-progress",
            "--quiet", "--store", "two.db"]
    port = free_port()
    p1 = jaxtune([*args, *processes(port, 1)], 1, tmp_path, tmp_path / "p1.log")
    p0 = jaxtune([*args, *processes(port, 0)], 1, tmp_path, tmp_path / "p0.log")
    try:
        end = time.monotonic() + TIMEOUT_S
        while time.monotonic() < end and p0.poll() is None:
            if (tmp_path / "two.db").exists():
                with Store(tmp_path / "two.db", readonly=True) as store:
                    if len(store.batches(store.study("default")["id"])) >= 3:
                        break
            time.sleep(0.2)
        assert p0.poll() is None, (tmp_path / "p0.log").read_text()[-2000:]
        p1.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = wait([p0], timeout=30)[0]
        took = time.monotonic() - killed
    finally:
        wait([p1, p0], timeout=1)
    log = (tmp_path / "p0.log").read_text()
    assert code == 2 and took < 60, (code, took, log[-2000:])
    errors = [line for line in log.splitlines() if line.startswith("jaxtune: error")]
    assert len(errors) == 1 and "another process stopped" in errors[0], log[-2000:]
    with Store(tmp_path / "two.db", readonly=True) as store:
        sid = store.study("default")["id"]
        assert store.integrity_check() == "ok"
        assert store.writer(sid) is None  # released on the way out
        rounds = store.batches(sid)
        running = store.trials(sid, "running")
    assert len(rounds) >= 3 and len(running) == 2  # every committed round, trials resumable


def test_an_unreachable_coordinator_is_reported_after_the_join_timeout(tmp_path):
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    t0 = time.monotonic()
    p = jaxtune(["run", "exp.py", "--trials", "2", "--store", "x.db", "--join-timeout", "3",
                 *processes(free_port(), 1)], 1, tmp_path, tmp_path / "p1.log")
    code = wait([p], timeout=TIMEOUT_S)[0]
    log = (tmp_path / "p1.log").read_text()
    assert code == 2, log[-2000:]
    assert time.monotonic() - t0 < TIMEOUT_S
    errors = [line for line in log.splitlines() if line.startswith("jaxtune: error")]
    assert len(errors) == 1 and "could not join the coordinator" in errors[0]
    assert not (tmp_path / "x.db").exists()


def test_two_processes_checkpoint_and_resume_as_one_process_runs(tmp_path):
    """Process 0 checkpoints the populations gathered from both processes when the study
    stops at its target with trials running; a two-process resume restores them and
    stores what an uninterrupted one-process run stores."""
    (tmp_path / "exp.py").write_text(EXPERIMENT.replace("steps=30", "steps=90"))
    args = ["exp.py", "--searcher", "grid", "--resolution", "12", "--trials", "6",
            "--population", "4",
            "--scheduler", "asha", "--top-k", "0", "--no-progress", "--checkpoint-rounds", "100"]
    ref = jaxtune(["run", *args, "--store", "one.db", "--quiet"], 2, tmp_path,
                  tmp_path / "one.log")
    assert wait([ref]) == [0], (tmp_path / "one.log").read_text()[-2000:]
    one = stored(tmp_path / "one.db")
    first = min((t for t in one if t.status == "complete"), key=lambda t: t.finished)
    for phase in (["run", *args, "--target", repr(first.objective)], ["resume", "two.db"]):
        port = free_port()
        extra = ["--store", "two.db"] if phase[0] == "run" else []
        procs = [jaxtune([*phase, *extra, *processes(port, i)], 1, tmp_path,
                         tmp_path / f"{phase[0]}{i}.log") for i in (1, 0)]
        codes = wait(procs)
        logs = {i: (tmp_path / f"{phase[0]}{i}.log").read_text()[-2000:] for i in (0, 1)}
        assert codes == [0, 0], logs
        if phase[0] == "run":
            assert any(t.status == "running" for t in stored(tmp_path / "two.db"))
            assert os.listdir(tmp_path / "two.db.checkpoints" / "default")
    assert "from the checkpoint of round" in logs[0], logs
    two = stored(tmp_path / "two.db")
    assert [(t.index, t.config, t.status) for t in two] == \
        [(t.index, t.config, t.status) for t in one]
    for a, b in zip(one, two):
        assert math.isclose(a.metrics["val_loss"]["mean"], b.metrics["val_loss"]["mean"],
                            rel_tol=1e-5, abs_tol=1e-7), a.index
    assert not (tmp_path / "two.db.checkpoints").exists()
