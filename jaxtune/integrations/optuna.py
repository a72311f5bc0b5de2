"""Optuna: jaxtune studies in Optuna's storage, Optuna's samplers as jaxtune searchers.

**Export** (:func:`export_to_optuna`, ``jaxtune export STORE --optuna URL``)
writes each study of a jaxtune store as an Optuna study through Optuna's public
API (``optuna.create_study``, ``optuna.trial.create_trial``, ``Study.add_trials``),
so ``optuna-dashboard URL``, ``optuna.visualization`` and ``optuna.importance``
work on it. Per trial:

* ``params`` with their distributions (each dimension's own
  ``optuna_distribution()``);
* ``value``: the objective (mean over seeds) of a complete trial; a pruned trial
  (state ``PRUNED``) has the value at its last evaluation, as Optuna gives a
  trial pruned through ``study.tell``; a diverged trial is ``FAIL`` (no value);
  an infeasible one (constraints) is ``COMPLETE`` with its value, its status in
  ``user_attrs``;
  a trial still running is ``RUNNING``;
* ``intermediate_values``: the objective's learning curve (mean over seeds) at
  its step numbers;
* ``user_attrs``: ``jaxtune_trial`` (its index in the store), ``seeds``,
  ``steps`` (trained), ``bucket`` (its static values), ``metrics`` (final
  means over seeds, probes included) and ``status``.

A study of several objectives becomes a multi-objective Optuna study (its
directions and metric names; each trial's values are its final metrics of those
names; no intermediate values). The Optuna study is named as the jaxtune
study, has the objective's direction,
and the user attributes ``objective``, ``searcher``, ``scheduler`` and
``jaxtune_store``. Exporting again replaces the Optuna study of the same name.

Needs the ``[optuna]`` extra (``optuna``; ``optuna-dashboard`` to view).

Example:
    >>> from jaxtune.integrations.optuna import export_to_optuna
    >>> export_to_optuna("runs/jaxtune.db", "sqlite:///optuna.db")  # doctest: +SKIP
    ['default']
"""

from __future__ import annotations

import datetime
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from jaxtune._extras import require
from jaxtune.loggers import final_metrics, trial_points
from jaxtune.space import Space
from jaxtune.store import Store, TrialRecord

__all__ = ["export_to_optuna", "optuna_trial"]

#: Optuna's trial state for each jaxtune status.
STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "running": "RUNNING",
          "infeasible": "COMPLETE"}


def _optuna() -> Any:
    return require("optuna", "optuna", "The Optuna integration")


def export_to_optuna(store: str | os.PathLike, storage: str, *,
                     names: Sequence[str] | None = None) -> list[str]:
    """Writes the studies of a jaxtune store into an Optuna storage.

    Args:
        store: the jaxtune SQLite store (read only).
        storage: an Optuna storage URL, e.g. ``sqlite:///optuna.db``.
        names: the studies to export (default: all of them).

    Returns:
        The names of the Optuna studies written.

    Raises:
        ValueError: a study name not in the store, or an empty store.
        ImportError: optuna is not installed (one line naming the extra).
    """
    optuna = _optuna()
    with Store(store, readonly=True) as src:
        studies = src.studies()
        known = [s["name"] for s in studies]
        for n in names or ():
            if n not in known:
                raise ValueError(f"store {store} has no study named {n!r}; it has {known}")
        chosen = [s for s in studies if names is None or s["name"] in names]
        if not chosen:
            raise ValueError(f"store {store} holds no study to export")
        trials = {s["name"]: src.trials(s["id"]) for s in chosen}
    written = []
    for s in chosen:
        spec = s["spec"]
        space = Space.from_spec(spec["experiment"]["space"])
        objective = spec.get("objective", "val_loss")
        pairs = spec.get("objectives") or [[objective, spec.get("direction", "minimize")]]
        names = [n for n, _ in pairs]
        if s["name"] in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=s["name"], storage=storage)
        level = optuna.logging.get_verbosity()  # no INFO line per study created
        optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
        try:
            study = optuna.create_study(storage=storage, study_name=s["name"],
                                        directions=[d for _, d in pairs])
        finally:
            optuna.logging.set_verbosity(level)
        if len(pairs) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
        for key, value in {"objective": objective if len(pairs) == 1 else names,
                           "searcher": spec.get("searcher"),
                           "scheduler": (spec.get("scheduler") or {}).get("name"),
                           "seeds": spec.get("seeds"), "population": spec.get("population"),
                           "jaxtune_store": os.path.abspath(os.fspath(store))}.items():
            study.set_user_attr(key, value)
        study.add_trials([optuna_trial(t, space, objective if len(pairs) == 1 else names)
                          for t in trials[s["name"]]])
        written.append(s["name"])
    return written


