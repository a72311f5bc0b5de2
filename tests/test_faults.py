"""Fault injection: a study's store stays trustworthy through kill -9, a full
filesystem, a left-behind WAL and damaged files.

Every case ends with a *consistent store* (``Store.integrity_check() == "ok"``,
every trial either ended with its status/objective or ``running``, indices
``0..n-1`` without duplicates, every ended trial's round row stored) in which *nothing
stored is lost* (every trial that had ended before the fault is still there,
identical), or, where the store cannot be trusted, a *one-line refusal* naming
the file that leaves its bytes untouched. kill -9 of FIFO and ASHA studies with
resumes is :mod:`tests.test_resume`; a second writer and a killed writer's lock
are :mod:`tests.test_writer_lock`; foreign files are :mod:`tests.test_store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_resume import EXPERIMENT, Job, complete, running

from jaxtune.store import Store, StoreError, TrialRecord

pytestmark = pytest.mark.slow

PAGE = 4096


# --------------------------------------------------------------------------- helpers


def cli(*argv: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxtune.cli", *argv], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Asserts exit status 2 with a single ``jaxtune: error:`` line naming ``names``."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxtune: error: "), proc.stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(db: Path) -> dict[str, list]:
    """Everything a study stored except the writer lock: studies, trials, rounds, finals."""
    with Store(db, readonly=True) as s:
        assert s.integrity_check() == "ok"
        out: dict[str, list] = {}
        for study in s.studies():
            sid = study["id"]
            out[study["name"]] = [study["spec"], s.trials(sid), s.batches(sid), s.finals(sid)]
        return out


def assert_consistent(db: Path) -> list[TrialRecord]:
    """The store's invariants; returns the (single) study's trials."""
    with Store(db, readonly=True) as s:
        assert s.integrity_check() == "ok"
        (study,) = s.studies()
        trials = s.trials(study["id"])
        rounds = [b["batch"] for b in s.batches(study["id"])]
    assert [t.index for t in trials] == list(range(len(trials)))
    for t in trials:
        assert t.status in ("running", "complete", "pruned", "diverged"), t
        assert (t.objective is not None) == (t.status == "complete"), t
        if t.status != "running":
            assert t.finished is not None and t.metrics, t
    assert rounds == list(range(len(rounds)))
    # a round's row is committed with the trials that ended in it (a running trial
    # records the round it started in, whose row may come later)
    assert {t.batch for t in trials if t.status != "running"} <= set(rounds)
    return trials


# --------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """The experiment file, an environment sharing one JAX compilation cache, and a
    finished 8-trial FIFO study made by the CLI (copied by the tests that damage it)."""
    root = tmp_path_factory.mktemp("faults")
    exp = root / "kill_exp.py"
    exp.write_text(EXPERIMENT)
    env = dict(os.environ)  # XLA_FLAGS (tests/conftest.py) included
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    good = root / "good.db"
    proc = cli(*run_args(exp, good, "fifo", trials=8), cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"root": root, "exp": exp, "env": env, "good": good}


def run_args(exp: Path, db: Path, scheduler: str, trials: int = 24) -> list[str]:
    extra = {"fifo": [], "asha": ["--eta", "2", "--min-steps", "10"],
             "pbt": ["--interval", "20"]}[scheduler]
    steps = 400 if scheduler == "pbt" else 20  # PBT: one population, long enough to kill
    return ["run", str(exp), "--trials", str(trials), "--population", "4", "--steps", str(steps),
            "--store", str(db), "--no-progress", "--top-k", "0", "--scheduler", scheduler,
            *extra]


def _truncate_half(data: bytes, rng: random.Random) -> bytes:
    return data[: len(data) // 2]


def _truncate_pages(data: bytes, rng: random.Random) -> bytes:
    return data[: PAGE * rng.randrange(2, len(data) // PAGE - 1)]


def _overwrite_page_headers(data: bytes, rng: random.Random) -> bytes:
    """Random bytes over the b-tree header and cell pointers of random pages (not page 1)."""
    b = bytearray(data)
    for page in rng.sample(range(1, len(data) // PAGE), 3):
        b[page * PAGE: page * PAGE + 12] = rng.randbytes(12)
    return bytes(b)


def _curve_offsets(data: bytes) -> list[int]:
    return [i for i in range(len(data)) if data.startswith(b'"step":[', i)]


def _overwrite_payload_utf8(data: bytes, rng: random.Random) -> bytes:
    """Bytes that are not UTF-8 inside a stored learning curve (SQLite has no page
    checksums: only reading the value finds it)."""
    b = bytearray(data)
    at = rng.choice(_curve_offsets(data))
    b[at + 8: at + 12] = b"\xff\xfe\xfd\xfc"
    return bytes(b)


def _overwrite_payload_json(data: bytes, rng: random.Random) -> bytes:
    """Valid UTF-8 that breaks a stored learning curve's JSON."""
    b = bytearray(data)
    at = rng.choice(_curve_offsets(data))
    b[at + 7: at + 8] = b"}"
    return bytes(b)


