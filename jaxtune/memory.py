"""Memory planning: how many members fit in one compiled program.

Before anything compiles, the engine estimates one member's device memory from
shapes alone (:func:`member_bytes`) and splits a bucket whose members would
exceed the limit into equal sub-populations (:func:`plan_bucket`), so one
compiled program serves all of them.

Example:
    >>> plan = plan_bucket(10, member_bytes=100, limit=450, n_devices=1)
    >>> plan.subpopulations, plan.size
    (3, 4)
    >>> parse_bytes("1.5GiB")
    1610612736
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = [
    "Plan", "default_memory_limit", "host_memory", "member_bytes", "param_bytes", "parse_bytes",
    "plan_bucket",
]

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Parses ``4e9``, ``"4GB"`` or ``"512MiB"`` into bytes.

    Example:
        >>> parse_bytes("4GB")
        4000000000
    """
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse memory size {value!r} (use e.g. '4GB' or '512MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def host_memory() -> int:
    """Bytes of host RAM available now (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def default_memory_limit() -> int:
    """60% of the devices' memory (accelerators) or of the available host RAM (CPU)."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:
        stats = {}
    if "bytes_limit" in stats:
        return int(0.6 * stats["bytes_limit"] * len(jax.devices()))
    return int(0.6 * host_memory())


def _aval_bytes(x: Any) -> int:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        return 0
    try:
        itemsize = np.dtype(x.dtype).itemsize
    except TypeError:  # PRNG key types: two uint32 words
        itemsize = 8
    return math.prod(x.shape) * itemsize


def _tree_bytes(tree: Any) -> int:
    return sum(_aval_bytes(x) for x in jax.tree.leaves(tree))


def _jaxpr_bytes(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(_aval_bytes(getattr(v, "aval", None)) for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_bytes(inner)
    return total


def member_bytes(program: Any, hparams: Mapping[str, np.ndarray],
                 data: Mapping[str, Any]) -> int:
    """An upper estimate of one member's device memory, from shapes only (no compile).

    State (parameters, optimizer state) counted three times (input, output,
    gradients) plus every intermediate of one chunk (a step and an evaluation batch).
    The step is traced at the bucket's largest row capacity, the most any group of
    members runs at (:attr:`MemberProgram.capacities <jaxtune.train.MemberProgram>`),
    so smaller capacities only lower the real use.

    Args:
        program: the member's :class:`~jaxtune.train.MemberProgram`.
        hparams: one member's traced hyperparameters (only dtypes matter).
        data: the arrays a chunk reads (only shapes matter).
    """
    hp = {k: jax.ShapeDtypeStruct((), np.asarray(v).dtype) for k, v in hparams.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = jax.eval_shape(program.init, hp, key)
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in data.items()}
    jaxpr = jax.make_jaxpr(program.chunk)(state, shapes).jaxpr
    return 3 * _tree_bytes(state) + _jaxpr_bytes(jaxpr)


def param_bytes(program: Any, hparams: Mapping[str, np.ndarray]) -> int:
    """Bytes of one member's parameters (shapes only)."""
    hp = {k: jax.ShapeDtypeStruct((), np.asarray(v).dtype) for k, v in hparams.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    return _tree_bytes(jax.eval_shape(program.init, hp, key).params)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the members of one bucket are trained.

    Attributes:
        members: members of the bucket.
        size: members per compiled program (a multiple of the device count and of
            the size multiple, padded with members that never train).
        subpopulations: programs run one after the other (``ceil(members / size)``).
        member_bytes: the estimate of one member's memory.
        limit: the memory limit the plan respects.
    """

    members: int
    size: int
    subpopulations: int
    member_bytes: int
    limit: int

    @property
    def split(self) -> bool:
        return self.subpopulations > 1


def plan_bucket(members: int, member_bytes: int, limit: int, *, n_devices: int,
                size_multiple: int = 1, max_population: int | None = None) -> Plan:
    """Splits ``members`` into equal sub-populations that fit in ``limit`` bytes.

    Sizes are multiples of ``lcm(n_devices, size_multiple)`` when that many
    members fit, else of ``n_devices`` alone: padding never pushes a program past
    the limit.

    Raises:
        ValueError: one member needs more than ``limit``, or fewer members fit
            than there are devices to shard them over.
    """
    fit = limit // max(member_bytes, 1)
    if fit < 1:
        raise ValueError(f"one member needs about {member_bytes / 2**30:.2f} GiB, more than "
                         f"the memory limit {limit / 2**30:.2f} GiB; lower the batch size or "
                         "the model size, or raise memory_limit")
    cap = min(fit, max_population or fit)
    quantum = math.lcm(n_devices, max(1, int(size_multiple)))
    if cap < quantum:
        quantum = n_devices
    if cap < quantum:
        raise ValueError(f"only {cap} members fit in the memory limit {limit / 2**30:.2f} GiB "
                         f"(one needs about {member_bytes / 2**20:.1f} MiB) but the population "
                         f"is sharded over {n_devices} devices; raise memory_limit or use fewer "
                         "devices")
    cap = cap // quantum * quantum
    n_sub = -(-members // min(cap, members))
    size = -(-members // n_sub)
    size = -(-size // quantum) * quantum
    return Plan(members=members, size=size, subpopulations=n_sub, member_bytes=member_bytes,
                limit=limit)
