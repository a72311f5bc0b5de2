"""The per-member memory estimate against what XLA allocates for the compiled program.

The engine plans populations with :func:`jaxtune.memory.member_bytes`, an upper
estimate from shapes alone (no compile): state counted three times plus every
intermediate of one chunk's jaxpr. This benchmark compiles the chunk program of
several built-in experiments at a few population sizes and compares
``size x estimate`` with the program's peak as XLA's buffer assignment reports
it (``Compiled.memory_analysis()``: arguments + outputs - aliased (donated)
buffers + temporaries, per device, times the devices: the memory limit is a
total over devices). A ratio above 1 means the plan is conservative (safe);
below 1 would mean a population the planner accepts could exceed its limit.

``python -m jaxtune.benchmarks.memory`` (also ``jaxtune bench memory``) prints a
table and a JSON line.

Example:
    >>> peak_bytes(type("S", (), {"argument_size_in_bytes": 10, "output_size_in_bytes": 10,
    ...                           "alias_size_in_bytes": 10, "temp_size_in_bytes": 5})())
    15
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "measure", "peak_bytes"]

EXPERIMENTS = ("mnist1d-mlp", "mnist1d-cnn", "digits-cnn", "digits-logistic")


def peak_bytes(stats: Any) -> int:
    """Peak bytes of a compiled program from its memory analysis."""
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def measure(name: str, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Estimate and XLA's peak for the chunk program of experiment ``name``."""
    import jax

    import jaxtune as jt

    exp, _, _ = jt.zoo.load(name)
    programs = jt.Programs(exp)
    static = exp.static_config(exp.space.sample(1, seed=0)[0])
    per_member = programs.member_bytes(static)
    rows = []
    for size in sizes:
        program, _ = programs.get(static, size)
        stats = program.chunk.memory_analysis()
        peak = peak_bytes(stats) * len(jax.devices())
        rows.append({"experiment": name, "members": size, "estimate_bytes": size * per_member,
                     "xla_peak_bytes": peak, "ratio": size * per_member / peak})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from jaxtune.devices import set_host_devices

    set_host_devices()
    from jaxtune.benchmarks.common import commit

    rows = [r for name in args.experiments for r in measure(name, args.sizes)]
    print(f"{'experiment':16s}{'members':>8s}{'estimate MiB':>14s}{'XLA peak MiB':>14s}"
          f"{'ratio':>8s}")
    for r in rows:
        print(f"{r['experiment']:16s}{r['members']:8d}{r['estimate_bytes'] / 2**20:14.1f}"
              f"{r['xla_peak_bytes'] / 2**20:14.1f}{r['ratio']:8.2f}")
    ratios = [r["ratio"] for r in rows]
    if args.json:
        print(json.dumps({"benchmark": "memory", "commit": commit(), "rows": rows,
                          "ratio_min": min(ratios), "ratio_max": max(ratios)}))


if __name__ == "__main__":
    main()
