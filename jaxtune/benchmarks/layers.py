"""Does vectorizing pay, layer by layer? A population of small models against a loop.

Each row is one common layer inside a tiny classifier (the layer, then a dense
head on its flattened or averaged output; softmax cross-entropy; adam), trained
for ``steps`` steps on random data, each member drawing its own batch indices:

* **vmap**: ``jit(vmap(member))`` over ``P`` members (one program, one call);
* **groups**: the same members as ``lax.map`` over groups of
  :data:`jaxtune.programs.CPU_GROUP` vmapped members (what the engine does on
  CPU; on an accelerator it is the vmap row);
* **loop**: one member after another, the member's whole ``lax.scan`` over
  steps jitted once and called ``P`` times (the strongest per-trial loop).

Every program is compiled and run once before it is timed (compile excluded);
then the three are timed in turn, ``reps`` rounds, the best of each kept.
The figure is member-steps per second (forward, backward and optimizer step);
``x loop`` = vmap (or groups) rate / loop rate: above 1 the population wins.
Convolutions are measured in both formulations (``native``: XLA's convolution,
``patches``: :mod:`jaxtune.conv`), for vmap and loop alike.

``python -m jaxtune.benchmarks.layers`` (``experiments/bench_layers.py``) prints a
table and a JSON line (commit and contention included).

Example:
    >>> rows = run(["dense"], population=2, steps=2, batch=4, reps=1)
    >>> rows[0]["layer"], rows[0]["vmap_member_steps_s"] > 0
    ('dense', True)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["LAYERS", "main", "run"]

#: layer name -> (input shape of one example, "int" for token inputs)
LAYERS: dict[str, tuple[tuple[int, ...], str]] = {
    "dense": ((128,), "float"),
    "conv1d-native": ((40, 8), "float"),
    "conv1d-patches": ((40, 8), "float"),
    "conv2d-native": ((8, 8, 8), "float"),
    "conv2d-patches": ((8, 8, 8), "float"),
    "maxpool": ((8, 8, 8), "float"),
    "layernorm": ((128,), "float"),
    "embedding": ((16,), "int"),
    "embedding-flat": ((16,), "int"),
    "attention": ((16, 64), "float"),
    "lstm": ((16, 32), "float"),
    "lstm-hoisted": ((16, 32), "float"),
}


def _module(name: str) -> Any:
    import flax.linen as nn
    import jax.numpy as jnp

    from jaxtune.benchmarks.hoisted_lstm import HoistedLSTM
    from jaxtune.layers import Embed

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            if name == "dense":
                h = nn.relu(nn.Dense(256)(x))
            elif name.startswith("conv1d"):
                h = nn.relu(nn.Conv(32, (5,), strides=(2,))(x))
            elif name.startswith("conv2d"):
                h = nn.relu(nn.Conv(32, (3, 3))(x))
            elif name == "maxpool":
                h = nn.max_pool(nn.relu(nn.Dense(16)(x)), (2, 2), strides=(2, 2))
            elif name == "layernorm":
                h = nn.LayerNorm()(nn.Dense(256)(x))
            elif name == "embedding":
                h = jnp.mean(nn.Embed(1000, 64)(x), axis=1)
            elif name == "embedding-flat":
                h = jnp.mean(Embed(1000, 64)(x), axis=1)
            elif name == "attention":
                h = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=64)(x)
            elif name == "lstm":
                h = nn.RNN(nn.OptimizedLSTMCell(64))(x)
            elif name == "lstm-hoisted":
                h = HoistedLSTM(64)(x)
            else:
                raise ValueError(f"unknown layer {name!r}; choose from {sorted(LAYERS)}")
            return nn.Dense(10)(h.reshape(h.shape[0], -1))

    return Net()


def _member(name: str, steps: int, batch: int) -> tuple[Callable[..., Any], Callable[..., Any],
                                                        Any]:
    """One member's ``init: key -> state`` and training run ``(state, key, data) -> params``,
    and the data it reads.

    Initialization is its own program, run member by member before timing: the
    LSTM's orthogonal initializer (LAPACK QR) vmapped over members deadlocked
    XLA:CPU's thread pool on a 2-core machine, in the groups' ``lax.map`` and in
    ``jit(vmap(init))`` alike (see docs/benchmarks.md).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxtune.conv import conv_mode

    shape, kind = LAYERS[name]
    n = 1024
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 1000, (n, *shape)).astype(np.int32) if kind == "int"
         else rng.normal(size=(n, *shape)).astype(np.float32))
    y = rng.integers(0, 10, n).astype(np.int32)
    data = (jnp.asarray(x), jnp.asarray(y))
    module = _module(name)
    conv = "patches" if name.endswith("patches") else "native"
    tx = optax.adam(1e-3)

    def init(key):
        params = module.init(key, data[0][:1])
        return params, tx.init(params)

    def train(state, key, data):
        xs, ys = data

        def loss(p, xb, yb):
            with conv_mode(conv):
                out = module.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(out, yb).mean()

        def step(carry, k):
            params, opt_state = carry
            idx = jax.random.randint(k, (batch,), 0, n)
            grads = jax.grad(loss)(params, xs[idx], ys[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, state, jax.random.split(key, steps))
        return params

    return init, train, data


def _timed(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Best seconds of each of ``fns`` over ``reps`` rounds, the functions timed in turn
    within a round (a burst of other work on the machine hits all of them alike)."""
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn())  # compile and warm up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def measure(name: str, population: int, steps: int, batch: int, reps: int = 5,
            group: int | None = None) -> dict[str, Any]:
    """Member-steps/s of layer ``name``: vmapped, in groups, and one member at a time."""
    import jax

    from jaxtune.benchmarks.common import CpuMeter
    from jaxtune.programs import CPU_GROUP

    group = group or CPU_GROUP
    init, member, data = _member(name, steps, batch)
    keys = jax.random.split(jax.random.key(0), population)
    one_init = jax.jit(init)  # member by member: a vmapped QR can deadlock (see _member)
    states = jax.tree.map(lambda *a: jax.numpy.stack(a), *[one_init(k) for k in keys])
    vmapped = jax.jit(jax.vmap(member, in_axes=(0, 0, None)))
    grouped = jax.jit(lambda ss, ks, d: jax.lax.map(
        lambda g: jax.vmap(member, in_axes=(0, 0, None))(*g, d),
        jax.tree.map(lambda a: a.reshape(-1, group, *a.shape[1:]), (ss, ks))))
    one = jax.jit(member)
    members = [jax.tree.map(lambda a, m=m: a[m], (states, keys)) for m in range(population)]
    out: dict[str, Any] = {"layer": name, "population": population, "steps": steps,
                           "batch": batch}
    fns = {"vmap": lambda: vmapped(states, keys, data),
           "loop": lambda: [one(s, k, data) for s, k in members]}
    if population % group == 0 and population > group:
        fns["groups"] = lambda: grouped(states, keys, data)
    with CpuMeter() as meter:
        best = _timed(fns, reps)
    work = population * steps
    out["vmap_member_steps_s"] = work / best["vmap"]
    out["groups_member_steps_s"] = work / best.get("groups", best["vmap"])
    out["loop_member_steps_s"] = work / best["loop"]
    out["contention"] = meter.contention
    out["x_loop_vmap"] = out["vmap_member_steps_s"] / out["loop_member_steps_s"]
    out["x_loop_groups"] = out["groups_member_steps_s"] / out["loop_member_steps_s"]
    return out


def run(layers: Sequence[str], population: int = 16, steps: int = 20, batch: int = 32,
        reps: int = 5) -> list[dict[str, Any]]:
    """:func:`measure` for each layer in ``layers``."""
    unknown = [n for n in layers if n not in LAYERS]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; choose from {list(LAYERS)}")
    return [measure(n, population, steps, batch, reps) for n in layers]


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'layer':16s}{'vmap':>10s}{'groups':>10s}{'loop':>10s}{'x loop':>8s}"
            f"{'x loop (groups)':>17s}{'contention':>12s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:16s}{r['vmap_member_steps_s']:10.0f}"
                     f"{r['groups_member_steps_s']:10.0f}{r['loop_member_steps_s']:10.0f}"
                     f"{r['x_loop_vmap']:8.2f}{r['x_loop_groups']:17.2f}"
                     f"{r['contention']:12.0%}")
    lines.append("member-steps/s (forward + backward + adam), compile excluded; x loop = "
                 "population rate / loop rate (> 1: the population wins)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5,
                   help="rounds of timed calls, the forms in turn (the best is kept)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import jax

    from jaxtune.benchmarks.common import commit

    sha = commit()
    print(f"# commit {sha}; {jax.devices()[0].platform} x 1 device; population "
          f"{args.population}, {args.steps} steps, batch {args.batch}", flush=True)
    rows = []
    for name in args.layers:
        rows.append(measure(name, args.population, args.steps, args.batch, args.reps))
        r = rows[-1]
        print(f"# {name}: member-steps/s vmap {r['vmap_member_steps_s']:.0f}, groups "
              f"{r['groups_member_steps_s']:.0f}, loop {r['loop_member_steps_s']:.0f}; x loop "
              f"{r['x_loop_vmap']:.2f} (groups {r['x_loop_groups']:.2f})", flush=True)
    print(_table(rows))
    if args.json:
        print(json.dumps({"benchmark": "layers", "commit": sha,
                          "device": jax.devices()[0].platform, "population": args.population,
                          "steps": args.steps, "batch": args.batch, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
