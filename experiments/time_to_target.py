"""Seconds and member-steps from launch to a target: jaxtune against Optuna done right.

    python experiments/time_to_target.py                          # 10 seeds, two tasks
    python experiments/time_to_target.py --seeds 2 --tasks mnist1d-mlp:0.66:1000

Per task (``EXPERIMENT:TARGET:STEPS``; default the main job's ``mnist1d-mlp`` to
validation accuracy 0.66 with 1000-step trials, and the 2-D CNN ``digits-cnn`` to
0.97 with 600-step trials) both sides tune the same space with the same chunks
and validation split, and stop when a *complete* trial reaches the target. Each
run is a fresh process; its time counts from just before the process starts
(Python start-up, imports, data, compiles and training all included).

* **jaxtune**: ``jaxtune run EXPERIMENT --steps STEPS --target TARGET`` (the
  default main job's settings: Bayesian search, ASHA, ``--population auto``), plus
  ``--jaxtune-args``. With ``--population auto`` the population size is
  measured once per task before the seeds (``jaxtune bench population
  EXPERIMENT``, what a user's first run on a machine does; its seconds are
  reported apart), so a **cold** run is an empty compilation cache on a
  machine whose sizes are known.
* **Optuna**: :mod:`jaxtune.benchmarks.optuna_side`: TPE with ``constant_liar``,
  the median pruner, the chunk jitted once per (optimizer, power-of-two batch
  capacity), ``n_jobs=2``.

The sides run one after the other, alternating which goes first; per seed each
side runs with an empty compilation cache (**cold**) and again with the cache
that run filled (**warm**). Besides seconds, each side reports the
**member-steps** trained when the target was reached (all trials, running ones
included: hardware-independent) and jaxtune its synchronous **rounds** (on an
accelerator a round of P members costs about one member's chunk). The last
line is JSON with, per task, ``time_to_target_speedup`` (median Optuna seconds /
median jaxtune seconds, warm), ``time_to_target_speedup_cold`` and
``member_steps_ratio`` (median jaxtune member-steps / median Optuna
member-steps, warm), and the machine's contention. A run that misses the target
within ``--cap`` seconds counts as ``--cap`` (the medians say so with ``>``).
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

#: The default tasks: (experiment, validation accuracy target, steps per trial).
TASKS = ("mnist1d-mlp:0.66:1000", "digits-cnn:0.97:600")


def jaxtune_side(seed: int, cache: str, args: argparse.Namespace, work: str) -> dict[str, Any]:
    """One ``jaxtune run`` in a fresh process; seconds to the target from the store."""
    store = os.path.join(work, f"jaxtune-{seed}-{len(os.listdir(work))}.db")
    cmd = [sys.executable, "-m", "jaxtune", "run", args.experiment, "--steps", str(args.steps),
           "--scheduler", args.scheduler, "--population", str(args.population),
           "--searcher", args.searcher, "--seed", str(seed), "--target", str(args.target),
           "--time-budget", str(args.cap), "--final-seeds", "0", "--store", store,
           "--no-progress", "--quiet", "--json", *args.jaxtune_args.split()]
    env = {**os.environ, "JAXTUNE_COMPILATION_CACHE": cache,
           "JAXTUNE_CACHE_DIR": os.path.join(work, f"sizing-{args.experiment}")}
    launched = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jaxtune run failed:\n{proc.stderr[-3000:]}")
    from jaxtune.store import Store

    with Store(store, readonly=True) as st:
        row = st.study("default")
        sid, info = row["id"], row["info"] or {}
        trials = st.trials(sid)
        rounds = len(st.batches(sid))
    done = [t for t in trials if t.status == "complete" and t.objective is not None]
    hits = [t.finished for t in done if t.objective >= args.target]
    compiles = json.loads(proc.stdout.strip().splitlines()[-1])["compiles"]
    # the study stops at the round that reached the target: every trial's steps so far
    # (running ones included) are the work it took
    member_steps = sum(sum(t.metrics.get("steps", {}).get("per_seed") or [0]) for t in trials)
    return {"seconds": min(hits) - launched if hits else None,
            "best": max((t.objective for t in done), default=None), "trials": len(trials),
            "complete": len(done), "pruned": sum(t.status == "pruned" for t in trials),
            "compiles": compiles, "member_steps": member_steps, "rounds": rounds,
            "member_steps_to_target": member_steps if hits else None,
            "population": info.get("population"), "sizing_s": info.get("population_s"),
            "process_s": time.time() - launched}


def calibrate(args: argparse.Namespace, work: str) -> dict[str, Any]:
    """``jaxtune bench population EXPERIMENT`` once per task, into the sizing cache the
    jaxtune runs read (``--population auto``), on a compilation cache of its own."""
    env = {**os.environ, "JAXTUNE_CACHE_DIR": os.path.join(work, f"sizing-{args.experiment}"),
           "JAXTUNE_COMPILATION_CACHE": os.path.join(work, f"calibration-{args.experiment}")}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "jaxtune", "bench", "population",
                           args.experiment], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jaxtune bench population failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": time.time() - t0, "recommended": out["recommended"],
            "contention": out["contention"],
            "rates": {r["size"]: r["member_steps_per_s"] for r in out["rows"]}}


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


def _median(runs: list[dict[str, Any]], key: str, cap: float) -> tuple[float, bool]:
    """Median of ``key`` (a miss counts as ``cap``) and whether a miss reaches the median."""
    vals = sorted(r[key] if r[key] is not None else cap for r in runs)
    med = statistics.median(vals)
    return med, med >= cap


def _fmt(value: float, censored: bool) -> str:
    return f">{value:.0f}" if censored else f"{value:.1f}"


def parse_task(text: str) -> tuple[str, float, int]:
    """``"mnist1d-mlp:0.66:1000"`` -> (experiment, target, steps)."""
    name, target, steps = [*text.split(":"), None, None][:3]
    if target is None or steps is None:
        raise SystemExit(f"--tasks wants EXPERIMENT:TARGET:STEPS, got {text!r}")
    return name, float(target), int(steps)


def run_task(args: argparse.Namespace, sides: list[str], work: str) -> dict[str, Any]:
    """Every seed of one task; its table and JSON fields."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    calibration = (calibrate(args, work) if args.population == "auto" and "jaxtune" in sides
                   else None)
    if calibration:
        print(f"{args.experiment}: population sizes measured once in "
              f"{calibration['seconds']:.1f}s (member-steps/s {calibration['rates']}, "
              f"contention {calibration['contention']:.2f}): population "
              f"{calibration['recommended']}", file=sys.stderr, flush=True)
    for seed in range(args.seeds):
        order = sides if seed % 2 == 0 else sides[::-1]
        caches = {side: os.path.join(work, f"cache-{args.experiment}-{side}-{seed}")
                  for side in sides}
        for cache_state in ("cold", "warm"):
            for side in order:
                if side == "jaxtune":
                    r = jaxtune_side(seed, caches[side], args, work)
                else:
                    r = optuna_side(seed, caches[side], args)
                r.update(seed=seed, side=side, cache=cache_state)
                runs.setdefault((side, cache_state), []).append(r)
                secs = "missed" if r["seconds"] is None else f"{r['seconds']:.1f}s"
                print(f"{args.experiment} seed {seed} {side:8s} {cache_state}: target {secs}, "
                      f"best {r['best']}, {r['trials']} trials ({r['pruned']} pruned), "
                      f"{r['member_steps_to_target']} member-steps, {r['compiles']} compiles"
                      + (f", population {r['population']} (sizing {r['sizing_s'] or 0:.1f}s)"
                         if side == "jaxtune" else ""),
                      file=sys.stderr, flush=True)
    rows, medians = [], {}
    cap_steps = max(r["member_steps"] for rs in runs.values() for r in rs)
    print(f"\n{args.experiment}: from launch to a complete trial with val accuracy >= "
          f"{args.target} ({args.steps}-step trials, {args.seeds} seeds, cap {args.cap:.0f}s; "
          "medians, a miss counts as the cap)")
    print(f"{'side':10s}{'cache':7s}{'median s':>10s}{'min':>8s}{'max':>8s}{'reached':>9s}"
          f"{'member-steps':>14s}{'trials':>8s}{'rounds':>8s}{'compiles':>9s}{'best':>8s}"
          f"{'pop':>5s}{'sizing s':>9s}")
    for (side, cache_state), rs in runs.items():
        med, censored = _median(rs, "seconds", args.cap)
        steps, _ = _median(rs, "member_steps_to_target", cap_steps)
        medians[(side, cache_state)] = (med, steps)
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        row = {"side": side, "cache": cache_state, "median_s": med, "censored": censored,
               "reached": len(secs), "runs": len(rs), "member_steps": steps,
               "trials": statistics.median(r["trials"] for r in rs),
               "rounds": statistics.median(r.get("rounds") or 0 for r in rs),
               "pruned": statistics.median(r["pruned"] for r in rs),
               "compiles": statistics.median(r["compiles"] for r in rs),
               "population": statistics.median(r.get("population") or 0 for r in rs),
               "sizing_s": statistics.median(r.get("sizing_s") or 0.0 for r in rs),
               "best": statistics.median(r["best"] or 0.0 for r in rs)}
        rows.append(row)
        rounds = f"{row['rounds']:8.0f}" if side == "jaxtune" else f"{'-':>8s}"
        print(f"{side:10s}{cache_state:7s}{_fmt(med, censored):>10s}"
              f"{min(secs, default=float('nan')):8.1f}{max(secs, default=float('nan')):8.1f}"
              f"{len(secs):>5d}/{len(rs):<3d}{steps:14.0f}{row['trials']:8.0f}{rounds}"
              f"{row['compiles']:9.0f}{row['best']:8.4f}"
              + (f"{row['population']:5.0f}{row['sizing_s']:9.1f}" if side == "jaxtune" else ""))

    def ratio(cache_state: str, index: int) -> float | None:
        if ("optuna", cache_state) not in medians or ("jaxtune", cache_state) not in medians:
            return None
        a, b = medians[("optuna", cache_state)][index], medians[("jaxtune", cache_state)][index]
        return a / b if index == 0 else b / a

    return {"experiment": args.experiment, "target": args.target, "steps": args.steps,
            "time_to_target_speedup": ratio("warm", 0),
            "time_to_target_speedup_cold": ratio("cold", 0),
            "member_steps_ratio": ratio("warm", 1), "rows": rows, "calibration": calibration,
            "runs": [r for rs in runs.values() for r in rs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS),
                   help="EXPERIMENT:TARGET:STEPS (validation accuracy target, trial steps)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--cap", type=float, default=150.0, help="seconds per run")
    p.add_argument("--population", default="auto",
                   help="jaxtune's --population (default auto: the sizes measured once per task)")
    p.add_argument("--scheduler", default="asha")
    p.add_argument("--searcher", default="bayes")
    p.add_argument("--jaxtune-args", default="", help="extra `jaxtune run` arguments")
    p.add_argument("--sides", default="optuna,jaxtune")
    p.add_argument("--json-out", default=None, help="also write every run to this file")
    args = p.parse_args()
    from jaxtune.benchmarks.common import CpuMeter, commit

    sides = args.sides.split(",")
    tasks = []
    with tempfile.TemporaryDirectory() as work, CpuMeter() as meter:
        for text in args.tasks:
            args.experiment, args.target, args.steps = parse_task(text)
            tasks.append(run_task(args, sides, work))
    result = {"benchmark": "time_to_target", "commit": commit(), "seeds": args.seeds,
              "cap_s": args.cap, "population": args.population, "scheduler": args.scheduler,
              "jaxtune_args": args.jaxtune_args, "contention": meter.contention,
              "tasks": [{k: v for k, v in t.items() if k != "runs"} for t in tasks]}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**result, "tasks": tasks}, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
