"""The population engine: many members trained by one compiled program.

:func:`train_population` groups members (configuration x seed) into buckets by
their static hyperparameters, compiles ``jit(vmap(chunk))`` once per bucket
(ahead of time, so every compile is counted), shards the population axis over
all local devices, and runs the chunks from Python. Between chunks it records
the learning curves, updates the progress bar and lets a *scheduler* stop
members or replace them with fresh configurations without recompiling.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    ...     model=jt.models.MLP(width=8, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...     steps=20, eval_every=10, defaults={"batch_size": 16})
    >>> res = jt.train_population(exp, [{"lr": 0.01}, {"lr": 0.05}], seeds=2, progress=False)
    >>> res.final["val_loss"].shape, res.compiles
    ((4,), 1)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtune.data import Dataset
from jaxtune.ranking import rank_table
from jaxtune.train import Experiment, make_train

__all__ = [
    "Actions", "ChunkReport", "PopulationResult", "estimate_member_bytes", "member_keys",
    "parse_bytes", "train_data", "train_population",
]


def train_data(ds: Dataset) -> dict[str, jax.Array]:
    """The arrays a chunk reads (train and validation splits)."""
    return {"x_train": ds.x_train, "y_train": ds.y_train, "x_val": ds.x_val, "y_val": ds.y_val}


def _test_data(ds: Dataset) -> dict[str, jax.Array]:
    return {"x_test": ds.x_test, "y_test": ds.y_test}


def member_keys(seed: int, trial_ids: Sequence[int], replicates: Sequence[int]) -> jax.Array:
    """Per-member keys derived from (study seed, trial id, replicate) only.

    A member's key, hence its data order, dropout masks and initial parameters,
    does not depend on which other members share its population.
    """
    base = jax.random.key(int(seed))
    return jnp.stack([jax.random.fold_in(jax.random.fold_in(base, int(t)), int(r))
                      for t, r in zip(trial_ids, replicates)])


@dataclasses.dataclass
class ChunkReport:
    """What a scheduler sees after each chunk of one sub-population."""

    chunk: int
    slots: np.ndarray          # member slot index within the sub-population
    trial_ids: np.ndarray
    configs: list[dict[str, Any]]
    steps: np.ndarray          # steps done per slot
    alive: np.ndarray
    history: dict[str, np.ndarray]   # metric -> (slots, chunks so far)


@dataclasses.dataclass
class Actions:
    """A scheduler's decisions: stop slots, or replace them with fresh trials.

    ``replace`` maps a slot to ``(trial_id, config)``; the configuration must
    belong to the same bucket (same static values).
    """

    stop: Sequence[int] = ()
    replace: Mapping[int, tuple[int, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)


Scheduler = Callable[[ChunkReport], "Actions | None"]


@dataclasses.dataclass
class PopulationResult:
    """Per-member records of one :func:`train_population` call.

    Attributes:
        configs, trial_ids, replicates, status: one entry per member record, in
            the order of the ``configs`` argument x replicates, then records of
            replacements made by a scheduler (status is ``complete``,
            ``diverged`` or ``pruned``).
        eval_steps: ``(E,)`` nominal step of each evaluation.
        curves: metric -> ``(members, E)``; NaN where a record was not running.
        final: metric -> ``(members,)``: last train/val metrics, test metrics,
            ``steps`` done, ``best_val_loss``, ``early_stopped``.
        compiles: bucket programs compiled by this call.
    """

    configs: list[dict[str, Any]]
    trial_ids: np.ndarray
    replicates: np.ndarray
    status: list[str]
    eval_steps: np.ndarray
    curves: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    compiles: int
    compile_s: float
    wall_s: float
    buckets: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.configs)

    def aggregate(self, metric: str) -> dict[int, tuple[float, float, int]]:
        """trial id -> (mean, std, n) of ``metric`` over non-diverged replicates."""
        out: dict[int, list[float]] = {}
        for i, t in enumerate(self.trial_ids):
            if self.status[i] != "diverged":
                out.setdefault(int(t), []).append(float(self.final[metric][i]))
        return {t: (float(np.mean(v)), float(np.std(v)), len(v)) for t, v in out.items()}

    def table(self, metric: str = "val_accuracy", k: int = 10, maximize: bool = True) -> str:
        """A ranked plain-text table of the best ``k`` trials by mean ``metric``."""
        agg = self.aggregate(metric)
        order = sorted(agg, key=lambda t: -agg[t][0] if maximize else agg[t][0])[:k]
        first = {int(t): i for i, t in reversed(list(enumerate(self.trial_ids)))}
        rows = [(t, agg[t][0], agg[t][1] if agg[t][2] > 1 else None, self.configs[first[t]])
                for t in order]
        return rank_table(rows, metric)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Parses ``4e9``, ``"4GB"`` or ``"512MiB"`` into bytes.

    Example:
        >>> parse_bytes("1.5GiB")
        1610612736
    """
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse memory size {value!r} (use e.g. '4GB' or '512MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _default_memory_limit() -> int:
    """60% of the device memory (accelerators) or of the available host RAM."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:
        stats = {}
    if "bytes_limit" in stats:
        return int(0.6 * stats["bytes_limit"] * len(jax.devices()))
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return int(0.6 * avail)


def _aval_bytes(x: Any) -> int:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        return 0
    try:
        itemsize = np.dtype(x.dtype).itemsize
    except TypeError:  # PRNG key types: two uint32 words
        itemsize = 8
    return math.prod(x.shape) * itemsize


def _nbytes(tree: Any) -> int:
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


def _example_arrays(experiment: Experiment, static: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One member's traced hyperparameters in the bucket ``static``: only their
    dtypes and shapes matter, so the values are not checked."""
    config = {k: static[k] for k in experiment.space.static_names}
    return experiment.member_arrays([config], static, check=False)


def estimate_member_bytes(experiment: Experiment, static: Mapping[str, Any]) -> int:
    """An upper estimate of one member's device memory, from shapes only (no compile).

    State (parameters, optimizer state) counted three times (input, output,
    gradients) plus every intermediate of one chunk (a step and an evaluation batch).
    """
    prog = make_train(experiment, static)
    arrays = _example_arrays(experiment, static)
    hp = {k: jax.ShapeDtypeStruct((), v.dtype) for k, v in arrays.items()}
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = jax.eval_shape(prog.init, hp, key)
    data = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
            for k, v in train_data(experiment.data).items()}
    jaxpr = jax.make_jaxpr(prog.chunk)(state, data).jaxpr
    return 3 * _nbytes(state) + _jaxpr_bytes(jaxpr)


