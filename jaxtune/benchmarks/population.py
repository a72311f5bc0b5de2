"""The population engine against the trial loop an Optuna user writes.

Problem: the MNIST-1D paper's MLP (40-100-100-10, float32, ReLU) trained with
Adam (+ coupled weight decay) on minibatches of ``--batch`` examples drawn on
the device, ``--steps`` steps, train/validation loss and accuracy every
``--eval-every`` steps. FLOPs are counted as ``6 x parameters x batch`` per
member-step (training only; evaluations are not counted).

For each population size ``P`` (``--populations``), the same ``P``
configurations (a prefix of one list sampled from the space) are trained

* by jaxtune: ``jt.train_population(experiment, configs)`` on a fresh
  :class:`~jaxtune.experiment.Experiment`, compile included (the honest number,
  ``jaxtune_s``), then a second time on the same experiment, where nothing
  compiles (``steady_s``; the achieved GFLOP/s and ``peak_fraction`` use it);
* by the loop an Optuna user writes: ``study.optimize`` over enqueued
  configurations, one trial after another, each trial building its optimizer
  from ``trial.suggest_*`` values and calling a ``jax.jit``-ted step from
  Python. Two variants are timed:

  - ``loop`` (used for ``speedup_vs_loop``): the step is defined and jitted
    *inside* the objective, closing over ``optax.adam(lr)``: that is what an
    Optuna objective typically looks like (Optuna's own JAX/Flax examples build
    the model and optimizer inside the objective), and it compiles every trial;
  - ``loop_jit_once``: a tuned loop whose step is jitted once with the
    hyperparameters in the optimizer state (``optax.inject_hyperparams``), so
    only the first trial compiles.

  The loop's time per trial does not depend on ``P``: the loop runs the first
  ``--loop-trials`` configurations once; a population of at most that many
  reads the time of exactly its trials, a larger one is extrapolated
  (first trials' time + mean time of the later trials x remaining trials; the
  table says so).

Peak: a large float32 matmul (``n x n``, ``2 n^3`` FLOPs, best of several
repetitions after a warm-up) timed on one device and sharded over all devices
(the faster is the reference), right before and right after each steady run.
``peak_fraction`` = steady-state population GFLOP/s / the faster of those two
(``peak_fraction_vs_best_matmul`` divides by the best matmul of the whole run).

Shared machines: the CPU time other processes (and the hypervisor) take while
each part is timed is reported as ``contention``; the table warns when it
exceeds 10%. Slowdowns from outside the virtual machine are not visible there,
which is why the reference matmul is timed next to each measurement.

Devices: on CPU jaxtune shards the population over ``jax.devices()``; XLA
exposes one host device per core only if
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set before the
backend starts. :func:`main` sets it to ``--devices`` (default: the number of
cores) unless ``XLA_FLAGS`` already names it; jax is imported lazily.

Usage::

    python experiments/bench_population.py --json
    jaxtune bench population --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from jaxtune.benchmarks.common import CpuMeter, matmul_gflops
from jaxtune.devices import set_host_devices

__all__ = ["main", "run_jaxtune", "run_loop"]

LOOP_CHOICE = ("speedup_vs_loop uses the per-trial-compile loop (an Optuna objective "
               "builds optax.adam(trial.suggest_float(...)) and jits its step inside the "
               "objective, so each trial compiles)")


# -- the problem ----------------------------------------------------------------------

def _space():
    import jaxtune as jt

    return jt.Space(lr=jt.Real(1e-4, 3e-2, log=True),
                    weight_decay=jt.Real(1e-6, 1e-3, log=True),
                    b1=jt.Real(0.8, 0.95),
                    optimizer=jt.Choice(["adam"], static=True))


def _model():
    import jaxtune as jt

    return jt.models.MLP(width=100, depth=2, num_outputs=10)


def count_params() -> int:
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: _model().init(jax.random.key(0), jnp.zeros((1, 40))))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def _experiment(data: Any, steps: int, eval_every: int, batch: int):
    import jaxtune as jt

    return jt.Experiment(data=data, model=_model(), space=_space(), steps=steps,
                         eval_every=eval_every, batch_mode="bucketed",
                         defaults={"batch_size": batch}, name="bench_population")


# -- jaxtune --------------------------------------------------------------------------

def run_jaxtune(data: Any, configs: list[dict[str, Any]], *, steps: int, eval_every: int,
                batch: int, matmul_n: int = 2048) -> dict[str, Any]:
    """Times ``train_population`` on a fresh experiment, then again (nothing compiles).

    The reference matmul is timed right before and after the steady call (the
    faster of the two is ``matmul_gflops_adjacent``), and the CPU time other
    processes used during each call is recorded (``contention_*``).
    """
    import numpy as np

    import jaxtune as jt

    exp = _experiment(data, steps, eval_every, batch)
    with CpuMeter() as m1:
        t0 = time.perf_counter()
        first = jt.train_population(exp, configs, progress=False, verbose=False)
        total = time.perf_counter() - t0
    before = matmul_gflops(matmul_n)["gflops"]
    with CpuMeter() as m2:
        t0 = time.perf_counter()
        again = jt.train_population(exp, configs, progress=False, verbose=False)
        steady = time.perf_counter() - t0
    after = matmul_gflops(matmul_n)["gflops"]
    if again.compiles:
        raise RuntimeError("the second train_population call compiled again")
    return {"jaxtune_s": total, "compile_s": first.compile_s, "steady_s": steady,
            "compiles": first.compiles, "buckets": first.buckets,
            "diverged": int(sum(s == "diverged" for s in first.status)),
            "val_accuracy": float(np.nanmean(first.final["val_accuracy"])),
            "matmul_gflops_adjacent": max(before, after),
            "contention_first": m1.contention, "contention_steady": m2.contention}


# -- the Optuna user's loop -----------------------------------------------------------

class _FixedTrial:
    """Stands in for an Optuna trial when Optuna is not installed."""

    def __init__(self, number: int, config: dict[str, Any]):
        self.number, self._config = number, config

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        del low, high, log
        return float(self._config[name])

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        del choices
        return self._config[name]

    def report(self, value: float, step: int) -> None:
        pass


def _loop_tools(data: Any, batch: int):
    """What a loop user writes once, outside the objective: loss and evaluation."""
    import jax
    import jax.numpy as jnp
    import optax

    model = _model()

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def evaluate(params, x, y):
        logits = model.apply(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    def batch_of(key, x, y):
        idx = jax.random.randint(key, (batch,), 0, x.shape[0])
        return x[idx], y[idx]

    def adam_wd(learning_rate, weight_decay, b1):
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.adam(learning_rate, b1=b1))

    # The tuned variant: one transformation whose numbers live in its state.
    tx_once = optax.inject_hyperparams(adam_wd)(learning_rate=0.0, weight_decay=0.0, b1=0.9)

    @jax.jit
    def step_once(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        xb, yb = batch_of(sub, x, y)
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = tx_once.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    return model, loss_fn, evaluate, batch_of, adam_wd, step_once


def _objective(data: Any, *, steps: int, eval_every: int, batch: int, jit_once: bool,
               times: list[float], accs: list[float]):
    import jax
    import optax

    model, loss_fn, evaluate, batch_of, adam_wd, step_once = _loop_tools(data, batch)
    space = _space()
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val

    def objective(trial) -> float:
        t0 = time.perf_counter()
        lr = trial.suggest_float("lr", space["lr"].low, space["lr"].high, log=True)
        wd = trial.suggest_float("weight_decay", space["weight_decay"].low,
                                 space["weight_decay"].high, log=True)
        b1 = trial.suggest_float("b1", space["b1"].low, space["b1"].high)
        trial.suggest_categorical("optimizer", ["adam"])
        key = jax.random.key(trial.number)
        init_key, key = jax.random.split(key)
        params = model.init(init_key, x[:1])
        if jit_once:
            opt_state = optax.inject_hyperparams(adam_wd)(
                learning_rate=lr, weight_decay=wd, b1=b1).init(params)
            step = step_once
        else:
            tx = adam_wd(lr, wd, b1)
            opt_state = tx.init(params)

            @jax.jit
            def step(params, opt_state, key, x, y):
                key, sub = jax.random.split(key)
                xb, yb = batch_of(sub, x, y)
                loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, key, loss

        val_acc = math.nan
        for i in range(1, steps + 1):
            params, opt_state, key, _ = step(params, opt_state, key, x, y)
            if i % eval_every == 0 or i == steps:
                evaluate(params, x, y)  # train loss/accuracy, as the engine records
                _, acc = evaluate(params, xv, yv)
                val_acc = float(acc)
                trial.report(val_acc, i)
        times.append(time.perf_counter() - t0)
        accs.append(val_acc)
        return val_acc

    return objective


def run_loop(data: Any, configs: list[dict[str, Any]], *, steps: int, eval_every: int,
             batch: int, jit_once: bool) -> dict[str, Any]:
    """Runs the configurations one trial after another; per-trial wall times."""
    times: list[float] = []
    accs: list[float] = []
    objective = _objective(data, steps=steps, eval_every=eval_every, batch=batch,
                           jit_once=jit_once, times=times, accs=accs)
    ends: list[float] = []
    meter = CpuMeter().__enter__()
    t0 = time.perf_counter()
    try:
        import optuna
    except ImportError:
        optuna = None
    if optuna is not None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for c in configs:
            study.enqueue_trial(dict(c))
        study.optimize(objective, n_trials=len(configs),
                       callbacks=[lambda s, t: ends.append(time.perf_counter() - t0)])
    else:
        for i, c in enumerate(configs):
            objective(_FixedTrial(i, c))
            ends.append(time.perf_counter() - t0)
    meter.__exit__()
    return {"ends": ends, "trial_s": times, "val_accuracy": accs, "contention": meter.contention,
            "runner": "optuna " + optuna.__version__ if optuna else "plain loop"}


def _loop_time(loop: dict[str, Any], p: int) -> tuple[float, bool]:
    """Wall time of the first ``p`` trials, extrapolated past the timed ones."""
    ends = loop["ends"]
    if p <= len(ends):
        return ends[p - 1], False
    later = (ends[-1] - ends[0]) / max(len(ends) - 1, 1)
    return ends[-1] + (p - len(ends)) * later, True


# -- the report -----------------------------------------------------------------------

def _table(rows: list[dict[str, Any]], peak: dict[str, float], best: float,
           contention: dict[str, float]) -> str:
    head = (f"{'P':>5} {'jaxtune s':>10} {'(compile)':>9} {'steady s':>9} {'loop s':>9} "
            f"{'speedup':>8} {'loop1jit s':>10} {'speedup':>8} {'memb-steps/s':>12} "
            f"{'GFLOP/s':>8} {'peak frac':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        star = "*" if r["loop_extrapolated"] else " "
        lines.append(
            f"{r['population']:>5} {r['jaxtune_s']:>10.2f} {r['compile_s']:>9.2f} "
            f"{r['steady_s']:>9.2f} {r['loop_s']:>8.1f}{star} {r['speedup_vs_loop']:>8.1f} "
            f"{r['loop_jit_once_s']:>9.1f}{star} {r['speedup_vs_loop_jit_once']:>8.1f} "
            f"{r['member_steps_per_s']:>12.0f} {r['gflops']:>8.1f} {r['peak_fraction']:>9.3f}")
    adjacent = ", ".join(f"P={r['population']}: {r['matmul_gflops_adjacent']:.1f}" for r in rows)
    notes = [
        f"matmul reference ({peak['n']}x{peak['n']} float32, best of one device and all devices): "
        f"timed next to each steady run ({adjacent}); best in the run {best:.1f} GFLOP/s; "
        "peak frac = GFLOP/s / the adjacent matmul",
        "jaxtune s: fresh Experiment, compile included; steady s: second call, nothing "
        "compiles; GFLOP/s, memb-steps/s and peak frac use steady s",
        "speedup = loop s / jaxtune s (compile included on both sides); " + LOOP_CHOICE,
        "loop1jit: the loop with its step jitted once (hyperparameters in optax "
        "inject_hyperparams state)",
    ]
    busy = {k: v for k, v in contention.items() if v > 0.1}
    notes.append("contention (CPU used by other processes / capacity): " + ", ".join(
        f"{k} {v:.0%}" for k, v in contention.items())
        + ("  <- WARNING: the machine was shared; timings are not comparable" if busy else ""))
    ext = [r for r in rows if r["loop_extrapolated"]]
    if ext:
        notes.append(f"* loop time extrapolated from {ext[0]['loop_trials']} timed trials")
    return "\n".join([*lines, "", *notes])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; prints a table (and a JSON line with ``--json``)."""
    p = argparse.ArgumentParser(prog="bench_population", description=__doc__.split("\n\n")[0])
    p.add_argument("--populations", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--loop-trials", type=int, default=64,
                   help="trials the loops run; larger populations are extrapolated")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--devices", type=int, default=None,
                   help="host devices on CPU (default: one per core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--json", action="store_true", help="print a last line of JSON")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.populations, args.steps, args.eval_every = [4, 8], 100, 50
        args.loop_trials, args.matmul_n = 4, 512
    n_dev = args.devices or os.cpu_count() or 1
    if not set_host_devices(n_dev) and args.devices is not None:
        print(f"note: XLA_FLAGS or a started backend fixes the device count; --devices "
              f"{args.devices} ignored", file=sys.stderr)

    import jax

    import jaxtune as jt

    data = jt.data.mnist1d()
    n_params = count_params()
    peak = matmul_gflops(args.matmul_n)
    pops = sorted(set(args.populations))
    configs = _space().sample(max(pops), seed=args.seed)
    n_loop = min(args.loop_trials, max(pops))
    common = {"steps": args.steps, "eval_every": args.eval_every, "batch": args.batch}
    print(f"# {jax.devices()[0].platform} x {len(jax.devices())} devices; MLP 40-100-100-10 "
          f"({n_params} params), batch {args.batch}, {args.steps} steps, eval every "
          f"{args.eval_every}; loops over the first {n_loop} configurations", flush=True)
    loop = run_loop(data, configs[:n_loop], jit_once=False, **common)
    loop_once = run_loop(data, configs[:n_loop], jit_once=True, **common)
    rows = []
    for pop in pops:
        jt_res = run_jaxtune(data, configs[:pop], matmul_n=args.matmul_n, **common)
        loop_s, extrapolated = _loop_time(loop, pop)
        once_s, _ = _loop_time(loop_once, pop)
        flops = 6 * n_params * args.batch * args.steps * pop
        gflops = flops / jt_res["steady_s"] / 1e9
        k = min(pop, n_loop)
        rows.append({
            "population": pop, **{k2: v for k2, v in jt_res.items() if k2 != "buckets"},
            "loop_s": loop_s, "loop_jit_once_s": once_s, "loop_extrapolated": extrapolated,
            "loop_trials": min(pop, n_loop),
            "speedup_vs_loop": loop_s / jt_res["jaxtune_s"],
            "speedup_vs_loop_jit_once": once_s / jt_res["jaxtune_s"],
            "speedup_steady_vs_loop": loop_s / jt_res["steady_s"],
            "member_steps_per_s": pop * args.steps / jt_res["steady_s"],
            "gflops": gflops, "gflops_with_compile": flops / jt_res["jaxtune_s"] / 1e9,
            "peak_fraction": gflops / jt_res["matmul_gflops_adjacent"],
            "loop_val_accuracy": float(sum(loop["val_accuracy"][:k]) / k),
        })
        print(f"# P={pop}: jaxtune {jt_res['jaxtune_s']:.1f}s (steady {jt_res['steady_s']:.1f}s), "
              f"loop {loop_s:.1f}s", flush=True)
    peak_end = matmul_gflops(args.matmul_n)  # the machine may be busier at one end
    if peak_end["gflops"] > peak["gflops"]:
        peak = peak_end
    best = max([peak["gflops"]] + [r["matmul_gflops_adjacent"] for r in rows])
    for r in rows:
        r["peak_fraction_vs_best_matmul"] = r["gflops"] / best
    contention = {"loop": loop["contention"], "loop_jit_once": loop_once["contention"],
                  **{f"jaxtune_P{r['population']}": r["contention_steady"] for r in rows}}
    print(_table(rows, peak, best, contention))
    headline = next((r for r in rows if r["population"] == 64), rows[-1])
    result = {
        "population": headline["population"],
        "speedup_vs_loop": headline["speedup_vs_loop"],
        "speedup_vs_loop_jit_once": headline["speedup_vs_loop_jit_once"],
        "peak_fraction": headline["peak_fraction"],
        "peak_fraction_vs_best_matmul": headline["peak_fraction_vs_best_matmul"],
        "matmul_gflops": headline["matmul_gflops_adjacent"],
        "matmul_gflops_best": best,
        "contention": contention,
        "gflops": headline["gflops"],
        "rows": rows,
        "device": str(jax.devices()[0].platform),
        "n_devices": len(jax.devices()),
        "params": n_params, "steps": args.steps, "batch": args.batch,
        "eval_every": args.eval_every, "loop_runner": loop["runner"],
        "loop_choice": LOOP_CHOICE,
        "flops_per_member_step": 6 * n_params * args.batch,
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
