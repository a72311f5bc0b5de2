"""kill -9 robustness of a study: start it in a subprocess, SIGKILL it at several
moments, resume it each time with ``jaxtune resume``; nothing committed is lost or
duplicated and the store stays a healthy SQLite database.

The kill moments come from a fixed-seed ``random.Random`` (reproducible):

1. the first ``run`` is killed while trials train (trials ``running``) once 4 or
   8 trials are complete;
2. the first ``resume`` is killed as soon as it commits a trial (one of the
   interrupted trials, trained again, or a new one);
3. the second ``resume`` is killed a random fraction of a second after its next
   commit;

and a third ``resume`` runs to completion. The subprocesses share a persistent
JAX compilation cache, so only the first one pays the full compile.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxtune.store import Store, StoreError

TRIALS = 24
TIMEOUT_S = 150

EXPERIMENT = """
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.digits(), model=jt.models.Logistic(),
    space=jt.Space(lr=jt.Real(1e-2, 1.0, log=True), schedule=jt.Choice(["constant", "cosine"])),
    steps=40, eval_every=10, defaults={"batch_size": 32, "optimizer": "sgd"},
    name="kill-digits")
"""


def read_trials(db: Path) -> dict[int, tuple[str, dict, float | None]] | None:
    """index -> (status, config, objective), or None while there is no study yet."""
    if not db.exists():
        return None
    try:
        with Store(db, readonly=True) as s:
            studies = s.studies()
            if not studies:
                return None
            return {t.index: (t.status, t.config, t.objective)
                    for t in s.trials(studies[0]["id"])}
    except StoreError:
        return None  # being created


def complete(trials: dict | None) -> dict[int, tuple[dict, float | None]]:
    """Trials that ended (complete, or pruned by the scheduler)."""
    return {i: (c, o) for i, (st, c, o) in (trials or {}).items()
            if st in ("complete", "pruned")}


def running(trials: dict | None) -> dict[int, dict]:
    return {i: c for i, (st, c, _) in (trials or {}).items() if st == "running"}


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


class Job:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path):
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()/finish()
        self.proc = subprocess.Popen([sys.executable, "-m", "jaxtune.cli", *argv],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd)
        self.t0 = time.monotonic()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def wait_for(self, db: Path, predicate, what: str) -> dict:
        """Polls the store until ``predicate(trials)``; fails if the process ends first."""
        while True:
            trials = read_trials(db)
            if trials is not None and predicate(trials):
                return trials
            if self.proc.poll() is not None:
                pytest.fail(f"the study ended (status {self.proc.returncode}) before {what}:\n"
                            + self.output()[-3000:])
            if time.monotonic() - self.t0 > TIMEOUT_S:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n" + self.output()[-3000:])
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the final resume did not finish:\n" + self.output()[-3000:])
        self.log.close()
        return code


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["fifo", "asha"])
def test_kill_9_at_random_moments_then_resume(tmp_path, scheduler):
    rng = random.Random(1234)
    exp = tmp_path / "kill_exp.py"
    exp.write_text(EXPERIMENT)
    db = tmp_path / "runs.db"
    env = dict(os.environ)  # XLA_FLAGS (tests/conftest.py) included
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    run = ["run", str(exp), "--trials", str(TRIALS), "--population", "4", "--steps", "20",
           "--store", str(db), "--no-progress", "--top-k", "0", "--scheduler", scheduler,
           *(["--eta", "2", "--min-steps", "10"] if scheduler == "asha" else [])]
    resume = ["resume", str(db), "--no-progress"]

    committed: dict[int, tuple[dict, float | None]] = {}  # complete before some kill
    interrupted: dict[int, dict] = {}                     # running when killed
    kills = 0

    def after_kill(before: dict) -> None:
        nonlocal kills
        kills += 1
        trials = read_trials(db)
        assert trials is not None
        assert integrity(db) == "ok"
        done = complete(trials)
        # what a poll saw committed before the kill is still there, unchanged
        for i, value in {**committed, **complete(before)}.items():
            assert done.get(i) == value, f"trial {i} changed or vanished after kill {kills}"
        committed.update(done)
        interrupted.update(running(trials))
        assert sorted(trials) == list(range(len(trials)))

    # kill 1: while trials train, after 4 or 8 complete trials
    k1 = rng.choice([4, 8])
    job = Job(run, tmp_path / "run.log", env, tmp_path)
    seen = job.wait_for(db, lambda t: len(complete(t)) >= k1 and running(t),
                        f"{k1} complete trials and trials in flight")
    job.kill()
    after_kill(seen)
    assert interrupted, "the first kill should interrupt running trials"

    # kill 2: as soon as the resumed study commits its first trial
    n = len(committed)
    job = Job(resume, tmp_path / "resume1.log", env, tmp_path)
    seen = job.wait_for(db, lambda t: len(complete(t)) > n, "a commit after resuming")
    job.kill()
    after_kill(seen)

    # kill 3: a random moment shortly after the next commit
    n = len(committed)
    job = Job(resume, tmp_path / "resume2.log", env, tmp_path)
    seen = job.wait_for(db, lambda t: len(complete(t)) > n, "a commit after resuming")
    time.sleep(rng.uniform(0.0, 0.5))
    if job.proc.poll() is None:
        job.kill()
        after_kill(seen)
    else:  # pragma: no cover - the study finished first on a very fast machine
        job.log.close()
    assert kills >= 2 and len(committed) < TRIALS

    # run to completion
    job = Job(resume, tmp_path / "resume3.log", env, tmp_path)
    code = job.finish()
    assert code == 0, job.output()[-3000:]
    assert "resuming study 'default'" in job.output()

    with Store(db, readonly=True) as s:
        assert s.integrity_check() == "ok"
        (study,) = s.studies()
        trials = s.trials(study["id"])
    assert integrity(db) == "ok"
    assert len(trials) == TRIALS
    assert [t.index for t in trials] == list(range(TRIALS))
    ended = {"fifo": {"complete"}, "asha": {"complete", "pruned"}}[scheduler]
    assert {t.status for t in trials} <= ended, [t.status for t in trials]
    assert all((t.objective is not None) == (t.status == "complete") for t in trials)
    if scheduler == "asha":  # stopped at the rung, 10 steps, with the rung stored
        assert all(t.metrics["steps"]["mean"] == 10 and t.metrics["rung"]["mean"] == 0
                   for t in trials if t.status == "pruned")
    configs = [tuple(sorted(t.config.items())) for t in trials]
    assert len(set(configs)) == TRIALS, "a configuration was trained twice"
    final = {t.index: (t.config, t.objective) for t in trials}
    for i, value in committed.items():
        assert final[i] == value, f"committed trial {i} was changed"
    for i, config in interrupted.items():  # trained again under the same id and config
        assert final[i][0] == config
    with Store(db, readonly=True) as s:
        assert len(s.batches(study["id"])) >= TRIALS // 4
        batch_rows = [b["batch"] for b in s.batches(study["id"])]
    # rounds are numbered on across resumes (no gaps, none overwritten); a trial
    # records the round it first started in, and its round's row exists (a round's
    # timings and its trials are committed together)
    assert batch_rows == list(range(len(batch_rows)))
    assert {t.batch for t in trials} <= set(batch_rows)