@dataclasses.dataclass
class _Compiled:
    init: Any
    chunk: Any
    test: Any
    merge: Any
    size: int
    sharding: Any
    compile_s: float
    metric_names: tuple[str, ...]


def _mesh() -> Mesh | None:
    devs = jax.devices()
    return Mesh(np.asarray(devs), ("pop",)) if len(devs) > 1 else None


def _compile(experiment: Experiment, static: Mapping[str, Any], size: int) -> _Compiled:
    t0 = time.perf_counter()
    prog = make_train(experiment, static)
    mesh = _mesh()
    shard = NamedSharding(mesh, PartitionSpec("pop")) if mesh else None
    repl = NamedSharding(mesh, PartitionSpec()) if mesh else None
    arrays = _example_arrays(experiment, static)
    hp = {k: jax.ShapeDtypeStruct((size,), v.dtype, sharding=shard) for k, v in arrays.items()}
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), size))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=shard)

    def spec(tree, sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            tree)

    data = spec(train_data(experiment.data), repl)
    tdata = spec(_test_data(experiment.data), repl)
    v_init = jax.vmap(prog.init)
    state = spec(jax.eval_shape(v_init, hp, keys), shard)
    init = jax.jit(v_init, out_shardings=shard).lower(hp, keys).compile()
    chunk = jax.jit(jax.vmap(prog.chunk, in_axes=(0, None)), donate_argnums=0,
                    out_shardings=shard).lower(state, data).compile()
    test = jax.jit(jax.vmap(prog.test, in_axes=(0, None))).lower(state, tdata).compile()

    def merge_fn(mask, new, old):
        return jax.tree.map(
            lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)

    mask = jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=shard)
    merge = jax.jit(merge_fn, donate_argnums=2, out_shardings=shard
                    ).lower(mask, state, state).compile()
    return _Compiled(init=init, chunk=chunk, test=test, merge=merge, size=size, sharding=shard,
                     compile_s=time.perf_counter() - t0, metric_names=prog.metric_names)


