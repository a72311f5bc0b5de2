"""Checkpoints of running populations: the overhead per round against the checkpoint
interval, and the member-steps a kill loses with and without them.

One study (MNIST-1D MLP, ASHA, random search, one seed) is run once per interval,
in this process, one after the other, each with its own store; checkpoints never
change results (the script checks that every run stored the same trials). The
time each checkpoint took (snapshot of the populations, pickling, orbax write)
is divided by the rounds; a round's own time is the mean ``wall_s`` of the
stored rounds. Work lost: for every round ``r`` of the run, a kill during the
next round loses, for each trial running at ``r``, the steps it trained since
the last checkpoint at or before ``r`` if it was running then, else since its
start; without checkpoints, since its start (the chunk in flight is lost either
way and not counted). The table gives the mean over the kill moments. The first
checkpoint of a process also imports orbax (``s/ckpt`` is the mean, ``median``
leaves that out).

    python experiments/bench_checkpoint.py [--steps 1500] [--trials 48] [--population 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from jaxtune.devices import set_host_devices

set_host_devices()

import numpy as np  # noqa: E402

import jaxtune as jt  # noqa: E402
from jaxtune import zoo  # noqa: E402
from jaxtune.benchmarks.common import CpuMeter, commit  # noqa: E402
from jaxtune.study import Study  # noqa: E402


def run(exp, interval: int | None, args, folder: str) -> dict:
    saves: list[tuple[int, float]] = []
    original = Study._save_checkpoint

    def timed(self, pool, records, state):
        t0 = time.perf_counter()
        original(self, pool, records, state)
        saves.append((state.round - 1, time.perf_counter() - t0))

    Study._save_checkpoint = timed
    try:
        store = os.path.join(folder, f"every{interval}.db")
        study = Study(exp, searcher="random", scheduler="asha", population=args.population,
                      store=store, seed=0, top_k=0, verbose=False, progress=False,
                      objective="val_accuracy", checkpoint_rounds=interval,
                      checkpoint_seconds=None, programs=args.programs)
        with CpuMeter() as meter:
            t0 = time.perf_counter()
            study.run(trials=args.trials)
            wall = time.perf_counter() - t0
    finally:
        Study._save_checkpoint = original
    trials = study.store.trials(study.study_id)
    rounds = study.store.batches(study.study_id)
    return {"interval": interval, "saves": saves, "trials": trials, "rounds": rounds,
            "wall_s": wall, "contention": meter.contention}


def lost_steps(trials, n_rounds: int, checkpoints: list[int], eval_every: int) -> float:
    """Mean member-steps a resume retrains after a kill during round r+1, over r."""
    lost = []
    for r in range(n_rounds):
        last = max((c for c in checkpoints if c <= r), default=None)
        total = 0
        for t in trials:
            steps = np.asarray(t.curves.get("steps_done") or [[]], float)  # seeds x evals
            n = steps.shape[1]
            start, end = t.batch, t.batch + n - 1  # the rounds it trained in
            if not start <= r < end:  # not running after round r
                continue
            done = steps[:, r - start].sum()
            if last is not None and last >= start:
                done -= steps[:, last - start].sum()
            total += done
        lost.append(total)
    return float(np.mean(lost)) if lost else 0.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--intervals", type=int, nargs="+", default=[0, 1, 2, 5, 10],
                   help="checkpoint every N rounds (0: no checkpoints)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    exp = zoo.mnist1d_mlp(steps=args.steps, eval_every=args.eval_every)
    args.programs = jt.Programs(exp)
    folder = tempfile.mkdtemp(prefix="bench-checkpoint-")
    runs = [run(exp, k or None, args, folder) for k in args.intervals]
    ref = [(t.index, t.config, t.status, t.objective) for t in runs[0]["trials"]]
    same = all([(t.index, t.config, t.status, t.objective) for t in r["trials"]] == ref
               for r in runs)
    rows = []
    base_lost = None
    for r in runs:
        n = len(r["rounds"])
        round_s = float(np.mean([b["wall_s"] for b in r["rounds"]]))
        ckpt_s = sum(s for _, s in r["saves"])
        lost = lost_steps(r["trials"], n, [c for c, _ in r["saves"]], args.eval_every)
        base_lost = lost if r["interval"] is None else base_lost
        rows.append({"interval": r["interval"], "rounds": n, "checkpoints": len(r["saves"]),
                     "s_per_checkpoint": ckpt_s / max(len(r["saves"]), 1),
                     "median_s_per_checkpoint": float(np.median([s for _, s in r["saves"]]))
                     if r["saves"] else 0.0,
                     "round_s": round_s, "overhead_per_round_s": ckpt_s / n,
                     "overhead_pct": 100 * ckpt_s / n / round_s,
                     "lost_member_steps": lost, "wall_s": r["wall_s"],
                     "contention": r["contention"]})
    print(f"checkpoints of running populations: mnist1d-mlp, ASHA, population "
          f"{args.population}, {args.trials} trials of {args.steps} steps, chunk "
          f"{args.eval_every} steps; commit {commit()}; same stored trials in every run: {same}")
    print(f"{'every':>6} {'ckpts':>6} {'s/ckpt':>8} {'median':>7} {'round s':>8} "
          f"{'overhead/round':>15} "
          f"{'member-steps lost':>18} {'vs none':>8} {'busy':>5}")
    for row in rows:
        every = "none" if row["interval"] is None else f"{row['interval']} rd"
        vs = row["lost_member_steps"] / base_lost if base_lost else float("nan")
        print(f"{every:>6} {row['checkpoints']:>6} {row['s_per_checkpoint']:>8.3f} "
              f"{row['median_s_per_checkpoint']:>7.3f} "
              f"{row['round_s']:>8.3f} {row['overhead_per_round_s'] * 1e3:>8.1f} ms "
              f"{row['overhead_pct']:>4.0f}% {row['lost_member_steps']:>18,.0f} {vs:>8.2f} "
              f"{row['contention']:>5.0%}")
    print("busy: CPU time of other processes during the run, as a share of the machine "
          "(a shared machine; seconds are only comparable within one run)", file=sys.stderr)
    if args.json:
        print(json.dumps({"bench": "checkpoint", "commit": commit(), "same_results": same,
                          "steps": args.steps, "trials": args.trials,
                          "population": args.population, "rows": rows}))


if __name__ == "__main__":
    main()
