"""Seconds from launch to a target validation accuracy: jaxtune against Optuna done right.

    python experiments/time_to_target.py                 # 5 seeds, cold and warm caches
    python experiments/time_to_target.py --seeds 1 --cap 90

Both sides tune the built-in ``mnist1d-mlp`` (same space, 1000-step budget,
250-step chunks, same validation split) and stop when a *complete* trial reaches
``--target`` validation accuracy (default 0.66). Each run is a fresh process;
its time counts from just before the process starts (Python start-up, imports,
data, compiles and training all included).

* **jaxtune**: ``jaxtune run mnist1d-mlp --steps 1000 --target 0.66`` (the default
  main job: ASHA, 16 members per bucket).
* **Optuna**: :mod:`jaxtune.benchmarks.optuna_side`: TPE with ``constant_liar``,
  the median pruner, the chunk jitted once per (optimizer, power-of-two batch
  capacity), ``n_jobs=2``.

The sides run one after the other, alternating which goes first; per seed each
side runs with an empty compilation cache (**cold**) and again with the cache
that run filled (**warm**). The last line is JSON with
``time_to_target_speedup`` (median Optuna seconds / median jaxtune seconds, warm)
and ``time_to_target_speedup_cold``. A run that misses the target within
``--cap`` seconds counts as ``--cap`` (the medians say so with ``>``).
About 10-15 minutes on a 2-core CPU with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


def jaxtune_side(seed: int, cache: str, args: argparse.Namespace, work: str) -> dict[str, Any]:
    """One ``jaxtune run`` in a fresh process; seconds to the target from the store."""
    store = os.path.join(work, f"jaxtune-{seed}-{len(os.listdir(work))}.db")
    cmd = [sys.executable, "-m", "jaxtune", "run", args.experiment, "--steps", str(args.steps),
           "--scheduler", args.scheduler, "--population", str(args.population),
           "--searcher", args.searcher, "--seed", str(seed), "--target", str(args.target),
           "--time-budget", str(args.cap), "--final-seeds", "0", "--store", store,
           "--no-progress", "--quiet", "--json"]
    env = {**os.environ, "JAXTUNE_COMPILATION_CACHE": cache}
    launched = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jaxtune run failed:\n{proc.stderr[-3000:]}")
    from jaxtune.store import Store

    with Store(store, readonly=True) as st:
        sid = st.study("default")["id"]
        trials = st.trials(sid)
    done = [t for t in trials if t.status == "complete" and t.objective is not None]
    hits = [t.finished for t in done if t.objective >= args.target]
    compiles = json.loads(proc.stdout.strip().splitlines()[-1])["compiles"]
    member_steps = sum(sum(t.metrics.get("steps", {}).get("per_seed", [0]))
                       for t in trials if t.status != "running")
    return {"seconds": min(hits) - launched if hits else None,
            "best": max((t.objective for t in done), default=None), "trials": len(trials),
            "complete": len(done), "pruned": sum(t.status == "pruned" for t in trials),
            "compiles": compiles, "member_steps": member_steps,
            "process_s": time.time() - launched}


def optuna_side(seed: int, cache: str, args: argparse.Namespace) -> dict[str, Any]:
    """One Optuna study in a fresh process (see :mod:`jaxtune.benchmarks.optuna_side`)."""
    launched = time.time()
    request = {"seed": seed, "target": args.target, "time_budget": args.cap,
               "started": launched, "cache": cache, "experiment": args.experiment,
               "steps": args.steps, "n_jobs": 2}
    proc = subprocess.run([sys.executable, "-m", "jaxtune.benchmarks.optuna_side",
                           json.dumps(request)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"optuna side failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = out["reached_at"] - launched if out["reached_at"] else None
    out["process_s"] = time.time() - launched
    return out


def _median(runs: list[dict[str, Any]], cap: float) -> tuple[float, bool]:
    """Median seconds (a miss counts as ``cap``) and whether a miss reaches the median."""
    secs = sorted(r["seconds"] if r["seconds"] is not None else cap for r in runs)
    med = statistics.median(secs)
    return med, med >= cap


def _fmt(value: float, censored: bool) -> str:
    return f">{value:.0f}" if censored else f"{value:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--target", type=float, default=0.66)
    p.add_argument("--cap", type=float, default=150.0, help="seconds per run")
    p.add_argument("--experiment", default="mnist1d-mlp")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--scheduler", default="asha")
    p.add_argument("--searcher", default="bayes")
    p.add_argument("--sides", default="optuna,jaxtune")
    p.add_argument("--json-out", default=None, help="also write every run to this file")
    args = p.parse_args()
    from jaxtune.benchmarks.common import commit

    sides = args.sides.split(",")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.seeds):
            order = sides if seed % 2 == 0 else sides[::-1]
            caches = {side: os.path.join(work, f"cache-{side}-{seed}") for side in sides}
            for cache_state in ("cold", "warm"):
                for side in order:
                    if side == "jaxtune":
                        r = jaxtune_side(seed, caches[side], args, work)
                    else:
                        r = optuna_side(seed, caches[side], args)
                    r.update(seed=seed, side=side, cache=cache_state)
                    runs.setdefault((side, cache_state), []).append(r)
                    secs = "missed" if r["seconds"] is None else f"{r['seconds']:.1f}s"
                    print(f"seed {seed} {side:8s} {cache_state}: target {secs}, best "
                          f"{r['best']}, {r['trials']} trials ({r['pruned']} pruned), "
                          f"{r['compiles']} compiles", file=sys.stderr, flush=True)
    rows, medians = [], {}
    print(f"\nseconds from launch to a complete trial with val accuracy >= {args.target} "
          f"({args.experiment}, {args.steps} steps, {args.seeds} seeds, cap {args.cap:.0f}s)")
    print(f"{'side':10s}{'cache':7s}{'median s':>10s}{'min':>8s}{'max':>8s}{'reached':>9s}"
          f"{'trials':>8s}{'pruned':>8s}{'compiles':>9s}{'best':>8s}")
    for (side, cache_state), rs in runs.items():
        med, censored = _median(rs, args.cap)
        medians[(side, cache_state)] = (med, censored)
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        row = {"side": side, "cache": cache_state, "median_s": med, "censored": censored,
               "reached": len(secs), "runs": len(rs),
               "trials": statistics.median(r["trials"] for r in rs),
               "pruned": statistics.median(r["pruned"] for r in rs),
               "compiles": statistics.median(r["compiles"] for r in rs),
               "best": statistics.median(r["best"] or 0.0 for r in rs)}
        rows.append(row)
        print(f"{side:10s}{cache_state:7s}{_fmt(med, censored):>10s}"
              f"{min(secs, default=float('nan')):8.1f}{max(secs, default=float('nan')):8.1f}"
              f"{len(secs):>5d}/{len(rs):<3d}{row['trials']:8.0f}{row['pruned']:8.0f}"
              f"{row['compiles']:9.0f}{row['best']:8.4f}")

    def speedup(cache_state: str) -> float | None:
        if ("optuna", cache_state) not in medians or ("jaxtune", cache_state) not in medians:
            return None
        return medians[("optuna", cache_state)][0] / medians[("jaxtune", cache_state)][0]

    result = {"benchmark": "time_to_target", "commit": commit(), "target": args.target,
              "seeds": args.seeds, "cap_s": args.cap, "experiment": args.experiment,
              "steps": args.steps, "population": args.population, "scheduler": args.scheduler,
              "time_to_target_speedup": speedup("warm"),
              "time_to_target_speedup_cold": speedup("cold"), "rows": rows}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**result, "runs": [r for rs in runs.values() for r in rs]}, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
