"""Cost of each probe per member, relative to one training step (MNIST-1D MLP).

The model is the MNIST-1D paper's ``MLP(width=100, depth=2)`` (15,210 parameters)
on the 3,600-example training split; the training step is the engine's own
(:attr:`MemberProgram.train_step <jaxtune.train.MemberProgram>`, adamw, batch
128, shuffled order), timed inside a :func:`jax.lax.scan` of ``--scan`` steps as
a chunk runs it. Every probe measures the whole training split, or its first
``--examples`` (its loss is :func:`jaxtune.probes.make_loss_fn`'s). Each program
is ``jit(vmap(...))`` over ``P`` members; times are the best of ``--reps`` calls
after compilation, divided by ``P``.

    python experiments/bench_probes.py --populations 1 8
    python experiments/bench_probes.py --engine --reps 2      # inside train_population
    python experiments/bench_probes.py --noise-accuracy            # B_simple estimator's error
    python experiments/bench_probes.py --gather-cost --populations 16 64   # 2 host devices

``--engine`` instead times rounds of ``train_population`` of the built-in
``mnist1d-mlp`` (16 chunks of 25 steps) with probes off and with each probe
alone every 1, 4 and 16 chunks, at populations 16, 32 and 64
(:func:`engine_cost`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from jaxtune.benchmarks.common import CpuMeter, commit

__all__ = ["PROBE_KINDS", "engine_cost", "gather_cost", "linear_regression_noise", "main",
           "noise_scale_accuracy", "probe_programs"]


def probe_programs(loss_fn: Callable[..., Any], data: tuple[Any, Any], *, iters: int,
                   sharp_steps: int, b_small: int, b_big: int, draws: int
                   ) -> dict[str, tuple[Callable[..., Any], str]]:
    """One member's probes as functions of ``(params, init_params, key)``, with their
    nominal cost in gradients of ``data`` (``G``)."""
    import jax

    from jaxtune import probes as P

    n = data[0].shape[0]
    noise_rows = draws * b_big
    return {
        "gradient of the probe examples": (lambda p, p0, k: jax.grad(loss_fn)(p, data), "1 G"),
        "Hessian-vector product": (
            lambda p, p0, k: P.hessian_vector_product(loss_fn, p, data, p), "1 HVP"),
        f"top eigenvalue, power, {iters} iters": (
            lambda p, p0, k: P.hessian_top_eigenvalue(loss_fn, p, data, k, max_iters=iters,
                                                      tol=0.0).eigenvalue,
            f"{iters} HVP"),
        f"top eigenvalue, Lanczos, order {iters}": (
            lambda p, p0, k: P.hessian_lanczos(loss_fn, p, data, k, order=iters).top,
            f"{iters} HVP"),
        f"epsilon-sharpness, {sharp_steps} steps": (
            lambda p, p0, k: P.epsilon_sharpness(loss_fn, p, data, k,
                                                 steps=sharp_steps).sharpness,
            f"{sharp_steps} G + 2 F"),
        f"noise scale, {draws} x {b_big} rows (slices of {b_small})": (
            lambda p, p0, k: P.gradient_noise_scale(loss_fn, p, data, k, b_small=b_small,
                                                    b_big=b_big, draws=draws).b_simple,
            f"{noise_rows / n:.2f} G ({noise_rows} rows)"),
        "weight norm + distance from init": (
            lambda p, p0, k: (P.weight_norm(p), P.distance_from_init(p, p0)), "0"),
    }


def _best(fn: Callable[..., Any], *args: Any, reps: int) -> tuple[float, float]:
    """Compile time and best steady time of ``fn(*args)``."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, min(times)


