"""The population engine against the strongest baseline a JAX user would write.

For each population size ``P`` the same ``P`` configurations (a prefix of one list
sampled from the space) are trained on the problem of
:mod:`jaxtune.benchmarks.baselines` (MNIST-1D MLP, Adam with coupled weight decay,
traced lr / weight decay / b1, batch 100 drawn with replacement, 1000 steps,
train and validation metrics every 250 steps) by:

* **jaxtune** — ``train_population`` with a fresh :class:`~jaxtune.Programs`
  cache. ``cold``: the persistent compilation cache points at an empty
  directory, so everything compiles (``compile_s`` is jaxtune's own compile
  time); ``warm``: a fresh cache object again, with the persistent cache filled
  by the cold run (what a second run of a study or test session pays,
  ``warm_compile_s``); ``steady``: the same population once more, nothing to
  compile or load.
* **strongest per-trial baseline** — :func:`~jaxtune.benchmarks.baselines.run_workers`
  with ``mode="jit_once"``: one trial after another, the chunk jitted once,
  in as many worker processes (one core each) as jaxtune has devices; compile
  and process start included; ``steady`` is the mean time of a trial after each
  worker's first, times the trials per worker.
* **per-trial recompile loop** — the same, every trial compiling its step (what
  an Optuna objective typically does).
* **hand-written vmap** — :func:`~jaxtune.benchmarks.baselines.hand_vmap`:
  the population as one ``jit(vmap(...))`` without jaxtune (its steady time
  against jaxtune's shows the cost of jaxtune's machinery).

The loops take the same time per trial whatever ``P``: they run the first
``--loop-trials`` configurations, and larger populations are extrapolated from
their steady per-trial time (the table marks them).

FLOPs come from XLA's cost analysis of the compiled programs: one member's
training step (forward, backward and optimizer update) and one member's chunk;
XLA counts a loop body once, so the chunk's count minus the step's is one
evaluation of the training and validation splits. Total FLOPs = steps x step
FLOPs + evaluations x evaluation FLOPs, per member. ``peak_fraction`` = the
achieved rate at steady state / the best large-matmul rate measured in the
same run (``n x n`` float32, on one device and sharded over all devices, timed
at the start, between populations and at the end). Each run prints the commit
measured and how much CPU other processes used while it ran (``contention``).

``--model cnn1d`` / ``--model cnn2d`` trains the MNIST-1D paper's CNN /
:class:`~jaxtune.models.CNN2D` on digits instead of the MLP (every side; the
baselines call Flax's plain ``nn.Conv``, jaxtune runs its convolutions as
``--conv`` says, see :mod:`jaxtune.conv`).

Usage::

    python experiments/bench_population.py --json
    python experiments/bench_population.py --model cnn2d --populations 16 --steps 200 \
        --eval-every 100 --batch 128 --no-recompile-loop --no-hand-vmap --json
    python experiments/bench_population.py --populations 64 --loop-trials 16
    jaxtune bench population --quick
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from jaxtune.benchmarks.common import CpuMeter, commit, matmul_gflops
from jaxtune.devices import set_host_devices

__all__ = ["flops_per_member", "main", "run_jaxtune"]


def _space():
    import jaxtune as jt

    return jt.Space(lr=jt.Real(1e-4, 3e-2, log=True),
                    weight_decay=jt.Real(1e-6, 1e-3, log=True),
                    b1=jt.Real(0.8, 0.95), optimizer=jt.Choice(["adam"], static=True))


def _experiment(data: Any, steps: int, eval_every: int, batch: int, data_order: str,
                model: str = "mlp", conv: str = "auto"):
    import jaxtune as jt
    from jaxtune.benchmarks.baselines import network

    return jt.Experiment(data=data, model=network(model),
                         space=_space(), steps=steps, eval_every=eval_every,
                         batch_mode="bucketed", defaults={"batch_size": batch},
                         data_order=data_order, name="bench_population", conv=conv)


def flops_per_member(experiment: Any, programs: Any, config: dict[str, Any]) -> dict[str, float]:
    """XLA's FLOP counts of one member: a training step and one evaluation."""
    import jax

    static = experiment.static_config(config)
    member = programs.member(static)
    state, data = programs.step_shapes(static)
    step = jax.jit(member.train_step).lower(state, data).compile()
    chunk = jax.jit(member.chunk).lower(state, data).compile()
    step_flops = float(step.cost_analysis()["flops"])
    return {"step": step_flops, "eval": float(chunk.cost_analysis()["flops"]) - step_flops}


