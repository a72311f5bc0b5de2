"""How many members to train at once: member-steps per second against population size.

A population pays when its members share the device: on an accelerator the
cost of a chunk barely grows with the members until the device is full; on a
CPU the cores fill after a few members. Beyond that point more members only
delay feedback (the searcher learns after each chunk, so a larger population
trains more configurations chosen with less knowledge). :func:`throughput`
measures member-steps per second of an experiment's own program at several
sizes on this machine; :func:`recommend` takes the smallest size within
``tolerance`` (25%) of the best; a population of 1 is the per-member loop of the same
compiled step (what training configurations one after the other costs).

Measurements are cached per (experiment specification, bucket, sizes, device
kind and count, JAX version) in ``~/.cache/jaxtune/sizing.json``
(``JAXTUNE_CACHE_DIR`` moves it), so :func:`default_population` measures once per
machine and experiment. Each entry records the machine's contention while it was
measured (the CPU time other processes used, :class:`~jaxtune.benchmarks.common.CpuMeter`).
A measurement above :data:`BUSY` is used by its run and cached marked busy: a later
run first samples the contention for a second (:func:`contention_now`) and, if the
machine is quiet now, measures again and replaces it; on a machine still busy it
uses the busy entry (measuring again would be as busy).

Example:
    >>> rows = [{"size": 4, "member_steps_per_s": 900.0},
    ...         {"size": 8, "member_steps_per_s": 1500.0},
    ...         {"size": 16, "member_steps_per_s": 1580.0}]
    >>> recommend(rows)
    8
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from jaxtune.experiment import Experiment
from jaxtune.programs import Programs
from jaxtune.slots import Member, Population

__all__ = ["BUSY", "TOLERANCE", "cache_path", "contention_now", "default_population",
           "default_sizes", "past_peak", "recommend", "throughput"]


def default_sizes() -> tuple[int, ...]:
    """Population sizes :func:`default_population` measures, smallest first: on a CPU
    from one member per device to 32 (its cores fill after a few members; a
    convolutional member can fill them alone), on an accelerator 16-512."""
    n_dev = len(jax.devices())
    if jax.devices()[0].platform == "cpu":
        return tuple(n_dev * 2**i for i in range(7) if n_dev * 2**i <= max(32, n_dev))
    return (16, 32, 64, 128, 256, 512)


#: The fraction of the best member-steps per second a smaller population may lose and
#: still be chosen. A larger population costs sample efficiency (more configurations
#: chosen with less knowledge each round: on ``mnist1d-mlp`` 32 members needed 2.4x
#: the member-steps of 16 to reach the same target, docs/benchmarks.md), so a size
#: must be clearly faster to be worth it: there 32 members ran 18% more member-steps
#: per second than 16.
TOLERANCE = 0.25


#: The contention (fraction of the machine's CPU capacity other processes used) above
#: which a measurement is of a busy machine: used, cached marked busy, and replaced by
#: the first later run that finds the machine quiet.
BUSY = 0.2


def contention_now(seconds: float = 1.0) -> float:
    """The machine's contention now: other processes' CPU time over ``seconds`` of sleep,
    as a fraction of its capacity (``nan`` where ``/proc/stat`` cannot be read).

    Example:
        >>> c = contention_now(0.05)
        >>> c >= 0.0 or c != c
        True
    """
    from jaxtune.benchmarks.common import CpuMeter

    with CpuMeter() as meter:
        time.sleep(seconds)
    return meter.contention


def _meter() -> Any:
    """What measures the contention while the sizes are timed (a context manager with
    a ``contention`` attribute after it exits)."""
    from jaxtune.benchmarks.common import CpuMeter

    return CpuMeter()


def recommend(rows: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> int:
    """The smallest size whose member-steps per second are within ``tolerance`` of the best.

    Args:
        rows: ``{"size", "member_steps_per_s"}`` per measured size.
        tolerance: the fraction of the best rate a size may lose.
    """
    if not rows:
        raise ValueError("recommend: no measured sizes")
    best = max(r["member_steps_per_s"] for r in rows)
    return min(int(r["size"]) for r in rows if r["member_steps_per_s"] >= (1 - tolerance) * best)


def past_peak(rows: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> bool:
    """Whether the last measured size's rate fell more than ``tolerance`` below the best
    so far (larger sizes are then not worth compiling).

    Example:
        >>> past_peak([{"size": 2, "member_steps_per_s": 2300.0},
        ...            {"size": 4, "member_steps_per_s": 1200.0}])
        True
    """
    best = max(r["member_steps_per_s"] for r in rows)
    return rows[-1]["member_steps_per_s"] < (1 - tolerance) * best


def _bucket(experiment: Experiment) -> dict[str, Any]:
    buckets = experiment.buckets()
    return buckets[0] if buckets else experiment.static_config(experiment.example_config({}))


def throughput(experiment: Experiment, sizes: Sequence[int] | None = None, *,
               chunks: int = 2, seed: int = 0, programs: Programs | None = None,
               stop_below: float | None = None) -> list[dict[str, Any]]:
    """Member-steps per second of ``experiment``'s program at each population size.

    Each size trains configurations sampled from the first bucket's region for
    one chunk (compiling or loading it, not timed) and then ``chunks`` chunks,
    timed. Members whose step budget ends keep computing (a slot costs the same
    whatever it holds), so the rate is of slot-steps, what a study pays.

    ``stop_below``: measure the sizes in increasing order and stop after the first
    one whose rate falls more than this fraction below the best so far (each
    size costs a compile; past the point where the rate falls, a larger
    population only loses). ``None`` measures every size.

    Returns:
        One row per measured size: ``size``, ``member_steps_per_s``, ``seconds`` (timed),
        ``compile_s`` (compiling or loading the program).
    """
    sizes = default_sizes() if sizes is None else sizes
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be positive population sizes, got {list(sizes)}")
    n_chunks = -(-experiment.steps // experiment.eval_every)
    if not 1 <= chunks < n_chunks:
        raise ValueError(f"chunks must be in [1, {n_chunks - 1}] for {experiment.steps} steps "
                         f"every {experiment.eval_every}, got {chunks}")
    programs = programs if programs is not None else Programs(experiment)
    static = _bucket(experiment)
    n_dev = len(jax.devices())
    configs = experiment.region(static).sample(max(sizes), seed=seed)
    rows: list[dict[str, Any]] = []
    for size in (sorted(sizes) if stop_below is not None else sizes):
        padded = -(-int(size) // n_dev) * n_dev  # the population axis is sharded
        if any(r["size"] == padded for r in rows):
            continue
        t0 = time.perf_counter()
        program, _ = programs.get(static, padded)
        members = [Member(config=c, trial_id=i, replicate=0) for i, c in
                   enumerate((configs * padded)[:padded])]
        pop = Population(experiment, static, program, members, seed)
        pop.run_chunk()
        compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(chunks):
            pop.run_chunk()
        jax.block_until_ready(pop.state)
        seconds = time.perf_counter() - t1
        rows.append({"size": padded, "member_steps_per_s":
                     padded * chunks * experiment.eval_every / seconds,
                     "seconds": seconds, "compile_s": compile_s})
        if stop_below is not None and past_peak(rows, stop_below):
            break
    return rows


def cache_path() -> pathlib.Path:
    """Where measurements are kept (``$JAXTUNE_CACHE_DIR/sizing.json``)."""
    root = os.environ.get("JAXTUNE_CACHE_DIR", os.path.expanduser("~/.cache/jaxtune"))
    return pathlib.Path(root) / "sizing.json"


def _key(experiment: Experiment, sizes: Sequence[int]) -> str:
    dev = jax.devices()[0]
    spec = {k: v for k, v in experiment.spec().items() if k != "steps"}  # a rate per step
    ident = {"experiment": spec, "bucket": repr(sorted(_bucket(experiment).items())),
             "sizes": [int(s) for s in sizes], "device": dev.device_kind,
             "platform": dev.platform, "count": len(jax.devices()), "jax": jax.__version__}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest()


def default_population(experiment: Experiment, sizes: Sequence[int] | None = None, *,
                       tolerance: float = TOLERANCE, measure: bool = True,
                       log: Any = None,
                       programs: Programs | None = None,
                       memory_limit: int | None = None) -> int | None:
    """The population size a study of ``experiment`` uses on this machine by default.

    Read from the cache, or measured with :func:`throughput` (``measure=True``;
    smallest size first, stopping once the rate falls below ``tolerance`` of the
    best) and cached. ``None`` when nothing is cached and ``measure`` is off.
    ``programs``: where the measured programs are kept (the study's, so the
    chosen size is not compiled again). ``memory_limit``: bytes a population may
    use; larger sizes (by the memory estimate) are not tried.
    """
    sizes = default_sizes() if sizes is None else sizes
    path, key, cached = cache_path(), _key(experiment, sizes), _cached()
    note = ""
    if key in cached and measure and (cached[key].get("contention") or 0.0) > BUSY:
        was, now = cached[key]["contention"], contention_now()
        if now <= BUSY:  # quiet now (nan: unknown, as quiet): the busy entry is replaced
            note = (f"; the cached measurement was made on a busy machine ({was:.0%} "
                    f"contention), measured again now that it is quiet ({now:.0%})")
            cached = {k: v for k, v in cached.items() if k != key}
        else:
            note = (f"; measured on a busy machine ({was:.0%} contention) and still busy "
                    f"({now:.0%}): measured again once it is quiet")
    if key not in cached and measure and memory_limit is not None:
        programs = programs if programs is not None else Programs(experiment)
        member = programs.member_bytes(_bucket(experiment))
        fits = [s for s in sizes if s * member <= memory_limit]
        if not fits:  # the study refuses the smallest with its memory message
            return min(sizes)
    else:
        fits = sizes
    if key in cached:
        rows = cached[key]["rows"]  # chosen again: the tolerance may differ
        best = recommend(rows, tolerance) if rows else int(cached[key]["recommended"])
        how = f"the smallest within {tolerance:.0%} of the best, cached in {path}{note}"
    elif not measure:
        return None
    elif -(-experiment.steps // experiment.eval_every) < 2:
        # a trial of one chunk leaves no chunk to time: the middle of the sizes that fit
        best, rows = sorted(fits)[len(fits) // 2], []
        how = "not measured: a trial is a single chunk, nothing to time"
    else:
        t0 = time.perf_counter()
        chunks = min(2, -(-experiment.steps // experiment.eval_every) - 1)
        with _meter() as meter:
            rows = throughput(experiment, fits, programs=programs, stop_below=tolerance,
                              chunks=chunks)
        best = recommend(rows, tolerance)
        how = (f"the smallest within {tolerance:.0%} of the best, measured in "
               f"{time.perf_counter() - t0:.1f}s, cached in {path}{note}")
        if meter.contention > BUSY:
            how += (f"; other work kept the CPUs {meter.contention:.0%} busy meanwhile: "
                    "used for this run and cached marked busy, measured again by the first "
                    "run that finds the machine quiet")
        _store(experiment, sizes, best, rows, meter.contention)
    if log is not None:
        rates = ", ".join(f"{r['size']}: {r['member_steps_per_s']:.0f}" for r in rows)
        log(f"population {best} members ({how}" + (f"; member-steps/s by size {rates})"
                                                   if rates else ")"))
    return best


def _cached() -> dict[str, Any]:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _store(experiment: Experiment, sizes: Sequence[int], best: int,
           rows: list[dict[str, Any]], contention: float | None = None) -> None:
    path, cached = cache_path(), _cached()
    cached[_key(experiment, sizes)] = {"recommended": best, "rows": rows,
                                       "measured": time.time(), "contention": contention}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measured again next time



def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``jaxtune bench population EXPERIMENT``: the table, a recommendation, a JSON line."""
    import argparse

    from jaxtune import zoo
    from jaxtune.benchmarks.common import commit

    p = argparse.ArgumentParser(prog="jaxtune bench population EXPERIMENT",
                                description="member-steps per second of an experiment's "
                                            "population against its size, on this machine")
    p.add_argument("experiment", help="a built-in name (jaxtune list) or a .py file")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, *default_sizes()])
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = p.parse_args(argv)
    exp, _, _ = zoo.load(args.experiment, **({"steps": args.steps} if args.steps else {}))
    with _meter() as meter:
        rows = throughput(exp, args.sizes, chunks=args.chunks)
    best = recommend([r for r in rows if r["size"] > 1] or rows, args.tolerance)
    loop = next((r["member_steps_per_s"] for r in rows if r["size"] == 1), None)
    print(f"{args.experiment}: member-steps per second by population size "
          f"({jax.devices()[0].device_kind} x{len(jax.devices())}, contention "
          f"{meter.contention:.2f})")
    print(f"{'size':>6s}{'member-steps/s':>16s}{'x one at a time':>17s}{'compile/load s':>16s}")
    for r in rows:
        vs = f"{r['member_steps_per_s'] / loop:17.2f}" if loop else f"{'-':>17s}"
        print(f"{r['size']:6d}{r['member_steps_per_s']:16.0f}{vs}{r['compile_s']:16.1f}")
    top = max(r["member_steps_per_s"] for r in rows)
    pays = "" if loop is None else (f"; vectorizing pays {top / loop:.2f}x over training "
                                    "members one at a time")
    print(f"recommended population: {best} (the smallest within {args.tolerance:.0%} of the "
          f"best rate){pays}")
    if set(args.sizes) >= set(default_sizes()) and args.steps is None:
        _store(exp, default_sizes(), best, rows, meter.contention)
        busy = (f", marked busy (contention {meter.contention:.2f} > {BUSY}): the first run "
                "that finds the machine quiet measures again" if meter.contention > BUSY else "")
        print(f"kept for population='auto' (the command's default) in {cache_path()}{busy}")
    out = {"benchmark": "population_sizes", "experiment": args.experiment, "commit": commit(),
           "contention": meter.contention, "rows": rows, "recommended": best,
           "vectorize_speedup": None if loop is None else top / loop}
    print(json.dumps(out))
    return out
