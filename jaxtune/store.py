"""Crash-safe SQLite store of tuning studies, trials, batch timings and final evaluations.

A *study* is one tuning run, identified by name and pinned to a *spec* (the
search space, training length, objective, ... as plain JSON). A *trial* is one
configuration evaluated over one or more seeds, numbered ``0, 1, 2, ...``
within its study.

Durability: the store is one embedded SQLite file in WAL journal mode with
``synchronous=FULL`` and foreign keys on. Every public method that writes does
so in exactly one ``BEGIN IMMEDIATE`` transaction, so a process killed at any
moment (``kill -9``) leaves every call either fully applied or not at all.
Readers in other connections or processes see committed data while a writer
works; ``busy_timeout`` makes competing writers wait instead of failing.

Safety: an existing file is first checked without being modified (16-byte
SQLite header, then a read-only connection that looks for the ``meta`` table
with ``('format', 'jaxtune-store')`` and a known ``schema_version``). Anything
else raises :class:`StoreError` and the file is left byte-for-byte untouched.
Only a missing or empty (0-byte) file is initialised. A damaged store (truncated,
or pages overwritten) is refused the same way, with a one-line "is damaged"
error: ``PRAGMA quick_check`` runs on every open (it reads each page once), and a
stored value that no longer reads back (SQLite has no checksums on values, so
only reading finds it) raises the same one-line error instead of a traceback.

One writer per study: a process that writes a study first takes its row in the
``writers`` table (study id, a random token, pid, host name, heartbeat time) in a
``BEGIN IMMEDIATE`` transaction (:meth:`Store.acquire_writer`), so two
processes can never both hold it; SQLite's write lock in WAL mode serialises the
check-and-take. Every write made on the writer's behalf (``writer=token``)
checks, in the same transaction, that the row is still its own and refreshes the
heartbeat, so a writer whose lock was taken over never commits again. A second
process is refused at once with a one-line :class:`StoreError` naming the store
and the holder (pid, host). A row left by a killed process is *stale*, and
taken over, when its process is gone (same host: no such pid, or a zombie) or
its heartbeat is older than :data:`WRITER_STALE_S` seconds (any host, or a
reused pid). Readers never take the lock. A store created before this table
existed gains it the first time it is opened for writing.

Non-finite floats: JSON cannot hold NaN or infinities, so inside metrics,
curves, batch info, finals, study spec and study info every non-finite float
(``nan``, ``inf``, ``-inf``) is stored as JSON ``null`` and read back as
``None``; the same holds for the float columns ``objective``, ``started``,
``finished`` and ``wall_s``. ``numpy.asarray(values, dtype=float)`` turns those
``None`` values back into ``nan``. Configs must round-trip exactly, so a
non-finite float in a config is refused with :class:`StoreError`. Numpy and
JAX scalars/arrays are accepted anywhere and stored as plain JSON numbers/lists.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jaxtune import writer_lock
from jaxtune.store_schema import (
    BUSY_TIMEOUT_MS,
    StoreError,
    check_existing,
    check_writable,
    connect_readonly,
    initialise,
    is_damaged,
    migrate,
    one_line,
    prepare_new,
    write_hint,
)
from jaxtune.writer_lock import WRITER_STALE_S

__all__ = ["DEFAULT_PATH", "MEMORY", "STATUSES", "WRITER_STALE_S", "Store", "StoreError",
           "TrialRecord"]

#: ``infeasible``: a constraint of the study refused the trial (see :mod:`jaxtune.objectives`).
STATUSES = ("running", "complete", "diverged", "pruned", "infeasible")
MEMORY = ":memory:"
#: Where the ``jaxtune`` command and :class:`~jaxtune.study.Study` keep a study by default.
DEFAULT_PATH = "runs/jaxtune.db"
_TRIAL_COLUMNS = (
    "idx, config, status, seeds, metrics, objective, curves, batch, started, finished, wall_s"
)


@dataclasses.dataclass
class TrialRecord:
    """One configuration evaluated over one or more seeds.

    Attributes:
        index: Trial number within the study (0, 1, 2, ...), unique per study.
        config: JSON-serialisable hyperparameters (str/int/float/bool values).
        status: One of :data:`STATUSES`.
        seeds: Seeds the configuration was trained with.
        metrics: Aggregated metrics, e.g. ``{"val_accuracy": {"mean": .., "std": ..,
            "per_seed": [..]}}``.
        objective: Aggregated objective (mean over seeds); ``None`` if diverged or running.
        curves: Learning curves, e.g. ``{"step": [...], "val_accuracy": [[seed 0], [seed 1]]}``.
        batch: Number of the batch (population) the trial was trained in.
        started: Unix time the trial started.
        finished: Unix time the trial finished.
        wall_s: Wall-clock seconds attributed to the trial.
    """

    index: int
    config: dict[str, Any]
    status: str
    seeds: list[int] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    objective: float | None = None
    curves: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch: int | None = None
    started: float | None = None
    finished: float | None = None
    wall_s: float | None = None


# ----------------------------------------------------------------------------- JSON helpers


def _plain(obj: Any, *, strict: bool, where: str) -> Any:
    """Converts ``obj`` to plain JSON types, mapping non-finite floats to ``None``.

    With ``strict=True`` a non-finite float raises instead (configs must round-trip).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        if strict:
            raise StoreError(f"{where}: non-finite float {obj!r} cannot be stored exactly")
        return None
    if isinstance(obj, Mapping):
        return _plain_mapping(obj, strict=strict, where=where)
    if isinstance(obj, (list, tuple)):
        return [_plain(v, strict=strict, where=where) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax scalars and arrays
        return _plain(obj.tolist(), strict=strict, where=where)
    raise StoreError(f"{where}: value of type {type(obj).__name__} is not JSON-serialisable")


def _plain_mapping(obj: Mapping, *, strict: bool, where: str) -> dict[str, Any]:
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise StoreError(f"{where}: keys must be strings, got {key!r}")
        out[key] = _plain(value, strict=strict, where=where)
    return out


def _dumps(obj: Any, *, where: str, strict: bool = False, sort: bool = False) -> str:
    plain = _plain(obj, strict=strict, where=where)
    return json.dumps(plain, allow_nan=False, sort_keys=sort, separators=(",", ":"))


def _finite_or_none(value: Any, *, where: str) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise StoreError(f"{where}: expected a float or None, got {value!r}") from err
    return value if math.isfinite(value) else None


def _int_or_none(value: Any, *, where: str) -> int | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreError(f"{where}: expected an int or None, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- the store


class Store:
    """A crash-safe SQLite store of studies and their trials.

    Args:
        path: The store file. Created (with parent directories) if missing, unless
            ``readonly``. ``":memory:"`` (SQLite's name) is a store that lives in
            memory only, with the same interface: what a study without a file uses.
        readonly: Open an existing store for reading only.

    Raises:
        StoreError: If the file is not a jaxtune store (left unmodified), cannot be
            created, or is not writable.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "runs.db"
        >>> with Store(path) as store:
        ...     sid = store.open_study("default", {"steps": 100})
        ...     store.add_trials(sid, [TrialRecord(0, {"lr": 0.01}, "complete", objective=0.9)])
        ...     [t.config for t in store.trials(sid, "complete")]
        [{'lr': 0.01}]
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = pathlib.Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        if self.in_memory:
            if readonly:
                raise StoreError("an in-memory store cannot be opened read-only")
            self._conn = sqlite3.connect(MEMORY)
            self._conn.isolation_level = None  # explicit BEGIN IMMEDIATE in _write()
            initialise(self._conn, self.path)
            self._configure(self._conn, wal=False)
            return
        if self.path.is_dir():
            raise StoreError(f"store {self.path} is a directory, not a file")
        if readonly:
            self._conn = self._open_readonly()
        else:
            self._conn = self._open_readwrite()

    @property
    def in_memory(self) -> bool:
        """Whether this store lives in memory only (``Store(":memory:")``)."""
        return str(self.path) == MEMORY

    # -- opening ---------------------------------------------------------------------------

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise StoreError(f"store {self.path} does not exist")
        self._check_file()
        try:
            conn = connect_readonly(self.path)
            self._configure(conn, wal=False)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open store {self.path} read-only: {err}") from err
        return conn

    def _open_readwrite(self) -> sqlite3.Connection:
        fresh = not self.path.exists() or self._size() == 0
        if fresh:
            prepare_new(self.path)
        else:
            self._check_file()
            check_writable(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open store {self.path}: {err}") from err
        conn.isolation_level = None  # explicit BEGIN IMMEDIATE in _write()
        try:
            if fresh:
                initialise(conn, self.path)
            self._configure(conn, wal=True)
            migrate(conn)
        except sqlite3.Error as err:
            conn.close()
            raise StoreError(f"cannot initialise store {self.path}: {err}") from err
        except BaseException:
            conn.close()
            raise
        return conn

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError as err:
            raise StoreError(f"cannot read store {self.path}: {err}") from err

    def _check_file(self) -> None:
        try:
            check_existing(self.path)
        except OSError as err:
            raise StoreError(f"cannot read store {self.path}: {err}") from err

    def _configure(self, conn: sqlite3.Connection, *, wal: bool) -> None:
        conn.isolation_level = None  # explicit BEGIN IMMEDIATE in _write()
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if wal:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"store {self.path}: cannot enable WAL (mode {mode!r})")
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as err:
            raise StoreError(f"cannot configure store {self.path}: {err}") from err

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection; further calls raise StoreError. Idempotent."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "readwrite"
        return f"Store({str(self.path)!r}, {mode})"

    # -- low-level helpers -----------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self, study_id: int | None = None, writer: str | None = None
               ) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any error.

        With ``writer`` (a token of :meth:`acquire_writer`), the transaction first
        checks that the token still holds ``study_id``'s lock and refreshes its heartbeat.
        """
        if self.readonly:
            raise StoreError(f"store {self.path} was opened read-only")
        conn = self._db
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if writer is not None:
                    writer_lock.beat(conn, self.path, study_id, writer)
                yield conn
        except sqlite3.Error as err:
            raise StoreError(f"store {self.path}: {one_line(err)}{write_hint(err)}") from err

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            damaged = " is damaged" if is_damaged(err) else ""
            raise StoreError(f"store {self.path}{damaged}: {one_line(err)}") from err

    @contextlib.contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turns a stored value that no longer parses (damaged bytes) into a StoreError."""
        try:
            yield
        except (ValueError, TypeError) as err:
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"store {self.path} is damaged: {what} cannot be read "
                             f"({one_line(err, 120)})") from err

    def _require_study(self, conn: sqlite3.Connection, study_id: int) -> None:
        row = conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone()
        if row is None:
            raise StoreError(f"store {self.path} has no study with id {study_id}")

    # -- studies ---------------------------------------------------------------------------

    def open_study(self, name: str, spec: dict, *, info: dict | None = None) -> int:
        """Creates the study ``name`` or reopens it, checking its spec.

        Args:
            name: Study name, unique in the store.
            spec: JSON-serialisable description of the study; must equal the stored one
                (canonical JSON, sorted keys) when the study already exists.
            info: Free-form JSON stored at creation only (versions, command, ...).

        Returns:
            The study id.

        Raises:
            StoreError: If the study exists with a different spec.
        """
        if not isinstance(name, str) or not name:
            raise StoreError(f"store {self.path}: study name must be a non-empty string")
        if not isinstance(spec, Mapping):
            raise StoreError(f"store {self.path}: study spec must be a dict, got {type(spec)}")
        where = f"study {name!r} in {self.path}"
        spec_json = _dumps(spec, where=f"{where}: spec", sort=True)
        info_json = _dumps(info or {}, where=f"{where}: info", sort=True)
        with self._write() as conn:
            row = conn.execute("SELECT id, spec FROM studies WHERE name = ?", (name,)).fetchone()
            if row is None:
                cur = conn.execute(
                    "INSERT INTO studies (name, spec, info, created) VALUES (?, ?, ?, ?)",
                    (name, spec_json, info_json, time.time()),
                )
                return int(cur.lastrowid)
            if row[1] != spec_json:
                was, now = json.loads(row[1]), json.loads(spec_json)
                differ = _differing_keys(was, now)
                paths = _differing_paths(was, now)
                detail = (f"; changed: {', '.join(paths)}"
                          if paths and paths != differ.split(", ") else "")
                raise StoreError(
                    f"{where} was created with a different spec (differs in: {differ}"
                    f"{detail}); its trials are kept unchanged: start a new study under "
                    "another name (--name) or store, or restore the original settings"
                )
            return int(row[0])

    def studies(self) -> list[dict]:
        """Returns all studies as ``{"id", "name", "spec", "info", "created"}`` dicts."""
        rows = self._query("SELECT id, name, spec, info, created FROM studies ORDER BY id")
        with self._decoding("a study"):
            return [_study_dict(row) for row in rows]

    def study(self, name: str) -> dict:
        """Returns the study ``name`` (see :meth:`studies`); StoreError if missing."""
        rows = self._query(
            "SELECT id, name, spec, info, created FROM studies WHERE name = ?", (name,)
        )
        if not rows:
            raise StoreError(f"store {self.path} has no study named {name!r}")
        with self._decoding("a study"):
            return _study_dict(rows[0])

    # -- trials ----------------------------------------------------------------------------

    def next_trial_index(self, study_id: int) -> int:
        """Returns one past the largest trial index of the study (0 if it has none)."""
        rows = self._query(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM trials WHERE study_id = ?", (study_id,)
        )
        return int(rows[0][0])

    def add_trials(self, study_id: int, trials: Sequence[TrialRecord], *,
                   writer: str | None = None, dequeued: Sequence[int] = ()) -> None:
        """Inserts new trials in one transaction; all or none are stored.

        ``writer``: the token of the study's writer lock (see :meth:`acquire_writer`),
        checked and its heartbeat refreshed in the same transaction. ``dequeued``:
        positions of enqueued configurations (:meth:`queued`) these trials start,
        removed from the queue in the same transaction (a kill leaves each either
        queued or a trial, never both nor neither).

        Raises:
            StoreError: If an index already exists in the study (or repeats in
                ``trials``), a ``dequeued`` position is not queued, the study does
                not exist, or a record is invalid.
        """
        rows = [self._encode(t) for t in trials]
        self._check_unique([r[0] for r in rows], study_id)
        with self._write(study_id, writer) as conn:
            self._require_study(conn, study_id)
            clash = self._existing_indices(conn, study_id, [r[0] for r in rows])
            if clash:
                raise StoreError(
                    f"study {study_id} in {self.path} already has trial(s) "
                    f"{', '.join(map(str, clash))}"
                )
            conn.executemany(
                f"INSERT INTO trials (study_id, {_TRIAL_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(study_id, *r) for r in rows],
            )
            for position in dequeued:
                cur = conn.execute("DELETE FROM queue WHERE study_id = ? AND position = ?",
                                   (study_id, int(position)))
                if cur.rowcount != 1:
                    raise StoreError(f"study {study_id} in {self.path} has no enqueued "
                                     f"configuration at position {position}")

    def enqueue(self, study_id: int, configs: Sequence[Mapping[str, Any]], *,
                writer: str | None = None) -> list[int]:
        """Appends configurations to the study's queue (evaluated before the searcher's,
        in order) in one transaction; returns their positions (``writer``: as
        :meth:`add_trials`).

        Example:
            >>> store = Store(":memory:")
            >>> sid = store.open_study("default", {})
            >>> store.enqueue(sid, [{"lr": 0.1}, {"lr": 0.2}])
            [0, 1]
            >>> store.add_trials(sid, [TrialRecord(0, {"lr": 0.1}, "running")], dequeued=[0])
            >>> store.queued(sid)
            [(1, {'lr': 0.2})]
        """
        encoded = []
        for i, c in enumerate(configs):
            if not isinstance(c, Mapping):
                raise StoreError(f"store {self.path}: enqueued configuration {i} must be a dict")
            encoded.append(_dumps(c, where=f"enqueued configuration {i} for {self.path}",
                                  strict=True))
        with self._write(study_id, writer) as conn:
            self._require_study(conn, study_id)
            start = conn.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM queue "
                                 "WHERE study_id = ?", (study_id,)).fetchone()[0]
            positions = list(range(int(start), int(start) + len(encoded)))
            conn.executemany("INSERT INTO queue (study_id, position, config) VALUES (?, ?, ?)",
                             [(study_id, p, c) for p, c in zip(positions, encoded)])
        return positions

    def _has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (tables added later in the format are
        missing from older stores)."""
        return bool(self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def queued(self, study_id: int) -> list[tuple[int, dict[str, Any]]]:
        """The study's enqueued configurations not started yet, in order, as
        ``(position, config)``; none in a store made before the queue was kept."""
        if not self._has_table("queue"):
            return []
        rows = self._query("SELECT position, config FROM queue WHERE study_id = ? "
                           "ORDER BY position", (study_id,))
        with self._decoding("an enqueued configuration"):
            return [(int(p), json.loads(c)) for p, c in rows]

    def update_trials(self, study_id: int, trials: Sequence[TrialRecord], *,
                      writer: str | None = None) -> None:
        """Replaces all fields of existing trials (matched by index) in one transaction
        (``writer``: as :meth:`add_trials`).

        Raises:
            StoreError: If a trial index does not exist in the study; nothing is changed.
        """
        rows = [self._encode(t) for t in trials]
        self._check_unique([r[0] for r in rows], study_id)
        with self._write(study_id, writer) as conn:
            self._update_rows(conn, study_id, rows)

    def finish_batch(self, study_id: int, batch: int, info: dict,
                     trials: Sequence[TrialRecord], *, writer: str | None = None) -> None:
        """Stores a batch's timings and its finished trials in one transaction
        (``writer``: as :meth:`add_trials`; a study's rounds are its heartbeat).

        A kill leaves either both (the batch is done) or neither (its trials are
        still ``running`` and the batch is trained again on resume); never a
        batch row without its trials.
        """
        rows = [self._encode(t) for t in trials]
        self._check_unique([r[0] for r in rows], study_id)
        batch_row = self._encode_batch(batch, info)
        with self._write(study_id, writer) as conn:
            self._update_rows(conn, study_id, rows)
            conn.execute("INSERT OR REPLACE INTO batches (study_id, batch, info) VALUES (?, ?, ?)",
                         (study_id, *batch_row))

    def _update_rows(self, conn: sqlite3.Connection, study_id: int, rows: list[tuple]) -> None:
        self._require_study(conn, study_id)
        for r in rows:
            cur = conn.execute(
                "UPDATE trials SET config = ?, status = ?, seeds = ?, metrics = ?, "
                "objective = ?, curves = ?, batch = ?, started = ?, finished = ?, "
                "wall_s = ? WHERE study_id = ? AND idx = ?",
                (*r[1:], study_id, r[0]),
            )
            if cur.rowcount != 1:
                raise StoreError(f"study {study_id} in {self.path} has no trial {r[0]}")

    def trials(self, study_id: int, status: str | Sequence[str] | None = None) -> list[TrialRecord]:
        """Returns the study's trials ordered by index, optionally filtered by status."""
        sql = f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE study_id = ?"
        params: list[Any] = [study_id]
        if status is not None:
            wanted = self._statuses(status)
            sql += f" AND status IN ({', '.join('?' * len(wanted))})"
            params += wanted
        rows = self._query(sql + " ORDER BY idx", params)
        with self._decoding("a trial"):
            return [_decode_trial(row) for row in rows]

    def count(self, study_id: int, status: str | None = None) -> int:
        """Returns the number of trials in the study, optionally with one status."""
        if status is None:
            sql, params = "SELECT count(*) FROM trials WHERE study_id = ?", (study_id,)
        else:
            self._statuses(status)
            sql = "SELECT count(*) FROM trials WHERE study_id = ? AND status = ?"
            params = (study_id, status)
        return int(self._query(sql, params)[0][0])

    def _encode(self, trial: TrialRecord) -> tuple:
        """Validates a record and returns its column values (``idx`` first)."""
        if not isinstance(trial, TrialRecord):
            raise StoreError(f"store {self.path}: expected TrialRecord, got {type(trial)}")
        where = f"trial {trial.index!r} for {self.path}"
        index = _int_or_none(trial.index, where=f"{where}: index")
        if index is None or index < 0:
            raise StoreError(f"{where}: index must be an int >= 0")
        self._statuses(trial.status)
        if not isinstance(trial.config, Mapping):
            raise StoreError(f"{where}: config must be a dict")
        seeds = [
            _int_or_none(s, where=f"{where}: seeds")
            for s in _plain(trial.seeds, strict=True, where=f"{where}: seeds")
        ]
        return (
            index,
            _dumps(trial.config, where=f"{where}: config", strict=True),
            trial.status,
            json.dumps(seeds),
            _dumps(trial.metrics, where=f"{where}: metrics"),
            _finite_or_none(trial.objective, where=f"{where}: objective"),
            _dumps(trial.curves, where=f"{where}: curves"),
            _int_or_none(trial.batch, where=f"{where}: batch"),
            _finite_or_none(trial.started, where=f"{where}: started"),
            _finite_or_none(trial.finished, where=f"{where}: finished"),
            _finite_or_none(trial.wall_s, where=f"{where}: wall_s"),
        )

    def _statuses(self, status: str | Sequence[str]) -> list[str]:
        wanted = [status] if isinstance(status, str) else list(status)
        unknown = [s for s in wanted if s not in STATUSES]
        if unknown:
            raise StoreError(
                f"store {self.path}: unknown status {', '.join(map(repr, unknown))} "
                f"(expected one of {', '.join(STATUSES)})"
            )
        return wanted

    def _check_unique(self, indices: list[int], study_id: int) -> None:
        repeated = sorted(i for i, n in collections.Counter(indices).items() if n > 1)
        if repeated:
            raise StoreError(
                f"study {study_id} in {self.path}: trial index repeated in one call: "
                f"{', '.join(map(str, repeated))}"
            )

    @staticmethod
    def _existing_indices(conn: sqlite3.Connection, study_id: int, indices: list[int]) -> list[int]:
        rows = conn.execute("SELECT idx FROM trials WHERE study_id = ?", (study_id,))
        present = {r[0] for r in rows}
        return sorted(set(indices) & present)

    # -- batches and finals ----------------------------------------------------------------

    def add_batch(self, study_id: int, batch: int, info: dict) -> None:
        """Stores timings of one batch (wall_s, compile count, population, ...).

        A second call for the same ``(study, batch)`` replaces the first.
        """
        batch_row = self._encode_batch(batch, info)
        with self._write() as conn:
            self._require_study(conn, study_id)
            conn.execute(
                "INSERT OR REPLACE INTO batches (study_id, batch, info) VALUES (?, ?, ?)",
                (study_id, *batch_row),
            )

    def _encode_batch(self, batch: int, info: dict) -> tuple[int | None, str]:
        batch_no = _int_or_none(batch, where=f"batch {batch!r} for {self.path}")
        return batch_no, _dumps(info, where=f"batch {batch} info for {self.path}")

    def batches(self, study_id: int) -> list[dict]:
        """Returns ``[{"batch": n, **info}, ...]`` ordered by batch number."""
        rows = self._query(
            "SELECT batch, info FROM batches WHERE study_id = ? ORDER BY batch", (study_id,)
        )
        with self._decoding("a round"):
            return [{**json.loads(info), "batch": batch} for batch, info in rows]

    def set_finals(self, study_id: int, rows: Sequence[dict], *,
                   writer: str | None = None) -> None:
        """Replaces the study's final re-evaluation rows (trial index, seeds, test metrics;
        ``writer``: as :meth:`add_trials`)."""
        encoded = [
            (study_id, rank, _dumps(row, where=f"finals row {rank} for {self.path}"))
            for rank, row in enumerate(rows)
        ]
        with self._write(study_id, writer) as conn:
            self._require_study(conn, study_id)
            conn.execute("DELETE FROM finals WHERE study_id = ?", (study_id,))
            conn.executemany("INSERT INTO finals (study_id, rank, row) VALUES (?, ?, ?)", encoded)

    def set_models(self, study_id: int, rows: Sequence[tuple[int, dict, bytes]], *,
                   writer: str | None = None) -> None:
        """Replaces the study's trained models: ``(trial, info, params bytes)`` per trial
        (``writer``: as :meth:`add_trials`)."""
        encoded = [(study_id, int(trial), _dumps(info, where=f"model of trial {trial}"),
                    sqlite3.Binary(params)) for trial, info, params in rows]
        with self._write(study_id, writer) as conn:
            self._require_study(conn, study_id)
            conn.execute("DELETE FROM models WHERE study_id = ?", (study_id,))
            conn.executemany("INSERT INTO models (study_id, trial, info, params) "
                             "VALUES (?, ?, ?, ?)", encoded)

    def models(self, study_id: int) -> list[dict]:
        """The stored models: ``{"trial", "info", "params"}`` (bytes), by trial; none in a
        store made before models were kept."""
        if not self._has_table("models"):
            return []
        rows = self._query("SELECT trial, info, params FROM models WHERE study_id = ? "
                           "ORDER BY trial", (study_id,))
        with self._decoding("a model"):
            return [{"trial": t, "info": json.loads(i), "params": bytes(p)}
                    for t, i, p in rows]

    def finals(self, study_id: int) -> list[dict]:
        """Returns the rows of the last :meth:`set_finals` call, in the same order."""
        rows = self._query("SELECT row FROM finals WHERE study_id = ? ORDER BY rank", (study_id,))
        with self._decoding("a final row"):
            return [json.loads(r[0]) for r in rows]

    # -- the writer lock --------------------------------------------------------------------

    def acquire_writer(self, study_id: int, *, stale_after: float = WRITER_STALE_S) -> str:
        """Takes the study's writer lock for this process; returns its token.

        A lock held by another live writer refuses with a one-line :class:`StoreError`
        naming the store and the holder (pid, host); a stale one (its process gone on
        this host, or no heartbeat for ``stale_after`` seconds) is taken over.

        Example:
            >>> store = Store(":memory:")
            >>> sid = store.open_study("s", {})
            >>> token = store.acquire_writer(sid)
            >>> store.writer(sid)["pid"] == os.getpid()
            True
            >>> store.release_writer(sid, token); store.writer(sid) is None
            True
        """
        token = uuid.uuid4().hex
        now = time.time()
        with self._write() as conn:
            self._require_study(conn, study_id)
            row = conn.execute("SELECT token, pid, host, acquired, heartbeat FROM writers "
                               "WHERE study_id = ?", (study_id,)).fetchone()
            if row is not None:
                holder = writer_lock.holder(row)
                if writer_lock.stale(holder, now, stale_after) is None:
                    raise StoreError(writer_lock.held_message(conn, self.path, study_id,
                                                              holder, now, stale_after))
            conn.execute("INSERT OR REPLACE INTO writers (study_id, token, pid, host, acquired, "
                         "heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
                         (study_id, token, os.getpid(), writer_lock.host(), now, now))
        return token

    def heartbeat(self, study_id: int, token: str) -> None:
        """Refreshes the heartbeat of the lock ``token`` holds; StoreError if it lost it."""
        with self._write(study_id, token):
            pass

    def release_writer(self, study_id: int, token: str) -> None:
        """Releases the lock if ``token`` still holds it (idempotent)."""
        if self._conn is None:
            return
        with self._write() as conn:
            conn.execute("DELETE FROM writers WHERE study_id = ? AND token = ?",
                         (study_id, token))

    def writer(self, study_id: int) -> dict[str, Any] | None:
        """The study's lock holder (``pid``, ``host``, ``acquired``, ``heartbeat``,
        ``stale``: why it is stale, or ``None``), or ``None`` when no one holds it."""
        try:
            rows = self._db.execute("SELECT token, pid, host, acquired, heartbeat FROM writers "
                                    "WHERE study_id = ?", (study_id,)).fetchall()
        except sqlite3.OperationalError:  # a read-only store made before the table existed
            return None
        if not rows:
            return None
        now = time.time()
        holder = writer_lock.holder(rows[0])
        holder["stale"] = writer_lock.stale(holder, now, WRITER_STALE_S)
        del holder["token"]
        return holder

    def check_writer(self, study_id: int, *, stale_after: float = WRITER_STALE_S) -> None:
        """Raises :meth:`acquire_writer`'s StoreError if another live writer holds the study."""
        holder = self.writer(study_id)
        if holder is not None and writer_lock.stale(holder, time.time(), stale_after) is None:
            raise StoreError(writer_lock.held_message(self._db, self.path, study_id, holder,
                                                      time.time(), stale_after))

    # -- maintenance -----------------------------------------------------------------------

    def integrity_check(self) -> str:
        """Returns the result of ``PRAGMA integrity_check`` (``"ok"`` when healthy)."""
        rows = self._query("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)


def _differing_keys(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, ...) != new.get(k, ...))
    return ", ".join(keys) or "key order or types"


def _differing_paths(old: Any, new: Any, prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted paths where two specs differ, descending ``depth`` levels into dicts
    (``experiment.model.repr``)."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or depth == 0:
        return [prefix] if old != new and prefix else []
    out: list[str] = []
    for k in sorted(old.keys() | new.keys()):
        if old.get(k, ...) != new.get(k, ...):
            out += _differing_paths(old.get(k), new.get(k), f"{prefix}{k}" if not prefix
                                    else f"{prefix}.{k}", depth - 1) or [f"{prefix}.{k}"
                                                                         if prefix else k]
    return out


def _study_dict(row: tuple) -> dict:
    sid, name, spec, info, created = row
    return {
        "id": sid,
        "name": name,
        "spec": json.loads(spec),
        "info": json.loads(info),
        "created": created,
    }


def _decode_trial(row: tuple) -> TrialRecord:
    idx, config, status, seeds, metrics, objective, curves, batch, started, finished, wall = row
    return TrialRecord(
        index=idx,
        config=json.loads(config),
        status=status,
        seeds=json.loads(seeds),
        metrics=json.loads(metrics),
        objective=objective,
        curves=json.loads(curves),
        batch=batch,
        started=started,
        finished=finished,
        wall_s=wall,
    )
