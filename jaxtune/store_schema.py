"""The store's file: its format (the SQLite schema, the ``meta`` table's format and
version), the checks an existing file passes before anything writes to it (header,
format, ``PRAGMA quick_check``), a new file's creation, and the migrations that bring
a store made by an older jaxtune up to date on its first open for writing (the
``writers``, ``models`` and ``queue`` tables, the ``infeasible`` status). Standard
library only.

Example:
    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> initialise(conn, ":memory:")
    >>> dict(conn.execute("SELECT key, value FROM meta WHERE key != 'created'"))
    {'format': 'jaxtune-store', 'schema_version': '1'}
    >>> len(one_line("x" * 300))            # SQLite's messages, on one short line
    200
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time

__all__ = ["BUSY_TIMEOUT_MS", "FORMAT", "SCHEMA_VERSION", "StoreError", "check_existing",
           "check_writable", "connect_readonly", "initialise", "is_damaged", "migrate", "one_line",
           "prepare_new", "write_hint"]

FORMAT = "jaxtune-store"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
_SQLITE_HEADER = b"SQLite format 3\x00"

#: Trained parameters of the final evaluation's top trials (flax msgpack state dicts).
_MODELS = """
CREATE TABLE IF NOT EXISTS models (
    study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    trial    INTEGER NOT NULL,
    info     TEXT NOT NULL,
    params   BLOB NOT NULL,
    PRIMARY KEY (study_id, trial)
)"""

#: Configurations enqueued for a study (:meth:`Study.enqueue <jaxtune.study.Study.enqueue>`)
#: and not started yet, in order; a row leaves in the transaction that stores its trial.
_QUEUE = """
CREATE TABLE IF NOT EXISTS queue (
    study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    config   TEXT NOT NULL,
    PRIMARY KEY (study_id, position)
)"""

_WRITERS = """
CREATE TABLE IF NOT EXISTS writers (
    study_id  INTEGER PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
    token     TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    host      TEXT NOT NULL,
    acquired  REAL NOT NULL,
    heartbeat REAL NOT NULL
)"""

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE studies (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    spec    TEXT NOT NULL,
    info    TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE trials (
    id        INTEGER PRIMARY KEY,
    study_id  INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL CHECK (idx >= 0),
    config    TEXT NOT NULL,
    status    TEXT NOT NULL
              CHECK (status IN ('running', 'complete', 'diverged', 'pruned', 'infeasible')),
    seeds     TEXT NOT NULL,
    metrics   TEXT NOT NULL,
    objective REAL,
    curves    TEXT NOT NULL,
    batch     INTEGER,
    started   REAL,
    finished  REAL,
    wall_s    REAL,
    UNIQUE (study_id, idx)
);
CREATE INDEX trials_status ON trials (study_id, status);
CREATE TABLE batches (
    study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    batch    INTEGER NOT NULL,
    info     TEXT NOT NULL,
    PRIMARY KEY (study_id, batch)
);
CREATE TABLE finals (
    study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    rank     INTEGER NOT NULL,
    row      TEXT NOT NULL,
    PRIMARY KEY (study_id, rank)
);
""" + _WRITERS + ";" + """
""" + _MODELS + ";" + """
""" + _QUEUE


class StoreError(ValueError):
    """A problem with a store file or with what was asked of it.

    The message names the file and the problem.
    """


def _read_header(path: pathlib.Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(_SQLITE_HEADER))