DAMAGE = {"truncated-half": _truncate_half, "truncated-pages": _truncate_pages,
          "page-headers": _overwrite_page_headers, "payload-utf8": _overwrite_payload_utf8,
          "payload-json": _overwrite_payload_json}
STRUCTURAL = ("truncated-half", "truncated-pages", "page-headers")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_store_is_refused_unchanged(tmp_path: Path, work: dict, damage: str) -> None:
    rng = random.Random(sorted(DAMAGE).index(damage) + 7)
    db = tmp_path / "runs.db"
    db.write_bytes(DAMAGE[damage](work["good"].read_bytes(), rng))
    before = digest(db)

    def refused(readonly: bool) -> str:
        with pytest.raises(StoreError) as err, Store(db, readonly=readonly) as s:
            for study in s.studies():  # payload damage: found on reading
                s.trials(study["id"])
                s.batches(study["id"])
        message = str(err.value)
        assert "\n" not in message and str(db) in message and "damaged" in message, message
        assert len(message) < 400 and message.isprintable(), message
        return message

    if damage in STRUCTURAL:  # refused when opening, before anything is read
        for readonly in (False, True):
            with pytest.raises(StoreError, match="damaged"):
                Store(db, readonly=readonly)
    refused(readonly=True)
    refused(readonly=False)
    assert digest(db) == before
    if damage not in ("truncated-half", "payload-json"):
        return
    # the CLI: one line, exit 2, never a traceback, never an empty study
    env = work["env"]
    one_line_error(cli("report", str(db), cwd=tmp_path, env=env), str(db), "damaged")
    one_line_error(cli("resume", str(db), "--no-progress", cwd=tmp_path, env=env), str(db),
                   "damaged")
    assert digest(db) == before


# --------------------------------------------------------------------------- kill -9 of PBT


def test_pbt_killed_then_resume_refused_store_unchanged(tmp_path: Path, work: dict) -> None:
    """A PBT study keeps no trained states, so after kill -9 mid-run ``jaxtune resume``
    refuses with one line (exit 2) and leaves every stored row as it was."""
    rng = random.Random(99)
    db = tmp_path / "runs.db"
    job = Job(run_args(work["exp"], db, "pbt", trials=4), tmp_path / "run.log", work["env"],
              tmp_path)
    job.wait_for(db, lambda t: len(running(t)) == 4, "the PBT population running")
    time.sleep(rng.uniform(0.0, 1.0))
    assert job.proc.poll() is None, "the PBT study ended before the kill:\n" + job.output()
    job.kill()
    trials = assert_consistent(db)
    assert [t.status for t in trials] == ["running"] * 4
    before = snapshot(db)
    for _ in range(2):  # refused each time, nothing stored changes
        line = one_line_error(cli("resume", str(db), "--no-progress", cwd=tmp_path,
                                  env=work["env"]), "population-based training")
        assert "still running" in line
        assert snapshot(db) == before
        assert_consistent(db)
    with Store(db, readonly=True) as s:  # the refusal released the lock it took over
        assert s.writer(s.studies()[0]["id"]) is None


