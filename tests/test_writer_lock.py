"""One writer per study, with real processes.

A ``jaxtune run`` subprocess writes a study; meanwhile a second writer (a
:class:`~jaxtune.Study` in this process, a second ``jaxtune run``) is refused at
once with a one-line error naming the store and the writer's pid and host;
readers go on reading. Ctrl-C ends the writer with status 130 and releases the
lock; a ``kill -9``'d writer leaves a lock that the next run recognises as stale
and takes over. Processes racing for a free lock get it exactly once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jaxtune as jt
from jaxtune import cli
from jaxtune.store import Store, StoreError, TrialRecord

EXPERIMENT = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.digits(), model=jt.models.Logistic(),
    space=jt.Space(lr=jt.Real(1e-2, 1.0, log=True)),
    steps=20, eval_every=10, defaults={"batch_size": 32, "optimizer": "sgd"},
    name="lock-digits")
"""
TIMEOUT_S = 120


def load_experiment(path: Path) -> jt.Experiment:
    spec = importlib.util.spec_from_file_location("lock_exp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.experiment


def held_message(db: Path, pid: int) -> str:
    """The refusal, with the heartbeat's age as a pattern."""
    return (re.escape(f"store {db}: study 'default' is being written by another process "
                      f"(pid {pid} on host {socket.gethostname()}, last heartbeat ")
            + r"\d+" + re.escape(" s ago); wait for it to end or stop it (a writer whose "
                                 "process is gone, or silent for 3600 s, is taken over)") + "$")


@pytest.fixture(autouse=True)
def _keep_xla_flags(monkeypatch):
    """cli.main() exports XLA_FLAGS; keep it from leaking into later tests' subprocesses."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


@pytest.fixture
def writer(tmp_path):
    """Starts ``jaxtune run`` on a long study; yields (process, store, experiment file)."""
    exp = tmp_path / "lock_exp.py"
    exp.write_text(EXPERIMENT)
    db = tmp_path / "runs.db"
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONFAULTHANDLER="1")
    log = open(tmp_path / "writer.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxtune.cli", "run", str(exp), "--searcher", "random",
         "--scheduler", "fifo", "--trials", "100000", "--population", "2", "--store", str(db),
         "--top-k", "0", "--no-progress"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc, db, exp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def wait_for(proc, db: Path, complete: int, log: Path) -> dict:
    """Waits until the writer holds the lock and ``complete`` trials are stored."""
    t0 = time.monotonic()
    while True:
        if db.exists():
            try:
                with Store(db, readonly=True) as s:
                    studies = s.studies()
                    if studies:
                        sid = studies[0]["id"]
                        holder = s.writer(sid)
                        if holder is not None and s.count(sid, "complete") >= complete:
                            return holder
            except StoreError:
                pass  # being created
        if proc.poll() is not None:
            pytest.fail(f"the writer ended ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() - t0 > TIMEOUT_S:
            pytest.fail(f"timed out waiting for the writer: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def second_study(exp: Path, db: Path) -> jt.Study:
    # the spec `jaxtune run` stored: same searcher, scheduler, population ...
    return jt.Study(load_experiment(exp), searcher="random", scheduler="fifo", store=str(db),
                    population=2, top_k=0, verbose=False, progress=False,
                    objective="val_accuracy", direction="maximize")


@pytest.mark.slow
def test_a_live_writer_refuses_a_second_one_and_ctrl_c_releases_it(writer, tmp_path, capsys):
    proc, db, exp = writer
    holder = wait_for(proc, db, 1, tmp_path / "writer.log")
    assert (holder["pid"], holder["host"], holder["stale"]) == (
        proc.pid, socket.gethostname(), None)
    # a second writer in another process (this one) is refused at once, before compiling
    with pytest.raises(StoreError, match=held_message(db, proc.pid)):
        second_study(exp, db)
    # ... and from the command line: status 2, the same single line
    code = cli.main(["run", str(exp), "--searcher", "random", "--scheduler", "fifo",
                     "--trials", "100000", "--population", "2", "--store", str(db),
                     "--top-k", "0", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert re.match(held_message(db, proc.pid), err[0].removeprefix("jaxtune: error: "))
    # readers need no lock
    code = cli.main(["report", str(db)])
    assert code == 0 and "study 'default'" in capsys.readouterr().out
    # Ctrl-C: exit status 130, the lock released, what ended stored
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack in the log
        proc.wait(timeout=30)
        lines = (tmp_path / "writer.log").read_text().splitlines()
        pytest.fail("the writer did not end after Ctrl-C:\n" + "\n".join(
            line for line in lines if not line.startswith("jaxtune: round"))[-8000:])
    assert code == 130, (tmp_path / "writer.log").read_text()[-2000:]
    with Store(db, readonly=True) as s:
        sid = s.study("default")["id"]
        assert s.writer(sid) is None
        assert s.count(sid, "complete") >= 1 and s.integrity_check() == "ok"
    second_study(exp, db)  # no longer refused


@pytest.mark.slow
def test_the_lock_of_a_kill_9_writer_is_taken_over(writer, tmp_path):
    proc, db, exp = writer
    wait_for(proc, db, 2, tmp_path / "writer.log")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Store(db, readonly=True) as s:
        sid = s.study("default")["id"]
        stale = s.writer(sid)
        trials = s.trials(sid)
    assert stale["pid"] == proc.pid and stale["stale"] == f"process {proc.pid} is gone"
    running = [t.index for t in trials if t.status == "running"]
    study = second_study(exp, db)
    result = study.run(trials=len(trials) + 1)
    by_index = {t.index: t for t in result.trials}
    assert all(by_index[i].status == "complete" for i in running)  # trained again
    assert [t.index for t in result.trials] == list(range(len(result.trials)))
    with Store(db, readonly=True) as s:
        assert s.writer(sid) is None and s.integrity_check() == "ok"


# --------------------------------------------------------------------------- the lock itself

RACER = """
import importlib.util, os, pathlib, sys, time
spec = importlib.util.spec_from_file_location("store", sys.argv[1])
store = sys.modules["store"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(store)
s = store.Store(sys.argv[2])
sid = s.study("race")["id"]
while time.time() < float(sys.argv[3]):
    time.sleep(0.001)
try:
    s.acquire_writer(sid)
    print("got", flush=True)
except store.StoreError as e:
    print("refused", e, flush=True)
done = pathlib.Path(sys.argv[4])
(done / str(os.getpid())).touch()
t0 = time.time()
while len(list(done.iterdir())) < 4 and time.time() - t0 < 60:
    time.sleep(0.01)  # alive until every racer has tried
"""


def test_processes_racing_for_the_lock_get_it_once(tmp_path):
    db = tmp_path / "race.db"
    with Store(db) as s:
        s.open_study("race", {})
    store_py = Path(jt.store.__file__)
    start = time.time() + 1.5
    done = tmp_path / "done"
    done.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(store_py), str(db), str(start),
                               str(done)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["got", "refused", "refused", "refused"], outs
    winner = procs[[o.split()[0] for o in outs].index("got")].pid
    for o in outs:
        if o.startswith("refused"):
            assert f"(pid {winner} on host {socket.gethostname()}," in o


def test_stale_and_live_locks_of_other_hosts_and_a_writer_that_lost_its_lock(tmp_path):
    db = tmp_path / "runs.db"
    s = Store(db)
    sid = s.open_study("default", {})
    token = s.acquire_writer(sid)
    s.add_trials(sid, [TrialRecord(0, {"lr": 0.1}, "running")], writer=token)
    # a writer on another host with a fresh heartbeat is live: refused
    now = time.time()
    s._db.execute("UPDATE writers SET token = 'theirs', host = 'elsewhere', pid = 1, "
                  "heartbeat = ?", (now,))
    with pytest.raises(StoreError, match="pid 1 on host elsewhere"):
        s.acquire_writer(sid)
    # the lock's former owner may no longer write: nothing is committed
    with pytest.raises(StoreError, match=r"no longer holds the writer lock .* pid 1 on host "
                                         r"elsewhere"):
        s.update_trials(sid, [TrialRecord(0, {"lr": 0.1}, "complete", objective=1.0)],
                        writer=token)
    assert s.trials(sid)[0].status == "running"
    # silent for longer than the limit: stale, taken over
    s._db.execute("UPDATE writers SET heartbeat = ?", (now - 2 * 3600,))
    with Store(db, readonly=True) as r:
        assert r.writer(sid)["stale"].startswith("no heartbeat for 72")
    mine = s.acquire_writer(sid)
    s.heartbeat(sid, mine)
    with Store(db, readonly=True) as r:
        assert r.writer(sid)["pid"] == os.getpid() and r.writer(sid)["stale"] is None
    s.release_writer(sid, token)  # an old token releases nothing
    assert s.writer(sid) is not None
    s.release_writer(sid, mine)
    assert s.writer(sid) is None
    s.close()


def test_a_study_releases_its_lock_on_an_exception(tmp_path, basic_exp):
    class Boom(jt.search.RandomSearcher):
        def ask(self, n, within=None):
            raise RuntimeError("boom")

    db = tmp_path / "runs.db"
    study = jt.Study(basic_exp, searcher=Boom(basic_exp.space), store=str(db), population=2,
                     verbose=False, progress=False, top_k=0)
    with pytest.raises(RuntimeError, match="boom"):
        study.run(trials=2)
    assert study.store.writer(study.study_id) is None


def test_an_old_store_gains_the_writers_table(tmp_path):
    db = tmp_path / "old.db"
    with Store(db) as s:
        sid = s.open_study("default", {})
        s._db.execute("DROP TABLE writers")
    with Store(db, readonly=True) as r:
        assert r.writer(sid) is None  # readers of an old store are not bothered
    with Store(db) as s:
        token = s.acquire_writer(sid)
        assert s.writer(sid)["pid"] == os.getpid()
        s.release_writer(sid, token)
