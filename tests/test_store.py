"""Tests of jaxtune.store: round trips, refusal of foreign files, WAL readers, kill -9."""

from __future__ import annotations

import collections
import doctest
import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxtune import store as store_module
from jaxtune.store import STATUSES, Store, StoreError, TrialRecord

STORE_PY = Path(store_module.__file__).resolve()
SPEC = {"steps": 100, "space": {"lr": [1e-4, 1e-1]}, "objective": "val_accuracy"}


def _trial(index: int, status: str = "complete", **kw) -> TrialRecord:
    base = dict(
        config={"lr": 0.1 * (index + 1), "width": 32 + index, "opt": "adam", "wd": index % 2 == 0},
        seeds=[0, 1],
        metrics={"val_accuracy": {"mean": 0.5, "std": 0.01, "per_seed": [0.49, 0.51]}},
        objective=0.5 + index / 100,
        curves={"step": [0, 10], "val_accuracy": [[0.1, 0.5], [0.2, 0.5]]},
        batch=index // 2,
        started=1000.0 + index,
        finished=1010.0 + index,
        wall_s=10.0,
    )
    base.update(kw)
    return TrialRecord(index=index, status=status, **base)


def _snapshot(path: Path) -> tuple:
    """Content hash, mtime and the directory listing (no -wal/-shm/-journal appear)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


# ----------------------------------------------------------------------------- round trips


def test_doctests() -> None:
    assert doctest.testmod(store_module).failed == 0


def test_round_trip_after_reopen(db: Path) -> None:
    records = [_trial(0), _trial(1, "running", objective=None), _trial(2, "diverged")]
    records[2].metrics = {"loss": {"mean": math.nan, "per_seed": [math.inf, -math.inf, 1.5]}}
    records[2].curves = {"step": [0, 1], "loss": [[1.0, math.nan], [2.0, math.inf]]}
    records[2].objective = math.nan
    config = {"i": 3, "f": 0.1 + 0.2, "tiny": 1e-300, "one": 1.0, "s": "x\u00e9", "b": False}
    records[0].config = config
    with Store(db) as store:
        sid = store.open_study("default", SPEC, info={"jax": "0.4.30"})
        store.add_trials(sid, records)
    with Store(db) as store:
        assert store.study("default")["id"] == sid
        got = store.trials(sid)
    assert [t.index for t in got] == [0, 1, 2]
    assert got[0] == records[0]
    assert got[0].config == config
    assert [type(v) for v in got[0].config.values()] == [int, float, float, float, str, bool]
    assert got[1] == records[1]
    # NaN convention: non-finite floats come back as None.
    assert got[2].objective is None
    assert got[2].metrics == {"loss": {"mean": None, "per_seed": [None, None, 1.5]}}
    assert got[2].curves == {"step": [0, 1], "loss": [[1.0, None], [2.0, None]]}


def test_numpy_like_values_are_stored_as_plain_json(db: Path) -> None:
    np = pytest.importorskip("numpy")
    trial = _trial(
        0,
        seeds=np.arange(3),
        objective=np.float32(0.25),
        metrics={"acc": np.array([0.5, np.nan])},
        batch=np.int64(4),
    )
    with Store(db) as store:
        sid = store.open_study("np", SPEC)
        store.add_trials(sid, [trial])
        (got,) = store.trials(sid)
    assert got.seeds == [0, 1, 2] and got.batch == 4 and got.objective == 0.25
    assert got.metrics == {"acc": [0.5, None]}


def test_config_with_nan_is_refused(db: Path) -> None:
    with Store(db) as store:
        sid = store.open_study("s", SPEC)
        with pytest.raises(StoreError, match="non-finite"):
            store.add_trials(sid, [_trial(0, config={"lr": math.nan})])
        assert store.count(sid) == 0


def test_status_filtering_and_counts(db: Path) -> None:
    statuses = ["complete", "running", "diverged", "pruned", "complete", "running"]
    with Store(db) as store:
        sid = store.open_study("s", SPEC)
        other = store.open_study("other", SPEC)
        store.add_trials(sid, [_trial(i, s) for i, s in enumerate(statuses)])
        store.add_trials(other, [_trial(0)])
        assert store.count(sid) == 6 and store.count(other) == 1
        assert store.count(sid, "complete") == 2
        assert store.count(sid, "pruned") == 1
        assert [t.index for t in store.trials(sid, "running")] == [1, 5]
        assert [t.index for t in store.trials(sid, ["diverged", "pruned"])] == [2, 3]
        assert store.next_trial_index(sid) == 6
        assert store.next_trial_index(store.open_study("empty", SPEC)) == 0
        with pytest.raises(StoreError, match="unknown status"):
            store.trials(sid, "done")
        with pytest.raises(StoreError, match="unknown status"):
            store.add_trials(sid, [_trial(9, "done")])
    assert set(STATUSES) == {"running", "complete", "diverged", "pruned", "infeasible"}


def test_update_replaces_all_fields(db: Path) -> None:
    with Store(db) as store:
        sid = store.open_study("s", SPEC)
        store.add_trials(sid, [_trial(0, "running", objective=None), _trial(1, "running")])
        done = _trial(0, "complete", objective=0.9, metrics={"acc": 0.9}, curves={}, seeds=[7])
        store.update_trials(sid, [done])
        assert store.trials(sid)[0] == done
        assert store.trials(sid)[1].status == "running"
        # A missing index aborts the whole batch.
        with pytest.raises(StoreError, match="no trial 5"):
            store.update_trials(sid, [_trial(1, "pruned"), _trial(5)])
        assert store.trials(sid)[1].status == "running"


def test_duplicate_index_refused_and_batch_atomic(db: Path) -> None:
    with Store(db) as store:
        sid = store.open_study("s", SPEC)
        store.add_trials(sid, [_trial(0), _trial(1)])
        with pytest.raises(StoreError, match=r"already has trial\(s\) 1"):
            store.add_trials(sid, [_trial(2), _trial(1)])
        with pytest.raises(StoreError, match="repeated"):
            store.add_trials(sid, [_trial(3), _trial(3)])
        assert [t.index for t in store.trials(sid)] == [0, 1]
        with pytest.raises(StoreError, match="no study"):
            store.add_trials(999, [_trial(0)])


def test_studies_batches_finals(db: Path) -> None:
    with Store(db) as store:
        sid = store.open_study("a", SPEC, info={"cmd": "jaxtune run", "v": 1})
        assert store.open_study("a", dict(reversed(SPEC.items())), info={"v": 2}) == sid
        store.add_batch(sid, 0, {"wall_s": 1.5, "compiles": 2, "population": 8})
        store.add_batch(sid, 1, {"wall_s": math.inf})
        store.add_batch(sid, 0, {"wall_s": 2.5})
        store.set_finals(sid, [{"trial": 3, "test_acc": 0.9}, {"trial": 1, "test_acc": 0.8}])
        store.set_finals(sid, [{"trial": 1, "test_acc": math.nan, "seeds": [5, 6]}])
    with Store(db, readonly=True) as store:
        (study,) = store.studies()
        assert study["name"] == "a" and study["spec"] == SPEC
        assert study["info"] == {"cmd": "jaxtune run", "v": 1}  # not overwritten
        assert study["created"] == pytest.approx(time.time(), abs=60)
        assert store.batches(sid) == [{"batch": 0, "wall_s": 2.5}, {"batch": 1, "wall_s": None}]
        assert store.finals(sid) == [{"trial": 1, "test_acc": None, "seeds": [5, 6]}]
        with pytest.raises(StoreError, match="no study named 'b'"):
            store.study("b")
        with pytest.raises(StoreError, match="read-only"):
            store.add_batch(sid, 2, {})


def test_spec_mismatch_refused_and_trials_intact(db: Path) -> None:
    with Store(db) as store:
        sid = store.open_study("default", SPEC)
        store.add_trials(sid, [_trial(0), _trial(1)])
    changed = {**SPEC, "steps": 200, "space": {"lr": [1e-3, 1e-1]}, "new": 1}
    with Store(db) as store:
        with pytest.raises(StoreError) as err:
            store.open_study("default", changed)
        msg = str(err.value)
        assert "study 'default'" in msg and str(db) in msg
        assert "differs in: new, space, steps" in msg
        assert [t.index for t in store.trials(sid)] == [0, 1]
        assert store.study("default")["spec"] == SPEC
        assert store.integrity_check() == "ok"


# ----------------------------------------------------------------------------- refusals


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE other (x INTEGER)")
        conn.execute("INSERT INTO other VALUES (1)")
    conn.close()


def _bad_meta(format_: str, version: str):
    def make(path: Path) -> None:
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("format", format_), ("schema_version", version)]
            )
        conn.close()

    return make


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(os.urandom(8192)), "not an SQLite database"),
        (lambda p: p.write_text("name,score\nalice,3\n"), "not an SQLite database"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4080)), "not a jaxtune"),
        (_foreign_sqlite, "no 'meta' table"),
        (_bad_meta("someone-else", "1"), "format"),
        (_bad_meta("jaxtune-store", "99"), "schema_version"),
    ],
    ids=["binary", "text", "fake-header", "foreign-sqlite", "other-format", "future-version"],
)
@pytest.mark.parametrize("readonly", [False, True])
def test_foreign_files_refused_unchanged(tmp_path: Path, make, reason: str, readonly) -> None:
    path = tmp_path / "runs.db"
    make(path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = _snapshot(path)
    with pytest.raises(StoreError, match="is not a jaxtune store") as err:
        Store(path, readonly=readonly)
    assert reason in str(err.value) and "runs.db" in str(err.value)
    assert _snapshot(path) == before


def test_empty_file_is_initialised(db: Path) -> None:
    db.touch()
    with Store(db) as store:
        assert store.integrity_check() == "ok"
        assert store.studies() == []


def test_unwritable_paths(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    for path in (blocker / "runs.db", blocker / "sub" / "runs.db"):
        with pytest.raises(StoreError, match=r"file\.txt"):
            Store(path)
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path)
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="does not exist"):
        Store(missing, readonly=True)
    assert not missing.exists()
    assert blocker.read_text() == "not a directory"


def test_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "runs.db"
    with Store(path) as store:
        assert store.path == path
        assert store.integrity_check() == "ok"
    assert path.is_file()


# ----------------------------------------------------------------------------- concurrency


def test_wal_reader_sees_committed_data(db: Path) -> None:
    with Store(db) as writer:
        sid = writer.open_study("s", SPEC)
        writer.add_trials(sid, [_trial(0)])
        raw = sqlite3.connect(db)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()
        with Store(db) as reader, Store(db, readonly=True) as ro:
            assert reader.count(sid) == 1 and ro.count(sid) == 1
            writer.add_trials(sid, [_trial(1), _trial(2)])
            assert reader.count(sid) == 3 and ro.count(sid) == 3
            # A writer holding an open transaction does not block readers (WAL).
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("DELETE FROM trials")
            assert ro.count(sid) == 3
            assert [t.index for t in reader.trials(sid)] == [0, 1, 2]
            holder.execute("ROLLBACK")
            holder.close()
        assert writer.integrity_check() == "ok"


_CHILD = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("jaxtune_store_child", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    store = mod.Store(sys.argv[2])
    sid = store.open_study("crash", {"k": 1})
    size = 7
    for b in range(1_000_000):
        recs = [mod.TrialRecord(b * size + i, {"lr": 0.001 * i, "b": b}, "running",
                                seeds=[0, 1], batch=b,
                                curves={"loss": [[float(j) for j in range(200)]] * 2})
                for i in range(size)]
        store.add_trials(sid, recs)
        for r in recs:
            r.status, r.objective, r.metrics = "complete", 0.5, {"acc": {"mean": 0.5}}
        store.update_trials(sid, recs)
        store.add_batch(sid, b, {"wall_s": 0.01, "population": size})
        if b == 5:
            print("ready", flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_sigkill_mid_loop_leaves_whole_batches(db: Path, delay: float) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(STORE_PY), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        with Store(db, readonly=True) as reader:  # another process reads while it writes
            assert reader.count(reader.study("crash")["id"]) >= 6 * 7
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    with Store(db) as store:
        assert store.integrity_check() == "ok"
        sid = store.study("crash")["id"]
        trials = store.trials(sid)
        by_batch = collections.defaultdict(list)
        for t in trials:
            by_batch[t.batch].append(t)
        n = len(by_batch)
        assert n >= 6 and sorted(by_batch) == list(range(n))
        assert [t.index for t in trials] == list(range(7 * n))
        for b, group in by_batch.items():
            assert len(group) == 7, f"batch {b} partially stored"
            assert len({t.status for t in group}) == 1, f"batch {b} partially updated"
            assert all(t.curves["loss"][1][199] == 199.0 for t in group)
        # Every batch but possibly the last one was completed and timed.
        assert all(t.status == "complete" for t in trials if t.batch < n - 1)
        assert [b["batch"] for b in store.batches(sid)] in (list(range(n)), list(range(n - 1)))
        # The store is still writable afterwards.
        store.add_trials(sid, [_trial(store.next_trial_index(sid))])
        assert json.loads(json.dumps(store.studies()))[0]["name"] == "crash"


def test_in_memory_store_has_the_same_interface() -> None:
    store = Store(":memory:")
    assert store.in_memory and not Store.__dict__.get("readonly")
    sid = store.open_study("default", SPEC)
    store.add_trials(sid, [_trial(0), _trial(1, "running")])
    store.update_trials(sid, [_trial(1, "diverged", objective=None)])
    assert [t.status for t in store.trials(sid)] == ["complete", "diverged"]
    assert store.next_trial_index(sid) == 2
    with pytest.raises(StoreError, match="different spec"):
        store.open_study("default", {**SPEC, "steps": 7})
    with pytest.raises(StoreError, match="read-only"):
        Store(":memory:", readonly=True)
    assert Store(":memory:").studies() == []  # each in-memory store is its own