# --------------------------------------------------------------------------- a full filesystem


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "8m") -> Iterator[bool]:
    """A tmpfs of ``size`` mounted at ``where`` (yields True), or a plain directory
    (False) where mounting is not permitted or ``JAXTUNE_TEST_NO_TMPFS`` is set."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    mounted = (os.environ.get("JAXTUNE_TEST_NO_TMPFS") is None  # =1: test the fallback
               and subprocess.run(mount, capture_output=True).returncode == 0)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Writes zeros into ``directory/filler`` until the filesystem is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        block = bytes(64 * 1024)
        while True:
            try:
                f.write(block)
            except OSError:
                break
        while True:  # the last partial block
            try:
                if not f.write(b"\\0" * 512):
                    break
            except OSError:
                break
    return filler


def test_full_filesystem_ends_with_one_line_and_a_sound_store(tmp_path: Path,
                                                                work: dict) -> None:
    """The filesystem fills while a FIFO study runs: the study stops with a one-line
    error (exit 2); the store opens, passes its checks and holds every trial that had
    ended; once space is freed, ``jaxtune resume`` completes the study."""
    fs = tmp_path / "fs"
    with small_filesystem(fs) as mounted:
        db = fs / "runs.db"
        # without a tmpfs: a file-size limit on the study's process instead, whose writes
        # past it then fail with EFBIG (SIGXFSZ ignored: the disposition is inherited)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN if not mounted
                                else signal.SIG_DFL)
        try:
            job = Job(run_args(work["exp"], db, "fifo"), tmp_path / "run.log", work["env"],
                      tmp_path)
        finally:
            signal.signal(signal.SIGXFSZ, handler)
        seen = job.wait_for(db, lambda t: len(complete(t)) >= 4, "4 complete trials")
        if mounted:
            filler = fill(fs)
        else:
            limit = max(p.stat().st_size for p in fs.glob("runs.db*"))
            resource.prlimit(job.proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        code = job.finish()
        out = job.output()
        assert code == 2, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("jaxtune: error:")]
        assert len(errors) == 1 and str(db) in errors[0], out[-3000:]
        assert out.strip().splitlines()[-1] == errors[0]
        assert ("full" if mounted else "I/O error") in errors[0], errors[0]
        assert "everything stored before it is intact" in errors[0], errors[0]
        trials = assert_consistent(db)
        done = {t.index: (t.config, t.objective, t.metrics) for t in trials
                if t.status != "running"}
        kept = complete(seen)
        assert len(done) < 24
        for i, (config, objective) in kept.items():
            assert done[i][:2] == (config, objective), f"trial {i} changed or vanished"
        if mounted:
            filler.unlink()
        proc = cli("resume", str(db), "--no-progress", cwd=tmp_path, env=work["env"])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        final = {t.index: (t.config, t.objective, t.metrics) for t in assert_consistent(db)}
        assert sorted(final) == list(range(24))
        assert {i: final[i] for i in done} == done


# --------------------------------------------------------------------------- a WAL left by a kill


def test_wal_and_shm_left_by_kill_are_recovered(tmp_path: Path, work: dict) -> None:
    """kill -9 leaves ``runs.db-wal`` (holding the trials committed since the last
    checkpoint) and a ``-shm`` index; with that index overwritten by random bytes (a
    stale one), readers still see every ended trial and an ASHA resume completes."""
    rng = random.Random(5)
    db = tmp_path / "runs.db"
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    job = Job(run_args(work["exp"], db, "asha"), tmp_path / "run.log", work["env"], tmp_path)
    seen = job.wait_for(db, lambda t: len(complete(t)) >= 4 and running(t),
                        "4 ended trials and trials in flight")
    job.kill()
    assert wal.stat().st_size > 0 and shm.exists()
    shm.write_bytes(rng.randbytes(shm.stat().st_size))
    trials = assert_consistent(db)
    ended = {t.index: (t.config, t.objective, t.metrics) for t in trials
             if t.status != "running"}
    for i, (config, objective) in complete(seen).items():
        assert ended[i][:2] == (config, objective), f"trial {i} changed or vanished"
    assert any(t.status == "running" for t in trials)
    proc = cli("resume", str(db), "--no-progress", cwd=tmp_path, env=work["env"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    final = assert_consistent(db)
    assert len(final) == 24 and {t.status for t in final} <= {"complete", "pruned"}
    assert {i: (t.config, t.objective, t.metrics) for i, t in enumerate(final)
            if i in ended} == ended
    assert len({tuple(sorted(t.config.items())) for t in final}) == 24
