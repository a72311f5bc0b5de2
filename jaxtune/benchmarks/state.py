"""What models with state and the training details cost inside one population.

The same population of the digits CNN (:class:`jaxtune.models.CNN2D`) is trained,
side by side in one run, as it is and with each detail of ``Experiment`` turned
on: batch normalization (:class:`jaxtune.models.CNN2DBatchNorm`, its statistics
carried as model state), augmentation (``augment=``), bfloat16 compute
(``compute_dtype=``) and gradient accumulation (``accumulate=2``: twice the
examples per optimizer step). Each row is the steady-state rate of the compiled
chunk (compile excluded, timed apart), as member optimizer steps and training
examples per second, and its ratio to the first row. The machine's contention
during each timing is printed: ratios are only comparable when it stays low.

    python experiments/bench_state.py --json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["VARIANTS", "main", "measure"]


def _shift(key: Any, x: Any) -> Any:
    """A random shift of an 8x8 digit by up to one pixel (an augmentation)."""
    import jax
    import jax.numpy as jnp

    dx, dy = jax.random.randint(key, (2,), -1, 2)
    return jnp.roll(x.reshape(8, 8), (dy, dx), axis=(0, 1)).reshape(x.shape)


#: row name -> (model with batch normalization, Experiment options)
VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "CNN2D": (False, {}),
    "CNN2DBatchNorm": (True, {}),
    "CNN2DBatchNorm + augment": (True, {"augment": _shift}),
    "CNN2DBatchNorm + bfloat16": (True, {"compute_dtype": "bfloat16"}),
    "CNN2DBatchNorm + accumulate=2": (True, {"accumulate": 2}),
}


def measure(name: str, *, population: int, batch: int, eval_every: int, chunks: int,
            seed: int = 0) -> dict[str, Any]:
    """Compile time and steady-state rates of one variant (see the module docstring)."""
    import jax
    import numpy as np

    import jaxtune as jt
    from jaxtune.benchmarks.common import CpuMeter

    bn, options = VARIANTS[name]
    data = jt.data.digits()
    model = jt.models.CNN2DBatchNorm() if bn else jt.models.CNN2D()
    exp = jt.Experiment(data=data, model=model,
                        space=jt.Space(lr=jt.Real(1e-4, 1e-2, log=True)),
                        steps=eval_every * (chunks + 1), eval_every=eval_every,
                        defaults={"batch_size": batch, "optimizer": "adamw"}, **options)
    configs = exp.space.sample(population, seed=seed)
    static = exp.static_config(configs[0])
    member = jt.make_train(exp, static)
    hp = exp.member_arrays(configs, static)
    keys = jax.random.split(jax.random.key(seed), population)
    arrays = jt.data.train_arrays(data)
    init = jax.jit(jax.vmap(member.init))
    chunk = jax.jit(jax.vmap(member.chunk, in_axes=(0, None)))
    t0 = time.perf_counter()
    state = init(hp, keys)
    state, metrics = chunk(state, arrays)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        for _ in range(chunks):
            state, metrics = chunk(state, arrays)
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - t0
    steps = population * eval_every * chunks
    return {"variant": name, "compile_s": round(compile_s, 2), "wall_s": round(wall, 3),
            "member_steps_per_s": steps / wall,
            "examples_per_s": steps * batch * exp.accumulate / wall,
            "val_accuracy": float(np.mean(metrics["val_accuracy"])),
            "contention": round(meter.contention, 3)}


def _table(rows: Sequence[dict[str, Any]]) -> str:
    base = rows[0]
    lines = ["| variant | compile s | member-steps/s | examples/s | steps ratio | "
             "examples ratio | contention |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['compile_s']:.1f} | {r['member_steps_per_s']:.0f} | "
            f"{r['examples_per_s']:.0f} | "
            f"{r['member_steps_per_s'] / base['member_steps_per_s']:.2f} | "
            f"{r['examples_per_s'] / base['examples_per_s']:.2f} | {r['contention']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from jaxtune.benchmarks.common import commit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = p.parse_args(argv)
    rows = []
    for name in args.variants:
        rows.append(measure(name, population=args.population, batch=args.batch,
                            eval_every=args.eval_every, chunks=args.chunks))
        print(f"{name}: {rows[-1]['member_steps_per_s']:.0f} member-steps/s", flush=True)
    print(f"\ncommit {commit()}, population {args.population}, batch {args.batch}, "
          f"{args.chunks} chunks of {args.eval_every} steps (evaluation included)\n")
    print(_table(rows))
    out = {"commit": commit(), "args": vars(args), "rows": rows}
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
