"""What a traced optimizer family costs: one family alone against unions of families.

A traced ``optimizer`` Choice compiles the union of its families into one program
(:func:`jaxtune.optimizers.make_optimizer`): every family's optax state is kept and,
under :func:`jax.vmap` with members of several families, every family's update is
computed and the member's selected. This benchmark measures the steady-state
training step of a population on the main job's problem (``mnist1d-mlp``: the
MNIST-1D MLP 40-100-100-10, masked batches up to 256, traced lr, weight decay,
warmup, schedule family and dropout, shuffled epochs) with the optimizer family

* ``adamw`` alone, ``nesterov`` alone (one family per program, as with
  ``static=True``),
* the ``adamw`` + ``nesterov`` union (the main job's space), members split half
  and half,
* the union of all seven families, members spread over them,

each union in both state layouts of :func:`~jaxtune.optimizers.make_optimizer`:
``moments`` (shared first/second moments, per-member coefficients; the
default) and ``tuple`` (every family's optax state, ``lax.switch``),

side by side: the same configurations (only the family differs), a
``jit(vmap(...))`` of ``--scan`` training steps per call (no evaluation), the
variants timed in turn in every round (in a rotating order) so that contention
hits them alike. Reported: member-steps per second (best round and median
round), the ratio of the best to ``adamw`` alone,
the optimizer state per member and XLA's FLOPs per member-step (the scan body,
counted once). Each run prints the commit measured and how busy the machine was.

Usage::

    python experiments/bench_optimizer_union.py --json
    python experiments/bench_optimizer_union.py --population 16 --scan 50 --rounds 9
    python experiments/bench_optimizer_union.py --batch 16   # the optimizer a larger share

Example:
    >>> VARIANTS["adamw+nesterov moments"]
    (('adamw', 'nesterov'), 'moments')
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from jaxtune.benchmarks.common import CpuMeter, commit

__all__ = ["VARIANTS", "main", "run"]

_ALL = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "lion")
#: The optimizer families compiled into each measured program, and the union's layout.
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "adamw": (("adamw",), "moments"),
    "nesterov": (("nesterov",), "moments"),
    "adamw+nesterov moments": (("adamw", "nesterov"), "moments"),
    "adamw+nesterov tuple": (("adamw", "nesterov"), "tuple"),
    "all 7 moments": (_ALL, "moments"),
    "all 7 tuple": (_ALL, "tuple"),
}


def _program(base: Any, families: tuple[str, ...], layout: str, population: int,
             scan: int, batch: int | None = None) -> dict[str, Any]:
    """The compiled scan of ``scan`` steps for ``population`` members over ``families``."""
    from unittest import mock

    import jax

    import jaxtune as jt
    import jaxtune.train
    from jaxtune.optimizers import MomentsState, make_optimizer

    dims = {n: d for n, d in base.space.items() if n != "optimizer"}
    dims["optimizer"] = jt.Choice(list(families), static=len(families) == 1)
    defaults = dict(base.defaults)
    if batch is not None:  # one batch size: every member computes `batch` rows
        del dims["batch_size"]
        defaults["batch_size"] = batch
    exp = dataclasses.replace(base, space=jt.Space(**dims), steps=scan, eval_every=scan,
                              defaults=defaults, max_batch_size=None)
    configs = [dict(c, optimizer=families[i % len(families)])
               for i, c in enumerate(exp.space.sample(population, seed=0))]
    static = exp.static_config(configs[0])
    # make_train builds the optimizer once, here: the layout is chosen for this build only
    with mock.patch.object(jaxtune.train, "make_optimizer",
                           functools.partial(make_optimizer, layout=layout)):
        member = jt.make_train(exp, static)
    assert member.optimizers == families, (member.optimizers, families)
    hp = exp.member_arrays(configs, static)
    keys = jax.random.split(jax.random.key(0), population)
    states = jax.jit(jax.vmap(member.init))(hp, keys)
    shared = any(isinstance(s, MomentsState) for s in jax.tree.leaves(
        states.opt_state, is_leaf=lambda x: isinstance(x, MomentsState)))
    assert shared == (layout == "moments" and len(families) > 1), (layout, families)
    data = jt.data.train_arrays(exp.data)

    def steps(state):
        return jax.lax.scan(lambda s, _: (member.train_step(s, data), None),
                            state, None, length=scan)[0]

    t = time.perf_counter()
    compiled = jax.jit(jax.vmap(steps)).lower(states).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(states.opt_state)) / population
    return {"fn": compiled, "states": states, "compile_s": compile_s,
            "flops": float(cost.get("flops", float("nan"))) / population,
            "opt_state_kib": opt_bytes / 1024}


def run(population: int = 16, scan: int = 50, rounds: int = 9,
        variants: Sequence[str] = tuple(VARIANTS), batch: int | None = None
        ) -> list[dict[str, Any]]:
    """Measures every variant; returns one row per variant (see the module docstring)."""
    import jax

    import jaxtune as jt

    base = jt.zoo.mnist1d_mlp()
    progs = {v: _program(base, *VARIANTS[v], population, scan, batch) for v in variants}
    for p in progs.values():  # one untimed call each
        jax.block_until_ready(p["fn"](p["states"]))
    times: dict[str, list[float]] = {v: [] for v in variants}
    with CpuMeter() as meter:
        for r in range(rounds):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                p = progs[v]
                t = time.perf_counter()
                jax.block_until_ready(p["fn"](p["states"]))
                times[v].append(time.perf_counter() - t)
    rows = []
    for v in variants:
        best = min(times[v])
        median = sorted(times[v])[len(times[v]) // 2]
        rows.append({"variant": v, "families": len(VARIANTS[v][0]), "layout": VARIANTS[v][1],
                     "member_steps_per_s": population * scan / best,
                     "median_member_steps_per_s": population * scan / median,
                     "median_s": median, "best_s": best,
                     "compile_s": progs[v]["compile_s"], "flops": progs[v]["flops"],
                     "opt_state_kib": progs[v]["opt_state_kib"]})
    ref = rows[0]["member_steps_per_s"]
    for r in rows:
        r["vs_first"] = r["member_steps_per_s"] / ref
        r["contention"] = meter.contention
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--scan", type=int, default=50, help="training steps per timed call")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--batch", type=int, default=None,
                   help="one batch size for every member instead of the space's 16-256 "
                        "(masked at 256): a smaller batch makes the optimizer a larger "
                        "share of the step")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    if args.population < 1 or args.scan < 1 or args.rounds < 1:
        raise ValueError("--population, --scan and --rounds must be >= 1")
    import jax

    measured = commit()  # before the run: a commit made meanwhile is not the one measured
    rows = run(args.population, args.scan, args.rounds, variants, args.batch)
    batch = "masked batch <= 256" if args.batch is None else f"batch {args.batch}"
    print(f"# commit {measured}; {jax.devices()[0].platform} x {len(jax.devices())}; "
          f"mnist1d-mlp step ({batch}, no evaluation), population "
          f"{args.population}, scans of {args.scan} steps, best of {args.rounds} rounds")
    head = (f"{'families':<24} {'member-steps/s':>15} {'median':>8} "
            f"{'vs ' + rows[0]['variant']:>10} {'MFLOP/step':>11} {'opt state KiB':>14} "
            f"{'compile s':>10}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['variant']:<24} {r['member_steps_per_s']:>15.0f} "
              f"{r['median_member_steps_per_s']:>8.0f} {r['vs_first']:>10.3f} "
              f"{r['flops'] / 1e6:>11.2f} {r['opt_state_kib']:>14.1f} {r['compile_s']:>10.1f}")
    print(f"busy: {rows[0]['contention']:.0%} of the machine used by other processes "
          "while timing")
    if args.json:
        print(json.dumps({"benchmark": "optimizer_union", "commit": measured,
                          "batch": args.batch, "population": args.population, "scan": args.scan,
                          "rounds": args.rounds, "rows": rows}))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
