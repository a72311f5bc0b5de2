"""The tuning loop: ask a population-sized batch, train it, store it, tell it.

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

* **Batches.** Each batch holds ``population // seeds`` configurations, so one
  batch fills the population; the last batch may be smaller.
* **Seeds.** Replicate seeds are aggregated (mean and std) before ``tell``.
* **Divergence.** A trial any of whose replicates diverged is stored with status
  ``diverged`` and no objective; searchers receive ``None`` and apply their
  documented policy (default: the worst finite loss seen, see
  :mod:`jaxtune.search`). NaN never reaches a searcher or the objective column.
* **Direction.** Searchers minimize; for ``direction="maximize"`` they are told
  the negated objective.
* **Commits.** Trials are inserted as ``running`` before a batch trains and
  updated in one transaction when it finishes. A killed study loses at most the
  batch in flight: on resume, the stored history is re-told to a fresh
  searcher and trials still ``running`` are trained again, with the same
  configurations and trial ids, before new ones are asked.
* **Final evaluation.** The ``top_k`` best trials are re-trained with
  ``final_seeds`` fresh seeds and evaluated on the test split (the only time a
  study reads it). Variance across those trials' means is the *trial*
  variance; the mean variance across fresh seeds is the *seed* variance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune import search as search_lib
from jaxtune.experiment import Experiment, default_objective
from jaxtune.population import PopulationResult, train_population
from jaxtune.programs import Programs
from jaxtune.ranking import default_direction, rank_table, rank_trials
from jaxtune.store import DEFAULT_PATH, MEMORY, Store, TrialRecord

__all__ = ["FINAL_SEED_OFFSET", "SIZE_MULTIPLE", "Study", "StudyResult"]

#: Studies pad each bucket's population to a multiple of this, so batches whose
#: split over static buckets varies reuse a handful of compiled programs.
SIZE_MULTIPLE = 8

#: The final re-evaluation derives member keys from ``seed + FINAL_SEED_OFFSET``,
#: so it never repeats a key used during the search.
FINAL_SEED_OFFSET = 1_000


@dataclasses.dataclass
class StudyResult:
    """What :meth:`Study.run` returns (everything also lives in the store)."""

    trials: list[TrialRecord]
    finals: list[dict[str, Any]]
    objective: str
    direction: str
    wall_s: float
    compiles: int
    store: str | None
    best_model: tuple[Any, Any] | None = None
    """``(flax module, params)`` of the best trial as re-trained by the final
    evaluation (its first fresh seed); ``None`` when no re-training ran in this call
    (``top_k=0``, or the final evaluation was read back from the store)."""

    @property
    def n_complete(self) -> int:
        return sum(t.status == "complete" for t in self.trials)

    def ranked(self) -> list[TrialRecord]:
        """Complete trials, best first (see :func:`jaxtune.ranking.rank_trials`)."""
        return rank_trials(self.trials, self.direction)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial: config, validation objective and, if re-evaluated, test metrics."""
        ranked = self.ranked()
        if not ranked:
            return None
        t = ranked[0]
        out = {"trial": t.index, "config": t.config, self.objective: t.objective}
        for row in self.finals:
            if row["trial"] == t.index:
                out.update({k: v for k, v in row.items()
                            if k.startswith("test_") and not k.endswith("_std")})
                out["final_seeds"] = row["seeds"]
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the CLI's ``--json`` line)."""
        best = self.best
        if best is not None:
            best = {**best, "val_accuracy": _metric_mean(self.ranked()[0], "val_accuracy"),
                    "test_accuracy": best.get("test_accuracy")}
        variance = _variance_split(self.finals, "test_" + self.objective.removeprefix("val_"))
        return {"trials": len(self.trials), "complete": self.n_complete,
                "diverged": sum(t.status == "diverged" for t in self.trials),
                "objective": self.objective, "direction": self.direction, "best": best,
                "wall_s": round(self.wall_s, 3), "compiles": self.compiles,
                "variance": variance, "store": self.store}

    def table(self, k: int = 10) -> str:
        """The ``k`` best trials as a plain-text table."""
        rows = []
        for t in self.ranked()[:k]:
            m = t.metrics.get(self.objective, {})
            std = m.get("std") if len(m.get("per_seed") or ()) > 1 else None
            rows.append((t.index, t.objective, std, t.config))
        return rank_table(rows, self.objective)


