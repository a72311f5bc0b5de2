"""Several processes (hosts) through ``jax.distributed``: process 0 decides and writes,
the others follow.

After :func:`initialize`, ``jax.devices()`` lists every process's devices, so a
study's populations are sharded over one global mesh (the population axis split
over all devices, the data replicated) with no other change to the engine. Each
process runs the same study loop, in lock step, because every compiled program is
a collective that all processes must call in the same order. What could differ
between processes is decided by process 0 alone and broadcast:

* the **searcher's asks** (:func:`shared_searcher`): process 0 asks its searcher
  and publishes the configurations; the others receive them (their searcher is
  never asked or told);
* **decisions on the clock** (time budget, checkpoint timing: :func:`agree`);
* the **store**: process 0 alone writes the SQLite file; each other process keeps a
  private copy of it as it was when the study opened (:func:`shared_store`), on
  which it records the same trials (the same scheduler decisions on the same,
  gathered metrics), so every process takes the same branches.

Broadcasts go through the coordinator's key-value store. A process that waits
longer than :data:`DECISION_TIMEOUT_S` for process 0 (or learns that process 0
stopped on an error) raises :class:`DistributedError` with one line; a process
that dies is noticed by the coordination service's heartbeat
(``heartbeat_timeout_seconds``), which ends the others with an error, never a
hang. The store stays consistent: process 0 commits each round in one
transaction, and a killed writer's lock is taken over by the next run.

Example:
    >>> process_count(), is_leader()
    (1, True)
    >>> agree(3.5)  # one process: its own value
    3.5
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["DECISION_TIMEOUT_S", "ENV", "DistributedError", "abort", "agree", "initialize",
           "is_leader", "options_from_env", "process_count", "process_index", "put_global",
           "share_checkpoint", "shared_searcher", "shared_store", "to_host"]

#: Environment variables read when the command-line flags are not given (the ``JAX_*``
#: names of ``jax.distributed`` are read too).
ENV = {"coordinator": ("JAXTUNE_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
       "num_processes": ("JAXTUNE_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
       "process_id": ("JAXTUNE_PROCESS_ID", "JAX_PROCESS_ID")}

#: Seconds a process waits for one of process 0's decisions (``JAXTUNE_DECISION_TIMEOUT``).
DECISION_TIMEOUT_S = float(os.environ.get("JAXTUNE_DECISION_TIMEOUT", 600))

_PREFIX = "jaxtune"
_CHUNK = 1 << 20  # bytes per key-value entry when a value is large (a store's copy)
_sent = 0  # decisions broadcast (or received) so far, in order, by this process


class DistributedError(RuntimeError):
    """A process cannot go on: coordinator unreachable, process 0 silent or stopped."""


def options_from_env(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None,
                     environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The ``initialize`` arguments from the flags given, else the environment; ``None``
    when none is set (a single process).

    Example:
        >>> options_from_env(environ={"JAXTUNE_COORDINATOR": "10.0.0.1:8476",
        ...                           "JAXTUNE_NUM_PROCESSES": "2", "JAXTUNE_PROCESS_ID": "1"})
        {'coordinator': '10.0.0.1:8476', 'num_processes': 2, 'process_id': 1}
        >>> options_from_env(environ={}) is None
        True
    """
    env = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    for name, keys in ENV.items():
        if given[name] is None:
            given[name] = next((env[k] for k in keys if env.get(k)), None)
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, v in given.items() if v is None]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ValueError(f"several processes need --coordinator, --num-processes and "
                         f"--process-id (or {ENV['coordinator'][0]} ...); missing {flags}")
    try:
        n, i = int(given["num_processes"]), int(given["process_id"])
    except ValueError:
        raise ValueError(f"--num-processes and --process-id must be integers, got "
                         f"{given['num_processes']!r} and {given['process_id']!r}") from None
    return {"coordinator": str(given["coordinator"]), "num_processes": n, "process_id": i}


