"""Compiled bucket programs: ``jit(vmap(member function))``, built once and counted.

A :class:`BucketProgram` holds the compiled functions that train a population of
one bucket of static hyperparameters: ``init`` (fresh members), ``chunk``
(``eval_every`` steps then train/validation metrics), ``test`` (final test
metrics) and ``merge`` (take some members' state from another state). Each is
compiled ahead of time (``jit(...).lower(...).compile()``), so every compile is
counted and calling one with other shapes fails instead of silently
recompiling. The population axis is sharded over a 1-D mesh ``("pop",)`` of all
devices; data are replicated.

:class:`Programs` caches the bucket programs of one experiment by (static
values, population size, device count) and counts its compiles. A
:class:`~jaxtune.study.Study` shares one between its batches and its final
evaluation; :func:`~jaxtune.population.train_population` uses
:meth:`Programs.default` unless given one, so two calls with the same
experiment share compiled programs (as two calls of a ``jax.jit`` function do).

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    ...     model=jt.models.MLP(width=8, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...     steps=20, eval_every=10, defaults={"batch_size": 16})
    >>> programs = jt.Programs(exp)
    >>> static = exp.static_config({"lr": 0.01})
    >>> program, new = programs.get(static, size=4)
    >>> new, programs.compiles, program.size
    (True, 1, 4)
    >>> programs.get(static, size=4)[1]
    False
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtune import executables
from jaxtune.data import test_arrays, train_arrays
from jaxtune.distributed import put_global
from jaxtune.experiment import Experiment
from jaxtune.memory import member_bytes, param_bytes
from jaxtune.probing import make_probe
from jaxtune.train import MemberProgram, make_train

__all__ = ["BucketProgram", "Programs", "bucket_key", "compiler_options",
           "estimate_member_bytes"]

BucketKey = tuple[tuple[str, Any], ...]


def bucket_key(static: Mapping[str, Any]) -> BucketKey:
    """A hashable signature of a bucket's static values (sorted by name)."""
    return tuple(sorted(static.items(), key=lambda kv: kv[0]))


@dataclasses.dataclass(frozen=True)
class BucketProgram:
    """The compiled functions of one bucket for one population size.

    Attributes:
        init: ``(hparams, keys) -> state`` for ``size`` fresh members.
        chunk: ``(state, data) -> (state, metrics)``; donates ``state``.
        test: ``(state, test_data) -> metrics``. Compiled on first use (a study
            reads the test split only in its final evaluation).
        merge: ``(mask, new, old) -> state``: ``new`` where ``mask`` else ``old``;
            donates ``old``.
        reassign: ``(state, source, mask, hparams) -> state``: where ``mask``, a
            member takes the whole state of member ``source[i]`` (parameters,
            optimizer state, key, counters) with the traced ``hparams[i]``
            (population-based training's exploit and explore); donates ``state``.
            Compiled on first use (only population-based training needs it).
        size: members per call (the population axis).
        sharding: the population axis' sharding (``None`` on one device).
        compile_s: seconds spent compiling these four functions.
        metric_names: what ``chunk`` reports.
        build_probe: builds ``probe``: ``(state, data, member_keys, chunk) ->
            {curve: (size,)}``, the experiment's :class:`~jaxtune.Probes` for every
            member; ``None`` without probes. Compiled on first use.
        stored: ``init``, ``chunk`` and ``merge`` were loaded from
            :mod:`jaxtune.executables` (nothing traced).
    """

    init: Any
    chunk: Any
    build_test: Any
    merge: Any
    build_reassign: Any
    size: int
    sharding: Any
    compile_s: float
    metric_names: tuple[str, ...]
    build_probe: Any = None
    stored: bool = False

    @functools.cached_property
    def test(self) -> Any:
        return self.build_test()

    @functools.cached_property
    def probe(self) -> Any:
        if self.build_probe is None:
            raise ValueError("the experiment has no probes (Experiment(probes=Probes(...)))")
        return self.build_probe()

    @functools.cached_property
    def reassign(self) -> Any:
        return self.build_reassign()

    def put(self, tree: Any) -> Any:
        """Places per-member arrays on the devices with the population sharding."""
        if self.sharding is None:
            return tree
        if not self.sharding.is_fully_addressable:  # several processes (jaxtune.distributed)
            return put_global(tree, self.sharding)
        return jax.device_put(tree, self.sharding)

    def put_data(self, tree: Any) -> Any:
        """Places data, replicated, on every device of every process (one process: as is;
        the compiled functions place it)."""
        if self.sharding is None or self.sharding.is_fully_addressable:
            return tree
        return put_global(tree, NamedSharding(self.sharding.mesh, PartitionSpec()))


