"""What a small batch costs in masked mode, with and without batch capacities.

In masked mode (the default) every member of a program gathers the rows of the
largest batch size in the space and weights only its own first ``batch_size``:
one program covers every batch size, but a batch-16 member pays for 256 rows.
``Experiment(batch_capacities=...)`` adds a few static row capacities (the exact
size still traced inside), one program each, so a member pays for the smallest
capacity that holds its batch. This benchmark trains populations whose members
all have one batch size, first with the single largest capacity, then with
power-of-two capacities, and reports compile time, steady-state time and
member-steps per second side by side.

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

__all__ = ["main", "measure"]


def _timed(exp: Any, configs: list[dict[str, Any]], programs: Any) -> tuple[float, float, int]:
    """(first call s, second call s, programs compiled) of one population."""
    import jaxtune as jt

    times = []
    compiles = 0
    for _ in range(2):
        t0 = time.perf_counter()
        r = jt.train_population(exp, configs, programs=programs, evaluate_test=False,
                                verbose=False, progress=False)
        times.append(time.perf_counter() - t0)
        compiles += r.compiles
    return times[0], times[1], compiles


def measure(name: str, batch_sizes: Sequence[int], population: int,
            steps: int) -> list[dict[str, Any]]:
    """One row per batch size: the single capacity against power-of-two capacities."""
    import jaxtune as jt
    from jaxtune.benchmarks.optuna_side import pow2_capacities

    base, _, _ = jt.zoo.load(name)
    base = dataclasses.replace(base, steps=steps, eval_every=steps)
    capped = dataclasses.replace(base, batch_capacities=pow2_capacities(base))
    config = base.space.sample(1, seed=0)[0] | {"optimizer": "adamw"}
    rows = []
    for b in batch_sizes:
        configs = [config | {"batch_size": b}] * population
        row: dict[str, Any] = {"experiment": name, "batch_size": b, "population": population,
                               "steps": steps}
        for label, exp in (("single", base), ("pow2", capped)):
            first, steady, compiles = _timed(exp, configs, jt.Programs(exp))
            row[label] = {"first_s": first, "steady_s": steady, "compiles": compiles,
                          "member_steps_per_s": population * steps / steady}
        row["speedup_steady"] = row["single"]["steady_s"] / row["pow2"]["steady_s"]
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="mnist1d-mlp")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from jaxtune.devices import set_host_devices

    set_host_devices()
    from jaxtune.benchmarks.common import CpuMeter, commit

    sha = commit()
    print(f"# commit {sha}; {args.experiment}, {args.population} members x {args.steps} steps, "
          "every member one batch size; single = one capacity (the largest batch), "
          "pow2 = power-of-two capacities", flush=True)
    with CpuMeter() as meter:
        rows = measure(args.experiment, args.batch_sizes, args.population, args.steps)
    print(f"{'batch':>6s}{'single first s':>16s}{'steady s':>10s}{'pow2 first s':>14s}"
          f"{'steady s':>10s}{'x steady':>10s}{'member-steps/s single':>23s}{'pow2':>10s}")
    for r in rows:
        s, q = r["single"], r["pow2"]
        print(f"{r['batch_size']:6d}{s['first_s']:16.2f}{s['steady_s']:10.2f}"
              f"{q['first_s']:14.2f}{q['steady_s']:10.2f}{r['speedup_steady']:10.2f}"
              f"{s['member_steps_per_s']:23.0f}{q['member_steps_per_s']:10.0f}")
    print(f"# contention {meter.contention:.3f}")
    if args.json:
        print(json.dumps({"benchmark": "capacities", "commit": sha, "contention": meter.contention,
                          "rows": rows}))


if __name__ == "__main__":
    main()
