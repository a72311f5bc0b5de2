"""Checkpoints of a study's running populations (orbax), so a kill resumes mid-training.

A checkpoint holds, after a round's commit, everything the study loop needs to go
on as if it had not stopped: every live population's whole member state pytree
(parameters, optimizer states, keys, step counters, model state: whatever the
engine's state holds, flattened generically), the host records of its members
(configurations, curves, lineages), the trial scheduler's records, the searcher
(its pending asks and random state) and the loop's counters.

* **Where**: next to the store, ``<store>.checkpoints/<study name>/<round>/``
  (:func:`checkpoint_dir`); orbax writes each checkpoint into a temporary folder
  and renames it when complete, so a kill mid-write leaves the previous one.
* **When**: every ``rounds`` rounds or ``seconds`` seconds (:class:`Policy`),
  and when a study stops with trials still running (time budget, target,
  Ctrl-C).
* **Pruned**: only the newest is kept; the folder is removed when the study has
  no running trial left, and when a study of its name is created new in the store
  (those of a deleted store's study are stale: never resumed into the new one).
* **Checked**: the metadata carry a SHA-256 of the arrays and the host records,
  and the study's identity; a damaged, partial or foreign checkpoint raises
  :class:`CheckpointError` (one line), and the study then retrains its running
  trials from the store, as without checkpoints.

Example:
    >>> import tempfile, os, numpy as np
    >>> folder = os.path.join(tempfile.mkdtemp(), "runs.db.checkpoints", "default")
    >>> save(folder, 3, {"p0": [np.arange(3.0)]}, b"records", {"study": "default"})
    >>> round_, arrays, host = load(folder, {"study": "default"})
    >>> round_, arrays["p0"][0].tolist(), host
    (3, [0.0, 1.0, 2.0], b'records')
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "Policy", "checkpoint_dir", "load", "remove", "save"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged, partial, another study's)."""


def checkpoint_dir(store_path: str | os.PathLike, study: str) -> str:
    """The folder of a study's checkpoints: next to the store file."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study) or "_"
    return os.path.join(f"{os.fspath(store_path)}.checkpoints", safe)


@dataclasses.dataclass
class Policy:
    """When to checkpoint: every ``rounds`` rounds or ``seconds`` seconds, whichever
    comes first (``None``: not by that measure; both ``None``: never).

    Example:
        >>> p = Policy(rounds=2, seconds=None)
        >>> [p.due(now=0.0) for _ in range(4)]
        [False, True, False, True]
    """

    rounds: int | None = None
    seconds: float | None = 60.0
    _rounds_since: int = 0
    _last: float | None = None

    def __post_init__(self) -> None:
        if self.rounds is not None and int(self.rounds) < 1:
            raise ValueError(f"checkpoint rounds must be >= 1 (or None), got {self.rounds}")
        if self.seconds is not None and not float(self.seconds) > 0:
            raise ValueError(f"checkpoint seconds must be > 0 (or None), got {self.seconds}")

    @property
    def enabled(self) -> bool:
        return self.rounds is not None or self.seconds is not None

    def due(self, now: float | None = None) -> bool:
        """Counts one round; whether a checkpoint is due after it."""
        now = time.perf_counter() if now is None else now
        if self._last is None:
            self._last = now
        self._rounds_since += 1
        due = ((self.rounds is not None and self._rounds_since >= int(self.rounds))
               or (self.seconds is not None and now - self._last >= float(self.seconds)))
        if due:
            self._rounds_since, self._last = 0, now
        return due


_managers: dict[str, Any] = {}  # folder -> the orbax manager saving there (this process)


def _digest(arrays: Mapping[str, Any], host: bytes) -> str:
    h = hashlib.sha256(host)
    for name in sorted(arrays):
        for leaf in arrays[name]:
            a = np.ascontiguousarray(leaf)
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet() -> Any:
    """Orbax's own warnings (absl) stay out of the study's output: errors are ours."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _manager(folder: str) -> Any:
    import orbax.checkpoint as ocp

    from jaxtune import distributed

    extra: dict[str, Any] = {"create": True}
    if distributed.process_count() > 1:  # process 0 alone reads and writes checkpoints
        os.makedirs(folder, exist_ok=True)
        extra = {"create": False, "multiprocessing_options": ocp.options.MultiprocessingOptions(
            primary_host=0, active_processes={0}, barrier_sync_key_prefix="jaxtune")}
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                           **extra)
    return ocp.CheckpointManager(os.path.abspath(folder), options=options)