def _program(experiment: Experiment, static: Mapping[str, Any], size: int
             ) -> tuple[_Compiled, bool]:
    """The cached compiled bucket program; ``True`` if it was compiled now."""
    key = (tuple(sorted(static.items(), key=lambda kv: kv[0])), size, len(jax.devices()))
    if key in experiment._programs:
        return experiment._programs[key], False
    compiled = _compile(experiment, static, size)
    experiment._programs[key] = compiled
    experiment.compiles += 1
    return compiled, True


def _put(tree: Any, sharding: Any) -> Any:
    return jax.device_put(tree, sharding) if sharding is not None else tree


def _progress(enabled: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="chunk")


@dataclasses.dataclass
class _Record:
    config: dict[str, Any]
    trial_id: int
    replicate: int
    first_chunk: int
    order: float = math.inf  # position in the result (replacements come last)
    curves: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    final: dict[str, float] = dataclasses.field(default_factory=dict)
    status: str = "running"


def _run_subpopulation(
    experiment: Experiment, static: Mapping[str, Any], members: list[_Record], size: int,
    seed: int, scheduler: Scheduler | None, bar: Any, n_chunks: int, evaluate_test: bool,
) -> tuple[list[_Record], _Compiled, bool]:
    prog, compiled_now = _program(experiment, static, size)
    n = len(members)
    pad = [members[0]] * (size - n)
    slots: list[_Record] = members + pad
    hp = experiment.member_arrays([m.config for m in slots], static)
    keys = member_keys(seed, [m.trial_id for m in slots], [m.replicate for m in slots])
    state = prog.init(_put(hp, prog.sharding), _put(keys, prog.sharding))
    if size > n:  # padding members never train
        dead = np.arange(size) >= n
        state = state._replace(alive=_put(jnp.asarray(~dead), prog.sharding))
    data = train_data(experiment.data)
    records = list(members)
    live = list(range(n))  # slot -> index into records
    for c in range(n_chunks):
        state, metrics = prog.chunk(state, data)
        metrics = jax.device_get(metrics)
        alive = np.asarray(jax.device_get(state.alive))
        for s in range(n):
            rec = records[live[s]]
            for k, v in metrics.items():
                rec.curves.setdefault(k, []).append(float(v[s]))
        bar.update(1)
        best = _best_so_far(records, "val_accuracy" if "val_accuracy" in metrics else "val_loss")
        bar.set_postfix(alive=f"{int(alive[:n].sum())}/{n}", best=f"{best:.4f}")
        if scheduler is not None and c < n_chunks - 1:
            state = _apply_scheduler(experiment, static, prog, scheduler, state, records, live,
                                     c, n, seed)
            alive = np.asarray(jax.device_get(state.alive))
        if not alive[:n].any():
            bar.update(n_chunks - 1 - c)
            break
    test = jax.device_get(prog.test(state, _test_data(experiment.data))) if evaluate_test else {}
    fields = {k: np.asarray(jax.device_get(getattr(state, k)))
              for k in ("step", "diverged", "stopped", "best")}
    for s in range(n):
        rec = records[live[s]]
        rec.final.update({k: float(v[s]) for k, v in test.items()})
        rec.final.update({k: v[-1] for k, v in rec.curves.items() if k != "step"})
        rec.final.update(steps=int(fields["step"][s]), best_val_loss=float(fields["best"][s]),
                         early_stopped=bool(fields["stopped"][s]))
        if rec.status == "running":  # not pruned by a scheduler
            rec.status = "diverged" if fields["diverged"][s] else "complete"
    return records, prog, compiled_now


def _best_so_far(records: list[_Record], metric: str) -> float:
    vals = [v for r in records for v in r.curves.get(metric, []) if math.isfinite(v)]
    if not vals:
        return math.nan
    return max(vals) if metric.endswith("accuracy") else min(vals)