def linear_regression_noise(b_simple: float, *, d: int = 4, n: int = 20000, sigma: float = 1.0,
                            seed: int = 0) -> tuple[Any, Any, Any, float]:
    """A linear regression split and a point whose ``B_simple`` is about ``b_simple``.

    ``x ~ N(0, I_d)``, ``y = x.w* + sigma eps``, per-example loss ``0.5 (x.w - y)^2``
    at ``w = w* + u``: ``B_simple = d + 1 + d sigma^2 / |u|^2`` (see
    ``tests/test_probes.py``), so ``|u|^2 = d sigma^2 / (b_simple - d - 1)`` (``b_simple
    > d + 1``). Returns ``(loss_fn, w, (x, y), exact)`` with ``exact`` the split's own
    ``B_simple`` from its exact per-example gradients (float64), the estimator's target.
    """
    import jax.numpy as jnp
    import numpy as np

    if not b_simple > d + 1:
        raise ValueError(f"b_simple must exceed d + 1 = {d + 1}, got {b_simple}")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w_star = rng.normal(size=d)
    y = x @ w_star + sigma * rng.normal(size=n)
    u = rng.normal(size=d)
    u *= np.sqrt(d * sigma ** 2 / (b_simple - d - 1)) / np.linalg.norm(u)
    w = w_star + u
    g = x * (x @ w - y)[:, None]
    mean_g = g.mean(axis=0)
    exact = float(np.sum(g.var(axis=0)) / (mean_g @ mean_g))

    def loss_fn(w, b):
        return 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)

    return loss_fn, jnp.asarray(w, jnp.float32), (jnp.asarray(x, jnp.float32),
                                                  jnp.asarray(y, jnp.float32)), exact


def noise_scale_accuracy(targets: Sequence[float] = (6, 8, 16, 64, 256, 1024), *,
                         repeats: int = 400, settings: Sequence[tuple[str, int, int, int]] = (
                             ("independent (old)", 32, 512, 4),
                             ("sliced", 32, 512, 4),
                             ("sliced", 32, 512, 8),
                             ("sliced", 32, 512, 16)),
                         d: int = 4) -> list[dict[str, Any]]:
    """The noise-scale estimate's error over ``repeats`` keys, against the exact value.

    For each target ``B_simple`` (:func:`linear_regression_noise`) and each estimator
    setting ``(kind, b_small, b_big, draws)``: ``independent`` draws separate small
    batches (the estimator before the slices), ``sliced`` is
    :func:`jaxtune.probes.gradient_noise_scale`. Reports the mean relative bias, the
    10-90% range, the fraction of negative estimates, the relative error (root mean
    square of ``estimate / exact - 1``; median absolute in ``med_rel``) and the
    standard error's calibration (median ``b_simple_se`` over the estimates' own
    standard deviation).
    """
    import jax
    import numpy as np

    from jaxtune import probes as P

    rows = []
    for target in targets:
        loss_fn, w, data, exact = linear_regression_noise(target, d=d)
        for kind, bs, bb, draws in settings:
            if kind.startswith("independent"):
                def est(k, bs=bs, bb=bb, draws=draws, f=loss_fn, w=w, data=data):
                    k1, k2 = jax.random.split(k)
                    small = P.squared_grad_norms(f, w, P.draw_batches(k1, data, bs, draws))
                    big = P.squared_grad_norms(f, w, P.draw_batches(k2, data, bb, draws))
                    return P.noise_scale_from_norms(small, big, bs, bb)
            else:
                def est(k, bs=bs, bb=bb, draws=draws, f=loss_fn, w=w, data=data):
                    return P.gradient_noise_scale(f, w, data, k, b_small=bs, b_big=bb,
                                                  draws=draws)
            keys = jax.random.split(jax.random.key(int(target)), repeats)
            ns = jax.jit(jax.vmap(est))(keys)
            b, se = np.asarray(ns.b_simple, np.float64), np.asarray(ns.b_simple_se, np.float64)
            rel = b / exact - 1
            rows.append({"exact": exact, "estimator": kind, "b_small": bs, "b_big": bb,
                         "draws": draws, "rows": draws * (bb + bs * kind.startswith("indep")),
                         "bias": float(np.mean(rel)), "q10": float(np.quantile(b, 0.1)),
                         "q90": float(np.quantile(b, 0.9)), "negative": float(np.mean(b < 0)),
                         "rel_err": float(np.sqrt(np.mean(rel ** 2))),
                         "med_rel": float(np.median(np.abs(rel))),
                         "se_calibration": float(np.median(se) / np.std(b))})
    print(f"# commit {commit()}; linear regression d={d}, 20000 rows, {repeats} keys per row; "
          f"exact = the split's B_simple from exact per-example gradients (float64)")
    head = (f"{'exact':>8} {'estimator':<18} {'bs':>4} {'bb':>5} {'draws':>5} {'rows':>6} "
            f"{'bias':>7} {'10%':>8} {'90%':>8} {'neg':>5} {'rel err':>8} {'med rel':>8} "
            f"{'se/sd':>6}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['exact']:8.1f} {r['estimator']:<18} {r['b_small']:>4} {r['b_big']:>5} "
              f"{r['draws']:>5} {r['rows']:>6} {r['bias']:>7.1%} {r['q10']:>8.1f} "
              f"{r['q90']:>8.1f} {r['negative']:>5.0%} {r['rel_err']:>8.0%} "
              f"{r['med_rel']:>8.0%} {r['se_calibration']:>6.2f}")
    print(json.dumps({"bench": "noise_scale_accuracy", "commit": commit(), "rows": rows}))
    return rows


