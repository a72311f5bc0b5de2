"""A study's running populations: one fixed-size program per bucket, slots refilled.

A :class:`Pool` keeps one :class:`~jaxtune.slots.Population` per live bucket, each
compiled once for ``slots`` members, so a study never recompiles when the split of
its trials between buckets changes. A *trial* is a configuration trained as
``seeds`` members (replicates) in one population. :meth:`Pool.step` trains every
live population for one chunk; the study then reads per-trial views, applies its
scheduler's decisions, collects the trials that ended (their slots become free)
and starts new trials in the free slots without recompiling.

When every bucket fits at once (``buckets x slots <= population`` after
rounding to the device count), every bucket is live from the start and its free
slots are refilled with configurations asked *within* the bucket's region of the
space. Otherwise at most ``population // slots`` buckets are live at a time; a
bucket whose trials have all ended is retired while trials of other buckets wait.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    ...     model=jt.models.MLP(width=8, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...     steps=20, eval_every=10, defaults={"batch_size": 16})
    >>> pool = Pool(exp, jt.Programs(exp), slots=2, seeds=1, seed=0, objective="val_loss",
    ...             sign=1.0)
    >>> key = pool.bucket_of({"lr": 0.01})
    >>> pool.start(key, 0, {"lr": 0.01}); pool.start(key, 1, {"lr": 0.05})
    >>> while pool.running():
    ...     _ = pool.step()
    ...     ended = pool.collect()
    >>> sorted(t.trial for t in ended), ended[0].status
    ([0, 1], 'complete')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.experiment import Experiment
from jaxtune.memory import default_memory_limit
from jaxtune.programs import BucketKey, Programs, bucket_key
from jaxtune.slots import Member, Population, check_members
from jaxtune.trial_schedulers import Decisions, TrialView

__all__ = ["SIZE_MULTIPLE", "EndedTrial", "Pool", "aggregate", "replay", "study_pool", "trial_view"]


#: When the buckets cannot all be live at once, each population has this many
#: slots (rounded to the device count), at most ``population // SIZE_MULTIPLE``
#: buckets live at a time (:func:`study_pool`).
SIZE_MULTIPLE = 8


@dataclasses.dataclass
class EndedTrial:
    """A trial whose members all stopped training, with its aggregated record.

    Attributes:
        trial: the trial id.
        config: its (final) configuration.
        status: ``complete``, ``diverged`` or ``pruned``.
        metrics: name -> ``{"mean", "std", "per_seed"}`` of the members' final values.
        curves: ``step`` (nominal steps of its evaluations) and metric -> per-seed
            lists; ``lineage`` (what replays it) and ``segments`` (what this trial
            trained, with the source of each exploit) for population-based training.
        steps: steps done (the least over its replicates).
    """

    trial: int
    config: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    curves: dict[str, Any]
    steps: int


def trial_view(trial: int, config: Mapping[str, Any], steps: Sequence[Sequence[float]],
               values: Sequence[Sequence[float]], sign: float) -> TrialView:
    """A scheduler's view of a trial from its replicates' curves of steps done and of the
    objective: at each evaluation, the least steps and the mean value times ``sign``
    (the same from a running population and from a stored trial)."""
    n = min((len(v) for v in values), default=0)
    n = min(n, *(len(s) for s in steps)) if steps else 0
    history = tuple((int(min(s[i] for s in steps)),
                     sign * float(np.mean([v[i] for v in values]))) for i in range(n))
    return TrialView(trial=int(trial), config=dict(config),
                     steps=history[-1][0] if history else 0, history=history)


def aggregate(members: Sequence[Member], eval_every: int) -> tuple[dict, dict]:
    """Metrics (mean, std, per seed) and curves of one trial's members."""
    metrics: dict[str, Any] = {}
    for name in sorted({k for m in members for k in m.final}):
        v = np.asarray([float(m.final.get(name, math.nan)) for m in members], float)
        metrics[name] = {"mean": float(np.mean(v)), "std": float(np.std(v)),
                         "per_seed": v.tolist()}
    n = max(len(m.curves.get("step", [])) for m in members)
    curves: dict[str, Any] = {"step": [(k + 1) * eval_every for k in range(n)]}
    for name in sorted({k for m in members for k in m.curves}):
        # the engine's per-member step counter is kept as "steps_done"
        key = "steps_done" if name == "step" else name
        curves[key] = [m.curves.get(name, []) for m in members]
    if members[0].lineage:
        curves["lineage"] = members[0].lineage
    if members[0].segments:
        curves["segments"] = members[0].segments
    return metrics, curves