def _apply_scheduler(experiment, static, prog, scheduler, state, records, live, chunk, n, seed):
    steps = np.asarray(jax.device_get(state.step))[:n]
    alive = np.asarray(jax.device_get(state.alive))[:n]
    recs = [records[i] for i in live]
    history = {k: np.asarray([_padded(r.curves.get(k, []), r.first_chunk, chunk + 1)
                              for r in recs]) for k in recs[0].curves}
    report = ChunkReport(chunk=chunk, slots=np.arange(n),
                         trial_ids=np.asarray([r.trial_id for r in recs]),
                         configs=[r.config for r in recs], steps=steps, alive=alive,
                         history=history)
    actions = scheduler(report)
    if actions is None:
        return state
    size = prog.size
    stop = np.zeros(size, bool)
    stop[list(actions.stop)] = True
    if stop.any():
        for s in np.flatnonzero(stop):
            records[live[s]].status = "pruned"
        state = state._replace(alive=_put(jnp.asarray(np.asarray(jax.device_get(state.alive))
                                                      & ~stop), prog.sharding))
    if actions.replace:
        configs = [r.config for r in recs] + [recs[0].config] * (size - n)
        trial_ids = [r.trial_id for r in recs] + [recs[0].trial_id] * (size - n)
        reps = [r.replicate for r in recs] + [0] * (size - n)
        mask = np.zeros(size, bool)
        for s, (tid, cfg) in actions.replace.items():
            cfg = experiment.space.validate(cfg)
            if experiment.static_config(cfg) != dict(static):
                raise ValueError(f"scheduler replaced slot {s} with a configuration of another "
                                 "bucket (static hyperparameters differ)")
            old = records[live[s]]
            old.final.update({k: v[-1] for k, v in old.curves.items() if k != "step"})
            old.final.update(steps=int(steps[s]), early_stopped=False)
            old.status = "pruned"
            records.append(_Record(config=cfg, trial_id=int(tid), replicate=0,
                                   first_chunk=chunk + 1))
            live[s] = len(records) - 1
            configs[s], trial_ids[s], reps[s], mask[s] = cfg, int(tid), 0, True
        hp = experiment.member_arrays(configs, static)
        keys = member_keys(seed, trial_ids, reps)
        fresh = prog.init(_put(hp, prog.sharding), _put(keys, prog.sharding))
        state = prog.merge(_put(jnp.asarray(mask), prog.sharding), fresh, state)
    return state


def _padded(values: list[float], first: int, length: int) -> list[float]:
    """A record's curve on the common evaluation axis (NaN where it did not run)."""
    row = [math.nan] * first + list(values[: length - first])
    return row + [math.nan] * (length - len(row))


