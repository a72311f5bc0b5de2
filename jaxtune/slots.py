"""A running population: the members' device state, and which member holds each slot.

A :class:`Population` runs one compiled bucket program
(:class:`~jaxtune.programs.BucketProgram`) of a fixed number of *slots*. Each
slot holds a :class:`Member` (a configuration x a replicate) or nothing. Between
chunks, members can be stopped, released, started in free slots (fresh
initialisation merged into the running state) or given another member's state
with new hyperparameters (population-based training): none of it recompiles.

Keys: a member's key derives from (study seed, key id, replicate) only, where the
key id is its trial id (or, after population-based training copied another
member's state into it, that member's key id), so a member's data order,
dropout masks and initial parameters do not depend on its neighbours.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    ...     model=jt.models.MLP(width=8, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...     steps=20, eval_every=10, defaults={"batch_size": 16})
    >>> static = exp.static_config({"lr": 0.01})
    >>> program, _ = jt.Programs(exp).get(static, size=2)
    >>> pop = Population(exp, static, program, [Member({"lr": 0.01}, trial_id=0, replicate=0)],
    ...                  seed=0)
    >>> pop.free_slots(), sorted(pop.run_chunk())
    ([1], ['step', 'train_loss', 'val_loss'])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.data import test_arrays, train_arrays
from jaxtune.distributed import to_host
from jaxtune.experiment import Experiment
from jaxtune.programs import BucketProgram
from jaxtune.train import step_budget

__all__ = ["ChunkReport", "Member", "Population", "check_members", "exploit_key_id", "member_keys",
           "train_keys"]


def member_keys(seed: int, key_ids: Sequence[int], replicates: Sequence[int]) -> jax.Array:
    """Per-member keys derived from (study seed, key id, replicate) only.

    Example:
        >>> member_keys(0, [3, 3], [0, 1]).shape
        (2,)
    """
    return _member_keys(jax.random.key(int(seed)), np.asarray(key_ids, np.uint32),
                        np.asarray(replicates, np.uint32))


@jax.jit
def _member_keys(base: jax.Array, key_ids: jax.Array, replicates: jax.Array) -> jax.Array:
    return jax.vmap(lambda t, r: jax.random.fold_in(jax.random.fold_in(base, t), r)
                    )(key_ids, replicates)


def exploit_key_id(trial_id: int, step: int) -> int:
    """The key id of a member's segment that starts with an exploit at ``step``: from
    its own trial id and the step only, in ``[2**30, 2**31)`` (never a trial's id).

    Example:
        >>> exploit_key_id(3, 500) == exploit_key_id(3, 500) != exploit_key_id(4, 500)
        True
    """
    mixed = (int(trial_id) * 0x9E3779B1 + int(step) * 0x85EBCA77 + 0x27D4EB2F) & 0xFFFFFFFF
    mixed ^= mixed >> 15
    return (1 << 30) | (mixed * 0x2C1B3C6D & 0x3FFFFFFF)


def train_keys(keys: jax.Array) -> jax.Array:
    """The training stream of members given their member keys (as a member's ``init``
    keeps the second half of its key's split)."""
    with jax.threefry_partitionable(False):
        return jax.vmap(lambda k: jax.random.split(k)[1])(keys)


@dataclasses.dataclass
class ChunkReport:
    """What a scheduler sees after each chunk of one sub-population.

    Attributes:
        chunk: the population's chunk counter (0 for the first chunk).
        slots: slot index of each occupied slot.
        trial_ids, configs: who occupies each of those slots.
        steps: steps done per slot.
        alive: whether each slot still trains.
        history: metric -> ``(slots, chunks so far)``, NaN before a member started.
    """

    chunk: int
    slots: np.ndarray
    trial_ids: np.ndarray
    configs: list[dict[str, Any]]
    steps: np.ndarray
    alive: np.ndarray
    history: dict[str, np.ndarray]


@dataclasses.dataclass
class Member:
    """The host-side record of one member (a configuration x a replicate).

    Attributes:
        config, trial_id, replicate: who it is.
        key_id: the id its key derives from (default: ``trial_id``).
        first_chunk: the population chunk at which it started.
        order: its position in a result (members started later come last).
        curves: metric -> values at each chunk it ran.
        final: metric -> final value.
        status: ``running``, then ``complete``, ``diverged`` or ``pruned``.
        lineage: population-based training: ``(step, config, key id)`` of every
            change of hyperparameters, the first at step 0, enough to replay the
            member as one run (after an exploit: the source's lineage, then its own).
        segments: population-based training: what this trial id trained, segment
            by segment: ``start`` and ``end`` step, ``config``, and the ``source``
            trial whose state an exploit copied (``None`` for its first segment).
        params, best_params: its final parameters and, with early stopping, those
            at its best validation loss (host arrays; only with ``keep_params``).
        probed_final: the engine's probes measured it where it ended.
    """

    config: dict[str, Any]
    trial_id: int
    replicate: int
    key_id: int | None = None
    first_chunk: int = 0
    order: float = math.inf
    curves: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    final: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "running"
    lineage: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    params: Any = None
    best_params: Any = None
    probed_final: bool = False
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key_id is None:
            self.key_id = self.trial_id

    def padded_curve(self, metric: str, length: int) -> list[float]:
        """The curve on the population's chunk axis (NaN where it did not run)."""
        row = [math.nan] * self.first_chunk + self.curves.get(metric, [])[: length -
                                                                           self.first_chunk]
        return row + [math.nan] * (length - len(row))

    def close(self, status: str | None = None) -> None:
        """Copies the last value of each curve into :attr:`final` (and sets the status)."""
        self.final.update({k: v[-1] for k, v in self.curves.items()
                           if k != "step" and not k.startswith("probe_")})
        for k, v in self.curves.items():  # probes: the last boundary probed
            if k.startswith("probe_"):
                self.final[k] = next((x for x in reversed(v) if not math.isnan(x)), math.nan)
        if status is not None:
            self.status = status


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def check_members(experiment: Experiment, static: Mapping[str, Any],
                      members: Sequence[Member]) -> None:
    """Checks the members' traced values (before anything compiles) and records each
    member's step budget in ``final["budget"]`` and whether an epoch budget was cut at
    ``Experiment.steps`` in ``final["budget_capped"]``."""
    arrays = experiment.member_arrays([m.config for m in members], static)
    n, steps = experiment.data.n_train, int(experiment.steps)
    k = experiment.accumulate
    budget = step_budget(arrays, steps, n, xp=np, accumulate=k)
    wanted = np.where(np.isnan(arrays["epochs"]), budget,
                      np.ceil(np.nan_to_num(arrays["epochs"]) * n / (arrays["batch_size"] * k)))
    for m, b, w in zip(members, budget, wanted):
        m.final.update(budget=int(b), budget_capped=bool(w > steps))



class Population:
    """One running sub-population: the device state and the member in each slot.

    Args:
        experiment: the experiment.
        static: the bucket's static values.
        program: its compiled :class:`~jaxtune.programs.BucketProgram`.
        members: at most ``program.size`` members for the first slots (the
            others start free).
        seed: the study seed of the member keys.
        keep_params: copy each member's parameters to host memory when it ends.
    """

    def __init__(self, experiment: Experiment, static: Mapping[str, Any],
                 program: BucketProgram, members: Sequence[Member], seed: int,
                 keep_params: bool = False):
        if not 0 < len(members) <= program.size:
            raise ValueError(f"a population of {program.size} slots got {len(members)} members")
        self.experiment, self.static, self.program, self.seed = (
            experiment, dict(static), program, int(seed))
        self.keep_params = keep_params
        self.slots: list[Member | None] = [*members, *[None] * (program.size - len(members))]
        self.members: list[Member] = list(members)
        self.chunk = 0
        self._placed: tuple[Any, Any] | None = None  # (training data, as placed)
        self.state = program.init(*self._fresh())
        if None in self.slots:  # free slots never train
            self._set_alive(self.occupied)

    # -- views ----------------------------------------------------------------------------
    @property
    def occupied(self) -> np.ndarray:
        return np.asarray([m is not None for m in self.slots])

    def free_slots(self) -> list[int]:
        return [s for s, m in enumerate(self.slots) if m is None]

    def field(self, name: str) -> np.ndarray:
        """A per-slot field of the member state (``step``, ``alive``, ``diverged`` ...)."""
        return np.asarray(to_host(getattr(self.state, name)))

    def finished(self) -> list[int]:
        """Occupied slots whose member trains no more (budget spent, stopped, diverged)."""
        alive, step, budget = self.field("alive"), self.field("step"), self.field("budget")
        return [s for s, m in enumerate(self.slots)
                if m is not None and (not alive[s] or step[s] >= budget[s])]

    def report(self) -> ChunkReport:
        """The view of the occupied slots a scheduler receives."""
        slots = np.flatnonzero(self.occupied)
        members = [self.slots[s] for s in slots]
        names = members[0].curves if members else {}
        return ChunkReport(
            chunk=self.chunk - 1, slots=slots,
            trial_ids=np.asarray([m.trial_id for m in members]),
            configs=[m.config for m in members], steps=self.field("step")[slots],
            alive=self.field("alive")[slots],
            history={k: np.asarray([m.padded_curve(k, self.chunk) for m in members])
                     for k in names})

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> tuple[list[np.ndarray], dict[str, Any]]:
        """The member state's leaves on the host (whatever the state pytree holds; keys
        as their key data) and the host records of the slots (see :mod:`jaxtune.checkpoint`)."""
        def plain(x: Any) -> Any:
            return jax.random.key_data(x) if _is_key(x) else x

        leaves = jax.tree.leaves(to_host(jax.tree.map(plain, self.state)))
        members = [self.members[0], *(m for m in self.slots  # the stand-in, and the occupants
                                      if m is not None and m is not self.members[0])]
        return [np.asarray(a) for a in leaves], {"slots": self.slots, "members": members,
                                                 "chunk": self.chunk}

    def restore(self, leaves: Sequence[np.ndarray], records: Mapping[str, Any]) -> None:
        """Takes the state and slots of a :meth:`snapshot` (of a population of this
        program's shapes; ``ValueError`` otherwise)."""
        current, treedef = jax.tree.flatten(self.state)
        if len(current) != len(leaves) or any(
                tuple(np.shape(jax.random.key_data(c) if _is_key(c) else c)) != a.shape
                for c, a in zip(current, leaves)):
            raise ValueError("the checkpoint's member state does not match this program's "
                             "(another model, population size or jaxtune version)")
        placed = [jax.random.wrap_key_data(a, impl=jax.random.key_impl(c)) if _is_key(c)
                  else a.astype(c.dtype) for c, a in zip(current, leaves)]
        state = jax.tree.unflatten(treedef, placed)
        self.state = (self.program.put(state) if self.program.sharding is not None
                      else jax.device_put(state))
        self.slots, self.members = list(records["slots"]), list(records["members"])
        self.chunk = int(records["chunk"])

    # -- training -------------------------------------------------------------------------
    def run_chunk(self) -> dict[str, np.ndarray]:
        """Trains every slot for one chunk; appends the metrics to each member's curves."""
        data = self._data()
        self.state, metrics = self.program.chunk(self.state, data)
        metrics = {k: np.asarray(v) for k, v in to_host(metrics).items()}
        metrics.update(self._probe(data))
        for s, m in enumerate(self.slots):
            if m is not None:
                for k, v in metrics.items():
                    m.curves.setdefault(k, []).append(float(v[s]))
        self.chunk += 1
        return metrics

    def _data(self) -> Any:
        """The training data, placed for the program (once per population)."""
        data = train_arrays(self.experiment.data)
        if self._placed is None or self._placed[0] is not data:
            self._placed = (data, self.program.put_data(data))
        return self._placed[1]

    def _probe(self, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The experiment's probes after this chunk (NaN where the boundary is not probed)."""
        spec = self.experiment.probes
        if spec is None:
            return {}
        ending = [s for s in self.finished() if not self.slots[s].probed_final] if spec.final \
            else []
        if not (spec.due(self.chunk) or ending):
            return {k: np.full(self.program.size, np.nan) for k in spec.names}
        for s in ending:
            self.slots[s].probed_final = True
        values = self.program.probe(self.state, data, self._keys(), self.chunk)
        return {k: np.asarray(v, np.float64) for k, v in to_host(values).items()}

    def _filled(self) -> list[Member]:
        """The member of each slot (free slots: the first member, as a stand-in)."""
        return [m if m is not None else self.members[0] for m in self.slots]

    def _keys(self) -> Any:
        """The slots' member keys, placed on the devices."""
        return self.program.put(self._keys_of(self._filled()))

    def _keys_of(self, members: Sequence[Member]) -> jax.Array:
        return member_keys(self.seed, [m.key_id for m in members],
                           [m.replicate for m in members])

    def _fresh(self) -> tuple[Any, Any]:
        """Hyperparameters and keys of the slots' members (free slots: any member's)."""
        hp = self.experiment.member_arrays([m.config for m in self._filled()], self.static)
        return self.program.put(hp), self._keys()

    def _set_alive(self, alive: np.ndarray) -> None:
        self.state = self.state._replace(alive=self.program.put(jnp.asarray(alive)))

    def _mask(self, slots: Sequence[int]) -> np.ndarray:
        mask = np.zeros(self.program.size, bool)
        mask[list(slots)] = True
        return mask

    def stop(self, slots: Sequence[int]) -> None:
        """Stops the members of ``slots`` (status ``pruned``); they train no more."""
        for s in slots:
            self.slots[s].status = "pruned"
        self._set_alive(self.field("alive") & ~self._mask(slots))

    def start(self, assignments: Mapping[int, Member]) -> None:
        """Starts fresh members in free slots (initialised and merged: no recompile)."""
        for s, new in assignments.items():
            if self.slots[s] is not None:
                raise ValueError(f"slot {s} is not free")
            new.first_chunk = self.chunk
            self.slots[s] = new
            self.members.append(new)
        mask = self.program.put(jnp.asarray(self._mask(list(assignments))))
        self.state = self.program.merge(mask, self.program.init(*self._fresh()), self.state)

    def replace(self, assignments: Mapping[int, Member]) -> None:
        """Starts fresh members in the given slots; the previous ones end ``pruned``."""
        steps = self.field("step")
        self._keep(list(assignments))
        for s in assignments:
            old = self.slots[s]
            old.close("pruned")
            old.final.update(steps=int(steps[s]), early_stopped=False)
        self.release(list(assignments))
        self.start(assignments)

    def reassign(self, moves: Mapping[int, tuple[int, dict[str, Any]]],
                 key_ids: Mapping[int, int] | None = None) -> None:
        """Population-based training: slot ``dst`` takes slot ``src``'s parameters,
        optimizer state and counters with the hyperparameters of a new configuration,
        for each ``dst: (src, config)``, and a key of its own.

        The member in ``dst`` keeps its trial id; its configuration becomes the new
        one, its key id ``key_ids[dst]`` (default :func:`exploit_key_id` of its trial
        id and the step: its random stream, minibatches and dropout masks, is its
        own, never the source's), its lineage the source's plus the new
        configuration and key id at the current step (what replays it as one run),
        and its ``segments`` gain the new one with the source trial."""
        steps = self.field("step")
        source = np.arange(self.program.size)
        configs = [m.config if m is not None else self.members[0].config for m in self.slots]
        def history(m: Member) -> list[dict[str, Any]]:
            return list(m.lineage) or [{"step": 0, "config": dict(m.config),
                                        "key_id": m.key_id}]

        before = {s: history(self.slots[s]) for s in moves}
        sources = {src: self.slots[src].trial_id for src, _ in moves.values()}
        for dst, (src, config) in moves.items():
            lineage = before[src] if src in before else history(self.slots[src])
            member, step = self.slots[dst], int(steps[src])
            key_id = (key_ids or {}).get(dst, exploit_key_id(member.trial_id, step))
            member.segments = [*(member.segments or [{"start": 0, "config": dict(member.config),
                                                      "source": None}])]
            member.segments[-1] = {**member.segments[-1], "end": int(steps[dst])}
            member.segments.append({"start": step, "config": dict(config),
                                    "source": sources[src]})
            member.key_id, member.config = key_id, dict(config)
            member.lineage = [*lineage, {"step": step, "config": dict(config),
                                         "key_id": key_id}]
            source[dst], configs[dst] = src, config
        hp = self.experiment.member_arrays(configs, self.static)
        mask = self._mask(list(moves))
        self.state = self.program.reassign(
            self.state, self.program.put(jnp.asarray(source, jnp.int32)),
            self.program.put(jnp.asarray(mask)), self.program.put(hp))
        fresh = self.program.put(train_keys(self._keys_of(self._filled())))
        self.state = self.state._replace(
            key=jnp.where(self.program.put(jnp.asarray(mask)), fresh, self.state.key))

    def release(self, slots: Sequence[int]) -> None:
        """Frees ``slots`` (their members have ended): they train no more."""
        for s in slots:
            self.slots[s] = None
        self._set_alive(self.field("alive") & ~self._mask(slots))

    # -- ending ---------------------------------------------------------------------------
    def _keep(self, slots: Sequence[int]) -> None:
        """Copies the parameters of ``slots`` to their members (host memory)."""
        if not self.keep_params or not len(slots):
            return
        # kept as the module's whole variables: the params and the model state
        st = self.state
        params, best = to_host((
            {**st.params, **(st.model_state or {})},
            None if st.best_params is None else {**st.best_params,
                                                 **(st.best_model_state or {})}))
        for s in slots:
            self.slots[s].params = jax.tree.map(lambda a, s=s: a[s], params)
            if best is not None:
                self.slots[s].best_params = jax.tree.map(lambda a, s=s: a[s], best)

    def finish(self, evaluate_test: bool = False, slots: Sequence[int] | None = None) -> None:
        """Records the final metrics (and test metrics) and status of the members in
        ``slots`` (default: every occupied slot)."""
        slots = list(np.flatnonzero(self.occupied) if slots is None else slots)
        if not slots:
            return
        test = (to_host(self.program.test(self.state, self.program.put_data(
            test_arrays(self.experiment.data)))) if evaluate_test else {})
        fields = {k: self.field(k) for k in ("step", "diverged", "stopped", "best")}
        self._keep(slots)
        for s in slots:
            m = self.slots[s]
            m.final.update({k: float(v[s]) for k, v in test.items()})
            m.close()
            m.final.update(steps=int(fields["step"][s]), best_val_loss=float(fields["best"][s]),
                           early_stopped=bool(fields["stopped"][s]))
            if m.status == "running":  # not pruned by a scheduler
                m.status = "diverged" if fields["diverged"][s] else "complete"
