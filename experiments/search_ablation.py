"""What a study needs to reach a target: member-steps, trials and rounds per setting.

    python experiments/search_ablation.py                        # pruned policies
    python experiments/search_ablation.py --variants population=8 population=16 population=32
    python experiments/search_ablation.py --seeds 3 --target 0.65 --quick

Every variant runs the same Bayesian ASHA study of a built-in experiment
(default the main job's ``mnist1d-mlp`` with 1000-step trials) through the Python
API until a complete trial reaches ``--target`` validation accuracy (or
``--max-trials`` trials end), for ``--seeds`` study seeds, in one process with the
compiled programs shared (no start-up or compile counted). A variant is a
``Study`` keyword set on the command line (``pruned=fidelity``,
``population=8``, ``searcher=random`` …).

What it reports is **hardware-independent**: member-steps trained until the
target (replicates and trials still running included: the work done), trials
started, and synchronous rounds (on an accelerator a round of P members costs
about one member's chunk). Seconds are printed too, but on a shared CPU they
measure the machine as much as the setting. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import jaxtune as jt
from jaxtune.benchmarks.common import CpuMeter, commit


def parse_variant(text: str) -> dict[str, Any]:
    """``"pruned=fidelity,population=8"`` -> ``{"pruned": "fidelity", "population": 8}``."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_study(exp: jt.Experiment, objective: str, programs: dict[int, jt.Programs],
              options: dict[str, Any], seed: int, target: float,
              max_trials: int) -> dict[str, Any]:
    """One study to the target; what it took."""
    kw = {"searcher": "bayes", "scheduler": "asha", "population": 16, **options}
    pop = int(kw["population"])
    programs.setdefault(pop, jt.Programs(exp))
    study = jt.Study(exp, store=None, seed=seed, objective=objective, top_k=0,
                     verbose=False, progress=False, programs=programs[pop], **kw)
    t0 = time.perf_counter()
    result = study.run(trials=max_trials, target=target)
    wall = time.perf_counter() - t0
    done = [t for t in result.trials if t.status == "complete" and t.objective is not None]
    steps = sum(sum(t.metrics.get("steps", {}).get("per_seed") or [0]) for t in result.trials)
    return {"seed": seed, "reached": any(t.objective >= target for t in done),
            "member_steps": int(steps), "trials": len(result.trials),
            "rounds": len(study.store.batches(study.study_id)),
            "best": max((t.objective for t in done), default=None), "seconds": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="mnist1d-mlp")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--target", type=float, default=0.66)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--max-trials", type=int, default=160)
    p.add_argument("--variants", nargs="+",
                   default=["pruned=last", "pruned=fidelity", "pruned=exclude"])
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.max_trials, args.target = 200, 1, 16, 0.3
    exp, objective, _ = jt.zoo.load(args.experiment, steps=args.steps,
                                    **({"eval_every": 50} if args.quick else {}))
    programs: dict[int, jt.Programs] = {}
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    with CpuMeter() as meter:
        for seed in range(args.seeds):
            order = args.variants if seed % 2 == 0 else args.variants[::-1]
            for v in order:
                r = run_study(exp, objective, programs, parse_variant(v), seed, args.target,
                              args.max_trials)
                rows[v].append(r)
                print(f"seed {seed} {v:24s} reached={r['reached']} member_steps="
                      f"{r['member_steps']} trials={r['trials']} rounds={r['rounds']} "
                      f"{r['seconds']:.1f}s", file=sys.stderr, flush=True)
    summary = []
    print(f"\nto val accuracy {args.target} on {args.experiment} ({args.steps}-step trials, "
          f"{args.seeds} seeds; medians; a miss counts as its whole run)")
    print(f"{'variant':26s}{'reached':>8s}{'member-steps':>14s}{'trials':>8s}{'rounds':>8s}"
          f"{'seconds':>9s}")
    for v, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("member_steps", "trials", "rounds", "seconds")}
        reached = sum(r["reached"] for r in rs)
        summary.append({"variant": v, "reached": reached, "runs": len(rs), **med})
        print(f"{v:26s}{reached:>4d}/{len(rs):<3d}{med['member_steps']:14.0f}"
              f"{med['trials']:8.0f}{med['rounds']:8.0f}{med['seconds']:9.1f}")
    out = {"benchmark": "search_ablation", "commit": commit(), "experiment": args.experiment,
           "steps": args.steps, "target": args.target, "seeds": args.seeds,
           "contention": meter.contention, "variants": summary,
           "runs": {v: rs for v, rs in rows.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