def save(folder: str, round_: int, arrays: Mapping[str, list[np.ndarray]], host: bytes,
         identity: Mapping[str, Any]) -> None:
    """Writes checkpoint ``round_`` (atomically) and prunes the older ones. A step
    folder of ``round_`` or later already there (this round saved again, or left by a
    run whose store was deleted) is replaced, never an error.

    Args:
        folder: :func:`checkpoint_dir`.
        round_: the round committed last.
        arrays: name -> list of host arrays (a population's state leaves).
        host: the pickled host records.
        identity: what :func:`load` must find again (the study's name, its spec).
    """
    import orbax.checkpoint as ocp

    tree = {**{k: list(v) for k, v in arrays.items()},
            "_host": np.frombuffer(host, np.uint8).copy()}
    meta = {**identity, "round": int(round_), "sha256": _digest(arrays, host),
            "names": sorted(arrays), "saved": time.time()}
    taken = [n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
             if n.isdigit() and int(n) >= int(round_)]
    if taken:  # this round saved again, or left by another run: orbax refuses a step that
        _drop(folder)  # exists, and would prune this one below a newer step; replaced
        for n in taken:
            shutil.rmtree(os.path.join(folder, n), ignore_errors=True)
    manager = _managers.get(folder)
    if manager is None:  # one manager per folder while the process writes it
        with _quiet():
            manager = _managers[folder] = _manager(folder)
    with _quiet():
        manager.save(int(round_), args=ocp.args.Composite(
            arrays=ocp.args.PyTreeSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()


def latest(folder: str) -> int | None:
    """The round of the newest complete checkpoint (``None``: none)."""
    if not os.path.isdir(folder):
        return None
    rounds = [int(n) for n in os.listdir(folder) if n.isdigit()]
    return max(rounds, default=None)


def load(folder: str, identity: Mapping[str, Any], *, optional: tuple[str, ...] = ()
         ) -> tuple[int, dict[str, list], bytes]:
    """The newest checkpoint: ``(round, arrays, host)``.

    ``optional``: keys of ``identity`` that a checkpoint written by an older jaxtune
    may lack (then not checked); every other key must match.

    Raises:
        CheckpointError: none is complete, or it is damaged, partial or another
            study's (one line).
    """
    import orbax.checkpoint as ocp

    _drop(folder)  # a manager of this process saves there afresh
    step = latest(folder)
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {folder}")
    for stale in (n for n in os.listdir(folder) if n.isdigit() and int(n) != step):
        shutil.rmtree(os.path.join(folder, stale), ignore_errors=True)  # pruning a kill cut
    try:
        with _quiet(), _manager(folder) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(
                arrays=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore()))
        tree, meta = dict(restored["arrays"]), dict(restored["meta"])
    except Exception as e:  # orbax, tensorstore and json raise many kinds
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {os.path.join(folder, str(step))} cannot be "
                              f"read ({type(e).__name__}: {text})") from None
    host = np.asarray(tree.pop("_host"), np.uint8).tobytes()
    arrays = {k: [np.asarray(a) for a in v] for k, v in tree.items()}
    for key, value in identity.items():
        if meta.get(key) != value and not (key in optional and key not in meta):
            raise CheckpointError(f"checkpoint {os.path.join(folder, str(step))} belongs to "
                                  f"another study ({key} differs)")
    if sorted(arrays) != meta.get("names") or _digest(arrays, host) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {os.path.join(folder, str(step))} is damaged "
                              "(its content does not match its SHA-256)")
    return int(meta["round"]), arrays, host


def _drop(folder: str) -> None:
    """Closes this process's manager of ``folder``, if any (it lists the steps it saw)."""
    manager = _managers.pop(folder, None)
    if manager is not None:
        manager.close()


def remove(folder: str) -> None:
    """Deletes a study's checkpoints (and the store's checkpoint folder once empty)."""
    _drop(folder)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # another study's checkpoints may remain
        os.rmdir(os.path.dirname(folder))