def train_population(
    experiment: Experiment,
    configs: Sequence[Mapping[str, Any]],
    *,
    seeds: int = 1,
    seed: int = 0,
    trial_ids: Sequence[int] | None = None,
    scheduler: Scheduler | None = None,
    progress: bool | None = None,
    memory_limit: int | str | None = None,
    max_population: int | None = None,
    evaluate_test: bool = True,
    size_multiple: int = 1,
    verbose: bool = True,
) -> PopulationResult:
    """Trains every configuration with ``seeds`` replicates, one program per bucket.

    Args:
        experiment: the :class:`~jaxtune.train.Experiment`.
        configs: configurations (dicts over ``experiment.space``).
        seeds: replicates per configuration (members = configs x seeds).
        seed: the study seed; member keys derive from (seed, trial id, replicate).
        trial_ids: one id per configuration (default ``0..n-1``).
        scheduler: called after each chunk with a :class:`ChunkReport`; may
            return :class:`Actions` (stop or replace members).
        progress: show a tqdm bar (default: only when stderr is a terminal).
        memory_limit: bytes (or ``"4GB"``) the population may use; populations
            estimated larger are split into equal sub-populations. Default: 60%
            of device memory (accelerators) or available RAM (CPU).
        max_population: also cap the members per compiled program.
        evaluate_test: evaluate the final state on the test split (studies turn
            this off while searching: only their final re-evaluation reads it).
        size_multiple: pad each compiled population to a multiple of this (and
            of the device count). Studies use 8, so batches whose bucket sizes
            vary still reuse a few compiled programs.
        verbose: print a line when a population is split.

    Returns:
        A :class:`PopulationResult`.

    Raises:
        ValueError: invalid configurations or a member that cannot fit in
            ``memory_limit``, before anything is compiled.
    """
    t_start = time.perf_counter()
    configs = experiment.space.validate_all(configs)
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if trial_ids is None:
        trial_ids = list(range(len(configs)))
    if len(trial_ids) != len(configs):
        raise ValueError(f"got {len(trial_ids)} trial ids for {len(configs)} configurations")
    limit = parse_bytes(memory_limit) if memory_limit is not None else _default_memory_limit()
    members = [_Record(config=c, trial_id=int(t), replicate=r, first_chunk=0)
               for c, t in zip(configs, trial_ids) for r in range(int(seeds))]
    for i, m in enumerate(members):
        m.order = i
    groups: dict[tuple, list[_Record]] = {}
    statics: dict[tuple, dict[str, Any]] = {}
    for m in members:
        static = experiment.static_config(m.config)
        k = tuple(sorted(static.items(), key=lambda kv: kv[0]))
        groups.setdefault(k, []).append(m)
        statics[k] = static
    ndev = len(jax.devices())
    plans = []
    for k, group in groups.items():
        static = statics[k]
        experiment.member_arrays([m.config for m in group], static)  # validate before compiling
        per = estimate_member_bytes(experiment, static)
        fit = limit // max(per, 1)
        if fit < 1:
            raise ValueError(f"one member of bucket {dict(static)} needs about {per / 2**30:.2f} "
                             f"GiB, more than the memory limit {limit / 2**30:.2f} GiB; lower "
                             "the batch size or the model size, or raise memory_limit")
        cap = min(fit, max_population or fit)
        quantum = math.lcm(ndev, max(1, int(size_multiple)))
        if cap >= quantum:  # padding must not push a sub-population past the limit
            cap = cap // quantum * quantum
        n_sub = -(-len(group) // min(cap, len(group)))
        size = -(-len(group) // n_sub)
        size = -(-size // quantum) * quantum
        if n_sub > 1 and verbose:
            print(f"jaxtune: bucket {dict(static)}: {len(group)} members x ~{per / 2**20:.1f} MiB "
                  f"exceed the limit of {limit / 2**20:.0f} MiB; training {n_sub} sub-populations "
                  f"of {size}", file=sys.stderr)
        plans.append((static, group, size, n_sub, per))
    n_chunks = -(-int(experiment.steps) // int(experiment.eval_every))
    total = sum(p[3] for p in plans) * n_chunks
    compiles, compile_s, out, buckets = 0, 0.0, [], []
    with _progress(progress, total, experiment.name) as bar:
        for static, group, size, n_sub, per in plans:
            for i in range(n_sub):
                sub = group[i * size:(i + 1) * size]
                recs, prog, new = _run_subpopulation(experiment, static, sub, size, seed,
                                                     scheduler, bar, n_chunks, evaluate_test)
                if new:
                    compiles += 1
                    compile_s += prog.compile_s
                out.extend(recs)
            buckets.append({"static": dict(static), "members": len(group), "size": size,
                            "subpopulations": n_sub, "member_bytes": per})
    out.sort(key=lambda r: r.order)  # the order of `configs` x replicates
    eval_steps = np.minimum(np.arange(1, n_chunks + 1) * experiment.eval_every, experiment.steps)
    names = sorted({k for r in out for k in r.curves})
    curves = {k: np.asarray([_padded(r.curves.get(k, []), r.first_chunk, n_chunks) for r in out],
                            np.float64) for k in names}
    fnames = sorted({k for r in out for k in r.final})
    final = {k: np.asarray([r.final.get(k, math.nan) for r in out], np.float64) for k in fnames}
    return PopulationResult(
        configs=[r.config for r in out], trial_ids=np.asarray([r.trial_id for r in out]),
        replicates=np.asarray([r.replicate for r in out]), status=[r.status for r in out],
        eval_steps=eval_steps, curves=curves, final=final, compiles=compiles,
        compile_s=compile_s, wall_s=time.perf_counter() - t_start, buckets=buckets)