class Pool:
    """The running populations of a study (see the module docstring).

    Args:
        experiment: the experiment.
        programs: the compiled-program cache.
        slots: members per population (a multiple of the device count and of
            ``seeds``).
        seeds: replicates per trial.
        seed: the study seed (member keys).
        objective: the metric the views report, e.g. ``val_accuracy``.
        sign: ``-1.0`` to maximize the objective (views are lower-is-better).
        live_limit: at most this many populations at once.
    """

    def __init__(self, experiment: Experiment, programs: Programs, *, slots: int, seeds: int,
                 seed: int, objective: str, sign: float, live_limit: int | None = None):
        if slots % seeds:
            raise ValueError(f"slots ({slots}) must be a multiple of seeds ({seeds})")
        self.experiment, self.programs = experiment, programs
        self.slots, self.seeds, self.seed = int(slots), int(seeds), int(seed)
        self.objective, self.sign = objective, float(sign)
        self.live_limit = live_limit
        self.populations: dict[BucketKey, Population] = {}
        self.statics: dict[BucketKey, dict[str, Any]] = {}
        self._trials: dict[int, tuple[BucketKey, list[int]]] = {}  # trial -> bucket, slots
        self.compiles = 0

    # -- buckets --------------------------------------------------------------------------
    def bucket_of(self, config: Mapping[str, Any]) -> BucketKey:
        """The bucket a configuration trains in."""
        static = self.experiment.static_config(config)
        key = bucket_key(static)
        self.statics.setdefault(key, static)
        return key

    def add_bucket(self, static: Mapping[str, Any]) -> BucketKey:
        key = bucket_key(static)
        self.statics.setdefault(key, dict(static))
        return key

    def region(self, key: BucketKey) -> Any:
        """The part of the space whose configurations train in bucket ``key``."""
        return self.experiment.region(self.statics[key])

    def can_open(self, key: BucketKey) -> bool:
        return key in self.populations or self.live_limit is None or \
            len(self.populations) < self.live_limit

    def capacity(self, key: BucketKey) -> int:
        """Trials that can start in bucket ``key`` now."""
        pop = self.populations.get(key)
        if pop is None:
            return self.slots // self.seeds if self.can_open(key) else 0
        return len(pop.free_slots()) // self.seeds

    def retire_idle(self) -> None:
        """Drops populations with no running member (their programs stay cached)."""
        for key in [k for k, p in self.populations.items() if not p.occupied.any()]:
            del self.populations[key]

    # -- trials ---------------------------------------------------------------------------
    def start(self, key: BucketKey, trial: int, config: Mapping[str, Any]) -> None:
        """Starts ``trial`` as ``seeds`` members in free slots of bucket ``key``."""
        self.start_many(key, [(trial, config)])

    def start_many(self, key: BucketKey, trials: Sequence[tuple[int, Mapping[str, Any]]]
                   ) -> None:
        """Starts several ``(trial, config)`` of bucket ``key`` at once (one
        initialisation of the population, not one per trial)."""
        members = [Member(config=dict(config), trial_id=int(trial), replicate=r)
                   for trial, config in trials for r in range(self.seeds)]
        check_members(self.experiment, self.statics[key], members)
        pop = self.populations.get(key)
        if pop is None:
            if not self.can_open(key):
                raise ValueError("no room for another population")
            if len(members) > self.slots:
                raise ValueError(f"bucket {dict(key)} has no room for {len(trials)} trials")
            program, new = self.programs.get(self.statics[key], self.slots)
            self.compiles += int(new)
            pop = Population(self.experiment, self.statics[key], program, members, self.seed)
            self.populations[key] = pop
            slots = list(range(len(members)))
        else:
            free = pop.free_slots()
            if len(free) < len(members):
                raise ValueError(f"bucket {dict(key)} has no room for {len(trials)} trials")
            slots = free[:len(members)]
            pop.start(dict(zip(slots, members)))
        for i, (trial, _) in enumerate(trials):
            self._trials[int(trial)] = (key, slots[i * self.seeds:(i + 1) * self.seeds])

    def snapshot(self) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
        """The live populations' state leaves (``p0``, ``p1`` ...) and the host records
        that :meth:`restore` takes back (see :mod:`jaxtune.checkpoint`)."""
        arrays, populations = {}, []
        for i, (key, pop) in enumerate(self.populations.items()):
            arrays[f"p{i}"], records = pop.snapshot()
            populations.append((key, pop.program.size, records))
        return arrays, {"populations": populations, "trials": dict(self._trials),
                        "statics": dict(self.statics)}

    def restore(self, arrays: Mapping[str, Sequence[np.ndarray]], host: Mapping[str, Any],
                running: set[int]) -> list[int]:
        """Takes back the populations of a :meth:`snapshot` with the trials in ``running``
        (the others ended since: their slots are freed); returns the trials restored.
        ``ValueError`` if the snapshot's populations do not fit this pool."""
        restored = []
        for i, (key, size, records) in enumerate(host["populations"]):
            if size != self.slots:
                raise ValueError(f"the checkpoint's populations have {size} slots, this run's "
                                 f"{self.slots} (another population size or device count)")
            static = self.statics.setdefault(key, dict(host["statics"][key]))
            program, new = self.programs.get(static, self.slots)
            self.compiles += int(new)
            first = next(m for m in records["slots"] if m is not None)
            pop = Population(self.experiment, static, program, [first], self.seed)
            pop.restore(arrays[f"p{i}"], records)
            self.populations[key] = pop
            for trial, (k, slots) in host["trials"].items():
                if k != key:
                    continue
                if trial in running:
                    self._trials[trial] = (key, list(slots))
                    restored.append(trial)
                else:
                    pop.release(slots)
            if not pop.occupied.any():
                del self.populations[key]
        return sorted(restored)

    def running(self) -> list[int]:
        """Ids of the trials training now."""
        return sorted(self._trials)

    def step(self) -> list[BucketKey]:
        """Trains every live population with a running member for one chunk."""
        stepped = []
        for key, pop in self.populations.items():
            if pop.occupied.any():
                pop.run_chunk()
                stepped.append(key)
        return stepped

    def members(self, trial: int) -> list[Member]:
        key, slots = self._trials[trial]
        return [self.populations[key].slots[s] for s in slots]

    def views(self, key: BucketKey) -> list[TrialView]:
        """The running trials of bucket ``key`` as a scheduler sees them."""
        pop = self.populations[key]
        out = []
        for trial, (k, slots) in sorted(self._trials.items()):
            if k == key:
                members = [pop.slots[s] for s in slots]
                out.append(trial_view(trial, members[0].config,
                                      [m.curves.get("step", []) for m in members],
                                      [m.curves.get(self.objective, []) for m in members],
                                      self.sign))
        return out

    def apply(self, key: BucketKey, decisions: Decisions) -> None:
        """Stops and re-seeds trials of bucket ``key`` as a scheduler decided.

        Only members still training are touched: a trial whose members have spent
        their own step budget (``MemberState.budget``, which a searched ``steps`` or
        ``epochs`` sets per member) or already ended is collected as it ended, never
        ``pruned``, whatever the scheduler decided after its last chunk.
        """
        pop = self.populations[key]
        ended = set(pop.finished())
        stop = [s for t in decisions.stop if t in self._trials and self._trials[t][0] == key
                for s in self._trials[t][1] if s not in ended]
        if stop:
            pop.stop(stop)
        moves = {}
        for dst, (src, config) in decisions.exploit.items():
            if set(self._trials[dst][1]) <= ended:
                continue
            for d, s in zip(self._trials[dst][1], self._trials[src][1]):
                moves[d] = (s, config)
        if moves:
            pop.reassign(moves)

    def collect(self) -> list[EndedTrial]:
        """Trials whose every member stopped training: recorded, and their slots freed."""
        ended = []
        for key, pop in self.populations.items():
            done = set(pop.finished())
            for trial, (k, slots) in sorted(self._trials.items()):
                if k != key or not set(slots) <= done:
                    continue
                pop.finish(slots=slots)
                members = [pop.slots[s] for s in slots]
                statuses = {m.status for m in members}
                status = ("diverged" if "diverged" in statuses else
                          "pruned" if "pruned" in statuses else "complete")
                metrics, curves = aggregate(members, self.experiment.eval_every)
                ended.append(EndedTrial(trial=trial, config=dict(members[0].config),
                                        status=status, metrics=metrics, curves=curves,
                                        steps=min(int(m.final["steps"]) for m in members)))
                pop.release(slots)
                del self._trials[trial]
        return ended


