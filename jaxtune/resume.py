"""A study's checkpoints (:mod:`jaxtune.checkpoint`) of its running populations: what
it saves after a round's commit, and how a resumed study takes it back.

A checkpoint carries the study's identity (its name, a digest of its
specification and the time its store created it): one of another study, of this
study with other settings, or of a study of the same name in a deleted store, is
refused. What it holds beside the populations' arrays: the pool's host records,
the trial scheduler's records, the searcher (when it pickles; with several
processes never: process 0's searcher is re-told), the trials it was told and
whether it had run out of configurations.

Example:
    >>> identity("default", {"seed": 0})["study"]
    'default'
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any

from jaxtune import checkpoint, distributed
from jaxtune.pool import Pool
from jaxtune.store import MEMORY, Store, TrialRecord

__all__ = ["Saved", "clear_stale", "identity", "load", "restore", "save"]

#: A loaded checkpoint: ``(round, arrays, host records)``.
Saved = tuple[int, dict[str, Any], dict[str, Any]]


def identity(name: str, spec: Mapping[str, Any], created: float | None = None
             ) -> dict[str, Any]:
    """What a checkpoint must match: the study's name, the digest of its spec and when
    the store created it (a study of the same name and spec in a new store is another
    study)."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    return {"study": name, "spec_sha256": digest.hexdigest(),
            **({"created": float(created)} if created is not None else {})}


def save(folder: str | None, round_: int, pool: Pool, records: Any, searcher: Any,
         told: set[int], exhausted: bool, ident: Mapping[str, Any]) -> None:
    """Checkpoints the running populations, the scheduler's records and the searcher
    after the round ``round_`` committed (nothing when ``folder`` is ``None``)."""
    if folder is None:
        return
    arrays, host = pool.snapshot()  # every process: the populations are gathered
    if not distributed.is_leader():
        return
    try:  # several processes: process 0's searcher is re-told on resume
        pickled = None if distributed.process_count() > 1 else pickle.dumps(searcher)
    except Exception:  # a user's searcher may not pickle: re-told on resume instead
        pickled = None
    payload = pickle.dumps({"pool": host, "records": records, "searcher": pickled,
                            "told": sorted(told), "exhausted": exhausted})
    checkpoint.save(folder, round_, arrays, payload, ident)


def load(folder: str | None, ident: Mapping[str, Any]) -> Saved | None:
    """The newest checkpoint ``(round, arrays, host records)``; ``None`` if there is
    none or it cannot be used (said in one line: the running trials retrain)."""
    if folder is None:
        return None
    found = None
    if distributed.is_leader() and checkpoint.latest(folder) is not None:
        try:
            # a checkpoint of an older jaxtune has no creation time: still this study's
            round_, arrays, payload = checkpoint.load(folder, ident, optional=("created",))
            found = round_, arrays, pickle.loads(payload)
        except (checkpoint.CheckpointError, pickle.UnpicklingError, EOFError) as e:
            print(f"jaxtune: warning: {e}; the running trials retrain from the store",
                  file=sys.stderr, flush=True)
    if distributed.process_count() == 1:
        return found
    return distributed.share_checkpoint(found)  # process 0's, to every process


def restore(pool: Pool, saved: Saved, waiting: list[TrialRecord], eval_every: int,
            log: Callable[[str], None]) -> list[TrialRecord]:
    """Restores the checkpointed trials still running in the store; returns those
    that are not (started after the checkpoint: they retrain from step 0)."""
    round_, arrays, host = saved
    try:
        restored = set(pool.restore(arrays, host["pool"], {t.index for t in waiting}))
    except ValueError as e:
        print(f"jaxtune: warning: checkpoint of round {round_} not used: {e}; the running "
              "trials retrain from the store", file=sys.stderr, flush=True)
        for key in list(pool.populations):
            del pool.populations[key]
        pool._trials.clear()
        return waiting
    steps = sum(len(m.curves.get("step", [])) * eval_every
                for t in restored for m in pool.members(t))
    log(f"resumed {len(restored)} running trials from the checkpoint of round "
        f"{round_} ({steps} member-steps not retrained)")
    return [t for t in waiting if t.index not in restored]


def clear_stale(store: Store, path: str, name: str) -> None:
    """What a study created new in its store does first: removes the checkpoint folder
    of its name (whatever the checkpoint policy). It is of an earlier study of that
    name whose store was deleted or replaced, and must neither be resumed into this one
    nor collide with its checkpoints. Kept when another study of the store writes there
    (names that differ only in characters a folder name cannot hold)."""
    if str(path) == MEMORY or not distributed.is_leader():
        return
    folder = checkpoint.checkpoint_dir(path, name)
    if not os.path.isdir(folder) or any(
            s["name"] != name and checkpoint.checkpoint_dir(path, s["name"]) == folder
            for s in store.studies()):
        return
    checkpoint.remove(folder)
    print(f"jaxtune: warning: removed stale checkpoints {folder} (of an earlier study "
          f"named {name!r}, not in this store)", file=sys.stderr, flush=True)
