"""Warm starts on a real study: trials to a target, cold against warm-started.

    python experiments/warm_start.py                 # MNIST-1D MLP, 300 steps, 3 seeds
    python experiments/warm_start.py --seeds 1 --trials 32

An *earlier* study (Bayesian, ``--earlier`` trials, its own seed) runs first; the
target is its best validation accuracy minus ``--margin``. Then, for each seed, two
Bayesian studies with the same settings run until a complete trial reaches the
target (or ``--trials`` trials): one from scratch, one told the earlier study's
trials first (``Study.warm_start``). Printed: the trials each finished before
reaching the target, a table and a JSON line. Every study shares one compiled
program cache, so only the first compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="mnist1d-mlp")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--earlier", type=int, default=32)
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--margin", type=float, default=0.0)
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jaxtune as jt
    from jaxtune.benchmarks.common import CpuMeter, commit

    exp, objective, direction = jt.zoo.load(args.experiment, steps=args.steps,
                                            eval_every=args.steps // 3)
    programs = jt.Programs(exp)
    kw = {"population": args.population, "top_k": 0, "verbose": False, "progress": False,
          "programs": programs, "objective": objective, "direction": direction}
    tmp = tempfile.mkdtemp()
    earlier = os.path.join(tmp, "earlier.db")
    with CpuMeter() as meter:
        first = jt.Study(exp, searcher="bayes", store=earlier, seed=1000, **kw).run(
            trials=args.earlier)
        target = first.ranked()[0].objective - args.margin
        print(f"earlier study: {args.earlier} trials, best {objective} "
              f"{first.ranked()[0].objective:.4f}; target {target:.4f}", flush=True)
        rows = []
        for seed in range(args.seeds):
            row = {"seed": seed}
            for mode in ("cold", "warm"):
                s = jt.Study(exp, searcher="bayes", store=None, seed=seed, **kw)
                if mode == "warm":
                    s.warm_start(earlier)
                r = s.run(trials=args.trials, target=target)
                reached = bool(r.ranked()) and (r.ranked()[0].objective >= target
                                                if direction == "maximize"
                                                else r.ranked()[0].objective <= target)
                row[mode] = len(r.finished) if reached else None
            rows.append(row)
            print(f"seed {seed}: trials to target cold {row['cold']}, warm {row['warm']}",
                  flush=True)
    def med(mode):
        return statistics.median([r[mode] if r[mode] is not None else args.trials + 1
                                  for r in rows])
    print(f"\n{'':<6}{'median trials to target':>26}  (not reached counts as {args.trials + 1})")
    for mode in ("cold", "warm"):
        print(f"{mode:<6}{med(mode):>26}")
    print(f"machine contention {meter.contention:.2f}; commit {commit()}")
    print(json.dumps({"experiment": args.experiment, "steps": args.steps, "target": target,
                      "earlier_trials": args.earlier, "population": args.population,
                      "rows": rows, "median_cold": med("cold"), "median_warm": med("warm"),
                      "contention": meter.contention, "commit": commit()}))


if __name__ == "__main__":
    main()
