"""Small synthetic stores for the analysis and report tests: no training, milliseconds.

The objective rises with ``lr`` up to the top of its range, and two trials
sit near that edge (so the best trials are there: a boundary hit); it falls
with ``dropout``, and a little with ``schedule="constant"``; ``sgd`` diverges
above ``lr = 0.3``. Trials have two seeds, learning curves, batches and
timestamps; the top three have a final re-evaluation. Optional pruned and still-running trials.

Run as a script (``python report_stores.py PATH``) it builds an interrupted
store and exits without closing it, leaving the SQLite write-ahead log behind
as a killed study does.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from jaxtune.space import Choice, Int, Real, Space
from jaxtune.store import Store, TrialRecord

SPACE = Space(lr=Real(1e-4, 1.0, log=True), batch_size=Int(16, 256, log=True),
              dropout=Real(0.0, 0.5), schedule=Choice(["constant", "cosine"]),
              optimizer=Choice(["adamw", "sgd"], static=True))
STEPS = [10, 20, 30]
T0 = 1_700_000_000.0
EDGE = [{"lr": 0.95, "batch_size": 64, "dropout": 0.05, "schedule": "cosine", "optimizer": "adamw"},
        {"lr": 0.8, "batch_size": 32, "dropout": 0.1, "schedule": "cosine", "optimizer": "adamw"}]


def spec(name: str = "synthetic") -> dict:
    return {"experiment": {"name": name, "space": SPACE.spec(), "steps": 30, "eval_every": 10},
            "searcher": "random", "searcher_options": {}, "seeds": 2, "population": 32,
            "objective": "val_accuracy", "direction": "maximize", "seed": 0}


def value(config: dict, rng: np.random.Generator) -> float:
    p = SPACE.to_unit(config)
    return float(0.5 + 0.35 * p[0] - 0.25 * p[2] - 0.04 * (config["schedule"] == "constant")
                 + 0.01 * rng.normal())


def _trial(i: int, config: dict, batch: int, rng: np.random.Generator, status: str) -> TrialRecord:
    started = T0 + 3.0 * batch
    if status == "running":
        return TrialRecord(i, config, "running", seeds=[0, 1], batch=batch, started=started)
    finals = [value(config, rng) for _ in range(2)]
    curves = {"step": STEPS,
              "val_accuracy": [[f * (0.6 + 0.2 * k) for k in range(3)] for f in finals],
              "train_loss": [[2.0 / (1 + k) * (1.2 - f) for k in range(3)] for f in finals]}
    metrics = {"val_accuracy": {"mean": float(np.mean(finals)), "std": float(np.std(finals)),
                                "per_seed": finals},
               "steps": {"mean": 30.0, "std": 0.0, "per_seed": [30.0, 30.0]}}
    objective = metrics["val_accuracy"]["mean"]
    if status == "diverged":
        curves["val_accuracy"] = [[0.1, None, None]] * 2
        curves["train_loss"] = [[3.0, None, None]] * 2
        metrics["val_accuracy"] = {"mean": None, "std": None, "per_seed": [None, None]}
        metrics["steps"] = {"mean": 12.0, "std": 0.0, "per_seed": [12.0, 12.0]}
        objective = None
    elif status == "pruned":
        curves = {k: v if k == "step" else [s[:1] for s in v] for k, v in curves.items()}
        metrics["steps"] = {"mean": 10.0, "std": 0.0, "per_seed": [10.0, 10.0]}
        metrics["rung"] = {"mean": 0.0, "std": 0.0, "per_seed": [0.0, 0.0]}
        objective = None
    return TrialRecord(i, config, status, seeds=[0, 1], metrics=metrics, objective=objective,
                       curves=curves, batch=batch, started=started, finished=started + 3.0,
                       wall_s=3.0)


def build(path, *, n: int = 48, name: str = "default", seed: int = 0, pruned: int = 0,
          running: int = 0, finals: bool = True, per_batch: int = 16,
          diverge_above: float = 0.3, info: dict | None = None) -> Store:
    """Writes one synthetic study into the store at ``path`` and returns the open store."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    sid = store.open_study(name, spec(), info={"jaxtune_version": "0.1.0",
                                               "jax_version": "0.0-test", **(info or {})})
    configs = SPACE.sample(n + pruned + running, seed=seed)
    configs[1:1 + len(EDGE)] = EDGE[: max(0, n - 1)]  # the best trials sit at the lr edge
    trials = []
    for i, c in enumerate(configs):
        status = ("running" if i >= n + pruned else "pruned" if i >= n else
                  "diverged" if c["optimizer"] == "sgd" and c["lr"] > diverge_above else "complete")
        trials.append(_trial(i, c, i // per_batch, rng, status))
    store.add_trials(sid, trials)
    for b in sorted({t.batch for t in trials if t.status != "running"}):
        store.add_batch(sid, b, {"wall_s": 3.0, "compiles": 1, "trials": per_batch})
    if finals:
        done = sorted((t for t in trials if t.status == "complete"), key=lambda t: -t.objective)
        rows = []
        for rank, t in enumerate(done[:3]):
            v = [value(t.config, rng) for _ in range(3)]
            rows.append({"rank": rank, "trial": t.index, "config": t.config, "seeds": 3,
                         "status": "complete", "search_objective": t.objective,
                         "val_accuracy": float(np.mean(v)), "val_accuracy_std": float(np.std(v)),
                         "test_accuracy": float(np.mean(v)) - 0.01,
                         "test_accuracy_std": float(np.std(v))})
        store.set_finals(sid, rows)
    return store


if __name__ == "__main__":
    build(sys.argv[1], n=40, running=8, finals=False)
    os._exit(0)  # no close: the write-ahead log stays, as after a kill
