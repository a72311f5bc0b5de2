"""A study's final evaluation: its top trials re-trained on fresh seeds (with
population-based training, their hyperparameter schedule replayed), evaluated on the
test split, and the final choice among them (:func:`~jaxtune.ranking.choose_final`);
what the store keeps of each (a row of metrics, the first fresh seed's model).

Example:
    >>> json_safe({"a": 1}), json_safe(int)
    ({'a': 1}, "<class 'int'>")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxtune.experiment import Experiment
from jaxtune.pool import aggregate, replay
from jaxtune.programs import Programs, bucket_key
from jaxtune.ranking import choose_final
from jaxtune.results import _kept
from jaxtune.store import TrialRecord

__all__ = ["done", "json_safe", "model_row", "retrain", "rows"]


def done(stored: Sequence[dict[str, Any]], top: Sequence[TrialRecord], seeds: int,
         seed: int) -> bool:
    """Whether the stored final rows are those of these top trials, seeds and seed."""
    same = sorted(r.get("trial") for r in stored) == sorted(t.index for t in top)
    return same and all(r.get("seeds") == seeds and r.get("seed") == seed for r in stored)


def retrain(experiment: Experiment, programs: Programs, top: Sequence[TrialRecord], *,
            seeds: int, seed: int, alive: Callable[[], Any]) -> dict[int, list[Any]]:
    """Re-trains ``top`` with ``seeds`` fresh seeds from ``seed``, one bucket at a time
    (``alive()`` before each: a long re-training is alive); their members by trial."""
    by_bucket: dict[Any, list[TrialRecord]] = {}
    for t in top:
        static = experiment.static_config(t.config)
        by_bucket.setdefault(bucket_key(static), []).append(t)
    members: dict[int, list[Any]] = {}
    for key, group in by_bucket.items():
        alive()
        for m in replay(experiment, programs, dict(key),
                        [(t.index, t.config, t.curves.get("lineage") or []) for t in group],
                        seeds=seeds, seed=seed, keep_params=True):
            members.setdefault(m.trial_id, []).append(m)
    return members


def rows(top: Sequence[TrialRecord], members: dict[int, list[Any]], *, objective: str,
         direction: str, eval_every: int, seeds: int, seed: int
         ) -> tuple[list[dict[str, Any]], int | None, str]:
    """The final rows of the re-trained ``top`` (search order; the validation, test and
    objective metrics), the chosen trial and why."""
    out = []
    for rank, t in enumerate(top):
        metrics, _ = aggregate(members[t.index], eval_every)
        statuses = {m.status for m in members[t.index]}
        row: dict[str, Any] = {"rank": rank, "trial": t.index, "config": t.config,
                               "status": "diverged" if "diverged" in statuses else "complete",
                               "search_objective": t.objective, "seed": seed, "seeds": seeds}
        for name, m in metrics.items():
            if name.startswith(("test_", "val_")) or name == objective:
                row[name], row[name + "_std"] = m["mean"], m["std"]
        out.append(row)
    chosen, why = choose_final(out, objective, direction)
    for row in out:
        row["chosen"] = row["trial"] == chosen
    next(r for r in out if r["chosen"])["chosen_because"] = why
    return out, chosen, why


def model_row(experiment: Experiment, trial: TrialRecord, member: Any,
              seed: int) -> tuple[int, dict, bytes]:
    """What the store keeps of a re-trained top trial: its first fresh seed's
    parameters (flax msgpack) and what rebuilds the module."""
    import jax
    from flax import serialization

    static = experiment.static_config(member.config)
    info = {"config": trial.config, "static": {k: json_safe(v) for k, v in static.items()},
            "repr": repr(experiment.build_model(static)), "replicate": 0, "seed": seed}
    return trial.index, info, serialization.msgpack_serialize(
        jax.tree.map(np.asarray, _kept(member)))


def json_safe(v: Any) -> Any:
    """``v`` when JSON can write it, else its ``repr``."""
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)