def _mesh() -> Mesh | None:
    devs = jax.devices()
    return Mesh(np.asarray(devs), ("pop",)) if len(devs) > 1 else None


def _with_sharding(tree: Any, sharding: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)


#: Members trained together by one CPU device at a time. A CPU device holding more
#: runs them group after group (``lax.map``), so a group's working set stays in
#: cache: on a 2-core CPU this trained 64 MNIST-1D MLPs 16% faster and 256 of them
#: 25% faster than one vmap over all members. Accelerators run all their members at
#: once (no groups).
CPU_GROUP = 4


def _group_size(members: int, group: int) -> int:
    """The largest divisor of ``members`` that is at most ``group``."""
    return max(g for g in range(1, min(members, group) + 1) if members % g == 0)


def _balanced_layout(size: int, devices: int, group: int) -> np.ndarray:
    """Where the members sorted by batch size go: position ``p`` of the population
    takes sorted member ``layout[p]``.

    Consecutive sorted members form groups of ``group``; the groups are dealt to
    the devices in a snake (0, 1, ..., 1, 0, 0, 1, ...) so every device gets
    small and large ones alike.
    """
    per_device = size // devices
    layout = np.empty(size, np.int64)
    for r in range(per_device // group):
        dealt = range(r * devices, (r + 1) * devices)
        for d, gid in enumerate(reversed(dealt) if r % 2 else dealt):
            at = d * per_device + r * group
            layout[at:at + group] = gid * group + np.arange(group)
    return layout


def _in_groups(member: MemberProgram, mesh: Mesh | None, size: int) -> Any:
    """The population's chunk: ``member.chunk`` vmapped, run group by group on each CPU
    device, each group at the smallest row capacity that holds its members' batches.

    The group's capacity comes from the group's own data (``member.needs``), so
    one compiled program serves every mix of batch sizes. With several capacities
    and several groups, the members are first sorted by batch size (in the
    program, undone at the end), so members of similar batch sizes share a group
    and a small batch does not pay for a large neighbour's rows; a member's result
    never depends on its slot or its neighbours (its rows, masks and weights are
    the same at every capacity that holds its batch).
    """
    chunk = jax.vmap(member.chunk, in_axes=(0, None, None))
    caps = member.capacities or (member.max_batch,)
    devices = mesh.size if mesh is not None else 1
    per_device = size // devices
    cpu = jax.devices()[0].platform == "cpu"
    group = _group_size(per_device, CPU_GROUP)

    def at_capacity(state, data):
        if len(caps) == 1:
            return chunk(state, data, None)
        need = jnp.max(jax.vmap(member.needs)(state))
        index = jnp.minimum(jnp.searchsorted(jnp.asarray(caps), need), len(caps) - 1)
        return chunk(state, data, index.astype(jnp.int32))

    def local(state, data):
        if group == per_device:
            return at_capacity(state, data)
        split = jax.tree.map(lambda a: a.reshape((-1, group, *a.shape[1:])), state)
        out = jax.lax.map(lambda s: at_capacity(s, data), split)
        return jax.tree.map(lambda a: a.reshape((-1, *a.shape[2:])), out)

    if not cpu:  # accelerators: all members at once, at the population's capacity
        return at_capacity
    run = local if mesh is None else jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec("pop"), PartitionSpec()),
        out_specs=PartitionSpec("pop"), check_vma=False)
    if len(caps) == 1 or size == group:
        return run
    layout = jnp.asarray(_balanced_layout(size, devices, group))

    def sorted_run(state, data):
        order = jnp.argsort(jax.vmap(member.needs)(state), stable=True)[layout]
        back = jnp.zeros_like(order).at[order].set(jnp.arange(size, dtype=order.dtype))
        out = run(jax.tree.map(lambda a: a[order], state), data)
        return jax.tree.map(lambda a: a[back], out)

    return sorted_run


