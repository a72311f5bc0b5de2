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
hyperparameter sampled too), ``largest`` against ``own``. Times
are the first call (with compile) and the best of ``--repeats`` steady calls,
the compared programs' steady calls interleaved.

``--designs`` adds the measurement that chose this design: one CPU group of 4
MNIST-1D MLPs (40-100-100-10, adam, a hand-written step) per row count, its
steps run at a capacity of that many rows in one go (what ``own`` does) against
a loop over micro-batches of 16 or 32 rows with a traced trip count (one
compiled step for every batch size, gradients summed over the micro-batches).

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

__all__ = ["main", "measure", "measure_designs", "measure_mixed"]


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
    """One population sampled from the experiment's space (as the main job samples it):
    ``largest`` against ``own``."""
    import jaxtune as jt

    base = _experiment(name, steps)
    configs = base.space.sample(population, seed=seed)
    batches = np.asarray([c["batch_size"] for c in configs])
    runs = {"largest": (base, jt.Programs(base, own_batch=False)),
            "own": (base, jt.Programs(base))}
    row: dict[str, Any] = {"experiment": name, "population": population, "steps": steps,
                           "seed": seed, "batch_sizes": sorted(batches.tolist()),
                           "mean_batch": float(batches.mean()),
                           **_side_by_side(runs, configs, repeats, steps)}
    row["own_x"] = row["largest"]["steady_s"] / row["own"]["steady_s"]
    return row


def measure_designs(rows: Sequence[int] = (16, 32, 64, 128, 256), micro: Sequence[int] = (16, 32),
                    group: int = 4, steps: int = 200, repeats: int = 3) -> list[dict[str, Any]]:
    """Microseconds per member-step of one CPU group at each row count: the rows in one
    go against micro-batch loops with a traced trip count (one device, one thread)."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    dims = (40, 100, 100, 10)
    n = 4000
    x_all = jax.random.normal(jax.random.key(1), (n, dims[0]))
    y_all = jax.random.randint(jax.random.key(2), (n,), 0, dims[-1])
    opt = optax.adam(1e-3)

    def init(key):
        ks = jax.random.split(key, len(dims) - 1)
        return [(0.1 * jax.random.normal(k, (a, b)), jnp.zeros(b))
                for k, a, b in zip(ks, dims[:-1], dims[1:])]

    def loss(params, x, y, w):
        for i, (a, b) in enumerate(params):
            x = x @ a + b
            x = jax.nn.relu(x) if i < len(params) - 1 else x
        nll = -jnp.take_along_axis(jax.nn.log_softmax(x), y[:, None], -1)[:, 0]
        return jnp.sum(w * nll)

    def grads_at(params, key, count):
        idx = jax.random.randint(key, (count,), 0, n)
        return jax.grad(loss)(params, x_all[idx], y_all[idx], jnp.full((count,), 1.0 / count))

    def update(carry, g):
        params, opt_state, key = carry
        u, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, key

    def whole(count, carry, i):
        return update(carry, grads_at(carry[0], jax.random.fold_in(carry[2], i), count)), None

    def looped(m, trips, carry, i):
        def body(j, acc):
            key = jax.random.fold_in(jax.random.fold_in(carry[2], i), j)
            return jax.tree.map(jnp.add, acc, grads_at(carry[0], key, m))
        g = jax.lax.fori_loop(0, trips, body, jax.tree.map(jnp.zeros_like, carry[0]))
        return update(carry, g), None

    def program(step):
        def run(carry, trips):
            return jax.lax.scan(functools.partial(step, trips), carry, jnp.arange(steps))[0]
        return jax.jit(jax.vmap(run, in_axes=(0, None)))

    keys = jax.random.split(jax.random.key(0), group)
    params = jax.vmap(init)(keys)
    carry = (params, jax.vmap(opt.init)(params), keys)

    def per_member_step_us(f, trips):
        jax.block_until_ready(f(carry, trips))
        best = min(_best(f, carry, trips) for _ in range(repeats))
        return best / steps / group * 1e6

    out = []
    loops = {m: program(lambda trips, c, i, m=m: looped(m, trips, c, i)) for m in micro}
    for count in rows:
        one = program(lambda trips, c, i, count=count: whole(count, c, i))
        row: dict[str, Any] = {"rows": count, "group": group,
                               "whole_us": per_member_step_us(one, jnp.int32(0))}
        for m, f in loops.items():
            if count % m == 0:
                row[f"micro{m}_us"] = per_member_step_us(f, jnp.int32(count // m))
        out.append(row)
    return out


def _best(f: Any, *args: Any) -> float:
    import jax

    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t


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
    p.add_argument("--designs", action="store_true",
                   help="also time one group's step: the rows in one go vs micro-batch loops")
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
        designs = measure_designs(repeats=args.repeats) if args.designs else []
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
    if designs:
        print(f"{'rows':>6s}{'one go us/member-step':>23s}{'micro 16 x trips':>18s}"
              f"{'micro 32 x trips':>18s}")
        for r in designs:
            cells = "".join(f"{r[k]:18.1f}" if k in r else f"{'-':>18s}"
                            for k in ("micro16_us", "micro32_us"))
            print(f"{r['rows']:6d}{r['whole_us']:23.1f}{cells}")
    print(f"# contention {meter.contention:.3f}")
    if args.json:
        print(json.dumps({"benchmark": "capacities", "commit": sha, "contention": meter.contention,
                          "mixed": mixed, "rows": rows, "designs": designs}))


if __name__ == "__main__":
    main()