def run_jaxtune(data: Any, configs: list[dict[str, Any]], *, steps: int, eval_every: int,
                batch: int, data_order: str, model: str = "mlp",
                conv: str = "auto") -> dict[str, Any]:
    """Cold (empty persistent cache), warm (filled cache, fresh program cache) and steady
    (nothing to compile) runs of ``train_population``."""
    import jax

    import jaxtune as jt

    exp = _experiment(data, steps, eval_every, batch, data_order, model, conv)
    saved = jax.config.jax_compilation_cache_dir
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            jt.compilation_cache.enable(tmp)
            for phase in ("cold", "warm"):
                programs = jt.Programs(exp)
                with CpuMeter() as meter:
                    t0 = time.perf_counter()
                    res = jt.train_population(exp, configs, programs=programs, progress=False,
                                              verbose=False)
                    out[f"{phase}_s"] = time.perf_counter() - t0
                out[f"{phase}_compile_s"] = res.compile_s
                out[f"contention_{phase}"] = meter.contention
            with CpuMeter() as meter:
                t0 = time.perf_counter()
                again = jt.train_population(exp, configs, programs=programs, progress=False,
                                            verbose=False)
                out["steady_s"] = time.perf_counter() - t0
            out["contention_steady"] = meter.contention
            if again.compiles:
                raise RuntimeError("the steady train_population call compiled again")
            out["flops"] = flops_per_member(exp, programs, configs[0])
    finally:
        jax.config.update("jax_compilation_cache_dir", saved)
    out["conv"] = programs.member(exp.static_config(configs[0])).conv
    out["val_accuracy"] = float(sum(again.final["val_accuracy"]) / len(again))
    out["diverged"] = sum(s == "diverged" for s in again.status)
    return out