def _metric_mean(trial: TrialRecord, name: str) -> float | None:
    m = trial.metrics.get(name)
    return None if m is None else m.get("mean")


def _variance_split(finals: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any] | None:
    """Trial variance (across top-k means) vs seed variance (mean within-trial variance)."""
    rows = [r for r in finals if r.get(metric) is not None]
    if len(rows) < 1:
        return None
    means = np.asarray([r[metric] for r in rows], float)
    stds = np.asarray([r.get(metric + "_std") or 0.0 for r in rows], float)
    return {"metric": metric, "trial_var": float(np.var(means)),
            "seed_var": float(np.mean(np.square(stds))), "top_k": len(rows)}


def _aggregate(result: PopulationResult, trial_id: int) -> tuple[str, dict[str, Any], dict]:
    """Status, aggregated metrics and curves of one trial's replicates."""
    rows = [i for i, t in enumerate(result.trial_ids) if int(t) == trial_id]
    diverged = any(result.status[i] == "diverged" for i in rows)
    metrics: dict[str, Any] = {}
    for name, values in result.final.items():
        v = np.asarray([values[i] for i in rows], float)
        metrics[name] = {"mean": float(np.mean(v)), "std": float(np.std(v)),
                         "per_seed": v.tolist()}
    curves = {"step": result.eval_steps.tolist()}
    for name, values in result.curves.items():
        # the engine's per-member step counter is kept as "steps_done"
        curves["steps_done" if name == "step" else name] = [values[i].tolist() for i in rows]
    return ("diverged" if diverged else "complete"), metrics, curves


