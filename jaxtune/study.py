"""The tuning loop: populations whose free slots the searcher refills, a scheduler
that stops or re-seeds trials at chunk boundaries, and a store that keeps it all.

Example:
    >>> import jaxtune as jt, tempfile, os
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=200, n_test=50, dim=4),
    ...     model=jt.models.MLP(width=8, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...     steps=20, eval_every=10, defaults={"batch_size": 16})
    >>> path = os.path.join(tempfile.mkdtemp(), "runs.db")
    >>> study = jt.Study(exp, searcher="random", store=path, population=4,
    ...                  objective="val_loss", direction="minimize", verbose=False)
    >>> result = study.run(trials=8)
    >>> result.n_complete
    8

Conventions:

* **Slots.** Each bucket of static values trains in one compiled program of a
  fixed number of slots (see :mod:`jaxtune.pool`); a trial occupies ``seeds``
  slots. When a trial ends (its budget spent, stopped by the scheduler, or
  diverged) its slots are refilled at once with new configurations asked from
  the searcher within the bucket's region, so the population stays full,
  feedback is continuous and nothing recompiles.
* **Rounds.** One round trains every live population for one chunk
  (``eval_every`` steps), applies the scheduler's decisions, and commits in one
  transaction the trials that ended, the learning curves of those still
  running, and the round's timings (a ``batches`` row).
* **Seeds.** Replicate seeds are aggregated (mean and std) before ``tell``.
* **What the searcher is told** of diverged, pruned and infeasible trials, and with
  ``direction="maximize"``: see :mod:`jaxtune.feedback`.
* **Resume.** A killed study loses only the training in flight: on resume, the
  stored history is re-told to a fresh searcher, the scheduler's records are
  rebuilt from the stored curves (of finished and of running trials), and trials
  still ``running`` are trained again from their start, with the same
  configurations and trial ids (hence the same keys), before new ones are asked.
  With a checkpoint (:mod:`jaxtune.checkpoint`, every ``checkpoint_seconds`` or
  ``checkpoint_rounds``), the trials it holds that are still ``running`` continue
  from it instead (their whole member state, curves and lineages), and the
  scheduler's records (and a searcher that pickles) are those of the checkpoint
  when it is of the last committed round.
* **One writer.** :meth:`Study.run` holds the study's writer lock in the store
  (:meth:`~jaxtune.store.Store.acquire_writer`) from start to end, released on
  return, on Ctrl-C and on exceptions; each round refreshes its heartbeat. A
  second process that opens (or runs) the same study meanwhile is refused at once
  with a :class:`~jaxtune.store.StoreError` naming the store and the writer (pid,
  host); the lock of a killed writer is taken over (see :mod:`jaxtune.store`).
  Readers (``jaxtune report``, :func:`~jaxtune.analysis.load_study`) need no lock.
* **Time budget.** Counted from ``started`` (the CLI passes the process's launch
  time); the study stops at the first chunk boundary past it. Trials then still
  running stay ``running`` (a later resume finishes them).
* **Final evaluation.** The ``top_k`` best complete trials are re-trained with
  ``final_seeds`` fresh seeds (population-based training: their hyperparameter
  schedule replayed) and evaluated on the test split (the only time a study
  reads it). The study's choice is the trial whose re-trained objective (a
  validation or training metric) is best (:func:`~jaxtune.ranking.choose_final`):
  the search's best is the luckiest of many single runs. Variance across those
  trials' means is the *trial* variance; the mean variance across fresh seeds
  is the *seed* variance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxtune import checkpoint, distributed, feedback, final, goals, resume
from jaxtune import objectives as objectives_lib
from jaxtune import search as search_lib
from jaxtune.experiment import Experiment
from jaxtune.interrupts import remembered_interrupts
from jaxtune.memory import default_memory_limit
from jaxtune.objectives import front_of
from jaxtune.pool import SIZE_MULTIPLE, EndedTrial, Pool, aggregate, study_pool, trial_view
from jaxtune.programs import Programs
from jaxtune.ranking import rank_trials
from jaxtune.results import StudyResult, _kept
from jaxtune.store import DEFAULT_PATH, MEMORY, Store, StoreError, TrialRecord
from jaxtune.trial_schedulers import Hyperband, TrialScheduler, study_scheduler

__all__ = ["FINAL_SEED_OFFSET", "PRUNED", "SIZE_MULTIPLE", "Study", "StudyResult"]

#: What a searcher is told of a pruned trial (``Study(pruned=...)``).
PRUNED = ("last", "exclude", "fidelity")

#: The final re-evaluation derives member keys from ``seed + FINAL_SEED_OFFSET``,
#: so it never repeats a key used during the search.
FINAL_SEED_OFFSET = 1_000


class Study:
    """A tuning study: searcher, trial scheduler, population engine, store.

    Args:
        experiment: the :class:`~jaxtune.experiment.Experiment` tuned.
        searcher: a name (``grid``, ``random``, ``quasirandom``, ``bayes``) or a
            :class:`~jaxtune.search.Searcher`.
        scheduler: a trial scheduler: a name (``fifo``, ``median``, ``asha``,
            ``hyperband``, ``pbt``; see :mod:`jaxtune.trial_schedulers`) or a
            :class:`~jaxtune.trial_schedulers.TrialScheduler`; default ``fifo``.
        scheduler_options: keyword arguments of a named scheduler; ``min_steps``
            (ASHA, Hyperband) defaults to ``eval_every``, ``max_steps`` (ASHA,
            Hyperband, PBT) to ``steps``, ``interval`` (PBT) to ``eval_every``,
            ``seed`` to ``seed``.
        store: path of the SQLite store, or ``None`` for a study kept in memory
            only (``Store(":memory:")``, same interface).
        name: the study's name within the store.
        seeds: replicates per configuration.
        population: members trained at once (trials at once = population // seeds); a
            multiple of ``seeds``. ``"auto"``: the smallest size whose member-steps
            per second on this machine are within 25% of the best of one member per
            device to 32 (CPU) or 16-512 (accelerators), measured once per experiment
            and machine and cached (see :mod:`jaxtune.sizing`).
        objective: a metric of the results (``val_accuracy``, ``val_loss`` …).
        direction: ``"maximize"`` or ``"minimize"``.
        seed: the study seed (member keys and searcher randomness).
        top_k, final_seeds: the final re-evaluation on the test split.
        searcher_options: keyword arguments of the searcher (e.g. ``surrogate``).
        pruned: what the searcher is told of a pruned trial: ``"last"`` (its
            objective when stopped), ``"fidelity"`` (that objective and the
            fraction of its budget it trained) or ``"exclude"`` (nothing).
        info: extra JSON stored with the study (e.g. the command that reproduces it).
        progress: progress bars (default: when stderr is a terminal).
        verbose: one line per round on stderr.
        programs: the compiled-program cache shared by every round and the final
            evaluation (default :meth:`Programs.default <jaxtune.programs.Programs.default>`).
        memory_limit: bytes a population may use (default: 60% of the device memory
            or of the available RAM); a study whose populations would not fit is
            refused before anything compiles.
        loggers: sinks fed as the study runs (:mod:`jaxtune.loggers`: TensorBoard,
            MLflow): opened by :meth:`run`, given the ended and running trials after
            each round's commit, closed when it returns.
        objectives: several objectives instead of ``objective``/``direction``:
            ``{"val_accuracy": "maximize", "params": "minimize"}`` or
            ``["val_accuracy:max", "params:min"]``; names as in
            :mod:`jaxtune.objectives` (final metrics, ``params``, ``flops``,
            ``steps_to:METRIC:VALUE``). The first must be a final metric: it ranks
            the table, drives the trial scheduler and the final re-evaluation. The
            study keeps the Pareto front (:meth:`pareto_front`); searcher ``"bayes"``
            becomes ``"parego"`` (told one loss per objective); other searchers are
            told the first objective.
        constraints: :class:`~jaxtune.objectives.Constraint` s (or strings such as
            ``"params<=1e5"``, :meth:`~jaxtune.objectives.Constraint.parse`). One on the
            configuration (a dimension, ``params``, ``flops`` or a function of the
            configuration) is checked before anything compiles: an infeasible
            configuration is stored ``infeasible`` without training (it does not
            count towards ``run(trials=)``). One on final metrics is checked when
            the trial ends (stored ``infeasible``, with its metrics). The searcher is
            told an infeasible trial as failed (by default modelled with the worst
            loss seen, see :mod:`jaxtune.search`), so it learns to avoid the region.
        checkpoint_rounds, checkpoint_seconds: checkpoint the running populations
            (:mod:`jaxtune.checkpoint`, next to the store) every this many rounds or
            seconds, whichever comes first (``None``: not by that measure; both
            ``None``: no checkpoints). A study without a store file is not
            checkpointed; with several processes, process 0 writes them.
    """

    def __init__(
        self, experiment: Experiment, *, searcher: str | search_lib.Searcher = "bayes",
        scheduler: str | TrialScheduler | None = None,
        scheduler_options: Mapping[str, Any] | None = None,
        store: str | None = DEFAULT_PATH, name: str = "default",
        seeds: int = 1, population: int | str = 32, objective: str | None = None,
        direction: str | None = None, seed: int = 0, top_k: int = 3, final_seeds: int = 3,
        searcher_options: Mapping[str, Any] | None = None, pruned: str = "last",
        info: Mapping[str, Any] | None = None, progress: bool | None = None,
        verbose: bool = True, programs: Programs | None = None,
        memory_limit: int | None = None, loggers: Sequence[Any] = (),
        objectives: Mapping[str, str] | list[str] | None = None,
        constraints: list[objectives_lib.Constraint | str] | None = None,
        checkpoint_rounds: int | None = None, checkpoint_seconds: float | None = 60.0,
    ):
        self.objectives = goals.study_objectives(experiment, objective, direction, objectives)
        objective, direction = self.objectives[0].name, self.objectives[0].direction
        if int(top_k) < 0 or int(final_seeds) < 0:
            raise ValueError(f"top_k ({top_k}) and final_seeds ({final_seeds}) must be >= 0")
        if distributed.process_count() > 1 and (population == "auto"
                                                or experiment.probes is not None):
            raise ValueError("with several processes, give population a number (not 'auto', "
                             "a timing each process would measure apart) and no probes")
        if int(seeds) < 1:
            raise ValueError(f"need 1 <= seeds <= population, got seeds={seeds}, "
                             f"population={population}")
        if pruned not in PRUNED:
            raise ValueError(f"pruned must be one of {list(PRUNED)}, got {pruned!r}")
        self.constraints = goals.study_constraints(experiment, constraints)
        self._sizing_s = None  # seconds measuring population="auto" here
        if population == "auto":
            from jaxtune.sizing import default_population

            programs = programs if programs is not None else Programs.default(experiment)
            t0 = time.perf_counter()
            size = default_population(experiment, programs=programs, memory_limit=(
                memory_limit or default_memory_limit()), log=(
                lambda m: print(f"jaxtune: {m}", file=sys.stderr, flush=True)) if verbose
                else None)
            population = -(-size // max(int(seeds), 1)) * max(int(seeds), 1)
            self._sizing_s = time.perf_counter() - t0
        if int(population) < int(seeds):
            raise ValueError(f"need 1 <= seeds <= population, got seeds={seeds}, "
                             f"population={population}")
        if int(population) % int(seeds):
            fit = int(population) // int(seeds) * int(seeds)
            raise ValueError(f"population {population} is not a multiple of seeds {seeds}: a "
                             f"trial trains as {seeds} members, so {int(population) - fit} "
                             f"slot(s) would train nothing; use population {fit} or "
                             f"{fit + int(seeds)}")
        self.experiment = experiment
        self.seeds, self.population, self.seed = int(seeds), int(population), int(seed)
        self.objective, self.direction, self.pruned = objective, direction, pruned
        self.sign = -1.0 if direction == "maximize" else 1.0
        self.top_k, self.final_seeds = int(top_k), int(final_seeds)
        self.progress, self.name = progress, name
        self.verbose = verbose and distributed.is_leader()
        self.scheduler = study_scheduler(scheduler, scheduler_options, steps=experiment.steps,
                                         eval_every=experiment.eval_every, seed=self.seed)
        options = dict(searcher_options or {})
        if isinstance(searcher, str) and (searcher == "parego" or (
                searcher == "bayes" and len(self.objectives) > 1)):
            searcher = "parego"
            options.setdefault("n_objectives", len(self.objectives))
        if isinstance(searcher, str):
            self.searcher_name = searcher
            self.searcher = search_lib.make_searcher(searcher, experiment.space, seed=self.seed,
                                                     experiment=experiment, **options)
        else:
            self.searcher_name = type(searcher).__name__
            self.searcher = searcher
        # several processes: process 0 asks, the others receive its asks (jaxtune.distributed)
        self.searcher = distributed.shared_searcher(self.searcher)
        self.spec = {
            "experiment": experiment.spec(), "searcher": self.searcher_name,
            "searcher_options": {k: final.json_safe(v) for k, v in options.items()},
            "scheduler": {k: final.json_safe(v) for k, v in self.scheduler.spec().items()},
            "seeds": self.seeds, "population": self.population, "objective": objective,
            "direction": direction, "seed": self.seed, "pruned": pruned,
        }
        if len(self.objectives) > 1:  # single-objective specs stay as they were
            self.spec["objectives"] = [[o.name, o.direction] for o in self.objectives]
        if self.constraints:
            self.spec["constraints"] = [c.spec() for c in self.constraints]
        self.info = dict(info or {})
        self.programs = programs if programs is not None else Programs.default(experiment)
        self.programs.check(experiment)
        self.goals = goals.Goals(experiment, self.programs, self.objectives, self.constraints)
        self.memory_limit = memory_limit
        self.checkpoints = checkpoint.Policy(checkpoint_rounds, checkpoint_seconds)
        self.loggers = list(loggers)
        for lg in self.loggers:
            if not all(callable(getattr(lg, m, None)) for m in ("open", "log", "close")):
                raise ValueError(f"loggers: {lg!r} has no open/log/close methods "
                                 "(see jaxtune.loggers.Logger)")
        if not distributed.is_leader():  # process 0 alone logs (several processes)
            self.loggers = []
        # several processes: process 0 writes `store`, the others a private copy of it
        path = store if store is not None else MEMORY
        self.store = Store(distributed.shared_store(path))
        # next to process 0's store (with several processes, process 0 alone writes there)
        self._checkpoint_dir = (None if str(path) == MEMORY or not self.checkpoints.enabled
                                else checkpoint.checkpoint_dir(path, name))
        existed = self._compatible_spec(name)
        self.study_id = self.store.open_study(name, self.spec, info=self._info())
        self.store.check_writer(self.study_id)  # refused at once if another process writes
        self._store_created = self.store.study(name)["created"]  # checkpoints must match it
        if not existed:
            resume.clear_stale(self.store, path, name)
        self._writer: str | None = None  # the writer lock's token while run() runs
        self._interrupted: Callable[[], bool] = lambda: False  # whether Ctrl-C came (run())
        self._told: set[int] = set()  # trial indices this searcher has been told
        self._warned_capped = False  # epoch budgets cut at Experiment.steps: warn once
        # enqueued configurations not started, first in first out: (queue position, config);
        # kept in the store, so a killed study starts them when it resumes
        self._queue: list[tuple[int, dict[str, Any]]] = self.store.queued(self.study_id)
        self._dequeued: list[int] = []  # positions taken, removed with their trials' insert
        if self._queue and hasattr(self.searcher, "add_pending"):
            self.searcher.add_pending([c for _, c in self._queue])
        self._given_up: set[Any] = set()  # buckets whose proposals were all infeasible
        self._created = time.perf_counter()

    #: :meth:`StudyResult.load`: a stored study, with its chosen trial's trained model.
    load = StudyResult.load

    def _compatible_spec(self, name: str) -> bool:
        """A study stored before the model (or the convolution mode) joined the
        experiment's specification is reopened without those keys (they cannot be
        checked for it). Returns whether the study is in the store."""
        try:
            stored = self.store.study(name)["spec"]
        except StoreError:
            return False
        missing = {"model", "conv"} - set(stored.get("experiment") or {})
        if missing:
            self.spec = {**self.spec, "experiment": {
                k: v for k, v in self.spec["experiment"].items() if k not in missing}}
        return True

    def _info(self) -> dict[str, Any]:
        import jax

        from jaxtune._version import __version__

        devices = jax.devices()
        return {"jaxtune_version": __version__, "jax_version": jax.__version__,
                "devices": {"platform": devices[0].platform, "count": len(devices),
                            "kind": devices[0].device_kind},
                "created": time.time(), "population": self.population,
                **({"population_s": self._sizing_s} if self._sizing_s is not None else {}),
                **self.info}

    # -- persistence and telling ------------------------------------------------------
    def _trials(self) -> list[TrialRecord]:
        return self.store.trials(self.study_id)

    def _tell(self, trials: list[TrialRecord]) -> None:
        """Tells the searcher these finished trials (:func:`jaxtune.feedback.tell`)."""
        feedback.tell(self.searcher, trials, self.objectives, self.pruned)
        self._told.update(t.index for t in trials)

    @staticmethod
    def _past(deadline: float | None) -> bool:
        """Whether the time budget is spent (process 0's clock decides for every process)."""
        return deadline is not None and bool(distributed.agree(
            time.perf_counter() >= deadline, "the time budget"))

    # -- several objectives, warm starts, enqueued ----------------------------------------
    def pareto_front(self) -> list[TrialRecord]:
        """The complete, feasible trials that no other such trial dominates in every
        objective (best first by the first objective). With one objective: the best
        trial(s).

        Example:
            >>> import jaxtune as jt
            >>> exp = jt.Experiment(
            ...     data=jt.data.teacher_student(n_train=64, n_test=16, dim=4),
            ...     model=lambda hp: jt.models.MLP(width=hp["width"], num_outputs=1),
            ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True),
            ...                    width=jt.Choice([2, 4], static=True)),
            ...     steps=4, eval_every=4, defaults={"batch_size": 8})
            >>> study = jt.Study(exp, searcher="random", store=None, population=4, top_k=0,
            ...                  objectives={"val_loss": "min", "params": "min"}, verbose=False)
            >>> study.enqueue([{"lr": 0.01, "width": 2}])
            >>> _ = study.run(trials=4)
            >>> front = study.pareto_front()
            >>> all(t.status == "complete" for t in front)
            True
        """
        return front_of(self._trials(), self.objectives)

    def enqueue(self, configs: Mapping[str, Any] | list[Mapping[str, Any]]) -> None:
        """Evaluates these configurations first, in order, before the searcher's own.

        They are kept in the store until they start (in the transaction that stores
        their trials), so a study killed or stopped before they start runs them first
        when it resumes. A configuration already enqueued and not started, or already a
        trial of the study, is not enqueued again (a script or command run again to
        continue its study does not repeat them).

        Raises:
            ValueError: a configuration not valid for the experiment's space (naming it).
        """
        configs = [configs] if isinstance(configs, Mapping) else list(configs)
        checked = []
        for i, c in enumerate(configs):
            try:
                checked.append(self.experiment.space.validate(c))
            except ValueError as e:
                raise ValueError(f"enqueue: configuration {i} ({dict(c)}): {e}") from None
        seen = {_canonical(c) for _, c in self._queue} | {
            _canonical(t.config) for t in self._trials()}
        fresh = []
        for c in checked:
            if _canonical(c) not in seen:
                seen.add(_canonical(c))
                fresh.append(c)
        if len(fresh) < len(checked):
            self._log(f"enqueue: {len(checked) - len(fresh)} of {len(checked)} configurations "
                      "are already enqueued or trials of the study: not enqueued again")
        if not fresh:
            return
        positions = self.store.enqueue(self.study_id, fresh, writer=self._writer)
        self._queue.extend(zip(positions, fresh))
        if hasattr(self.searcher, "add_pending"):
            self.searcher.add_pending(fresh)

    def warm_start(self, store: str | Store, name: str = "default") -> int:
        """Tells this study's searcher the finished trials of another study (of this or
        another store) whose space is compatible: the same hyperparameter names. Trials
        whose configuration falls outside this space are left out, with a message.

        Returns:
            The number of trials told.

        Raises:
            ValueError: the spaces name other hyperparameters, or the other study
                records none of this study's objectives.
        """
        if not distributed.is_leader():  # several processes: process 0's searcher alone
            return 0                       # is told (the others follow its asks)
        inside = feedback.warm_trials(store, name, self.experiment.space, self.objective,
                                      self.goals.config_costs)
        told = [t for t in inside if not (t.status == "pruned" and self.pruned == "exclude")]
        if told:
            self.searcher.tell([t.config for t in told], [feedback.told_value(
                t, self.searcher, self.objectives, self.pruned) for t in told])
        return len(told)

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"jaxtune: {msg}", file=sys.stderr, flush=True)

    def _view(self, record: TrialRecord) -> Any:
        """A scheduler's view of a stored trial (finished, or running with its curves)."""
        return trial_view(record.index, record.config, record.curves.get("steps_done", []),
                          record.curves.get(self.objective, []), self.sign)

    # -- the loop ---------------------------------------------------------------------
    def run(self, trials: int | None = None, time_budget: float | None = None, *,
            started: float | None = None, member_steps: int | None = None,
            target: float | None = None) -> StudyResult:
        """Runs (or resumes) the study until ``trials`` trials have ended, time is up,
        the member-step budget is spent or the target is reached.

        Args:
            trials: trials wanted in total (complete, diverged or pruned), counting
                those already in the store. ``None``: until another budget ends it
                (or, with population-based training, one population).
            time_budget: seconds, from ``started``; the study stops at the first chunk
                boundary past it.
            started: a :func:`time.perf_counter` value the time budget counts from
                (default: when the study was created).
            member_steps: a budget of training steps summed over every member
                (replicates included), counting trials already in the store. A trial
                starts only while the steps trained so far plus the full budgets of
                the running trials and its own fit in it, so the budget is never
                exceeded; steps a scheduler saves by stopping trials early are spent
                on new trials.
            target: stop at the first chunk boundary where a complete trial's
                objective reaches this value (``>=`` when maximizing, ``<=`` when
                minimizing); trials still running are left to a resume.

        A Ctrl-C stops training at once (what ended is already stored; one whose
        KeyboardInterrupt a callback swallowed, at the next chunk boundary), then the
        finished trials' best are evaluated on the test split as usual (a second
        Ctrl-C skips that too).
        """
        if trials is None and time_budget is None and member_steps is None \
                and self.scheduler.refills:
            raise ValueError("give trials=N, time_budget=seconds and/or member_steps=N")
        if member_steps is not None and int(member_steps) < 1:
            raise ValueError(f"member_steps must be a positive step count, got {member_steps}")
        self._writer = self.store.acquire_writer(self.study_id)
        try:
            for lg in self.loggers:
                lg.open(self)
            with remembered_interrupts() as self._interrupted:
                return self._run(trials, time_budget, started, member_steps, target)
        finally:
            writer, self._writer = self._writer, None
            self.store.release_writer(self.study_id, writer)
            for lg in self.loggers:
                lg.close()

    def _run(self, trials: int | None, time_budget: float | None, started: float | None,
             member_steps: int | None, target: float | None) -> StudyResult:
        t0 = time.perf_counter()
        deadline = None if time_budget is None else (
            (self._created if started is None else started) + float(time_budget))
        compiles_before = self.programs.compiles
        history = self._trials()
        rounds = [b["batch"] for b in self.store.batches(self.study_id)]
        waiting = [t for t in history if t.status == "running"]
        saved = resume.load(self._checkpoint_dir, self._identity()) if waiting else None
        # the checkpoint of the last committed round: the scheduler as it was, and the
        # searcher too if it pickles (else re-told, its pending asks added back)
        exact = saved is not None and saved[0] == max(rounds, default=-1)
        if exact:
            records = saved[2]["records"]
        if exact and saved[2].get("searcher") is not None:
            self.searcher = pickle.loads(saved[2]["searcher"])
            self._told = set(saved[2]["told"])
        else:
            done = [t for t in history if t.status != "running" and t.index not in self._told]
            if done:
                self._tell(done)
                self._log(f"resuming study {self.name!r}: {len(done)} finished trials re-told")
            if not exact:
                records = self.scheduler.rebuild([self._view(t) for t in history
                                                  if t.curves or t.status != "infeasible"])
            if waiting and hasattr(self.searcher, "add_pending"):
                self.searcher.add_pending([t.config for t in waiting])
        pool, keys = study_pool(self.experiment, self.programs, population=self.population,
                                seeds=self.seeds, seed=self.seed, objective=self.objective,
                                sign=self.sign, memory_limit=self.memory_limit)
        if saved is not None:
            waiting = resume.restore(pool, saved, waiting, self.experiment.eval_every, self._log)
        if waiting and self.scheduler.name == "pbt":
            raise ValueError(
                f"study {self.name!r} has {len(waiting)} population-based training trials "
                "still running; their trained states are not stored, so resuming would "
                "restart every lineage from step 0 (a different experiment); start a new "
                "study (another name or store) instead")
        state = _RunState(target=math.inf if trials is None else int(trials),
                          started=sum(t.status != "infeasible" for t in history),
                          round=max(rounds, default=-1) + 1,
                          first_round=not history,
                          member_steps=None if member_steps is None else int(member_steps),
                          spent=sum(feedback.steps_trained(t) for t in history
                                    if t.status != "running"),
                          compiles=self.programs.compiles, compile_s=self.programs.compile_s,
                          launched=self._created if started is None else started,
                          exhausted=bool(exact and saved[2]["exhausted"]))
        interrupted = False
        try:
            while True:
                self._fill(pool, keys, waiting, state, deadline)
                if not pool.running():
                    break
                records = self._round(pool, records, state)
                if pool.running() and distributed.agree(self.checkpoints.due(),
                                                         "the checkpoint clock"):
                    self._save_checkpoint(pool, records, state)
                if self._interrupted():  # a Ctrl-C whose KeyboardInterrupt was swallowed
                    raise KeyboardInterrupt
                if target is not None and self._reached(target):
                    self._log(f"target {self.objective} {target} reached; "
                              f"{len(pool.running())} trials still running are left to a resume")
                    break
                if self._past(deadline):
                    self._log(f"time budget spent; {len(pool.running())} trials still running "
                              "are left to a resume")
                    break
            if pool.running():  # stopped by the time budget or the target
                self._save_checkpoint(pool, records, state)
            elif self._checkpoint_dir is not None and distributed.is_leader():  # all done
                checkpoint.remove(self._checkpoint_dir)
        except KeyboardInterrupt:
            interrupted = True
            self._log("interrupted: every trial that ended is in the store (continue with "
                      "`jaxtune resume`); evaluating the best on the test split (Ctrl-C again "
                      "to skip)")
        history = self._trials()
        try:
            finals, best_model = self._final_evaluation(history)
        except KeyboardInterrupt:
            finals, best_model, interrupted = self.store.finals(self.study_id), None, True
        return StudyResult(trials=history, finals=finals, objective=self.objective,
                           objectives=self.spec.get("objectives"),
                           direction=self.direction, wall_s=time.perf_counter() - t0,
                           compiles=self.programs.compiles - compiles_before,
                           store=None if self.store.in_memory else str(self.store.path),
                           best_model=best_model, interrupted=interrupted)

    # -- checkpoints ------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return resume.identity(self.name, self.spec, self._store_created)

    def _save_checkpoint(self, pool: Pool, records: Any, state: _RunState) -> None:
        """Checkpoints the running populations, the scheduler's records and the searcher
        after the round committed last (see :mod:`jaxtune.resume`)."""
        if state.saved == state.round - 1:  # stopped just after a due checkpoint
            return
        resume.save(self._checkpoint_dir, state.round - 1, pool, records, self.searcher,
                    self._told, state.exhausted, self._identity())
        state.saved = state.round - 1

    def _fill(self, pool: Pool, keys: list[Any] | None, waiting: list[TrialRecord],
              state: _RunState, deadline: float | None) -> None:
        """Starts waiting trials (interrupted by a kill) and new ones in free slots."""
        restarted = []
        for t in list(waiting):
            key = pool.bucket_of(t.config)
            if pool.capacity(key) > 0:
                t.started = time.time()
                pool.start(key, t.index, t.config)
                waiting.remove(t)
                restarted.append(t)
        if waiting and keys is None:
            pool.retire_idle()
        if restarted:
            self.store.update_trials(self.study_id, restarted, writer=self._writer)
        more = ((self.scheduler.refills or state.first_round)
                and not self._past(deadline)
                and not state.exhausted and not waiting)
        if not more:
            return
        if keys is None:  # buckets take turns: ask from the whole space
            free = sum(pool.capacity(k) for k in pool.populations) or pool.slots // self.seeds
            asks = [(None, free)]
        else:
            asks = [(k, pool.capacity(k)) for k in keys]
        if state.member_steps is not None:  # what may still start within the step budget
            per_trial = self.experiment.steps * self.seeds
            left = max((state.member_steps - state.spent
                        - len(pool.running()) * per_trial) // per_trial, 0)
            capped = []
            for k, r in asks:
                capped.append((k, min(r, left)))
                left -= min(r, left)
            asks = capped
        for key, room in asks:
            n = int(min(room, state.target - state.started))
            if n <= 0:
                continue
            configs = self._next_configs(n, key, keys, pool, state)
            if not configs and key in self._given_up:
                continue
            if not configs:
                if not state.exhausted:
                    state.exhausted = True
                    self._log("the searcher has no more configurations")
                return
            start = self.store.next_trial_index(self.study_id)
            new = [TrialRecord(index=start + i, config=c, status="running",
                               seeds=list(range(self.seeds)), batch=state.round,
                               started=time.time()) for i, c in enumerate(configs)]
            self.store.add_trials(self.study_id, new, writer=self._writer,
                                  dequeued=self._dequeued)
            self._dequeued = []
            state.started += len(new)
            self._start(pool, new, waiting)
        state.first_round = False

    @staticmethod
    def _start(pool: Pool, trials: list[TrialRecord], waiting: list[TrialRecord]) -> None:
        """Starts ``trials`` in free slots (those of one bucket together); the trials
        that find no room wait."""
        room: dict[Any, int] = {}
        group: dict[Any, list[tuple[int, dict[str, Any]]]] = {}

        def flush():
            for k, members in group.items():
                pool.start_many(k, members)
            group.clear()

        for t in trials:
            k = pool.bucket_of(t.config)
            if k not in room:  # a bucket's room depends on the populations already open
                flush()
                room[k] = pool.capacity(k)
            if room[k] > 0:
                group.setdefault(k, []).append((t.index, t.config))
                room[k] -= 1
            else:
                waiting.append(t)
        flush()

    def _next_configs(self, n: int, key: Any, keys: list[Any] | None, pool: Pool,
                      state: _RunState) -> list[dict[str, Any]]:
        """Up to ``n`` feasible configurations for the bucket ``key`` (``None``: any):
        enqueued ones first, then the searcher's. Those a configuration constraint
        refuses are stored ``infeasible`` at once, untrained, and told to the searcher
        as failed; after ``10 * n`` refusals in a row without one feasible
        configuration the bucket is given up (the others go on)."""
        out: list[dict[str, Any]] = []
        refused = 0
        if key in self._given_up:
            return out
        while len(out) < n:
            want = n - len(out)
            got = [q for q in self._queue if key is None or pool.bucket_of(q[1]) == key][:want]
            for q in got:
                self._queue.remove(q)
            if len(got) < want:
                within = None if key is None or len(keys or []) == 1 else pool.region(key)
                more = self.searcher.ask(want - len(got), within=within) \
                    if within is not None else self.searcher.ask(want - len(got))
                if not more and not got:
                    break
                got += [(None, c) for c in more]
            bad, taken = [], []
            for position, c in got:
                why = self.goals.infeasible_config(c)
                if why is None:
                    out.append(c)
                    if position is not None:  # leaves the queue with its trial's insert
                        self._dequeued.append(position)
                    continue
                if position is not None:
                    taken.append(position)
                bad.append(TrialRecord(
                    index=0, config=c, status="infeasible", seeds=[], batch=state.round,
                    metrics=self.goals.infeasible_trial_metrics(c, why),
                    started=time.time(), finished=time.time(), wall_s=0.0))
            if bad:
                start = self.store.next_trial_index(self.study_id)
                for i, t in enumerate(bad):
                    t.index = start + i
                self.store.add_trials(self.study_id, bad, writer=self._writer, dequeued=taken)
                self._tell(bad)
                self._log(f"{len(bad)} configurations refused before training "
                          f"({bad[0].metrics['infeasible']['why']} fails for {bad[0].config})")
                refused += len(bad)
                if refused >= 10 * n and not out:
                    self._given_up.add(key)
                    self._log(f"{refused} configurations in a row were infeasible; "
                              + ("giving up" if key is None else f"bucket {dict(key)} given up"))
                    break
        return out

    def _round(self, pool: Pool, records: Any, state: _RunState) -> Any:
        """One chunk of every live population, the scheduler's decisions, one commit."""
        t0 = time.perf_counter()
        first = state.startup_s is None
        if first:
            state.startup_s = t0 - state.launched
            self._log(f"first chunk training {state.startup_s:.1f}s after launch "
                      f"({self.programs.compile_s:.1f}s of it compiling or loading "
                      f"{self.programs.compiles} programs, {self.programs.stored} stored)")
        for key in pool.step():
            views = pool.views(key)
            for v in views:
                records = self.scheduler.observe(records, v)
            pool.apply(key, self.scheduler.decide(records, views, pool.region(key)))
        by_index = {t.index: t for t in self.store.trials(self.study_id, "running")}
        ended = [self._record(e, by_index[e.trial]) for e in pool.collect()]
        state.spent += sum(feedback.steps_trained(t) for t in ended)
        running = []
        for trial in pool.running():
            t = by_index[trial]
            t.metrics, t.curves = aggregate(pool.members(trial), self.experiment.eval_every)
            t.config = pool.members(trial)[0].config
            running.append(t)
        wall = time.perf_counter() - t0
        self.store.finish_batch(self.study_id, state.round, {
            "wall_s": wall, "ended": len(ended), "running": len(running),
            # programs compiled since the last commit (slots opened between rounds too)
            "compiles": self.programs.compiles - state.compiles,
            "compile_s": self.programs.compile_s - state.compile_s,
            "populations": len(pool.populations), "slots": pool.slots,
            # launch -> first chunk, on the first round of each run
            "startup_s": state.startup_s if first else None}, ended + running,
            writer=self._writer)
        state.compiles, state.compile_s = self.programs.compiles, self.programs.compile_s
        for lg in self.loggers:
            lg.log(ended + running)
        self._tell(ended)
        self._warn_capped(ended)
        if ended or state.round % 10 == 0:
            counts = [f"{n} {s}" for s in ("complete", "pruned", "diverged")
                      if (n := sum(t.status == s for t in ended))]
            self._log(f"round {state.round} ({wall:.1f}s): {len(running)} trials running, "
                      f"ended {', '.join(counts) or 'none'}; {self._best_line()}")
        state.round += 1
        return records

    def _record(self, ended: EndedTrial, t: TrialRecord) -> TrialRecord:
        """``t``, the stored record of a trial that ended, updated."""
        obj = ended.metrics.get(self.objective, {}).get("mean")
        status = ended.status
        if status == "complete" and (obj is None or not math.isfinite(obj)):
            status = "diverged"
        metrics = dict(ended.metrics)
        if status == "pruned":
            rung = self.scheduler.rung(ended.trial, ended.steps)
            if rung is not None:
                metrics["rung"] = {"mean": rung, "std": 0.0, "per_seed": [rung]}
            if isinstance(self.scheduler, Hyperband):
                b = self.scheduler.bracket(ended.trial)
                metrics["bracket"] = {"mean": b, "std": 0.0, "per_seed": [b]}
        # every objective is stored with the trial's metrics
        metrics.update(self.goals.other_objectives(ended.config, ended.curves))
        if status == "complete" and (why := self.goals.infeasible_metrics(metrics)):
            status = "infeasible"
            metrics["infeasible"] = {"mean": 1.0, "std": 0.0, "per_seed": [1.0], "why": why}
        t.config, t.status, t.metrics, t.curves = ended.config, status, metrics, ended.curves
        t.objective = obj if status in ("complete", "infeasible") else None
        t.finished = time.time()
        t.wall_s = t.finished - (t.started or t.finished)
        return t

    def _warn_capped(self, ended: list[TrialRecord]) -> None:
        capped = [t for t in ended if t.metrics.get("budget_capped", {}).get("mean")]
        if capped and not self._warned_capped:
            self._warned_capped = True
            warnings.warn(f"trial {capped[0].index} asked for more epochs than "
                          f"Experiment.steps={self.experiment.steps} allows "
                          f"({capped[0].config}); its budget was cut to {self.experiment.steps}"
                          " steps (metrics['budget'] records the steps each trial had); "
                          "raise steps to train such trials in full", UserWarning, stacklevel=4)

    def _reached(self, target: float) -> bool:
        ranked = rank_trials(self._trials(), self.direction)
        return bool(ranked) and self.sign * ranked[0].objective <= self.sign * float(target)

    def _best_line(self) -> str:
        ranked = rank_trials(self._trials(), self.direction)
        if not ranked:
            return "no complete trial yet"
        b = ranked[0]
        return f"best {self.objective} {b.objective:.4f} (trial {b.index})"

    def _final_evaluation(self, history: list[TrialRecord]
                          ) -> tuple[list[dict[str, Any]], tuple[Any, Any] | None]:
        """Re-trains the top trials on fresh seeds: the stored rows, and the best
        trial's ``(module, params)`` when it was re-trained now."""
        top = rank_trials(history, self.direction)[: self.top_k]
        if not top or self.final_seeds < 1:
            return [], None
        seed = self.seed + FINAL_SEED_OFFSET
        stored = self.store.finals(self.study_id)
        if final.done(stored, top, self.final_seeds, seed):
            return stored, None
        self._log(f"re-training the top {len(top)} trials with {self.final_seeds} fresh seeds "
                  "and evaluating on the test split")
        members = final.retrain(self.experiment, self.programs, top, seeds=self.final_seeds,
                                seed=seed, alive=lambda: self.store.heartbeat(
                                    self.study_id, self._writer))
        rows, chosen, why = final.rows(top, members, objective=self.objective,
                                       direction=self.direction,
                                       eval_every=self.experiment.eval_every,
                                       seeds=self.final_seeds, seed=seed)
        self._log(f"chosen: {why}")
        self.store.set_finals(self.study_id, rows, writer=self._writer)
        self.store.set_models(self.study_id, [final.model_row(
            self.experiment, t, members[t.index][0], seed) for t in top], writer=self._writer)
        best = members[chosen][0]
        module = self.experiment.build_model(self.experiment.static_config(best.config))
        return rows, (module, _kept(best))


def _canonical(config: Mapping[str, Any]) -> str:
    """A configuration as canonical JSON (sorted keys): equal configurations, equal text."""
    return json.dumps(dict(config), sort_keys=True,
                      default=lambda v: v.item() if hasattr(v, "item") else repr(v))


@dataclasses.dataclass
class _RunState:
    """The counters of one :meth:`Study.run`."""

    target: float
    started: int
    round: int
    first_round: bool
    exhausted: bool = False
    member_steps: int | None = None  # the step budget (None: none)
    spent: int = 0  # steps trained by trials that ended
    compiles: int = 0  # the program cache's count at the last commit
    compile_s: float = 0.0
    launched: float = 0.0  # perf_counter() at launch (the time budget's start)
    startup_s: float | None = None  # launch -> the first chunk trains (this run)
    saved: int | None = None  # the round checkpointed last (this run)
