"""What a study's searcher is told of finished trials (its own, or another study's
in a warm start).

Conventions:

* **Divergence.** A trial any of whose replicates diverged is stored with status
  ``diverged`` and no objective; searchers receive ``None`` and apply their
  documented policy (default: the worst finite loss seen, see
  :mod:`jaxtune.search`). NaN never reaches a searcher or the objective column.
* **Pruned trials** (stopped by the scheduler) are stored ``pruned`` with the
  steps they reached (and, for ASHA/Hyperband, the rung). The searcher is told
  per ``pruned=``: ``"last"`` (default) the objective at the last evaluation
  before the stop (a pessimistic proxy of its final value: Bayesian search with
  Hyperband thus learns from lower rungs, as in BOHB), ``"fidelity"`` that value
  with the fraction of its step budget it trained (Bayesian search models the
  fraction as an input of its surrogate and predicts the full budget; other
  searchers treat it as ``"last"``), ``"exclude"`` nothing.
* **Direction.** Searchers minimize; for ``direction="maximize"`` they are told
  the negated objective.
* **Infeasible trials** are told as failed (``None``).
* **Several objectives.** A searcher with ``n_objectives`` is told one loss per
  objective (``None`` when any is missing).

Example:
    >>> from jaxtune.objectives import Objective
    >>> from jaxtune.store import TrialRecord
    >>> t = TrialRecord(index=0, config={"lr": 0.1}, status="pruned", seeds=[0],
    ...                 metrics={"val_accuracy": {"mean": 0.8}, "steps": {"mean": 5},
    ...                          "budget": {"mean": 20}})
    >>> loss(t, Objective("val_accuracy", "maximize"), "last"), fidelity(t)
    (-0.8, 0.25)
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Sequence
from typing import Any

from jaxtune.goals import scalar
from jaxtune.objectives import Objective
from jaxtune.space import Space
from jaxtune.store import Store, TrialRecord

__all__ = ["fidelity", "loss", "losses", "steps_trained", "tell", "told_value", "warm_trials"]


def loss(record: TrialRecord, objective: Objective, pruned: str) -> float | None:
    """The first objective's loss of a finished trial (``None``: failed or not told)."""
    if record.status == "pruned" and pruned in ("last", "fidelity"):
        last = record.metrics.get(objective.name, {}).get("mean")
        return None if last is None or not math.isfinite(last) else objective.sign * last
    if record.status != "complete" or record.objective is None:
        return None
    return objective.sign * record.objective


def losses(record: TrialRecord, objectives: Sequence[Objective],
           pruned: str) -> list[float] | None:
    """One loss per objective (``None``: failed, infeasible, or a value missing)."""
    first = loss(record, objectives[0], pruned)
    if record.status == "infeasible" or first is None:
        return None
    out = [first]
    for o in objectives[1:]:
        v = record.metrics.get(o.name, {}).get("mean")
        if v is None or not math.isfinite(v):
            return None
        out.append(o.sign * v)
    return out


def told_value(record: TrialRecord, searcher: Any, objectives: Sequence[Objective],
               pruned: str) -> Any:
    """What the searcher is told of a trial: its loss vector when it takes one
    (``n_objectives``), else the first objective's loss."""
    if record.status == "infeasible":
        return None
    if getattr(searcher, "n_objectives", None) is not None:
        return losses(record, objectives, pruned)
    return loss(record, objectives[0], pruned)


def tell(searcher: Any, trials: list[TrialRecord], objectives: Sequence[Objective],
         pruned: str) -> None:
    """Tells ``searcher`` these finished trials (pruned ones per ``pruned``), with
    their fidelities when it asks for them and takes them."""
    told = [t for t in trials if not (t.status == "pruned" and pruned == "exclude")]
    if told:
        extra = ({"fidelities": [fidelity(t) for t in told]}
                 if (pruned == "fidelity" or getattr(searcher, "wants_fidelities",
                                                     False))  # e.g. Optuna's samplers
                 and takes_fidelities(searcher) else {})
        searcher.tell([t.config for t in told],
                      [told_value(t, searcher, objectives, pruned) for t in told], **extra)


def fidelity(trial: TrialRecord) -> float:
    """The fraction of its step budget a finished trial trained (1 unless pruned)."""
    if trial.status != "pruned":
        return 1.0
    steps = trial.metrics.get("steps", {}).get("mean")
    budget = trial.metrics.get("budget", {}).get("mean")
    if not steps or not budget:
        return 1.0
    return float(min(max(steps / budget, 1e-6), 1.0))


def takes_fidelities(searcher: Any) -> bool:
    """Whether ``searcher.tell`` accepts ``fidelities=`` (a user's searcher may not)."""
    return "fidelities" in inspect.signature(searcher.tell).parameters


def steps_trained(trial: TrialRecord) -> int:
    """Steps a finished trial trained, summed over its replicates."""
    per_seed = trial.metrics.get("steps", {}).get("per_seed")
    return int(sum(per_seed)) if per_seed else 0


def warm_trials(store: str | Store, name: str, space: Space, objective: str,
                config_costs: Any) -> list[TrialRecord]:
    """The finished trials of another study (of this or another store) as this study
    sees them: those inside ``space`` (the others left out, with a message), their
    metrics completed with this study's costs (``config_costs(config)``) and their
    objective read as ``objective``.

    Raises:
        ValueError: the spaces name other hyperparameters, or the other study
            records none of this study's objectives.
    """
    src = store if isinstance(store, Store) else Store(str(store), readonly=True)
    try:
        study = src.study(name)
        done = [t for t in src.trials(study["id"]) if t.status != "running"]
    finally:
        if src is not store:
            src.close()
    other = (study["spec"].get("experiment") or {}).get("space") or {}
    if set(other) != set(space.names):
        raise ValueError(
            f"warm start from study {name!r} of {src.path}: its space has "
            f"{sorted(other)}, this one {sorted(space.names)}; a warm start needs the "
            "same hyperparameter names")
    inside = [t for t in done if space.contains(t.config)]
    for t in inside:  # this study's objectives and costs, from the other's metrics
        t.config = space.validate(t.config)
        t.metrics = {**t.metrics, **{k: scalar(v) for k, v in config_costs(t.config).items()}}
        t.objective = t.metrics.get(objective, {}).get("mean")
        if t.status == "complete" and t.objective is None:
            t.status = "diverged"
    if done and not any(t.status == "complete" for t in inside):
        raise ValueError(f"warm start from study {name!r} of {src.path}: none of its "
                         f"{len(done)} finished trials is complete inside this space with "
                         f"a value of {objective!r}")
    if len(inside) < len(done):
        print(f"jaxtune: warm start: {len(done) - len(inside)} of {len(done)} trials of "
              f"study {name!r} lie outside this space and are left out; {len(inside)} "
              "told", file=sys.stderr, flush=True)
    return inside
