"""What the loggers cost a study: seconds inside each logger per round, against the round.

One study of the built-in MNIST-1D MLP (ASHA, population ``--population``) runs
with the TensorBoard and MLflow loggers attached, each wrapped in a timer; the
same study (same seed, same trials) runs again without loggers, side by side.
Printed: per round, the mean and max seconds spent in each logger's ``log``
(after the round's commit), the mean round (the store's ``wall_s``), the
loggers' share of it, the seconds ``close`` waited (MLflow's writer thread
draining its queue), and the two studies' wall times; then a JSON line.

    python experiments/bench_loggers.py                  # 64 trials, population 32
    python experiments/bench_loggers.py --trials 32 --population 16 --steps 300 --eval-every 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

import jaxtune as jt
from jaxtune.benchmarks.common import CpuMeter, commit


class Timed(jt.loggers.Logger):
    """A logger and the seconds each of its calls took."""

    def __init__(self, inner: Any):
        self.inner, self.open_s, self.log_s, self.close_s = inner, 0.0, [], 0.0

    def open(self, study: Any) -> None:
        t = time.perf_counter()
        self.inner.open(study)
        self.open_s = time.perf_counter() - t

    def log(self, trials: Any) -> None:
        t = time.perf_counter()
        self.inner.log(trials)
        self.log_s.append(time.perf_counter() - t)

    def close(self) -> None:
        t = time.perf_counter()
        self.inner.close()
        self.close_s = time.perf_counter() - t


def run(args: argparse.Namespace, loggers: list[Any], d: str, name: str) -> dict[str, Any]:
    exp, objective, direction = jt.zoo.load("mnist1d-mlp", steps=args.steps,
                                            eval_every=args.eval_every)
    study = jt.Study(exp, searcher="random", scheduler="asha", population=args.population,
                     store=os.path.join(d, f"{name}.db"), objective=objective,
                     direction=direction, seed=0, top_k=0, verbose=False, progress=False,
                     loggers=loggers)
    t = time.perf_counter()
    result = study.run(trials=args.trials)
    wall = time.perf_counter() - t
    rounds = [b["wall_s"] for b in study.store.batches(study.study_id)]
    return {"wall_s": wall, "rounds": len(rounds), "round_s": float(np.mean(rounds)),
            "trials": len(result.trials), "metrics_per_trial": len(
                [k for k in result.trials[0].curves if k not in ("step", "steps_done")])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--steps", type=int, default=1500, help="steps per trial")
    p.add_argument("--eval-every", type=int, default=250, help="steps per round")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    d = tempfile.mkdtemp(prefix="bench_loggers_")
    tb = Timed(jt.loggers.TensorBoard(os.path.join(d, "tb")))
    ml = Timed(jt.loggers.MLflow(f"sqlite:///{d}/mlflow.db"))
    with CpuMeter() as meter:
        base = run(args, [], d, "plain")  # also compiles: the logged run reuses the programs
        base = run(args, [], d, "plain2")
        logged = run(args, [tb, ml], d, "logged")
    rows = []
    for label, t in (("tensorboard", tb), ("mlflow (sqlite)", ml)):
        rows.append({"logger": label, "open_s": t.open_s, "rounds": len(t.log_s),
                     "log_mean_s": float(np.mean(t.log_s)), "log_max_s": float(np.max(t.log_s)),
                     "share_of_round": float(np.mean(t.log_s)) / logged["round_s"],
                     "close_s": t.close_s})
    print(f"commit {commit()}; contention {meter.contention:.2f} (other processes' share of "
          f"the {os.cpu_count()} CPUs); {logged['trials']} trials, population "
          f"{args.population}, {logged['rounds']} rounds, "
          f"{logged['metrics_per_trial']} curves per trial")
    print(f"{'logger':<18}{'open s':>8}{'log/round ms':>14}{'max ms':>9}{'of round':>10}"
          f"{'close s':>9}")
    for r in rows:
        print(f"{r['logger']:<18}{r['open_s']:>8.2f}{1e3 * r['log_mean_s']:>14.1f}"
              f"{1e3 * r['log_max_s']:>9.1f}{100 * r['share_of_round']:>9.1f}%"
              f"{r['close_s']:>9.2f}")
    print(f"mean round {logged['round_s']:.3f} s with loggers (their log calls come after it); "
          f"study wall {logged['wall_s']:.1f} s with loggers, {base['wall_s']:.1f} s without")
    print(json.dumps({"bench": "loggers", "commit": commit(), "contention": meter.contention,
                      "argv": sys.argv[1:], "rows": rows, "logged": logged, "plain": base}))


if __name__ == "__main__":
    main()