def _loop_time(loop: dict[str, Any], p: int) -> tuple[float, float, bool]:
    """(compile-included, steady) wall time of ``p`` trials; extrapolated past the timed."""
    n, w = len(loop["trial_s"]), loop["workers"]
    steady = loop["steady_trial_s"] * -(-p // w)
    if p <= n:
        return (loop["wall_s"] if p == n else loop["wall_s"] * p / n), steady, False
    extra = (p - n) * loop["steady_trial_s"] / w
    return loop["wall_s"] + extra, steady, True


def _table(rows: list[dict[str, Any]], best: float, contention: dict[str, float]) -> str:
    head = (f"{'P':>5} {'jaxtune cold':>12} {'(compile)':>9} {'warm':>7} {'(compile)':>9} "
            f"{'steady':>7} {'strongest':>9} {'steady':>7} {'recompile':>9} {'hand vmap':>9} "
            f"{'x strong':>8} {'x steady':>8} {'x recomp':>8} {'x vmap':>7} {'GFLOP/s':>8} "
            f"{'peak':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        star = "*" if r["loop_extrapolated"] else " "
        lines.append(
            f"{r['population']:>5} {r['cold_s']:>12.1f} {r['cold_compile_s']:>9.1f} "
            f"{r['warm_s']:>7.1f} {r['warm_compile_s']:>9.1f} {r['steady_s']:>7.1f} "
            f"{r['strongest_s']:>8.1f}{star} {r['strongest_steady_s']:>6.1f}{star} "
            f"{r['recompile_s']:>8.1f}{star} {r['hand_vmap_steady_s']:>9.1f} "
            f"{r['speedup_vs_strongest']:>8.2f} {r['speedup_vs_strongest_steady']:>8.2f} "
            f"{r['speedup_vs_recompile_loop']:>8.2f} {r['speedup_vs_hand_vmap']:>7.2f} "
            f"{r['gflops']:>8.1f} {r['peak_fraction']:>5.2f}")
    busy = any(v > 0.1 for v in contention.values())
    notes = [
        "seconds of wall time; cold: empty persistent compilation cache; warm: a second "
        "process's view (cache filled, fresh program cache); steady: nothing to compile",
        "strongest: per-trial loop, chunk jitted once, hyperparameters in optimizer state, "
        "one worker process per jaxtune device; recompile: the step jitted per trial "
        "(typical Optuna objective), same workers; hand vmap: one jit(vmap(...)) without "
        "jaxtune, steady",
        "x strong = strongest / jaxtune cold (compile included on both sides); x steady = "
        "steady / steady; x recomp = recompile / jaxtune cold; x vmap = hand vmap steady / "
        "jaxtune steady",
        f"GFLOP/s at steady state (XLA cost analysis: steps x step + evaluations x evaluation "
        f"FLOPs); peak = GFLOP/s / the best matmul of the run ({best:.1f} GFLOP/s)",
        "contention (CPU used by other processes / capacity): " + ", ".join(
            f"{k} {v:.0%}" for k, v in contention.items())
        + ("  <- WARNING: the machine was shared; timings are not comparable" if busy else ""),
    ]
    if any(r["loop_extrapolated"] for r in rows):
        notes.append(f"* loops extrapolated from {rows[0]['loop_trials']} timed trials "
                     "(their steady time per trial)")
    return "\n".join([*lines, "", *notes])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; prints a table (and a JSON line with ``--json``).

    With an experiment first (``jaxtune bench population mnist1d-cnn``) it measures
    that experiment's own population at several sizes instead (:mod:`jaxtune.sizing`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        from jaxtune.sizing import main as sizes

        return sizes(argv)
    p = argparse.ArgumentParser(prog="bench_population", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn1d", "cnn2d"), default="mlp",
                   help="mlp / cnn1d on MNIST-1D, cnn2d on digits")
    p.add_argument("--conv", choices=("auto", "patches", "native"), default="auto",
                   help="jaxtune's convolutions (Experiment.conv); the baselines use nn.Conv")
    p.add_argument("--patches-loop", action="store_true",
                   help="also time the strongest loop with jaxtune.conv's patches (extra row)")
    p.add_argument("--no-hand-vmap", action="store_true",
                   help="skip the hand-written vmap (slow with nn.Conv on CPU)")
    p.add_argument("--populations", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--data-order", default="replacement",
                   help="jaxtune's data order (the baselines draw with replacement)")
    p.add_argument("--loop-trials", type=int, default=32,
                   help="trials the loops run; larger populations are extrapolated")
    p.add_argument("--no-recompile-loop", action="store_true")
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
    set_host_devices(args.devices)

    import jax

    from jaxtune.benchmarks import baselines

    data = baselines.dataset(args.model)
    pops = sorted(set(args.populations))
    configs = _space().sample(max(pops), seed=args.seed)
    n_dev = len(jax.devices())
    n_loop = min(args.loop_trials, max(pops))
    common = {"steps": args.steps, "eval_every": args.eval_every, "batch": args.batch,
              "model": args.model}
    loop_cfgs = [{k: c[k] for k in ("lr", "weight_decay", "b1")} for c in configs[:n_loop]]
    sha = commit()
    net = {"mlp": "MLP 40-100-100-10", "cnn1d": "MNIST-1D CNN1D",
           "cnn2d": "digits CNN2D"}[args.model]
    print(f"# commit {sha}; {jax.devices()[0].platform} x {n_dev} devices; {net}, "
          f"conv={args.conv}, batch {args.batch}, {args.steps} steps, eval every "
          f"{args.eval_every}; loops over "
          f"the first {n_loop} configurations in {n_dev} worker(s)", flush=True)
    matmuls = [matmul_gflops(args.matmul_n)["gflops"]]
    contention: dict[str, float] = {}
    with CpuMeter() as m:
        strongest = baselines.run_workers(loop_cfgs, workers=n_dev, mode="jit_once", **common)
    contention["strongest"] = m.contention
    patches_loop = None
    if args.patches_loop:
        with CpuMeter() as m:
            patches_loop = baselines.run_workers(loop_cfgs, workers=n_dev, mode="jit_once",
                                                 conv="patches", **common)
        contention["patches_loop"] = m.contention
    recompile = None
    if not args.no_recompile_loop:
        with CpuMeter() as m:
            recompile = baselines.run_workers(loop_cfgs, workers=n_dev, mode="recompile",
                                              **common)
        contention["recompile"] = m.contention
    rows = []
    for pop in pops:
        ours = run_jaxtune(data, configs[:pop], data_order=args.data_order, conv=args.conv,
                           **common)
        contention[f"jaxtune_P{pop}"] = ours["contention_steady"]
        vmap = {"first_s": math.nan, "steady_s": math.nan}
        if not args.no_hand_vmap:
            with CpuMeter() as m:
                vmap = baselines.hand_vmap(
                    data, [{k: c[k] for k in ("lr", "weight_decay", "b1")}
                           for c in configs[:pop]], **common)
            contention[f"hand_vmap_P{pop}"] = m.contention
        matmuls.append(matmul_gflops(args.matmul_n)["gflops"])
        strong_s, strong_steady, extrapolated = _loop_time(strongest, pop)
        recomp_s = _loop_time(recompile, pop)[0] if recompile else float("nan")
        patches_s, patches_steady = (_loop_time(patches_loop, pop)[:2] if patches_loop
                                     else (math.nan, math.nan))
        f = ours.pop("flops")
        flops = pop * (args.steps * f["step"] + args.steps // args.eval_every * f["eval"])
        rows.append({
            "population": pop, **ours, "strongest_s": strong_s,
            "strongest_steady_s": strong_steady, "recompile_s": recomp_s,
            "hand_vmap_first_s": vmap["first_s"], "hand_vmap_steady_s": vmap["steady_s"],
            "loop_extrapolated": extrapolated, "loop_trials": n_loop,
            "patches_loop_s": patches_s, "patches_loop_steady_s": patches_steady,
            "speedup_vs_patches_loop": patches_s / ours["cold_s"],
            "speedup_vs_patches_loop_steady": patches_steady / ours["steady_s"],
            "speedup_vs_strongest": strong_s / ours["cold_s"],
            "speedup_vs_strongest_steady": strong_steady / ours["steady_s"],
            "speedup_vs_recompile_loop": recomp_s / ours["cold_s"],
            "speedup_vs_hand_vmap": vmap["steady_s"] / ours["steady_s"],
            "member_steps_per_s": pop * args.steps / ours["steady_s"],
            "flops_step": f["step"], "flops_eval": f["eval"],
            "gflops": flops / ours["steady_s"] / 1e9,
        })
        print(f"# P={pop}: jaxtune cold {ours['cold_s']:.1f}s, steady {ours['steady_s']:.1f}s; "
              f"strongest {strong_s:.1f}s; hand vmap {vmap['steady_s']:.1f}s", flush=True)
    matmuls.append(matmul_gflops(args.matmul_n)["gflops"])
    best = max(matmuls)
    for r in rows:
        r["peak_fraction"] = r["gflops"] / best
    print(_table(rows, best, contention))
    if patches_loop:
        for r in rows:
            print(f"extra: strongest loop with jaxtune.conv patches P={r['population']}: "
                  f"{r['patches_loop_s']:.1f}s (steady {r['patches_loop_steady_s']:.1f}s); "
                  f"jaxtune {r['speedup_vs_patches_loop']:.2f}x faster "
                  f"({r['speedup_vs_patches_loop_steady']:.2f}x at steady state)")
    head = next((r for r in rows if r["population"] == 64), rows[-1])
    result = {
        "commit": sha, "population": head["population"],
        **{k: head[k] for k in ("speedup_vs_strongest", "speedup_vs_strongest_steady",
                                "speedup_vs_recompile_loop", "speedup_vs_hand_vmap",
                                "peak_fraction", "gflops", "member_steps_per_s")},
        "compile_s": head["cold_compile_s"], "warm_compile_s": head["warm_compile_s"],
        "matmul_gflops_best": best, "contention": contention, "rows": rows,
        "device": jax.devices()[0].platform, "n_devices": n_dev, "steps": args.steps,
        "batch": args.batch, "eval_every": args.eval_every, "data_order": args.data_order,
        "loop_workers": n_dev, "loop_trials": n_loop, "model": args.model,
        "conv": head["conv"],
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