def _init_each(member: MemberProgram) -> Any:
    """The population's ``init``: ``member.init`` vmapped, or on CPU member by member
    (``lax.map``). A vmapped initializer that calls LAPACK (``nn.OptimizedLSTMCell``'s
    orthogonal kernels: a QR batched over members) deadlocked XLA:CPU's thread pool on a
    2-core machine (docs/benchmarks.md); unbatched, each QR runs inline. The members'
    values are the same either way (each from its own key)."""
    if jax.devices()[0].platform != "cpu":
        return jax.vmap(member.init)
    return lambda hparams, keys: jax.lax.map(lambda a: member.init(*a), (hparams, keys))


def _merge(mask: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def _serialized(compiled: Any) -> tuple[Any, ...]:
    from jax.experimental import serialize_executable

    return serialize_executable.serialize(compiled)


def _loaded(entry: tuple[Any, ...]) -> Any:
    from jax.experimental import serialize_executable

    return serialize_executable.deserialize_and_load(*entry)


#: XLA compile options of every bucket program on CPU (:func:`compiler_options`); part
#: of the key of stored programs. Empty: none measured paid on both the MNIST-1D CNN
#: and the main job's MLP without slowing a chunk (docs/benchmarks.md, "Compiling a
#: population"); ``jaxtune.benchmarks.compile`` measures a candidate through the engine.
CPU_COMPILER_OPTIONS: dict[str, Any] = {}


def compiler_options() -> dict[str, Any] | None:
    """The XLA compile options of the bucket programs: :data:`CPU_COMPILER_OPTIONS` on
    CPU, ``None`` (XLA's defaults) elsewhere or when it is empty.

    Example:
        >>> compiler_options() in (None, CPU_COMPILER_OPTIONS)
        True
    """
    if jax.devices()[0].platform != "cpu" or not CPU_COMPILER_OPTIONS:
        return None
    return dict(CPU_COMPILER_OPTIONS)


def _usable(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """``options`` if this XLA knows them all (checked once on a tiny program), else
    ``None``: an XLA without an option compiles with its defaults."""
    if not options:
        return None
    return options if _known(tuple(sorted(options.items()))) else None


@functools.cache
def _known(options: tuple[tuple[str, Any], ...]) -> bool:
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(2)).compile(compiler_options=dict(options))
    except Exception:  # "No such compile option" from another jaxlib
        return False
    return True


def _compile_new(member: MemberProgram, mesh: Mesh | None, size: int, hp: Any, keys: Any,
                 mask: Any, data: Any, stored: str | None) -> tuple[Any, Any, Any, Any]:
    """Traces and compiles ``init``, ``merge`` and ``chunk`` (and stores them under
    ``stored`` unless ``None``): ``(init, merge, chunk, state shapes)``.

    An executable loaded from JAX's persistent cache cannot be stored
    (:func:`jaxtune.executables.cache_hits`): ``init`` and ``merge`` compile outside
    JAX's cache when they will be stored, and nothing is stored when the chunk came
    from there. (Compiling them in a thread beside the chunk was measured and not
    adopted: docs/design.md, "Compile time on CPU".)
    """
    shard = NamedSharding(mesh, PartitionSpec("pop")) if mesh else None
    options = _usable(compiler_options())
    traced_init = jax.jit(_init_each(member), out_shardings=shard).trace(hp, keys)
    state = _with_sharding(traced_init.out_info, shard)  # traced once: shapes, program
    with executables.compiled_here() if stored else contextlib.nullcontext():
        init = traced_init.lower().compile(compiler_options=options)
        # merge from a fresh function: never an executable JAX holds in memory
        merge = jax.jit(lambda m, new, old: _merge(m, new, old), donate_argnums=2,
                        out_shardings=shard).lower(mask, state, state).compile(
                            compiler_options=options)
    hits = executables.cache_hits()
    chunk = jax.jit(_in_groups(member, mesh, size), donate_argnums=0,
                    out_shardings=shard).lower(state, data).compile(compiler_options=options)
    if stored is not None and executables.cache_hits() == hits:
        with contextlib.suppress(Exception):  # one that cannot serialize: not stored
            executables.save(stored, {
                "state": _with_sharding(state, None), "init": _serialized(init),
                "chunk": _serialized(chunk), "merge": _serialized(merge)})
    return init, merge, chunk, state


def _compile(member: MemberProgram, hparams: Mapping[str, np.ndarray], experiment: Experiment,
             size: int, probe: Any = None, stored: str | None = None,
             entry: dict[str, Any] | None = None) -> BucketProgram:
    """Compiles the bucket's programs, or loads them from ``entry``; ``stored``: their
    key in :mod:`jaxtune.executables` (``None``: never stored)."""
    t0 = time.perf_counter()
    mesh = _mesh()
    shard = NamedSharding(mesh, PartitionSpec("pop")) if mesh else None
    repl = NamedSharding(mesh, PartitionSpec()) if mesh else None
    hp = {k: jax.ShapeDtypeStruct((size,), np.asarray(v).dtype, sharding=shard)
          for k, v in hparams.items()}
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), size))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=shard)
    data = _with_sharding(train_arrays(experiment.data), repl)
    tdata = _with_sharding(test_arrays(experiment.data), repl)
    mask = jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=shard)
    try:
        if entry is not None:
            state = _with_sharding(entry["state"], shard)
            init, chunk, merge = (_loaded(entry[k]) for k in ("init", "chunk", "merge"))
    except Exception:  # an entry this jax cannot load: traced and compiled again
        entry = None
    if entry is None:
        init, merge, chunk, state = _compile_new(member, mesh, size, hp, keys, mask, data,
                                                 stored)

    def build_test():
        return jax.jit(jax.vmap(member.test, in_axes=(0, None))).lower(state, tdata).compile(
            compiler_options=_usable(compiler_options()))

    source = jax.ShapeDtypeStruct((size,), jnp.int32, sharding=shard)

    def reassign_fn(state, source, mask, hparams):
        moved = jax.vmap(member.retune)(jax.tree.map(lambda a: a[source], state), hparams)
        return _merge(mask, moved, state)

    def build_reassign():
        return jax.jit(reassign_fn, donate_argnums=0, out_shardings=shard
                       ).lower(state, source, mask, hp).compile(
                           compiler_options=_usable(compiler_options()))

    def build_probe():
        fn = jax.jit(jax.vmap(probe, in_axes=(0, None, 0, None)))
        if mesh is None:
            return fn
        # The population is gathered on one device first: partitioned over several
        # XLA:CPU host devices, the probe never finished (jaxlib 0.10.2, shard_map
        # too). The Lanczos loop is not the cause: the batched eigvalsh of its
        # tridiagonal matrices is (its LAPACK batch waits on the pool threads that
        # run the partitions; docs/repro/lanczos_two_devices.py, docs/probes.md).
        # Probes are occasional, so the copy is cheap beside them.
        one = jax.devices()[0]

        def on_one_device(state, data, keys, chunk):
            return fn(*jax.device_put((state, data, keys), one), chunk)

        return on_one_device

    return BucketProgram(init=init, chunk=chunk, build_test=build_test, merge=merge,
                         build_reassign=build_reassign, size=size,
                         sharding=shard, compile_s=time.perf_counter() - t0,
                         metric_names=member.metric_names,
                         build_probe=build_probe if probe is not None else None,
                         stored=entry is not None)


