"""Trial schedulers at an equal member-step budget: FIFO, median, ASHA, Hyperband, PBT.

    python experiments/early_stopping.py                  # MLP and CNN, 5 seeds
    python experiments/early_stopping.py --experiments mnist1d-mlp --seeds 2

For each built-in experiment and seed, one Bayesian study per trial scheduler
gets the same budget of member-steps (``--budget`` full-length trials' worth,
``Study.run(member_steps=...)``); population-based training trains that many
members at once. ASHA also runs with a third of the budget. Each study then
re-trains its best configuration on fresh seeds and evaluates it on the test
split (``top_k=1``). Printed: the test accuracy of the chosen configuration,
member-steps, wall time and compiles (medians over seeds); a figure of the
best validation accuracy so far against member-steps and against wall time
(``experiments/figures/early_stopping_<experiments>.png``); and a last JSON line with

* ``asha_member_steps_ratio``: ASHA's member-steps at a third of the budget over
  FIFO's at the full budget;
* ``asha_test_gap_points``: the median over seeds of FIFO's test accuracy minus
  ASHA's (one third of the budget), in points.

Every study shares one compiled-program cache, so compile counts after the
first study of a bucket are zero. About 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

SCHEDULERS = ("fifo", "median", "asha", "hyperband", "pbt")
STEPS = {"mnist1d-mlp": 1000, "mnist1d-cnn": 500}  # a trial's default budget
FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")


def run_one(jt: Any, exp: Any, programs: Any, scheduler: str, seed: int, budget: int,
            population: int) -> dict[str, Any]:
    """One study; its chosen configuration's test accuracy and best-so-far traces."""
    t0 = time.perf_counter()
    study = jt.Study(exp, searcher="bayes", scheduler=scheduler, store=None, seed=seed,
                     population=budget // exp.steps if scheduler == "pbt" else population,
                     top_k=1, final_seeds=2, programs=programs, verbose=False,
                     progress=False)
    created = time.time()
    result = study.run(member_steps=budget)
    trials = sorted((t for t in result.trials if t.status != "running"),
                    key=lambda t: (t.finished, t.index))
    steps, best, trace = 0, 0.0, []
    for t in trials:
        steps += sum(t.metrics["steps"]["per_seed"])
        if t.status == "complete" and t.objective is not None:
            best = max(best, t.objective)
        trace.append((steps, t.finished - created, best))
    final = result.finals[0] if result.finals else {}
    return {"scheduler": scheduler, "seed": seed, "test_accuracy": final.get("test_accuracy"),
            "val_accuracy": best,
            "member_steps": steps, "wall_s": time.perf_counter() - t0,
            "search_s": result.wall_s, "compiles": result.compiles, "trials": len(trials),
            "pruned": sum(t.status == "pruned" for t in trials), "trace": trace}


