"""Seconds from process launch to the first chunk training, and where they go.

Each run is a fresh ``jaxtune run`` process on a private compilation cache:

* ``cold``: an empty cache (every program compiles);
* ``stored``: the cache the cold run filled, bucket programs loaded from
  :mod:`jaxtune.executables` without tracing (the default);
* ``traced``: the same cache with ``JAXTUNE_PROGRAM_CACHE=0``: programs traced and
  lowered, then loaded from JAX's persistent cache (the engine before the store).

For each, the study's own log line gives the seconds from launch to the first
chunk and the part spent compiling or loading programs; a separate process times
``import jaxtune`` alone. Prints a table and a JSON line.

Example:
    >>> parse_first_chunk("jaxtune: first chunk training 2.6s after launch "
    ...                   "(0.5s of it compiling or loading 1 programs, 1 stored)")
    (2.6, 0.5, 1)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from jaxtune.benchmarks.common import CpuMeter, commit

__all__ = ["main", "parse_first_chunk"]

_LINE = re.compile(r"first chunk training ([\d.]+)s after launch \(([\d.]+)s of it compiling "
                   r"or loading \d+ programs, (\d+) stored\)")


def parse_first_chunk(log: str) -> tuple[float, float, int] | None:
    """(seconds to the first chunk, of which compiling or loading, programs stored)."""
    m = _LINE.search(log)
    return (float(m.group(1)), float(m.group(2)), int(m.group(3))) if m else None


def _run(experiment: str, trials: int, cache: str, store: str, env: dict[str, str]
         ) -> tuple[float, float, int]:
    if os.path.exists(store):
        os.remove(store)
    cmd = [sys.executable, "-m", "jaxtune", "run", experiment, "--trials", str(trials),
           "--top-k", "0", "--store", store]
    proc = subprocess.run(cmd, env={**os.environ, **env, "JAXTUNE_COMPILATION_CACHE": cache},
                          capture_output=True, text=True, timeout=1800)
    found = parse_first_chunk(proc.stdout + proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return found


def _import_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import jaxtune"], check=True, timeout=600)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", nargs="?", default="mnist1d-mlp")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rows: dict[str, list[tuple[float, float, int]]] = {"cold": [], "stored": [], "traced": []}
    imports = []
    with tempfile.TemporaryDirectory() as tmp, CpuMeter() as meter:
        store = os.path.join(tmp, "startup.db")
        for r in range(args.repeats):
            cache = os.path.join(tmp, f"cache{r}")
            rows["cold"].append(_run(args.experiment, args.trials, cache, store, {}))
            rows["stored"].append(_run(args.experiment, args.trials, cache, store, {}))
            rows["traced"].append(_run(args.experiment, args.trials, cache, store,
                                       {"JAXTUNE_PROGRAM_CACHE": "0"}))
            imports.append(_import_s())
    print(f"{args.experiment}, {args.trials} trials, {args.repeats} repeats, commit "
          f"{commit()}, contention {meter.contention:.2f}")
    print(f"import jaxtune (own process): median {statistics.median(imports):.2f}s")
    print("| cache | to first chunk s (median) | min | max | compiling or loading s | stored |")
    print("| --- | --- | --- | --- | --- | --- |")
    out = {"experiment": args.experiment, "commit": commit(), "contention": meter.contention,
           "import_s": statistics.median(imports)}
    for mode, runs in rows.items():
        first = [f for f, _, _ in runs]
        prog = [p for _, p, _ in runs]
        print(f"| {mode} | {statistics.median(first):.2f} | {min(first):.2f} | "
              f"{max(first):.2f} | {statistics.median(prog):.2f} | {runs[0][2]} |")
        out[f"{mode}_first_chunk_s"] = statistics.median(first)
        out[f"{mode}_program_s"] = statistics.median(prog)
    print(json.dumps(out))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