class Programs:
    """The compiled bucket programs of one experiment, cached and counted.

    Args:
        experiment: the :class:`~jaxtune.experiment.Experiment` (held weakly: the
            cache never keeps an experiment alive).
        own_batch: in masked mode, run each group of members at the smallest row
            capacity that holds its batches (see :func:`~jaxtune.train.make_train`);
            ``False``: every member computes the largest batch's rows (the engine
            before row capacities; kept for benchmarks).

    Attributes:
        compiles: bucket programs compiled (or loaded) so far.
        stored: how many of them were loaded from :mod:`jaxtune.executables`.
        compile_s: seconds spent compiling them.
    """

    _defaults: ClassVar[weakref.WeakKeyDictionary[Experiment, Programs]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, experiment: Experiment, *, own_batch: bool = True):
        self._experiment = weakref.ref(experiment)
        self.own_batch = bool(own_batch)
        self.compiles = 0
        self.stored = 0
        self.compile_s = 0.0
        self._members: dict[BucketKey, MemberProgram] = {}
        self._bytes: dict[BucketKey, int] = {}
        self._compiled: dict[tuple[BucketKey, int, int], BucketProgram] = {}

    @classmethod
    def default(cls, experiment: Experiment) -> Programs:
        """The process-wide cache of ``experiment`` (what ``train_population`` uses)."""
        if experiment not in cls._defaults:
            cls._defaults[experiment] = cls(experiment)
        return cls._defaults[experiment]

    @property
    def experiment(self) -> Experiment:
        exp = self._experiment()
        if exp is None:  # pragma: no cover - only reachable through a dangling cache
            raise RuntimeError("the experiment of this program cache no longer exists")
        return exp

    def check(self, experiment: Experiment) -> None:
        """Raises unless this cache belongs to ``experiment``."""
        if self._experiment() is not experiment:
            raise ValueError("these Programs were built for another Experiment")

    def member(self, static: Mapping[str, Any], check: bool = True) -> MemberProgram:
        """One member's pure functions for the bucket ``static`` (built once; ``check``:
        see :func:`~jaxtune.train.make_train`)."""
        key = bucket_key(static)
        if key not in self._members:
            self._members[key] = make_train(self.experiment, static, own_batch=self.own_batch,
                                            check=check)
        return self._members[key]

    def example_arrays(self, static: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One member's traced hyperparameters in the bucket (dtypes and shapes)."""
        exp = self.experiment
        return exp.member_arrays([exp.example_config(static)], static, check=False)

    def member_bytes(self, static: Mapping[str, Any]) -> int:
        """An upper estimate of one member's memory in the bucket (computed once)."""
        key = bucket_key(static)
        if key not in self._bytes:
            exp = self.experiment
            stored = self._stored_key(static, 0, "member_bytes")
            entry = executables.load(stored)
            if entry is not None and isinstance(entry.get("bytes"), int):
                self._bytes[key] = entry["bytes"]
            else:
                self._bytes[key] = member_bytes(self.member(static),
                                                self.example_arrays(static),
                                                train_arrays(exp.data))
                executables.save(stored, {"bytes": self._bytes[key]})
            if exp.probes is not None and exp.probes.sharpness:  # the Lanczos basis
                self._bytes[key] += (exp.probes.order + 4) * self.param_bytes(static)
        return self._bytes[key]

    def _stored_key(self, static: Mapping[str, Any], size: int, what: str) -> str | None:
        """The key of ``what`` in :mod:`jaxtune.executables` (``None``: not stored)."""
        if executables.directory() is None or jax.process_count() > 1:
            return None  # several processes compile together: nothing stored
        options = sorted((compiler_options() or {}).items())
        variant = (f"{what}|own_batch={self.own_batch}|devices={len(jax.devices())}"
                   f"|options={options}")
        return executables.fingerprint(self.experiment, static, size=size, variant=variant)

    def step_shapes(self, static: Mapping[str, Any]) -> tuple[Any, Any]:
        """Shapes of one member's training-step arguments in the bucket: ``(state,
        data)`` for :attr:`MemberProgram.train_step <jaxtune.train.MemberProgram>`
        (nothing runs)."""
        exp, member = self.experiment, self.member(static)
        hp = {k: jax.ShapeDtypeStruct((), np.asarray(v).dtype)
              for k, v in self.example_arrays(static).items()}
        state = jax.eval_shape(member.init, hp, jax.eval_shape(lambda: jax.random.key(0)))
        data = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                for k, v in train_arrays(exp.data).items()}
        return state, data

    def param_bytes(self, static: Mapping[str, Any]) -> int:
        """Bytes of one member's parameters in the bucket."""
        return param_bytes(self.member(static), self.example_arrays(static))

    def get(self, static: Mapping[str, Any], size: int) -> tuple[BucketProgram, bool]:
        """The compiled program of the bucket for ``size`` members; ``True`` if compiled now."""
        key = (bucket_key(static), int(size), len(jax.devices()))
        if key in self._compiled:
            return self._compiled[key], False
        exp = self.experiment
        stored = self._stored_key(static, int(size), "programs")
        entry = executables.load(stored)
        # a stored program's model passed the output check when it was first built
        member = self.member(static, check=entry is None)
        probe = make_probe(exp, static, member) if exp.probes is not None else None
        program = _compile(member, self.example_arrays(static), exp, int(size), probe,
                           stored=stored, entry=entry)
        self._compiled[key] = program
        self.compiles += 1
        self.stored += int(program.stored)
        self.compile_s += program.compile_s
        return program, True


def estimate_member_bytes(experiment: Experiment, static: Mapping[str, Any]) -> int:
    """An upper estimate of one member's memory in the bucket ``static`` (no compile).

    See :func:`jaxtune.memory.member_bytes`; cached in :meth:`Programs.default`.
    """
    return Programs.default(experiment).member_bytes(static)