def figure(runs: list[dict[str, Any]], experiments: list[str], path: str) -> None:
    """Best validation accuracy so far against member-steps and wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(experiments), 2, figsize=(10, 3.6 * len(experiments)),
                             squeeze=False)
    colors = dict(zip((*SCHEDULERS, "asha/3"), plt.rcParams["axes.prop_cycle"].by_key()
                      ["color"]))
    for row, name in enumerate(experiments):
        for col, (axis, label) in enumerate(((0, "member-steps"), (1, "wall seconds"))):
            ax = axes[row][col]
            for label_s in colors:
                mine = [r for r in runs if r["experiment"] == name and r["label"] == label_s]
                for i, r in enumerate(mine):
                    xs = [p[axis] for p in r["trace"]]
                    ys = [p[2] for p in r["trace"]]
                    ax.step(xs, ys, where="post", color=colors[label_s], alpha=0.7, lw=1,
                            label=label_s if i == 0 else None)
            ax.set_xlabel(label)
            ax.set_ylabel("best val accuracy so far")
            ax.set_title(name)
            lows = [p[2] for r in runs if r["experiment"] == name for p in r["trace"][-1:]]
            if lows:
                ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows) + 0.02))
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="mnist1d-mlp,mnist1d-cnn")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None,
                   help="a trial's full budget (default: 1000 for the MLP, 500 for the CNN)")
    p.add_argument("--budget", type=int, default=32, help="full-length trials' worth of steps")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--figure", default=None,
                   help="default experiments/figures/early_stopping_<experiments>.png")
    args = p.parse_args()
    from jaxtune.devices import set_host_devices

    set_host_devices()
    import jaxtune as jt
    from jaxtune.benchmarks.common import commit

    experiments = args.experiments.split(",")
    args.figure = args.figure or os.path.join(
        FIGURES, f"early_stopping_{'_'.join(n.replace('-', '_') for n in experiments)}.png")
    runs = []
    for name in experiments:
        exp, _, _ = jt.zoo.load(name, steps=args.steps or STEPS.get(name, 1000))
        programs = jt.Programs(exp)
        budget = args.budget * exp.steps
        plan = [(s, s, budget) for s in SCHEDULERS] + [("asha", "asha/3", budget // 3)]
        for seed in range(args.seeds):
            for scheduler, label, steps in plan:
                r = run_one(jt, exp, programs, scheduler, seed, steps, args.population)
                r.update(experiment=name, label=label)
                runs.append(r)
                print(f"{name} seed {seed} {label:9s}: test {r['test_accuracy']:.4f}, "
                      f"{r['member_steps']} member-steps, {r['trials']} trials "
                      f"({r['pruned']} pruned), {r['wall_s']:.1f}s, {r['compiles']} compiles",
                      file=sys.stderr, flush=True)
    figure(runs, experiments, args.figure)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    table, summary = [], {}
    print(f"\nmedians over {args.seeds} seeds; budget: {args.budget} full-length trials' "
          "member-steps (asha/3: a third); test accuracy of the chosen configuration "
          "(2 fresh seeds)")
    print(f"{'experiment':13s}{'scheduler':11s}{'test acc':>9s}{'val acc':>9s}"
          f"{'member-steps':>14s}{'trials':>8s}{'pruned':>8s}{'wall s':>8s}{'compiles':>9s}")
    for name in experiments:
        for label in (*SCHEDULERS, "asha/3"):
            rows = [r for r in runs if r["experiment"] == name and r["label"] == label]
            row = {"experiment": name, "scheduler": label,
                   **{k: med(rows, k) for k in ("test_accuracy", "val_accuracy",
                                                "member_steps", "trials", "pruned", "wall_s",
                                                "compiles")}}
            table.append(row)
            print(f"{name:13s}{label:11s}{row['test_accuracy']:9.4f}{row['val_accuracy']:9.4f}"
                  f"{row['member_steps']:14.0f}{row['trials']:8.0f}{row['pruned']:8.0f}"
                  f"{row['wall_s']:8.1f}{row['compiles']:9.0f}")
        fifo = {r["seed"]: r for r in runs if r["experiment"] == name and r["label"] == "fifo"}
        asha = {r["seed"]: r for r in runs if r["experiment"] == name and r["label"] == "asha/3"}
        summary[name] = {
            "asha_member_steps_ratio": statistics.median(
                asha[s]["member_steps"] / fifo[s]["member_steps"] for s in fifo),
            "asha_test_gap_points": statistics.median(
                100 * (fifo[s]["test_accuracy"] - asha[s]["test_accuracy"]) for s in fifo)}
    first = summary[experiments[0]]
    print(f"figure: {os.path.relpath(args.figure)}")
    print(json.dumps({"benchmark": "early_stopping", "commit": commit(), "seeds": args.seeds,
                      "budget_trials": args.budget,
                      "population": args.population, **first, "per_experiment": summary,
                      "rows": table}))


if __name__ == "__main__":
    main()
