"""What a small batch costs in masked mode: the largest batch's rows, its own rows, buckets.

In masked mode (the default) one program covers every batch size. Three ways to
run it, side by side in one run:

``largest``
    ``Programs(experiment, own_batch=False)``: every member gathers the rows of
    the largest batch size in the space and weights only its own first
    ``batch_size`` (the engine before row capacities), so a batch-16 member pays
    for 256 rows.
``own``
    ``Programs(experiment)`` (the default): the program sorts its members by
    batch size, and each CPU group of members runs its steps at the smallest
    power-of-two row capacity that holds its batches (one program, one compile,
    whatever the mix of batch sizes).
``buckets``
    ``Experiment(batch_capacities=...)`` with power-of-two capacities: one program
    per capacity (a static split of the slots; only in the uniform rows).

Two measurements: populations whose members all have one batch size (16, 64,
256 by default), and one population of the main job's space
(``zoo.mnist1d_mlp``: batch sizes log-uniform in 16-256, every other traced
hyperparameter sampled too, one optimizer), ``largest`` against ``own``. Times
are the first call (with compile) and the best of ``--repeats`` steady calls,
the compared programs' steady calls interleaved.

``python -m jaxtune.benchmarks.capacities`` (also ``jaxtune bench capacities``)
prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["main", "measure", "measure_mixed"]


def _call(exp: Any, configs: list[dict[str, Any]], programs: Any) -> tuple[float, int]:
    """(seconds, programs compiled) of one population trained to the end."""
    import jaxtune as jt

    t0 = time.perf_counter()
    r = jt.train_population(exp, configs, programs=programs, evaluate_test=False,
                            verbose=False, progress=False)
    return time.perf_counter() - t0, r.compiles


def _side_by_side(runs: dict[str, tuple[Any, Any]], configs: list[dict[str, Any]],
                  repeats: int, steps: int) -> dict[str, dict[str, Any]]:
    """First call of each, then ``repeats`` rounds of one steady call each, interleaved."""
    out: dict[str, dict[str, Any]] = {}
    for label, (exp, programs) in runs.items():
        first, compiles = _call(exp, configs, programs)
        out[label] = {"first_s": first, "compiles": compiles, "steady": []}
    for _ in range(repeats):
        for label, (exp, programs) in runs.items():
            s, compiles = _call(exp, configs, programs)
            out[label]["steady"].append(s)
            out[label]["compiles"] += compiles
    for r in out.values():
        r["steady_s"] = min(r["steady"])
        r["member_steps_per_s"] = len(configs) * steps / r["steady_s"]
    return out


def _experiment(name: str, steps: int) -> Any:
    import jaxtune as jt

    base, _, _ = jt.zoo.load(name)
    return dataclasses.replace(base, steps=steps, eval_every=steps)


def measure(name: str, batch_sizes: Sequence[int], population: int, steps: int,
            repeats: int = 2) -> list[dict[str, Any]]:
    """One row per batch size, every member of it: ``largest``, ``own`` and ``buckets``."""
    import jaxtune as jt
    from jaxtune.benchmarks.optuna_side import pow2_capacities

    base = _experiment(name, steps)
    capped = dataclasses.replace(base, batch_capacities=pow2_capacities(base))
    config = base.space.sample(1, seed=0)[0] | {"optimizer": "adamw"}
    rows = []
    for b in batch_sizes:
        configs = [config | {"batch_size": b}] * population
        runs = {"largest": (base, jt.Programs(base, own_batch=False)),
                "own": (base, jt.Programs(base)),
                "buckets": (capped, jt.Programs(capped, own_batch=False))}
        row: dict[str, Any] = {"experiment": name, "batch_size": b, "population": population,
                               "steps": steps, **_side_by_side(runs, configs, repeats, steps)}
        row["own_x"] = row["largest"]["steady_s"] / row["own"]["steady_s"]
        row["buckets_x"] = row["largest"]["steady_s"] / row["buckets"]["steady_s"]
        rows.append(row)
    return rows


def measure_mixed(name: str, population: int, steps: int, repeats: int = 3,
                  seed: int = 0) -> dict[str, Any]:
    """One population sampled from the experiment's space (one optimizer bucket):
    ``largest`` against ``own``."""
    import jaxtune as jt

    base = _experiment(name, steps)
    configs = [c | {"optimizer": "adamw"} for c in base.space.sample(population, seed=seed)]
    batches = np.asarray([c["batch_size"] for c in configs])
    runs = {"largest": (base, jt.Programs(base, own_batch=False)),
            "own": (base, jt.Programs(base))}
    row: dict[str, Any] = {"experiment": name, "population": population, "steps": steps,
                           "seed": seed, "batch_sizes": sorted(batches.tolist()),
                           "mean_batch": float(batches.mean()),
                           **_side_by_side(runs, configs, repeats, steps)}
    row["own_x"] = row["largest"]["steady_s"] / row["own"]["steady_s"]
    return row


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="mnist1d-mlp")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 64, 256],
                   help="uniform populations (none: only the mixed one)")
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="steady calls of each program")
    p.add_argument("--seeds", type=int, nargs="*", default=[0],
                   help="mixed populations sampled from the space (none: skip them)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from jaxtune.devices import set_host_devices

    set_host_devices()
    from jaxtune.benchmarks.common import CpuMeter, commit

    sha = commit()
    print(f"# commit {sha}; {args.experiment}, {args.population} members x {args.steps} steps; "
          "largest = every member computes the largest batch's rows, own = each CPU group "
          "at the capacity of its batches (one program), buckets = one program per "
          "power-of-two capacity; steady = best of "
          f"{args.repeats} interleaved calls", flush=True)
    with CpuMeter() as meter:
        mixed = [measure_mixed(args.experiment, args.population, args.steps, args.repeats, s)
                 for s in args.seeds]
        rows = measure(args.experiment, args.batch_sizes, args.population, args.steps,
                       args.repeats)
    if mixed:
        print(f"{'mixed':>6s}{'mean b':>8s}{'largest first s':>17s}{'steady s':>10s}"
              f"{'own first s':>13s}{'steady s':>10s}{'x steady':>10s}"
              f"{'member-steps/s largest':>24s}{'own':>8s}")
        for r in mixed:
            a, o = r["largest"], r["own"]
            print(f"{'seed ' + str(r['seed']):>6s}{r['mean_batch']:8.1f}{a['first_s']:17.2f}"
                  f"{a['steady_s']:10.2f}{o['first_s']:13.2f}{o['steady_s']:10.2f}"
                  f"{r['own_x']:10.2f}{a['member_steps_per_s']:24.0f}"
                  f"{o['member_steps_per_s']:8.0f}")
    if rows:
        print(f"{'batch':>6s}{'largest first s':>17s}{'steady s':>10s}{'own first s':>13s}"
              f"{'steady s':>10s}{'buckets first s':>17s}{'steady s':>10s}{'x own':>8s}"
              f"{'x buckets':>11s}")
        for r in rows:
            a, o, q = r["largest"], r["own"], r["buckets"]
            print(f"{r['batch_size']:6d}{a['first_s']:17.2f}{a['steady_s']:10.2f}"
                  f"{o['first_s']:13.2f}{o['steady_s']:10.2f}{q['first_s']:17.2f}"
                  f"{q['steady_s']:10.2f}{r['own_x']:8.2f}{r['buckets_x']:11.2f}")
    print(f"# contention {meter.contention:.3f}")
    if args.json:
        print(json.dumps({"benchmark": "capacities", "commit": sha, "contention": meter.contention,
                          "mixed": mixed, "rows": rows}))


if __name__ == "__main__":
    main()
