"""Wall time of compiling a bucket's programs (``init``, ``chunk``, ``merge``), per variant.

Each repeat compiles the same bucket once per variant, in turn (interleaved, so a
change in the machine's load hits every variant alike), with JAX's persistent
cache and the program store off and JAX's in-memory caches cleared: every
``Programs(...).get(...)`` traces, lowers and compiles from scratch. Variants:

* ``default``: the engine as it is (``init``, ``merge`` and ``chunk`` one after the
  other, XLA's default options);
* ``--options NAME=JSON``: more variants with other settings of
  :mod:`jaxtune.programs`, e.g. XLA options in ``CPU_COMPILER_OPTIONS`` or another
  ``CPU_GROUP``.

Each time is wall seconds and the process's CPU seconds (less sensitive to other
work on the machine, whose share is printed as contention,
:class:`~jaxtune.benchmarks.common.CpuMeter`). ``--steady N`` then times ``N``
interleaved chunk calls of each variant's program (wall and CPU), and checks
whether the variants train the same members to the same metrics (XLA's options
may round differently). Prints a table and a JSON line.

Models: ``cnn1d``, ``cnn2d`` and ``mlp`` are the population benchmark's experiments
(batch 128, 200 steps, evaluations every 100, :mod:`jaxtune.benchmarks.population`);
any other name is a built-in experiment (``mnist1d-mlp``: the main job, whose
chunk switches between row capacities 16..256) at its first sampled bucket.

Example:
    >>> from jaxtune.benchmarks.compile import VARIANTS
    >>> sorted(VARIANTS)
    ['default']
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from jaxtune.benchmarks.common import CpuMeter, commit
from jaxtune.devices import set_host_devices

__all__ = ["VARIANTS", "main"]

#: variant -> settings of :mod:`jaxtune.programs` while it compiles
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"CPU_COMPILER_OPTIONS": {}},
}


def _experiment(model: str) -> tuple[Any, dict[str, Any]]:
    """The experiment and one configuration of the bucket to compile."""
    import jaxtune as jt

    if model in ("cnn1d", "cnn2d", "mlp"):
        from jaxtune.benchmarks import baselines
        from jaxtune.benchmarks.population import _experiment as population_experiment
        from jaxtune.benchmarks.population import _space

        exp = population_experiment(baselines.dataset(model), 200, 100, 128, "replacement",
                                    model)
        return exp, _space().sample(1, seed=0)[0]
    exp = jt.zoo.load(model)[0]
    return exp, exp.space.sample(1, seed=0)[0]


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _compile_once(exp: Any, config: dict[str, Any], size: int, settings: dict[str, Any]
                  ) -> tuple[float, float, float, Any]:
    """(wall s, CPU s, contention, program) of one fresh ``Programs.get``."""
    import jax

    import jaxtune as jt
    from jaxtune import programs as programs_module

    saved = {k: getattr(programs_module, k) for k in settings}
    jax.clear_caches()
    try:
        for k, v in settings.items():
            setattr(programs_module, k, v)
        programs = jt.Programs(exp)
        static = exp.static_config(config)
        programs.member(static)  # built (model checked) outside the timing
        with CpuMeter() as meter:
            t0, c0 = time.perf_counter(), _cpu_s()
            program, _ = programs.get(static, size)
            wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    finally:
        for k, v in saved.items():
            setattr(programs_module, k, v)
    return wall, cpu, meter.contention, program


def _steady(exp: Any, config: dict[str, Any], size: int, programs: dict[str, Any],
            calls: int) -> dict[str, Any]:
    """Interleaved chunk calls of each variant's program: wall and CPU seconds per call,
    and each variant's largest metric difference from the first variant's."""
    import jax
    import numpy as np

    import jaxtune as jt

    static = exp.static_config(config)
    configs = [{**c, **{k: v for k, v in config.items() if k in static}}
               for c in exp.space.sample(size, seed=1)]
    hp = exp.member_arrays(configs, static, check=False)
    keys = jax.random.split(jax.random.key(2), size)
    data = jt.data.train_arrays(exp.data)
    metrics = {v: jax.device_get(p.chunk(p.init(hp, keys), data)[1])
               for v, p in programs.items()}
    first = next(iter(metrics.values()))
    diff = {v: max(float(np.max(np.abs(np.asarray(m[k], np.float64)
                                       - np.asarray(first[k], np.float64)))) for k in first)
            for v, m in metrics.items()}
    wall: dict[str, list[float]] = {v: [] for v in programs}
    cpu: dict[str, list[float]] = {v: [] for v in programs}
    contention = []
    for _ in range(calls):
        for v, p in programs.items():
            state = jax.block_until_ready(p.init(hp, keys))
            with CpuMeter() as meter:
                t0, c0 = time.perf_counter(), _cpu_s()
                jax.block_until_ready(p.chunk(state, data))
                wall[v].append(time.perf_counter() - t0)
                cpu[v].append(_cpu_s() - c0)
            contention.append(meter.contention)
    return {"wall_s": {v: statistics.median(w) for v, w in wall.items()},
            "cpu_s": {v: statistics.median(c) for v, c in cpu.items()},
            "max_metric_diff": diff, "contention": [min(contention), max(contention)]}


def run(model: str, size: int, repeats: int, variants: Sequence[str], steady: int = 0
        ) -> dict[str, Any]:
    """Times ``repeats`` interleaved compiles of each variant."""
    import jax

    import jaxtune as jt

    saved = jax.config.jax_compilation_cache_dir
    jt.compilation_cache.disable()
    try:
        exp, config = _experiment(model)
        _compile_once(exp, config, size, VARIANTS[variants[0]])  # XLA's one-time start-up
        walls: dict[str, list[float]] = {v: [] for v in variants}
        cpus: dict[str, list[float]] = {v: [] for v in variants}
        contention: dict[str, list[float]] = {v: [] for v in variants}
        programs: dict[str, Any] = {}
        for r in range(repeats):
            for v in variants:
                wall, cpu, cont, programs[v] = _compile_once(exp, config, size, VARIANTS[v])
                walls[v].append(wall)
                cpus[v].append(cpu)
                contention[v].append(cont)
                print(f"  {model} repeat {r}: {v:12s} {wall:6.2f} s ({cpu:.2f} CPU-s), "
                      f"contention {cont:.2f}", flush=True)
        runs = _steady(exp, config, size, programs, steady) if steady else None
    finally:
        jax.config.update("jax_compilation_cache_dir", saved)
    base = statistics.median(walls[variants[0]])
    rows = {v: {"median_s": statistics.median(walls[v]), "min_s": min(walls[v]),
                "max_s": max(walls[v]), "walls_s": walls[v],
                "cpu_s": statistics.median(cpus[v]),
                "x_first": base / statistics.median(walls[v]),
                "contention": contention[v]} for v in variants}
    return {"model": model, "size": size, "repeats": repeats, "rows": rows, "steady": runs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; prints a table (and a JSON line with ``--json``)."""
    p = argparse.ArgumentParser(prog="bench_compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["cnn1d", "cnn2d", "mnist1d-mlp"])
    p.add_argument("--size", type=int, default=16, help="population size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--options", nargs="*", default=[], metavar="NAME=JSON",
                   help="extra variants: settings of jaxtune.programs, e.g. "
                        "'o1={\"CPU_COMPILER_OPTIONS\": "
                        "{\"xla_backend_optimization_level\": 1}}'")
    p.add_argument("--steady", type=int, default=0, metavar="N",
                   help="also time N interleaved chunk calls of each variant")
    p.add_argument("--devices", type=int, default=None,
                   help="host devices on CPU (default: one per core)")
    p.add_argument("--json", action="store_true", help="print a last line of JSON")
    args = p.parse_args(argv)
    for extra in args.options:
        name, _, options = extra.partition("=")
        VARIANTS[name] = {"CPU_COMPILER_OPTIONS": {}, **json.loads(options)}
        if name not in args.variants:
            args.variants.append(name)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    set_host_devices(args.devices)

    import jax

    print(f"# commit {commit()}; {jax.devices()[0].platform} x {len(jax.devices())} devices; "
          f"population {args.size}; {args.repeats} interleaved repeats", flush=True)
    results = [run(m, args.size, args.repeats, args.variants, args.steady)
               for m in args.models]
    first = args.variants[0]
    print(f"\n| model | variant | compile s, median | min | max | CPU s | x {first} | "
          "contention | chunk s (CPU s) | max metric diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for res in results:
        steady = res["steady"]
        for v, row in res["rows"].items():
            chunk = (f"{steady['wall_s'][v]:.3f} ({steady['cpu_s'][v]:.3f}) | "
                     f"{steady['max_metric_diff'][v]:.1e}" if steady else "- | -")
            print(f"| {res['model']} | {v} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
                  f"{row['max_s']:.2f} | {row['cpu_s']:.2f} | {row['x_first']:.2f} | "
                  f"{min(row['contention']):.2f}-{max(row['contention']):.2f} | {chunk} |")
        if steady:
            print(f"(contention during the chunk calls: {steady['contention'][0]:.2f}-"
                  f"{steady['contention'][1]:.2f})")
    out = {"benchmark": "compile", "commit": commit(), "results": results}
    if args.json:
        print(json.dumps(out))
    return out