def initialize(coordinator: str, num_processes: int, process_id: int, *,
               timeout_s: int = 60, heartbeat_s: int = 20) -> None:
    """Joins ``num_processes`` processes through ``jax.distributed`` (CPU collectives
    through gloo), before anything runs JAX.

    Args:
        coordinator: ``HOST:PORT`` of process 0 (which serves it).
        num_processes: processes in all.
        process_id: this process, ``0 <= process_id < num_processes``.
        timeout_s: give up joining after this long (coordinator unreachable, a
            process missing).
        heartbeat_s: a process silent this long is declared dead; the others stop
            with an error.

    Raises:
        ValueError: bad arguments, or JAX already started in this process.
        DistributedError: the processes could not join within ``timeout_s``.
    """
    if not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", str(coordinator)):
        raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"need 0 <= process id < number of processes, got process id "
                         f"{process_id} of {num_processes}")
    from jaxtune.devices import _backend_started

    if _backend_started():
        raise ValueError("jax.distributed must start before JAX runs anything in this "
                         "process; call jaxtune.distributed.initialize first")
    import jax

    start = time.monotonic()
    if int(process_id) != 0:  # jaxlib aborts the process when it cannot connect: check first
        _reach(str(coordinator), float(timeout_s), f"process {process_id} of {num_processes}")
    left = max(int(timeout_s - (time.monotonic() - start)), 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=str(coordinator),
                                   num_processes=int(num_processes),
                                   process_id=int(process_id),
                                   initialization_timeout=left,
                                   heartbeat_timeout_seconds=int(heartbeat_s))
    except Exception as e:  # jaxlib raises its own runtime errors
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistributedError(f"process {process_id} of {num_processes} could not join the "
                               f"coordinator {coordinator} within {timeout_s} s: {first}"
                               ) from None


def _reach(coordinator: str, timeout_s: float, who: str) -> None:
    """Waits until the coordinator accepts TCP connections; DistributedError after
    ``timeout_s``."""
    host, port = coordinator.rsplit(":", 1)
    end = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= end:
                raise DistributedError(f"{who} could not join the coordinator {coordinator} "
                                       f"within {timeout_s:.0f} s: {e}") from None
        time.sleep(0.25)


def process_index() -> int:
    """This process's index (0 without ``jax.distributed``)."""
    import jax

    return jax.process_index() if _initialized() else 0


def process_count() -> int:
    """Processes taking part (1 without ``jax.distributed``)."""
    import jax

    return jax.process_count() if _initialized() else 1


def is_leader() -> bool:
    """Whether this process decides and writes (process 0)."""
    return process_index() == 0


def _initialized() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def _client() -> Any:
    from jax._src import distributed

    return distributed.global_state.client