_GATHER_CHILD = """
import json, sys, time
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import jaxtune as jt
from jaxtune.probing import make_probe
pop, mode, reps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ds = jt.data.mnist1d()
exp = jt.Experiment(data=ds, model=jt.models.MLP(width=100, depth=2),
                    space=jt.Space(lr=jt.Real(1e-4, 1e-2, log=True)), steps=10, eval_every=10,
                    defaults={"batch_size": 128}, probes=jt.Probes())
static = exp.static_config({"lr": 1e-3})
member = jt.make_train(exp, static)
fn = jax.jit(jax.vmap(make_probe(exp, static, member), in_axes=(0, None, 0, None)))
devs = jax.devices()
mesh = Mesh(np.asarray(devs), ("pop",))
pop_s, rep_s = NamedSharding(mesh, PartitionSpec("pop")), NamedSharding(mesh, PartitionSpec())
data = jax.device_put(jt.data.train_arrays(ds), rep_s)
hp = exp.member_arrays([{"lr": 1e-3} for _ in range(pop)], static)
keys = jax.random.split(jax.random.key(0), pop)
states = jax.device_put(jax.jit(jax.vmap(member.init))(hp, keys), pop_s)
keys = jax.device_put(keys, pop_s)
if mode == "gathered":
    call = lambda s, d, k: fn(*jax.device_put((s, d, k), devs[0]), 0)
else:
    call = lambda s, d, k: fn(s, d, k, 0)
t0 = time.perf_counter()
jax.block_until_ready(call(states, data, keys))
first = time.perf_counter() - t0
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(call(states, data, keys))
    times.append(time.perf_counter() - t0)
print(json.dumps({"first_s": first, "best_s": min(times)}), flush=True)
"""


def gather_cost(populations: Sequence[int] = (16, 64), reps: int = 3, timeout: float = 180
                ) -> list[dict[str, Any]]:
    """Seconds of the engine's default probe (``Probes()``) on the MNIST-1D MLP, per population.

    Each case runs in its own process (XLA fixes the device count when the backend
    starts) under ``timeout`` seconds: one host device; two host devices with the
    population gathered on the first (the engine's workaround, the copy included);
    two host devices with the population partitioned over both (what the engine
    avoids; it may hang, reported as such).
    """
    import os
    import subprocess
    import sys

    rows = []
    with CpuMeter() as meter:
        for pop in populations:
            for devices, mode in ((1, "one device"), (2, "gathered"), (2, "partitioned")):
                env = {**os.environ, "JAX_PLATFORMS": "cpu",
                       "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
                row = {"population": pop, "devices": devices, "mode": mode}
                cmd = [sys.executable, "-c", _GATHER_CHILD, str(pop), mode, str(reps)]
                try:
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                         timeout=timeout)
                    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                    row |= json.loads(lines[-1]) if lines else {"error": out.stderr[-300:]}
                except subprocess.TimeoutExpired:
                    row["hung_s"] = timeout
                rows.append(row)
    one = {r["population"]: r.get("best_s") for r in rows if r["devices"] == 1}
    for r in rows:
        r["x_one_device"] = (r["best_s"] / one[r["population"]]
                             if "best_s" in r and one[r["population"]] else None)
    print(f"# commit {commit()}; default Probes() on the MNIST-1D MLP (15,210 params), best of "
          f"{reps} calls after the first; other processes used {meter.contention:.0%} of the "
          f"machine")
    head = f"{'P':>4} {'devices':>7} {'mode':<12} {'first s':>8} {'best s':>8} {'x 1 device':>10}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if "best_s" in r:
            print(f"{r['population']:>4} {r['devices']:>7} {r['mode']:<12} {r['first_s']:>8.2f} "
                  f"{r['best_s']:>8.3f} {r['x_one_device'] or float('nan'):>10.2f}")
        else:
            what = f"hung after {r['hung_s']:.0f} s" if "hung_s" in r else r.get("error")
            print(f"{r['population']:>4} {r['devices']:>7} {r['mode']:<12} {what}")
    print(json.dumps({"bench": "probe_gather_cost", "commit": commit(),
                      "contention": meter.contention, "rows": rows}))
    return rows


