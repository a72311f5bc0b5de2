"""Devices on CPU: one XLA host device per core, so a population shards over every core.

XLA exposes a single CPU device unless ``XLA_FLAGS`` asks for more with
``--xla_force_host_platform_device_count=N``, and the flag is read once, when
the backend starts. The ``jaxtune`` command, the benchmarks and the experiment
scripts call :func:`set_host_devices` before anything runs JAX; in your own
scripts call it first (or set ``XLA_FLAGS`` yourself).

Example:
    >>> import os
    >>> HOST_DEVICE_FLAG in "--xla_force_host_platform_device_count=2"
    True
"""

from __future__ import annotations

import os
import sys

__all__ = ["HOST_DEVICE_FLAG", "set_host_devices"]

HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", None))


def set_host_devices(n: int | None = None) -> bool:
    """Asks XLA for ``n`` host (CPU) devices (default: one per core).

    Does nothing, and returns ``False``, if ``XLA_FLAGS`` already sets the count
    or the JAX backend has started (importing jax is fine; running anything is
    not). Accelerators are unaffected: the flag only shapes the CPU platform.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if HOST_DEVICE_FLAG.lstrip("-") in flags or _backend_started():
        return False
    n = int(n or os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={n}".strip()
    return True
