"""How many members should a CPU device train at once? The engine at several group sizes.

On CPU the engine trains a device's members in ``lax.map`` groups of
:data:`jaxtune.programs.CPU_GROUP` vmapped members, each group at its own row
capacity. This benchmark runs the engine itself (``train_population`` on the
population benchmark's experiment: MNIST-1D, adam, bucketed batches) once per
group size in ``--groups``, setting ``CPU_GROUP`` before each program is
compiled (``JAXTUNE_PROGRAM_CACHE=0``: no stored program of another size is
loaded). Each population is compiled and run once, then the group sizes are
timed in turn, ``reps`` rounds, the best steady run of each kept. A group size
that does not divide the members a device holds falls back, as in the engine, to
the largest divisor below it (the row reports the size used).

``python experiments/bench_groups.py`` prints a table and a JSON line.

Example:
    >>> rows = run([2, 4], populations=[4], steps=4, eval_every=2, reps=1, devices=None)
    >>> sorted(r["group"] for r in rows), rows[0]["member_steps_s"] > 0
    ([2, 4], True)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "run"]


def run(groups: Sequence[int], populations: Sequence[int] = (16, 64), steps: int = 300,
        eval_every: int = 100, batch: int = 100, model: str = "mlp", reps: int = 3,
        devices: int | None = None) -> list[dict[str, Any]]:
    """Member-steps/s of the engine's steady ``train_population`` at each group size."""
    if not groups or min(groups) < 1:
        raise ValueError(f"groups must be positive integers, got {list(groups)}")
    os.environ["JAXTUNE_PROGRAM_CACHE"] = "0"
    from jaxtune.devices import set_host_devices

    set_host_devices(devices)

    import jax

    import jaxtune as jt
    from jaxtune import programs as programs_module
    from jaxtune.benchmarks.baselines import dataset
    from jaxtune.benchmarks.common import CpuMeter
    from jaxtune.benchmarks.population import _experiment, _space

    data = dataset(model)
    exp = _experiment(data, steps, eval_every, batch, "replacement", model)
    configs = _space().sample(max(populations), seed=0)
    saved = programs_module.CPU_GROUP
    n_dev = len(jax.devices())
    rows = []
    try:
        for pop in populations:
            runs = {}
            for g in groups:
                programs_module.CPU_GROUP = g
                programs = jt.Programs(exp)  # compiled now, at this group size
                jt.train_population(exp, configs[:pop], programs=programs, progress=False,
                                    verbose=False)
                runs[g] = programs
            best = dict.fromkeys(groups, float("inf"))
            with CpuMeter() as meter:
                for _ in range(reps):
                    for g, programs in runs.items():
                        t0 = time.perf_counter()
                        res = jt.train_population(exp, configs[:pop], programs=programs,
                                                  progress=False, verbose=False)
                        best[g] = min(best[g], time.perf_counter() - t0)
                        if res.compiles:
                            raise RuntimeError("a steady train_population call compiled")
            per_device = pop // n_dev
            for g in groups:
                used = programs_module._group_size(per_device, g)
                rows.append({"population": pop, "group": g, "group_used": used,
                             "devices": n_dev, "steady_s": best[g],
                             "member_steps_s": pop * steps / best[g],
                             "contention": meter.contention})
            base = next((r for r in rows if r["population"] == pop and r["group"] == saved),
                        None)
            for r in rows:
                if r["population"] == pop and base is not None:
                    r["x_default"] = r["member_steps_s"] / base["member_steps_s"]
    finally:
        programs_module.CPU_GROUP = saved
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'population':>10s}{'group':>7s}{'used':>6s}{'member-steps/s':>16s}"
            f"{'x default':>11s}{'contention':>12s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['population']:10d}{r['group']:7d}{r['group_used']:6d}"
                     f"{r['member_steps_s']:16.0f}{r.get('x_default', float('nan')):11.2f}"
                     f"{r['contention']:12.0%}")
    lines.append("steady train_population (compile excluded), best of the rounds; x default "
                 "= rate / rate at the current CPU_GROUP")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--populations", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--model", choices=("mlp", "cnn1d", "cnn2d"), default="mlp")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--devices", type=int, default=None,
                   help="host devices on CPU (default: one per core, as bench_population)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = run(args.groups, args.populations, args.steps, args.eval_every, args.batch,
               args.model, args.reps, args.devices)

    import jax

    from jaxtune.benchmarks.common import commit
    from jaxtune.programs import CPU_GROUP

    sha = commit()
    print(f"# commit {sha}; {jax.devices()[0].platform} x {len(jax.devices())} devices; "
          f"{args.model}, {args.steps} steps, batch {args.batch}; CPU_GROUP {CPU_GROUP}")
    print(_table(rows))
    if args.json:
        print(json.dumps({"benchmark": "groups", "commit": sha, "model": args.model,
                          "steps": args.steps, "batch": args.batch, "cpu_group": CPU_GROUP,
                          "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