class Study:
    """A tuning study: searcher, population engine, store.

    Args:
        experiment: the :class:`~jaxtune.experiment.Experiment` tuned.
        searcher: a name (``grid``, ``random``, ``quasirandom``, ``bayes``) or a
            :class:`~jaxtune.search.Searcher`.
        scheduler: passed to :func:`~jaxtune.population.train_population`.
        store: path of the SQLite store, or ``None`` for a study kept in memory
            only (``Store(":memory:")``, same interface).
        name: the study's name within the store.
        seeds: replicates per configuration.
        population: members per batch (configs per batch = population // seeds).
        objective: a metric of the results (``val_accuracy``, ``val_loss`` …).
        direction: ``"maximize"`` or ``"minimize"``.
        seed: the study seed (member keys and searcher randomness).
        top_k, final_seeds: the final re-evaluation on the test split.
        searcher_options: keyword arguments of the searcher (e.g. ``surrogate``).
        info: extra JSON stored with the study (e.g. the command that reproduces it).
        progress: progress bars (default: when stderr is a terminal).
        verbose: one line per batch on stderr.
        programs: the compiled-program cache shared by every batch and the final
            evaluation (default :meth:`Programs.default <jaxtune.programs.Programs.default>`).
    """

    def __init__(
        self, experiment: Experiment, *, searcher: str | search_lib.Searcher = "bayes",
        scheduler: Any = None, store: str | None = DEFAULT_PATH, name: str = "default",
        seeds: int = 1, population: int = 32, objective: str | None = None,
        direction: str | None = None, seed: int = 0, top_k: int = 3, final_seeds: int = 3,
        searcher_options: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None,
        progress: bool | None = None, verbose: bool = True, programs: Programs | None = None,
    ):
        objective = objective or default_objective(experiment.data.task)
        direction = direction or default_direction(objective)
        rank_trials([], direction)  # validates the direction
        allowed = {"train_loss", "val_loss"} | ({"train_accuracy", "val_accuracy"}
                                                if experiment.data.task == "classification"
                                                else set())
        if objective not in allowed:
            raise ValueError(f"objective {objective!r} is not a validation/train metric of this "
                             f"experiment; choose one of {sorted(allowed)} (the test split is "
                             "never used for selection)")
        if int(top_k) < 0 or int(final_seeds) < 0:
            raise ValueError(f"top_k ({top_k}) and final_seeds ({final_seeds}) must be >= 0")
        if int(seeds) < 1 or int(population) < int(seeds):
            raise ValueError(f"need 1 <= seeds <= population, got seeds={seeds}, "
                             f"population={population}")
        self.experiment = experiment
        self.seeds, self.population, self.seed = int(seeds), int(population), int(seed)
        self.objective, self.direction = objective, direction
        self.scheduler, self.top_k, self.final_seeds = scheduler, int(top_k), int(final_seeds)
        self.progress, self.verbose, self.name = progress, verbose, name
        options = dict(searcher_options or {})
        if isinstance(searcher, str):
            self.searcher_name = searcher
            self.searcher = search_lib.make_searcher(searcher, experiment.space, seed=self.seed,
                                                     **options)
        else:
            self.searcher_name = type(searcher).__name__
            self.searcher = searcher
        self.spec = {
            "experiment": experiment.spec(), "searcher": self.searcher_name,
            "searcher_options": {k: _json_safe(v) for k, v in options.items()},
            "seeds": self.seeds, "population": self.population, "objective": objective,
            "direction": direction, "seed": self.seed,
        }
        self.info = dict(info or {})
        self.programs = programs if programs is not None else Programs.default(experiment)
        self.programs.check(experiment)
        self.store = Store(store if store is not None else MEMORY)
        self.study_id = self.store.open_study(name, self.spec, info=self._info())
        self._told: set[int] = set()  # trial indices this searcher has been told
        self._warned_capped = False  # epoch budgets cut at Experiment.steps: warn once

    def _info(self) -> dict[str, Any]:
        import jax

        from jaxtune._version import __version__

        devices = jax.devices()
        return {"jaxtune_version": __version__, "jax_version": jax.__version__,
                "devices": {"platform": devices[0].platform, "count": len(devices),
                            "kind": devices[0].device_kind},
                "created": time.time(), **self.info}

    # -- persistence helpers ----------------------------------------------------------
    def _trials(self) -> list[TrialRecord]:
        return self.store.trials(self.study_id)

    def _loss(self, record: TrialRecord) -> float | None:
        if record.status != "complete" or record.objective is None:
            return None
        return -record.objective if self.direction == "maximize" else record.objective

    def _tell(self, trials: list[TrialRecord]) -> None:
        self.searcher.tell([t.config for t in trials], [self._loss(t) for t in trials])
        self._told.update(t.index for t in trials)

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"jaxtune: {msg}", file=sys.stderr, flush=True)

    # -- the loop ---------------------------------------------------------------------
    def run(self, trials: int | None = None, time_budget: float | None = None) -> StudyResult:
        """Runs (or resumes) the study until ``trials`` trials are finished or time is up.

        Args:
            trials: number of finished (complete or diverged) trials wanted in total,
                counting those already in the store.
            time_budget: seconds; no new batch starts after it is spent.
        """
        if trials is None and time_budget is None:
            raise ValueError("give trials=N and/or time_budget=seconds")
        t0 = time.perf_counter()
        compiles_before = self.programs.compiles
        history = self._trials()
        done = [t for t in history if t.status in ("complete", "diverged", "pruned")
                and t.index not in self._told]
        if done:
            self._tell(done)
            self._log(f"resuming study {self.name!r}: {len(done)} finished trials re-told")
        queue = [t for t in history if t.status == "running"]
        target = math.inf if trials is None else int(trials)
        per_batch = max(1, self.population // self.seeds)
        batch_no = max((t.batch or 0 for t in history), default=-1) + 1
        while True:
            n_done = sum(t.status in ("complete", "diverged") for t in self._trials())
            if n_done >= target:
                break
            if time_budget is not None and time.perf_counter() - t0 >= time_budget:
                self._log("time budget spent")
                break
            if queue:  # a batch interrupted by a kill: train it again, under its own number
                number = queue[0].batch
                batch = [t for t in queue if t.batch == number]
                queue = [t for t in queue if t.batch != number]
                for t in batch:
                    t.started = time.time()
                self.store.update_trials(self.study_id, batch)
                self._train_batch(batch, number)
                continue
            else:
                n = int(min(per_batch, target - n_done))
                configs = self.searcher.ask(n)
                if not configs:
                    self._log("the searcher has no more configurations")
                    break
                start = self.store.next_trial_index(self.study_id)
                batch = [TrialRecord(index=start + i, config=c, status="running",
                                     seeds=list(range(self.seeds)), batch=batch_no,
                                     started=time.time()) for i, c in enumerate(configs)]
                self.store.add_trials(self.study_id, batch)
            self._train_batch(batch, batch_no)
            batch_no += 1
        history = self._trials()
        finals, best_model = self._final_evaluation(history)
        return StudyResult(trials=history, finals=finals, objective=self.objective,
                           direction=self.direction, wall_s=time.perf_counter() - t0,
                           compiles=self.programs.compiles - compiles_before,
                           store=None if self.store.in_memory else str(self.store.path),
                           best_model=best_model)

    def _train_batch(self, batch: list[TrialRecord], batch_no: int) -> None:
        t0 = time.perf_counter()
        result = train_population(
            self.experiment, [t.config for t in batch], seeds=self.seeds, seed=self.seed,
            trial_ids=[t.index for t in batch], scheduler=self.scheduler,
            progress=self.progress, evaluate_test=False, size_multiple=SIZE_MULTIPLE,
            verbose=self.verbose, programs=self.programs, warn_capped=not self._warned_capped)
        self._warned_capped |= bool(np.any(result.final.get("budget_capped", False)))
        wall = time.perf_counter() - t0
        for t in batch:
            status, metrics, curves = _aggregate(result, t.index)
            t.status, t.metrics, t.curves = status, metrics, curves
            obj = metrics.get(self.objective, {}).get("mean")
            t.objective = obj if status == "complete" and obj is not None and math.isfinite(
                obj) else None
            if status == "complete" and t.objective is None:
                t.status = "diverged"
            t.finished, t.wall_s = time.time(), wall
        self.store.finish_batch(self.study_id, batch_no, {
            "trials": len(batch), "members": len(result), "wall_s": wall,
            "compile_s": result.compile_s, "compiles": result.compiles,
            "buckets": [{k: (_json_safe(v) if k == "static" else v) for k, v in b.items()}
                        for b in result.buckets]}, batch)
        self._tell(batch)
        best = self._best_line()
        self._log(f"batch {batch_no}: {len(batch)} trials x {self.seeds} seeds in {wall:.1f}s "
                  f"({result.compiles} compiles); {best}")

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
        stored = self.store.finals(self.study_id)
        same = sorted(r.get("trial") for r in stored) == sorted(t.index for t in top)
        if same and all(r.get("seeds") == self.final_seeds
                        and r.get("seed") == self.seed + FINAL_SEED_OFFSET for r in stored):
            return stored, None
        self._log(f"re-training the top {len(top)} trials with {self.final_seeds} fresh seeds "
                  "and evaluating on the test split")
        result = train_population(
            self.experiment, [t.config for t in top], seeds=self.final_seeds,
            seed=self.seed + FINAL_SEED_OFFSET, trial_ids=[t.index for t in top],
            progress=self.progress, size_multiple=SIZE_MULTIPLE, verbose=self.verbose,
            programs=self.programs, warn_capped=False, keep_params=True)
        rows = []
        for rank, t in enumerate(top):
            status, metrics, _ = _aggregate(result, t.index)
            row: dict[str, Any] = {"rank": rank, "trial": t.index, "config": t.config,
                                   "status": status, "search_objective": t.objective,
                                   "seed": self.seed + FINAL_SEED_OFFSET,
                                   "seeds": self.final_seeds}
            for name, m in metrics.items():
                if name.startswith(("test_", "val_")):
                    row[name], row[name + "_std"] = m["mean"], m["std"]
            rows.append(row)
        self.store.set_finals(self.study_id, rows)
        best = next(i for i, t in enumerate(result.trial_ids) if int(t) == top[0].index)
        module = self.experiment.build_model(self.experiment.static_config(top[0].config))
        return rows, (module, result.params[best])


def _json_safe(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)
