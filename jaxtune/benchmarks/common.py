"""Helpers every benchmark shares: machine contention, the reference matmul, the commit.

A benchmark's numbers are ratios measured side by side in one run. These
helpers make each run say how busy the machine was (:class:`CpuMeter`), what a
large matmul reaches on it (:func:`matmul_gflops`, the peak that FLOP rates are
divided by) and which commit it measured (:func:`commit`).

Example:
    >>> with CpuMeter() as meter:
    ...     _ = sum(range(1000))
    >>> 0.0 <= meter.contention or meter.contention != meter.contention
    True
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from typing import Any

__all__ = ["CpuMeter", "commit", "matmul_gflops"]


def commit() -> str:
    """The commit of the jaxtune checkout measured (``-dirty`` if it has changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


class CpuMeter:
    """CPU seconds used by *other* processes (and stolen by the hypervisor) while timing.

    This process and the child processes it waited for (benchmark workers) are
    not "other". Timings on a shared machine are only comparable when this stays
    near zero; ``contention`` is that time as a fraction of the machine's capacity.
    """

    def __enter__(self) -> CpuMeter:
        self.busy0, self.own0, self.t0 = _busy_s(), _own_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        own = _own_s() - self.own0
        busy = _busy_s()
        self.others_s = math.nan if busy is None or self.busy0 is None else max(
            0.0, busy - self.busy0 - own)
        self.contention = self.others_s / max(wall * (os.cpu_count() or 1), 1e-9)


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait; steal counts as busy
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")



def matmul_gflops(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an ``n x n`` float32 matmul on one device and sharded over all devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    def best(f, *args):
        jax.block_until_ready(f(*args))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts.append(time.perf_counter() - t)
        return min(ts)

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    one = 2 * n**3 / best(jax.jit(jnp.matmul), a, b) / 1e9
    out = {"n": n, "one_device": one, "all_devices": one}
    devs = jax.devices()
    if len(devs) > 1:
        sh = NamedSharding(Mesh(np.asarray(devs), ("d",)), PartitionSpec("d"))
        stack = lambda x: jax.device_put(jnp.broadcast_to(x, (len(devs), n, n)), sh)
        f = jax.jit(jnp.matmul, out_shardings=sh)
        out["all_devices"] = len(devs) * 2 * n**3 / best(f, stack(a), stack(b)) / 1e9
    out["gflops"] = max(out["one_device"], out["all_devices"])
    return out