#: The engine's probes one at a time: ``Probes`` flags that switch on that probe alone
#: (each at its default settings; epsilon-sharpness at box 1e-3, 10 ascent steps).
PROBE_KINDS: dict[str, dict[str, Any]] = {
    "sharpness (Lanczos 20)": {"sharpness": True, "epsilon": None, "noise_scale": False,
                               "norms": False},
    "eps-sharpness (10 steps)": {"sharpness": False, "epsilon": 1e-3, "noise_scale": False,
                                 "norms": False},
    "noise scale (8 x 512)": {"sharpness": False, "epsilon": None, "noise_scale": True,
                              "norms": False},
    "norms": {"sharpness": False, "epsilon": None, "noise_scale": False, "norms": True},
}


def _probing_every(experiment: Any, every: int) -> None:
    """Makes ``experiment`` probe every ``every`` chunks, in place.

    ``Probes.every`` only decides after which chunks the engine calls the compiled
    probe (the population reads it after each chunk); no compiled program depends on
    it. Changing it on the one experiment lets every period reuse that experiment's
    compiled programs, instead of compiling the same programs again per period.
    """
    object.__setattr__(experiment, "probes",
                       dataclasses.replace(experiment.probes, every=every))


def engine_cost(populations: Sequence[int] = (16, 32, 64), every: Sequence[int] = (1, 4, 16),
                *, chunks: int = 16, chunk_steps: int = 25, reps: int = 2
                ) -> list[dict[str, Any]]:
    """Wall time per round of ``train_population`` with each probe on and off.

    A round is one ``train_population`` call of the built-in ``mnist1d-mlp`` (adamw,
    the zoo's sampled configurations) for ``chunks`` chunks of ``chunk_steps`` steps,
    the test split not evaluated. Per population size: the round with probes off, and
    with each probe of :data:`PROBE_KINDS` alone probing every ``e`` chunks
    (``Probes(every=e, final=False)``). Every program is compiled first (a one-chunk
    round, stopped by a scheduler); then each case runs right after its own round with
    probes off (``reps`` pairs; the pair with the smallest ratio is kept), so every
    ratio compares two rounds under about the same load. Overheads are given by wall
    time and by this process' CPU time (less sensitive to other processes).
    """
    import jaxtune as jt
    from jaxtune.population import Actions

    measured = commit()  # the code that runs, read once (a long run outlives a checkout)
    base, _, _ = jt.zoo.load("mnist1d-mlp", steps=chunks * chunk_steps, eval_every=chunk_steps)
    stop_all = lambda report: Actions(stop=list(report.slots))
    rows: list[dict[str, Any]] = []
    with CpuMeter() as meter:
        for pop in populations:
            configs = [c | {"optimizer": "adamw"} for c in base.space.sample(pop, seed=0)]
            exps = {"off": dataclasses.replace(base, probes=None)}
            exps |= {kind: dataclasses.replace(base, probes=jt.Probes(every=1, final=False,
                                                                      **flags))
                     for kind, flags in PROBE_KINDS.items()}
            programs = {kind: jt.Programs(e) for kind, e in exps.items()}
            compile_s = {}
            for kind, exp in exps.items():  # compile: a one-chunk round probing after it
                t0 = time.perf_counter()
                jt.train_population(exp, configs, programs=programs[kind], verbose=False,
                                    evaluate_test=False, scheduler=stop_all)
                compile_s[kind] = time.perf_counter() - t0
            cases = [(k, e) for k in PROBE_KINDS for e in every]

            def round_s(kind: str, exps=exps, configs=configs, programs=programs
                        ) -> tuple[float, float]:
                t0, c0 = time.perf_counter(), time.process_time()
                jt.train_population(exps[kind], configs, programs=programs[kind],
                                    verbose=False, evaluate_test=False)
                return time.perf_counter() - t0, time.process_time() - c0

            # each case next to its own round with probes off: a pair sees the same load
            pairs: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {
                c: [] for c in cases}
            for _ in range(reps):
                for kind, e in cases:
                    _probing_every(exps[kind], e)
                    off, on = round_s("off"), round_s(kind)
                    pairs[(kind, e)].append((*off, *on))
            for kind, e in cases:
                off_s, off_cpu, on_s, on_cpu = min(pairs[(kind, e)], key=lambda p: p[2] / p[0])
                probes = chunks // e
                rows.append({"population": pop, "probe": kind, "every": e, "probes": probes,
                             "off_s": off_s, "round_s": on_s, "pairs": pairs[(kind, e)],
                             "overhead": on_s / off_s - 1.0,
                             "cpu_overhead": on_cpu / off_cpu - 1.0,
                             "per_probe_s": (on_s - off_s) / probes,
                             "per_probe_x_chunk": (on_s - off_s) / probes / (off_s / chunks),
                             "first_round_s": compile_s[kind]})
                r = rows[-1]
                print(f"# P={pop} {kind} every {e}: off {off_s:.2f} s, on {on_s:.2f} s "
                      f"(+{r['overhead']:.0%}; CPU +{r['cpu_overhead']:.0%})", flush=True)
    print(f"# commit {measured}; mnist1d-mlp (adamw, zoo configurations), rounds of {chunks} "
          f"chunks x {chunk_steps} steps; best of {reps} (off, on) pairs per row; other "
          f"processes used {meter.contention:.0%} of the machine")
    head = (f"{'P':>3} {'probe':<26}{'every':>6}{'probes':>7}{'off s':>8}{'on s':>8}"
            f"{'overhead':>10}{'CPU ovh':>9}{'s/probe':>9}{'x chunk':>8}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['population']:>3} {r['probe']:<26}{r['every']:>6}{r['probes']:>7}"
              f"{r['off_s']:>8.2f}{r['round_s']:>8.2f}{r['overhead']:>10.0%}"
              f"{r['cpu_overhead']:>9.0%}{r['per_probe_s']:>9.3f}{r['per_probe_x_chunk']:>8.2f}")
    print("off / on s: a round with probes off and, next to it, the round with the probe on; "
          "overhead: on / off - 1 (the probe's cost as a fraction of training time), by wall "
          "time and by this process' CPU time; s/probe: the extra wall time per probe call; "
          "x chunk: that, in chunks of training")
    print(json.dumps({"bench": "probe_engine_cost", "commit": measured,
                      "contention": meter.contention, "chunks": chunks,
                      "chunk_steps": chunk_steps, "reps": reps, "rows": rows}))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark and prints one table per population size."""
    p = argparse.ArgumentParser(prog="bench_probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--populations", type=int, nargs="+", default=None,
                   help="population sizes (default 1 8; with --engine 16 32 64)")
    p.add_argument("--every", type=int, nargs="+", default=[1, 4, 16],
                   help="--engine: probe every N chunks")
    p.add_argument("--chunks", type=int, default=16, help="--engine: chunks per round")
    p.add_argument("--chunk-steps", type=int, default=25, help="--engine: steps per chunk")
    p.add_argument("--iters", type=int, default=20, help="power iterations / Lanczos order")
    p.add_argument("--sharp-steps", type=int, default=20)
    p.add_argument("--b-small", type=int, default=128)
    p.add_argument("--b-big", type=int, default=1024)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--scan", type=int, default=50, help="training steps per timed call")
    p.add_argument("--reps", type=int, default=None, help="timed calls (default 5; "
                   "--engine: 2 interleaved rounds)")
    p.add_argument("--examples", type=int, default=None,
                   help="probe on the first N training examples (default: the whole split)")
    p.add_argument("--engine", action="store_true",
                   help="time rounds of train_population with each probe on and off instead")
    p.add_argument("--noise-accuracy", action="store_true",
                   help="measure the noise-scale estimate's error against exact B_simple values")
    p.add_argument("--gather-cost", action="store_true",
                   help="time the engine's probe on 1 and 2 host devices (gathered, partitioned)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.populations is None:
        args.populations = [16, 32, 64] if args.engine else [1, 8]
    if args.reps is None:
        args.reps = 2 if args.engine else 5
    if args.gather_cost:
        return gather_cost(args.populations)
    if args.noise_accuracy:
        return noise_scale_accuracy()
    if args.engine:
        from jaxtune.devices import set_host_devices

        set_host_devices()
        return engine_cost(args.populations, args.every, chunks=args.chunks,
                           chunk_steps=args.chunk_steps, reps=args.reps)

    import jax

    import jaxtune as jt
    from jaxtune.probes import make_loss_fn

    ds = jt.data.mnist1d()
    exp = jt.Experiment(data=ds, model=jt.models.MLP(width=100, depth=2),
                        space=jt.Space(lr=jt.Real(1e-4, 1e-2, log=True)), steps=args.scan,
                        eval_every=args.scan, defaults={"batch_size": 128})
    static = exp.static_config({"lr": 1e-3})
    member = jt.make_train(exp, static)
    loss_fn = make_loss_fn(exp, static)
    split = (ds.x_train[:args.examples], ds.y_train[:args.examples])
    train_data = jt.data.train_arrays(ds)
    programs = probe_programs(loss_fn, split, iters=args.iters, sharp_steps=args.sharp_steps,
                              b_small=args.b_small, b_big=args.b_big, draws=args.draws)
    n_params = sum(x.size for x in jax.tree.leaves(
        exp.build_model(static).init(jax.random.key(0), ds.x_train[:1])))
    print(f"# commit {commit()}; {jax.devices()[0].platform} x {len(jax.devices())}; MLP "
          f"40-100-100-10 ({n_params} params); {ds.n_train} training examples, probes on "
          f"{split[0].shape[0]}; train step: "
          f"adamw, batch 128, shuffled; G = one gradient, HVP = one "
          f"Hessian-vector product, F = one forward pass (on the probes' examples)")

    def scan_steps(state):
        return jax.lax.scan(lambda s, _: (member.train_step(s, train_data), None),
                            state, None, length=args.scan)[0].step

    rows = []
    for pop in sorted(set(args.populations)):
        configs = [{"lr": 1e-3 * (1 + i / pop)} for i in range(pop)]
        hp = exp.member_arrays(configs, static)
        keys = jax.random.split(jax.random.key(0), pop)
        states = jax.jit(jax.vmap(member.init))(hp, keys)
        init_params = states.params
        train = jax.jit(jax.vmap(scan_steps))
        with CpuMeter() as meter:
            c, s = _best(train, states, reps=args.reps)
        step_s = s / args.scan / pop
        rows.append({"population": pop, "probe": f"training step (scan of {args.scan})",
                     "nominal": "", "compile_s": c, "member_ms": 1e3 * step_s, "ratio": 1.0,
                     "contention": meter.contention})
        params = jax.tree.map(lambda a: a * 1.01, init_params)  # away from init
        for name, (fn, nominal) in programs.items():
            prog = jax.jit(jax.vmap(fn))
            with CpuMeter() as meter:
                c, s = _best(prog, params, init_params, keys, reps=args.reps)
            rows.append({"population": pop, "probe": name, "nominal": nominal, "compile_s": c,
                         "member_ms": 1e3 * s / pop, "ratio": s / pop / step_s,
                         "contention": meter.contention})
        head = (f"{'probe (P=' + str(pop) + ')':<44} {'nominal':>22} {'ms/member':>10} "
                f"{'x step':>8} {'compile s':>9} {'busy':>5}")
        print("\n" + head + "\n" + "-" * len(head))
        for r in rows:
            if r["population"] == pop:
                print(f"{r['probe']:<44} {r['nominal']:>22} {r['member_ms']:>10.3f} "
                      f"{r['ratio']:>8.1f} {r['compile_s']:>9.2f} {r['contention']:>5.0%}")
    print("\nbusy: CPU used by other processes while timing, as a fraction of the machine")
    return rows