def replay(experiment: Experiment, programs: Programs, static: Mapping[str, Any],
           trials: Sequence[tuple[int, Mapping[str, Any], Sequence[Mapping[str, Any]]]], *,
           seeds: int, seed: int, evaluate_test: bool = True, keep_params: bool = False,
           size_multiple: int = 1) -> list[Member]:
    """Trains trials of one bucket, each following its hyperparameter lineage.

    ``trials`` holds ``(trial id, config, lineage)``; a lineage (as population-based
    training records it) lists ``{"step", "config", "key_id"}``, the first at step
    0: the member starts with that configuration and key id and, at each later
    step, continues with the next configuration, as one run. An empty lineage is a
    plain run of ``config``.

    Exactness: a replay draws the same keys, batches and dropout masks as the
    original run whatever its slot or neighbours, and reproduces it bit for bit in a
    program of the population size the run trained in (``size_multiple`` rounds the
    size up, e.g. to the study's slots). In a program of another size XLA may fuse
    and order float reductions differently, so values agree to float32 rounding
    (about 1e-7 relative on the tests' problems), which a chaotic run can amplify.

    Returns:
        The members (``seeds`` per trial), finished.
    """
    import jax

    members = []
    for trial, config, lineage in trials:
        first = lineage[0] if lineage else {"config": config, "key_id": trial}
        for r in range(seeds):
            m = Member(config=dict(first["config"]), trial_id=int(trial), replicate=r,
                       key_id=int(first["key_id"]), lineage=list(lineage))
            members.append(m)
    quantum = math.lcm(len(jax.devices()), max(1, size_multiple))
    size = -(-len(members) // quantum) * quantum
    program, _ = programs.get(static, size)
    pop = Population(experiment, static, program, members, seed, keep_params=keep_params)
    for _ in range(-(-experiment.steps // experiment.eval_every)):
        steps = pop.field("step")
        entries = {s: entry for s, m in enumerate(pop.slots) if m is not None
                   for entry in m.lineage[1:] if entry["step"] == steps[s]}
        moves = {s: (s, entry["config"]) for s, entry in entries.items()}
        if moves:
            lineages = {s: pop.slots[s].lineage for s in moves}
            pop.reassign(moves, key_ids={s: int(e["key_id"]) for s, e in entries.items()})
            for s, lineage in lineages.items():  # a replay follows its lineage, adds none
                pop.slots[s].lineage = lineage
        pop.run_chunk()
        if not pop.field("alive").any():
            break
    pop.finish(evaluate_test=evaluate_test)
    return members


def study_pool(experiment: Experiment, programs: Programs, *, population: int, seeds: int,
               seed: int, objective: str, sign: float, memory_limit: int | None = None
               ) -> tuple[Pool, list[BucketKey] | None]:
    """A study's pool of ``population`` members, and the bucket keys refilled within
    their regions (``None``: the buckets take turns, configurations asked from the
    whole space). Every bucket live at once when they fit, each with an equal share
    of the slots; else populations of :data:`SIZE_MULTIPLE` slots taking turns.

    Raises:
        ValueError: a population would need more than ``memory_limit`` bytes
            (default: :func:`~jaxtune.memory.default_memory_limit`).
    """
    import jax

    quantum = math.lcm(len(jax.devices()), seeds)
    buckets = experiment.buckets(limit=max(1, population // quantum))
    if buckets is not None and len(buckets) * quantum <= population:
        slots = population // len(buckets) // quantum * quantum
        live_limit = None
    else:
        buckets = None
        slots = min(math.lcm(quantum, SIZE_MULTIPLE),
                    max(quantum, population // quantum * quantum))
        live_limit = max(1, population // slots)
    pool = Pool(experiment, programs, slots=slots, seeds=seeds, seed=seed,
                objective=objective, sign=sign, live_limit=live_limit)
    keys = None if buckets is None else [pool.add_bucket(b) for b in buckets]
    limit = memory_limit or default_memory_limit()
    for static in buckets or [experiment.static_config(experiment.example_config({}))]:
        need = pool.slots * programs.member_bytes(static)
        if need > limit:
            raise ValueError(
                f"a population of {pool.slots} members of bucket {static} needs about "
                f"{need / 2**30:.2f} GiB, more than the memory limit "
                f"{limit / 2**30:.2f} GiB; lower population, the batch size or the "
                "model size, or raise memory_limit")
    return pool, keys
