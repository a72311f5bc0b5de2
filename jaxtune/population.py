"""The population engine: many members trained by one compiled program per bucket.

:func:`train_population` reads as five steps: **validate** the configurations,
**group** the members (configuration x seed) into buckets by their static
hyperparameters, **plan** each bucket's sub-populations within the memory limit
(:mod:`jaxtune.memory`), **run** each sub-population chunk by chunk with its
compiled program (:mod:`jaxtune.programs`), and **assemble** the per-member
records into a :class:`PopulationResult`. Between chunks it records the learning
curves, updates the progress bar and lets a *scheduler* stop members or replace
them with fresh configurations without recompiling.

A :class:`~jaxtune.slots.Population` is one running sub-population: the device
state of its members and which member occupies each slot.

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
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxtune.experiment import Experiment
from jaxtune.memory import Plan, default_memory_limit, host_memory, parse_bytes, plan_bucket
from jaxtune.programs import Programs
from jaxtune.ranking import rank_table
from jaxtune.slots import ChunkReport, Member, Population, check_members, member_keys

__all__ = [
    "Actions", "ChunkReport", "Member", "Population", "PopulationResult", "member_keys",
    "train_population",
]


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
            ``steps`` done, ``budget`` (the step budget it had), ``budget_capped``
            (an epoch budget cut at ``Experiment.steps``), ``best_val_loss``,
            ``early_stopped``.
        compiles: bucket programs compiled by this call.
        compile_s: seconds those compiles took.
        wall_s: seconds the whole call took.
        buckets: one dict per bucket (static values, members, size, sub-populations,
            member bytes).
        params: with ``keep_params``, each member's final parameters (a pytree of
            numpy arrays per member, in the order above); else ``None``.
        best_params: with ``keep_params`` and early stopping (``patience``), the
            parameters at each member's best validation loss; else ``None``.
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
    params: list[Any] | None = None
    best_params: list[Any] | None = None

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


def _progress(enabled: bool | None, total: int, desc: str):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="chunk")


# -- the five steps -----------------------------------------------------------------------

def _validate(experiment: Experiment, configs: Sequence[Mapping[str, Any]], seeds: int,
              trial_ids: Sequence[int] | None) -> list[Member]:
    """Checks the arguments; one :class:`Member` per configuration x replicate."""
    configs = experiment.space.validate_all(configs)
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if trial_ids is None:
        trial_ids = list(range(len(configs)))
    if len(trial_ids) != len(configs):
        raise ValueError(f"got {len(trial_ids)} trial ids for {len(configs)} configurations")
    members = [Member(config=c, trial_id=int(t), replicate=r)
               for c, t in zip(configs, trial_ids) for r in range(int(seeds))]
    for i, m in enumerate(members):
        m.order = i
    return members


def _group(experiment: Experiment, members: list[Member]
           ) -> list[tuple[dict[str, Any], list[Member]]]:
    """``(static values, members)`` per bucket, in order of first appearance; each
    bucket's traced values are checked here, once, before anything compiles, and
    each member's step budget is recorded (``final["budget"]``, and
    ``final["budget_capped"]`` where an epoch budget exceeded ``Experiment.steps``)."""
    groups = []
    for idx in experiment.space.buckets([m.config for m in members]).values():
        group = [members[i] for i in idx]
        static = experiment.static_config(group[0].config)
        check_members(experiment, static, group)
        groups.append((static, group))
    return groups


def _warn_capped(members: list[Member], max_steps: int) -> None:
    capped = [m for m in members if m.final.get("budget_capped")]
    if capped:
        warnings.warn(f"{len(capped)} of {len(members)} members asked for more epochs than "
                      f"Experiment.steps={max_steps} allows (e.g. {capped[0].config}); their "
                      f"budgets were cut to {max_steps} steps (final['budget'] records the "
                      "steps each member had); raise steps to train them in full",
                      UserWarning, stacklevel=3)


def _check_host_memory(programs: Programs, groups: list[tuple[dict[str, Any], list[Member]]]
                       ) -> None:
    """Refuses ``keep_params`` when the parameters would not fit in host memory."""
    need = 0
    for static, group in groups:
        copies = 2 if programs.experiment.patience else 1  # final (and best) parameters
        need += copies * len(group) * programs.param_bytes(static)
    avail = host_memory()
    if need > avail // 2:
        raise ValueError(f"keep_params=True would hold about {need / 2**30:.2f} GiB of "
                         f"parameters in host memory, more than half of the "
                         f"{avail / 2**30:.2f} GiB available; train fewer members per call")


def _plan(programs: Programs, static: Mapping[str, Any], n: int, limit: int, *,
          size_multiple: int, max_population: int | None) -> Plan:
    try:
        return plan_bucket(n, programs.member_bytes(static), limit, n_devices=len(jax.devices()),
                           size_multiple=size_multiple, max_population=max_population)
    except ValueError as e:
        raise ValueError(f"bucket {dict(static)}: {e}") from None


def _run(population: Population, scheduler: Scheduler | None, n_chunks: int, bar: Any,
         evaluate_test: bool) -> None:
    """Chunk after chunk until every member stops or the program length is reached."""
    metric = "val_accuracy" if "val_accuracy" in population.program.metric_names else "val_loss"
    for c in range(n_chunks):
        population.run_chunk()
        alive = population.field("alive")
        bar.update(1)
        n = int(population.occupied.sum())
        bar.set_postfix(alive=f"{int(alive.sum())}/{n}", best=f"{_best(population, metric):.4f}")
        if scheduler is not None and c < n_chunks - 1:
            _apply(population, scheduler(population.report()))
            alive = population.field("alive")
        if not alive.any():
            bar.update(n_chunks - 1 - c)
            break
    population.finish(evaluate_test)


def _best(population: Population, metric: str) -> float:
    vals = [v for m in population.members for v in m.curves.get(metric, []) if math.isfinite(v)]
    if not vals:
        return math.nan
    return max(vals) if metric.endswith("accuracy") else min(vals)


def _apply(population: Population, actions: Actions | None) -> None:
    if actions is None:
        return
    if len(actions.stop):
        population.stop(actions.stop)
    if actions.replace:
        space, exp = population.experiment.space, population.experiment
        fresh = {}
        for s, (tid, cfg) in actions.replace.items():
            cfg = space.validate(cfg)
            if exp.static_config(cfg) != population.static:
                raise ValueError(f"scheduler replaced slot {s} with a configuration of another "
                                 "bucket (static hyperparameters differ)")
            fresh[int(s)] = Member(config=cfg, trial_id=int(tid), replicate=0)
        check_members(exp, population.static, list(fresh.values()))
        population.replace(fresh)


def _assemble(members: list[Member], experiment: Experiment, n_chunks: int, compiles: int,
              compile_s: float, wall_s: float, buckets: list[dict[str, Any]],
              keep_params: bool) -> PopulationResult:
    members = sorted(members, key=lambda m: m.order)  # `configs` x replicates, then the rest
    eval_steps = np.minimum(np.arange(1, n_chunks + 1) * experiment.eval_every, experiment.steps)
    names = sorted({k for m in members for k in m.curves})
    curves = {k: np.asarray([m.padded_curve(k, n_chunks) for m in members], np.float64)
              for k in names}
    fnames = sorted({k for m in members for k in m.final})
    final = {k: np.asarray([m.final.get(k, math.nan) for m in members], np.float64)
             for k in fnames}
    return PopulationResult(
        configs=[m.config for m in members], trial_ids=np.asarray([m.trial_id for m in members]),
        replicates=np.asarray([m.replicate for m in members]),
        status=[m.status for m in members], eval_steps=eval_steps, curves=curves, final=final,
        compiles=compiles, compile_s=compile_s, wall_s=wall_s, buckets=buckets,
        params=[m.params for m in members] if keep_params else None,
        best_params=([m.best_params for m in members]
                     if keep_params and experiment.patience else None))


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
    programs: Programs | None = None,
    warn_capped: bool = True,
    keep_params: bool = False,
) -> PopulationResult:
    """Trains every configuration with ``seeds`` replicates, one program per bucket.

    Args:
        experiment: the :class:`~jaxtune.experiment.Experiment`.
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
        programs: the compiled-program cache (default :meth:`Programs.default`).
        warn_capped: warn when epoch budgets exceed ``Experiment.steps`` (studies
            warn once per study).
        keep_params: return every member's trained parameters in host memory
            (:attr:`PopulationResult.params`); refused before training if they
            would take more than half of the available host memory.

    Returns:
        A :class:`PopulationResult`.

    Raises:
        ValueError: invalid configurations or a member that cannot fit in
            ``memory_limit``, before anything is compiled.
    """
    t_start = time.perf_counter()
    programs = programs if programs is not None else Programs.default(experiment)
    programs.check(experiment)
    members = _validate(experiment, configs, seeds, trial_ids)
    groups = _group(experiment, members)
    if warn_capped:
        _warn_capped(members, int(experiment.steps))
    limit = parse_bytes(memory_limit) if memory_limit is not None else default_memory_limit()
    if keep_params:
        _check_host_memory(programs, groups)
    plans = [_plan(programs, static, len(group), limit, size_multiple=size_multiple,
                   max_population=max_population) for static, group in groups]
    for (static, group), plan in zip(groups, plans):
        if plan.split and verbose:
            print(f"jaxtune: bucket {static}: {len(group)} members x "
                  f"~{plan.member_bytes / 2**20:.1f} MiB exceed the limit of "
                  f"{limit / 2**20:.0f} MiB; training {plan.subpopulations} sub-populations "
                  f"of {plan.size}", file=sys.stderr)
    n_chunks = -(-int(experiment.steps) // int(experiment.eval_every))
    compiles_before, compile_s_before = programs.compiles, programs.compile_s
    done: list[Member] = []
    total = sum(p.subpopulations for p in plans) * n_chunks
    with _progress(progress, total, experiment.name) as bar:
        for (static, group), plan in zip(groups, plans):
            for i in range(plan.subpopulations):
                program, _ = programs.get(static, plan.size)
                population = Population(experiment, static, program,
                                        group[i * plan.size:(i + 1) * plan.size], seed,
                                        keep_params=keep_params)
                _run(population, scheduler, n_chunks, bar, evaluate_test)
                done.extend(population.members)
    buckets = [{"static": dict(static), "members": len(group), "size": plan.size,
                "subpopulations": plan.subpopulations, "member_bytes": plan.member_bytes}
               for (static, group), plan in zip(groups, plans)]
    return _assemble(done, experiment, n_chunks, programs.compiles - compiles_before,
                     programs.compile_s - compile_s_before, time.perf_counter() - t_start,
                     buckets, keep_params)
