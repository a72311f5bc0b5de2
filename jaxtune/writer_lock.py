"""The writer lock of a study in a store (see :mod:`jaxtune.store`): who holds it,
whether its holder is gone (stale), the message that refuses a second writer, and the
heartbeat every write on the holder's behalf checks and refreshes. The
:class:`~jaxtune.store.Store` methods (``acquire_writer``, ``heartbeat``,
``release_writer``, ``writer``, ``check_writer``) run these inside their
transactions. Standard library only.

Example:
    >>> import os, time
    >>> me = holder(("token", os.getpid(), host(), time.time(), time.time()))
    >>> stale(me, time.time(), WRITER_STALE_S) is None      # this process is alive
    True
    >>> stale(me, time.time() + 2 * WRITER_STALE_S, WRITER_STALE_S)
    'no heartbeat for 7200 s'
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from typing import Any

from jaxtune.store_schema import StoreError

__all__ = ["WRITER_STALE_S", "beat", "held_message", "holder", "host", "process_gone", "stale"]

#: A writer lock whose heartbeat is older than this many seconds is stale (taken over),
#: whatever its host; on the writer's own host a lock whose process is gone is stale at once.
WRITER_STALE_S = 3600.0


def host() -> str:
    return socket.gethostname()


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def holder(row: tuple) -> dict[str, Any]:
    token, pid, host, acquired, heartbeat = row
    return {"token": token, "pid": int(pid), "host": host, "acquired": acquired,
            "heartbeat": heartbeat}


def stale(holder: dict[str, Any], now: float, stale_after: float) -> str | None:
    """Why the lock is stale (``None``: its writer is alive)."""
    if holder["host"] == host() and process_gone(holder["pid"]):
        return f"process {holder['pid']} is gone"
    if now - holder["heartbeat"] > stale_after:
        return f"no heartbeat for {now - holder['heartbeat']:.0f} s"
    return None


def held_message(conn: sqlite3.Connection, path: Any, study_id: int, holder: dict[str, Any],
                 now: float, stale_after: float) -> str:
    """The one line that refuses a second writer of the store ``path``."""
    row = conn.execute("SELECT name FROM studies WHERE id = ?", (study_id,)).fetchone()
    name = row[0] if row else study_id
    return (f"store {path}: study {name!r} is being written by another process "
            f"(pid {holder['pid']} on host {holder['host']}, last heartbeat "
            f"{max(now - holder['heartbeat'], 0):.0f} s ago); wait for it to end or stop "
            f"it (a writer whose process is gone, or silent for {stale_after:.0f} s, is "
            "taken over)")


def beat(conn: sqlite3.Connection, path: Any, study_id: int | None, token: str) -> None:
    """Inside a write: checks that ``token`` holds the lock, refreshes its heartbeat."""
    cur = conn.execute("UPDATE writers SET heartbeat = ? WHERE study_id = ? AND token = ?",
                       (time.time(), study_id, token))
    if cur.rowcount != 1:
        row = conn.execute("SELECT pid, host FROM writers WHERE study_id = ?",
                           (study_id,)).fetchone()
        who = "nobody" if row is None else f"pid {row[0]} on host {row[1]}"
        raise StoreError(f"store {path}: this process no longer holds the writer lock "
                         f"of study {study_id} (held by {who}); it stops writing")
