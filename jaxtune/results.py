"""What a study returns, and a stored study read back in a later process.

:class:`StudyResult` is what :meth:`Study.run <jaxtune.study.Study.run>` returns;
:meth:`StudyResult.load` rebuilds one from a store (no lock: readers never need
one), with the chosen trial's trained model when the store keeps it.

Example:
    >>> from jaxtune.store import TrialRecord
    >>> r = StudyResult(trials=[TrialRecord(0, {"lr": 0.1}, "complete", objective=0.5)],
    ...                 finals=[], objective="val_accuracy", direction="maximize",
    ...                 wall_s=1.0, compiles=1, store=None)
    >>> r.best["trial"], r.n_complete
    (0, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.experiment import Experiment
from jaxtune.ranking import chosen_row, rank_table, rank_trials
from jaxtune.store import Store, TrialRecord

__all__ = ["StudyResult"]


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
    """``(flax module, params)`` of the chosen trial (see :attr:`best`) as re-trained by
    the final evaluation (its first fresh seed); ``None`` when no re-training ran in
    this call (``top_k=0``, or the final evaluation was read back from the store).
    The store keeps it: :meth:`load` gives it back in a later process."""
    interrupted: bool = False
    """Whether the run was interrupted (Ctrl-C) before its target."""
    objectives: list[list[str]] | None = None
    """``[[name, direction], ...]`` of a study with several objectives (else ``None``)."""

    def front(self) -> list[TrialRecord]:
        """The complete trials on the Pareto front of the objectives (with one
        objective: the best)."""
        from jaxtune.objectives import Objective, front_of

        objs = [Objective(n, d) for n, d in (self.objectives or
                                             [[self.objective, self.direction]])]
        return front_of(self.trials, objs)

    @classmethod
    def load(cls, store: str, name: str | None = None,
             experiment: Experiment | None = None) -> StudyResult:
        """A finished (or interrupted) study read back from its store, in a new process.

        ``best_model`` is the chosen trial's model as the final evaluation trained
        it (its first fresh seed), rebuilt from ``experiment`` or, for a study the
        ``jaxtune`` command made, from its built-in experiment or its experiment
        file (only if the file's SHA-256 is still the one stored); ``None`` when
        the store keeps no model. Reading takes no lock.

        Raises:
            ValueError: several studies and no ``name``, or a model that cannot be
                rebuilt (pass ``experiment=``; a rebuilt module must have the stored
                ``repr``).
        """
        with Store(store, readonly=True) as st:
            rows = st.studies()
            if name is None and len(rows) != 1:
                raise ValueError(f"{store} holds {len(rows)} studies "
                                 f"({[r['name'] for r in rows]}); pass name=")
            row = st.study(name) if name is not None else rows[0]
            sid, spec = row["id"], row["spec"]
            batches = st.batches(sid)
            result = cls(trials=st.trials(sid), finals=st.finals(sid),
                         objective=spec["objective"], direction=spec["direction"],
                         objectives=spec.get("objectives"),
                         wall_s=sum(b.get("wall_s") or 0.0 for b in batches),
                         compiles=sum(b.get("compiles") or 0 for b in batches),
                         store=str(st.path))
            models = {m["trial"]: m for m in st.models(sid)}
        best = result.best
        model = models.get(best["trial"]) if best else None
        if model is not None:
            result.best_model = _restore(model, experiment, row.get("info") or {})
        return result

    @property
    def n_complete(self) -> int:
        return sum(t.status == "complete" for t in self.trials)

    @property
    def finished(self) -> list[TrialRecord]:
        """Trials that ended (complete, diverged or pruned): what counts as a trial."""
        return [t for t in self.trials if t.status != "running"]

    def ranked(self) -> list[TrialRecord]:
        """Complete trials, best first (see :func:`jaxtune.ranking.rank_trials`)."""
        return rank_trials(self.trials, self.direction)

    @property
    def best(self) -> dict[str, Any] | None:
        """The chosen trial: config, search objective and, if re-evaluated, its
        re-trained validation and test metrics.

        With a final evaluation it is the top trial whose re-training on fresh
        seeds scored best on the objective (``chosen_because`` says why; see
        :func:`~jaxtune.ranking.choose_final`); without one, the search's best.
        """
        ranked = self.ranked()
        if not ranked:
            return None
        row = chosen_row(self.finals)
        t = next((t for t in ranked if row is not None and t.index == row["trial"]), ranked[0])
        out = {"trial": t.index, "config": t.config, self.objective: t.objective}
        for row in self.finals:
            if row["trial"] == t.index:
                out.update({k: v for k, v in row.items()
                            if k.startswith("test_") and not k.endswith("_std")})
                out["final_seeds"] = row["seeds"]
                out["final_" + self.objective] = row.get(self.objective)
                out["chosen_because"] = row.get("chosen_because")
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the CLI's ``--json`` line)."""
        best = self.best
        if best is not None:
            best = {**best, "val_accuracy": _metric_mean(
                    next(t for t in self.trials if t.index == best["trial"]), "val_accuracy"),
                    "test_accuracy": best.get("test_accuracy")}
        variance = _variance_split(self.finals, "test_" + self.objective.removeprefix("val_"))
        return {"trials": len(self.finished), "complete": self.n_complete,
                "diverged": sum(t.status == "diverged" for t in self.trials),
                "pruned": sum(t.status == "pruned" for t in self.trials),
                "infeasible": sum(t.status == "infeasible" for t in self.trials),
                "running": sum(t.status == "running" for t in self.trials),
                "interrupted": self.interrupted,
                "objective": self.objective, "direction": self.direction, "best": best,
                "wall_s": round(self.wall_s, 3), "compiles": self.compiles,
                "variance": variance, "store": self.store}

    def table(self, k: int = 10) -> str:
        """The ``k`` best trials as a plain-text table; with several objectives, their
        values too and a ``*`` on the members of the Pareto front."""
        rows = []
        ranked = self.ranked()[:k]
        for t in ranked:
            m = t.metrics.get(self.objective, {})
            std = m.get("std") if len(m.get("per_seed") or ()) > 1 else None
            rows.append((t.index, t.objective, std, t.config))
        if not self.objectives or len(self.objectives) < 2:
            return rank_table(rows, self.objective)
        front = {t.index for t in self.front()}
        extra = [(name, [(t.metrics.get(name) or {}).get("mean") for t in ranked])
                 for name, _ in self.objectives[1:]]
        return rank_table(rows, self.objective, extra=extra,
                          front=[t.index in front for t in ranked])


def _kept(member: Any) -> Any:
    """A trained member's result: with early stopping (``patience``) the parameters at
    its best validation loss (what its test metrics were measured on), else its last."""
    return member.best_params if member.best_params is not None else member.params


def _restore(model: Mapping[str, Any], experiment: Experiment | None,
             info: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(module, params)`` of a stored model (see :meth:`StudyResult.load`)."""
    import hashlib
    import pathlib

    from flax import serialization

    if experiment is None:
        from jaxtune import zoo

        ref = info.get("experiment_ref")
        if ref is None:
            raise ValueError("this study was not made by the jaxtune command: pass the "
                             "experiment (StudyResult.load(store, experiment=...))")
        if ref not in zoo.EXPERIMENTS:
            path = pathlib.Path(ref)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            if digest is None or digest != info.get("experiment_sha256"):
                raise ValueError(f"the study's experiment file {ref} is missing or changed "
                                 "(its SHA-256 differs): pass experiment= to rebuild the model")
        kwargs = {"steps": info["steps"]} if info.get("steps") else {}
        experiment = zoo.load(ref, **kwargs)[0]
    module = experiment.build_model(experiment.static_config(model["info"]["config"]))
    if repr(module) != model["info"]["repr"]:
        raise ValueError(f"the experiment builds {repr(module)!r} but the stored model of "
                         f"trial {model['trial']} is {model['info']['repr']!r}")
    return module, serialization.msgpack_restore(model["params"])


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