def _meta_problem(conn: sqlite3.Connection) -> str | None:
    """Returns why ``conn`` is not a jaxtune store, or ``None`` if it is one."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        found = ", ".join(sorted(tables)) or "none"
        return f"no 'meta' table (tables: {found})"
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    if meta.get("format") != FORMAT:
        return f"meta format is {meta.get('format')!r}, expected {FORMAT!r}"
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        return f"schema_version {version!r} is not supported (this jaxtune reads {SCHEMA_VERSION})"
    return None


def connect_readonly(path: pathlib.Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)


def check_existing(path: pathlib.Path) -> None:
    """Raises StoreError unless ``path`` is a jaxtune store; never writes to it."""
    if _read_header(path) != _SQLITE_HEADER:
        raise StoreError(f"{path} is not a jaxtune store: not an SQLite database")
    try:
        conn = connect_readonly(path)
        try:
            problem = _meta_problem(conn)
            damage = None if problem else _damage(conn)
        finally:
            conn.close()
    except sqlite3.Error as err:
        if is_damaged(err):
            raise StoreError(f"store {path} is damaged ({one_line(err)}); it was left "
                             "unmodified: restore it from a copy, or start a new store") from err
        raise StoreError(f"{path} is not a jaxtune store: {one_line(err)}") from err
    if problem is not None:
        raise StoreError(f"{path} is not a jaxtune store: {problem}")
    if damage is not None:
        raise StoreError(f"store {path} is damaged ({damage}); it was left unmodified: restore "
                         "it from a copy, or start a new store")


def _damage(conn: sqlite3.Connection) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong with the database's structure (pages,
    b-trees, free lists), or ``None``; it reads every page, never writes."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)")]
    return None if rows == ["ok"] else one_line("; ".join(rows))


def is_damaged(err: sqlite3.Error) -> bool:
    """Whether SQLite's error means damaged pages (a truncated or overwritten file)."""
    text = str(err)
    return isinstance(err, sqlite3.DatabaseError) and ("malformed" in text
                                                       or "Could not decode" in text)


def write_hint(err: sqlite3.Error) -> str:
    """What a write refused by the disk (full, a file-size limit, an I/O error) means."""
    name = getattr(err, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
        return ("; this write was rolled back and everything stored before it is intact: "
                "free disk space, then resume")
    return ""


def one_line(text: object, limit: int = 200) -> str:
    """``text`` on one printable line of at most ``limit`` characters (SQLite messages can
    quote damaged bytes)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def prepare_new(path: pathlib.Path) -> None:
    """Creates the parent directories of a new store and checks they are writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the directory for store {path}: {err}") from err
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create store {path}: directory {path.parent} is not writable")


def check_writable(path: pathlib.Path) -> None:
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"store {path} is not writable")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreError(f"store {path}: directory {path.parent} is not writable (WAL needs it)")


def initialise(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    """Creates the schema in an empty database, or validates one made concurrently."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            problem = _meta_problem(conn)
            if problem is not None:
                raise StoreError(f"{path} is not a jaxtune store: {problem}")
            return
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("format", FORMAT),
                ("schema_version", str(SCHEMA_VERSION)),
                ("created", repr(time.time())),
            ],
        )


def migrate(conn: sqlite3.Connection) -> None:
    """Adds the ``writers``, ``models`` and ``queue`` tables to a store made before they
    existed, and the ``infeasible`` status to its trials table (:func:`_allow_infeasible`)."""
    for name, ddl in (("writers", _WRITERS), ("models", _MODELS), ("queue", _QUEUE)):
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        if conn.execute(query, (name,)).fetchone() is None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(ddl)
    _allow_infeasible(conn)


def _allow_infeasible(conn: sqlite3.Connection) -> None:
    """Rebuilds the ``trials`` table of a store made before the ``infeasible`` status
    existed (SQLite cannot change a CHECK constraint in place): the documented
    twelve-step rebuild, in one transaction, with foreign keys off meanwhile."""
    old = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'trials'"
                       ).fetchone()
    if old is None or "'infeasible'" in old[0]:
        return
    ddl = _SCHEMA[_SCHEMA.index("CREATE TABLE trials ("):]
    ddl = ddl[: ddl.index(";")].replace("CREATE TABLE trials (", "CREATE TABLE trials_new (")
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            again = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                                 "name = 'trials'").fetchone()
            if "'infeasible'" not in again[0]:  # another process may have done it meanwhile
                conn.execute(ddl)
                conn.execute("INSERT INTO trials_new SELECT * FROM trials")
                conn.execute("DROP TABLE trials")
                conn.execute("ALTER TABLE trials_new RENAME TO trials")
                conn.execute("CREATE INDEX trials_status ON trials (study_id, status)")
                problems = conn.execute("PRAGMA foreign_key_check").fetchall()
                if problems:  # pragma: no cover - defensive
                    raise sqlite3.IntegrityError(f"foreign keys broken: {problems[:3]}")
    finally:
        conn.execute("PRAGMA foreign_keys = ON")