def _time(unix: float | None) -> datetime.datetime | None:
    return None if unix is None else datetime.datetime.fromtimestamp(unix)


def optuna_trial(trial: TrialRecord, space: Space, objective: str | Sequence[str]) -> Any:
    """A stored jaxtune trial as an ``optuna.trial.FrozenTrial`` (see the module docstring).

    With several objectives (a list of names), the values are the trial's final
    metrics of those names (means over seeds); Optuna keeps no learning curve then.

    Example:
        >>> from jaxtune.space import Real, Space
        >>> from jaxtune.store import TrialRecord
        >>> t = TrialRecord(3, {"lr": 0.01}, "pruned", seeds=[0],
        ...                 metrics={"val_loss": {"mean": 0.4}, "steps": {"mean": 10.0}},
        ...                 curves={"step": [10], "val_loss": [[0.4]]}, started=0.0, finished=1.0)
        >>> ft = optuna_trial(t, Space(lr=Real(1e-3, 1.0, log=True)), "val_loss")
        >>> ft.state.name, ft.value, ft.intermediate_values, ft.user_attrs["jaxtune_trial"]
        ('PRUNED', 0.4, {10: 0.4}, 3)
    """
    optuna = _optuna()
    dists = {name: dim.optuna_distribution() for name, dim in space.items()
             if name in trial.config}
    params = {name: trial.config[name] for name in dists}
    metrics = final_metrics(trial)
    state = getattr(optuna.trial.TrialState, STATES.get(trial.status, "FAIL"))
    value: Any = None
    if isinstance(objective, str):
        curve = dict(trial_points(trial).get(objective, []))
        if state == optuna.trial.TrialState.COMPLETE and trial.objective is not None \
                and math.isfinite(trial.objective):
            value = float(trial.objective)
        elif trial.status == "pruned" and curve:
            value = curve[max(curve)]
    else:  # several objectives: Optuna takes no intermediate values
        curve = {}
        if state == optuna.trial.TrialState.COMPLETE and all(n in metrics for n in objective):
            value = [metrics[n] for n in objective]
    if state == optuna.trial.TrialState.COMPLETE and value is None:
        state = optuna.trial.TrialState.FAIL
    attrs = {"jaxtune_trial": trial.index, "status": trial.status, "seeds": list(trial.seeds),
             "steps": metrics.get("steps"), "batch": trial.batch, "metrics": metrics,
             "bucket": {n: trial.config[n] for n, d in space.items()
                        if d.static and n in trial.config}}
    return _finished(optuna, state, value, params, dists, attrs, curve, trial)


def _finished(optuna: Any, state: Any, value: Any, params: dict, dists: dict,
              attrs: dict, curve: dict, trial: TrialRecord) -> Any:
    several = isinstance(value, list)
    ft = optuna.trial.create_trial(state=state, value=None if several else value,
                                   values=value if several else None, params=params,
                                   distributions=dists, user_attrs=attrs,
                                   intermediate_values=curve)
    start = _time(trial.started)
    if start is not None:
        ft.datetime_start = start
    if state.is_finished():
        ft.datetime_complete = _time(trial.finished) or ft.datetime_complete
    return ft