def _publish(key: str, text: str) -> None:
    client = _client()
    parts = [text[i:i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    for i, part in enumerate(parts[1:], 1):
        client.key_value_set(f"{key}/{i}", part)
    client.key_value_set(key, json.dumps({"parts": len(parts), "first": parts[0]}))


def _receive(key: str, what: str, timeout_s: float) -> str:
    client, waited, poll = _client(), 0.0, 1.0
    while True:
        try:
            head = json.loads(client.blocking_key_value_get(key, int(poll * 1000)))
            break
        except Exception as e:  # DEADLINE_EXCEEDED: poll again, and check for an abort
            if "DEADLINE" not in str(e).upper():
                raise DistributedError(f"process {process_index()}: lost the coordinator "
                                       f"while waiting for {what}: {str(e)[:160]}") from None
        waited += poll
        stopped = _try_get(f"{_PREFIX}/abort")
        if stopped is not None:
            raise DistributedError(f"process 0 stopped: {stopped}")
        if waited >= timeout_s:
            raise DistributedError(f"process {process_index()}: no word from process 0 for "
                                   f"{timeout_s:.0f} s while waiting for {what}; is it alive? "
                                   "(JAXTUNE_DECISION_TIMEOUT sets the wait)")
    parts = [head["first"]] + [client.blocking_key_value_get(f"{key}/{i}", 60_000)
                               for i in range(1, head["parts"])]
    return "".join(parts)


def _try_get(key: str) -> str | None:
    try:
        return _client().key_value_try_get(key)
    except Exception:  # NOT_FOUND
        return None


def agree(value: Any, what: str = "a decision") -> Any:
    """Process 0's ``value`` on every process (JSON round trip on all, so every process
    holds the very same value); one process: ``value`` itself.

    Every process must call it at the same point of the same control flow (as every
    collective); the n-th call on one process pairs with the n-th on the others.
    """
    global _sent
    if process_count() == 1:
        return value
    key = f"{_PREFIX}/decision/{_sent}"
    _sent += 1
    if is_leader():
        text = json.dumps(value)
        _publish(key, text)
    else:
        text = _receive(key, what, DECISION_TIMEOUT_S)
    return json.loads(text)


def abort(message: str) -> None:
    """Process 0 tells the others that it stopped on an error (they raise it at once,
    instead of waiting for its next decision). Nothing with one process."""
    if process_count() > 1 and is_leader():
        with contextlib.suppress(Exception):  # the coordinator may be gone already
            _client().key_value_set(f"{_PREFIX}/abort", str(message)[:300] or "an error")


# ------------------------------------------------------------------------- the searcher


class _Leader:
    """Process 0's searcher: asks and publishes the configurations."""

    def __init__(self, searcher: Any):
        self._searcher = searcher

    def ask(self, n: int, **kwargs: Any) -> list[dict[str, Any]]:
        return agree([_plain(c) for c in self._searcher.ask(n, **kwargs)], "asked configurations")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._searcher, name)


class _Follower:
    """Another process's searcher: receives process 0's asks; told nothing."""

    def __init__(self, searcher: Any):
        self._searcher = searcher

    def ask(self, n: int, **kwargs: Any) -> list[dict[str, Any]]:
        return agree(None, "asked configurations")

    def tell(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_pending(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._searcher, name)


def shared_searcher(searcher: Any) -> Any:
    """``searcher`` as process 0 asks it and the others follow it (one process: itself)."""
    if process_count() == 1:
        return searcher
    return (_Leader if is_leader() else _Follower)(searcher)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------- the store


def shared_store(path: str) -> str:
    """The store this process opens: process 0 its own ``path``; another process a
    private copy of it as it is now (every study in it, writer locks cleared), which
    it updates as process 0 does but which nobody reads. One process: ``path``.

    Every process must call it at the same point (the copy is broadcast).
    """
    from jaxtune.store import MEMORY

    if process_count() == 1:
        return path
    snapshot = None
    if is_leader() and str(path) != MEMORY and os.path.exists(path) \
            and os.path.getsize(path) > 0:
        snapshot = _snapshot(path)
    snapshot = agree(snapshot, "a copy of the store")
    if is_leader():
        return path
    if snapshot is None:
        return MEMORY
    import base64

    folder = tempfile.mkdtemp(prefix=f"jaxtune-process{process_index()}-")
    atexit.register(shutil.rmtree, folder, True)
    copy = os.path.join(folder, "mirror.db")
    with open(copy, "wb") as f:
        f.write(base64.b64decode(snapshot))
    dst = sqlite3.connect(copy)
    try:
        with dst:
            dst.execute("DELETE FROM writers")
    except sqlite3.OperationalError:  # a store made before the table existed
        pass
    dst.close()
    return copy


def _snapshot(path: str) -> str | None:
    """The store's content (committed transactions, WAL included), base64; ``None`` if
    it cannot be read (the Store then reports why on process 0)."""
    import base64

    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            dst = sqlite3.connect(os.path.join(tmp, "copy.db"))
            src.backup(dst)
            src.close()
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            dst.close()
            with open(os.path.join(tmp, "copy.db"), "rb") as f:
                data = f.read()
    except (sqlite3.Error, OSError):
        return None
    return base64.b64encode(data).decode("ascii")


# -------------------------------------------------------------------------- checkpoints


def share_checkpoint(found: tuple[int, dict[str, list], dict[str, Any]] | None
                     ) -> tuple[int, dict[str, list], dict[str, Any]] | None:
    """Process 0's checkpoint ``(round, arrays, host records)`` (or ``None``) on every
    process: the records through the coordinator, the arrays by a collective broadcast.
    Every process calls it at the same point."""
    import base64
    import pickle

    from jax.experimental import multihost_utils

    head = None
    if is_leader() and found is not None:
        round_, arrays, host = found
        head = {"round": round_, "host": base64.b64encode(pickle.dumps(host)).decode("ascii"),
                "shapes": {k: [[list(a.shape), a.dtype.str] for a in v]
                           for k, v in arrays.items()}}
    head = agree(head, "process 0's checkpoint")
    if head is None:
        return None
    arrays = found[1] if is_leader() else {
        k: [np.zeros(shape, dtype) for shape, dtype in v] for k, v in head["shapes"].items()}
    shared = multihost_utils.broadcast_one_to_all(  # booleans travel as bytes
        {k: [a.astype(np.uint8) if a.dtype == np.bool_ else a for a in v]
         for k, v in arrays.items()})
    arrays = {k: [np.asarray(a).astype(dtype) for a, (_, dtype) in zip(shared[k], v)]
              for k, v in head["shapes"].items()}
    return int(head["round"]), arrays, pickle.loads(base64.b64decode(head["host"]))


# ------------------------------------------------------------------------------- arrays


def to_host(tree: Any) -> Any:
    """``jax.device_get`` of a pytree whose arrays may span every process's devices
    (gathered from all processes first: a collective, called by every process)."""
    import jax

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                data = multihost_utils.process_allgather(jax.random.key_data(x), tiled=True)
                return jax.random.wrap_key_data(np.asarray(data),
                                                impl=jax.random.key_impl(x))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.device_get(jax.tree.map(one, tree))


def put_global(tree: Any, sharding: Any) -> Any:
    """Places host values (identical on every process) with a ``sharding`` that spans
    every process's devices (``jax.device_put`` takes only host arrays there)."""
    import jax

    def place(a: np.ndarray) -> Any:  # each process places its own devices' slices
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.device_get(jax.random.key_data(x)))
            return jax.random.wrap_key_data(place(data), impl=jax.random.key_impl(x))
        return place(np.asarray(jax.device_get(x)))

    return jax.tree.map(one, tree)

