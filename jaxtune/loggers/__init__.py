"""Loggers: optional sinks a :class:`~jaxtune.study.Study` feeds as it runs.

``Study(..., loggers=[jt.loggers.TensorBoard("tb/")])`` (or ``jaxtune run
--tensorboard tb/``) mirrors the study into another tool while it runs; the
store stays the record. A logger is told three things:

* :meth:`Logger.open` once per :meth:`Study.run <jaxtune.study.Study.run>`, with
  the study;
* :meth:`Logger.log` after every round's commit, with the trials that ended in
  the round (final status) and those still running (their curves so far);
* :meth:`Logger.close` when the run returns (also on Ctrl-C and exceptions).

Loggers: :class:`TensorBoard` (one run per trial, HParams plugin; extra
``[tensorboard]``) and :class:`MLflow` (one run per trial nested under one run
per study; extra ``[mlflow]``). Their packages are imported only when a logger
is built; a missing one raises one ``ImportError`` line naming the extra.

What a logger writes of a trial (:func:`trial_points`, :func:`final_metrics`):
each curve of the store (learning curves, probe curves) at its real step
numbers, the mean over the trial's seeds of the finite values (a probe not run
at an evaluation, or a diverged loss, is left out); at the end, the trial's
final metrics (means over seeds) and its status (``complete``, ``pruned``,
``diverged``).

Example:
    >>> from jaxtune.store import TrialRecord
    >>> t = TrialRecord(0, {"lr": 0.1}, "pruned", curves={
    ...     "step": [10, 20], "steps_done": [[10, 20]],
    ...     "val_loss": [[0.5, 0.25], [0.7, None]]})
    >>> trial_points(t)
    {'val_loss': [(10, 0.6), (20, 0.25)]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from jaxtune.store import TrialRecord

__all__ = ["CURVE_KEYS", "Logger", "MLflow", "TensorBoard", "final_metrics", "trial_points"]

#: Keys of ``TrialRecord.curves`` that are not metric curves.
CURVE_KEYS = ("step", "steps_done", "lineage", "segments")


class Logger:
    """A sink fed by a study as it runs (see the module docstring)."""

    def open(self, study: Any) -> None:
        """Called when :meth:`Study.run` starts, with the study."""

    def log(self, trials: Sequence[TrialRecord]) -> None:
        """Called after each round's commit: the trials that ended and those running."""

    def close(self) -> None:
        """Called when :meth:`Study.run` returns or raises."""


def _mean(values: Sequence[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def trial_points(trial: TrialRecord) -> dict[str, list[tuple[int, float]]]:
    """Each metric curve of a trial as ``(step, mean over seeds)`` points (finite only)."""
    steps = list(trial.curves.get("step") or [])
    out: dict[str, list[tuple[int, float]]] = {}
    for name, per_seed in trial.curves.items():
        if name in CURVE_KEYS or not isinstance(per_seed, list):
            continue
        rows = [r for r in per_seed if isinstance(r, list)]
        points = []
        for k, step in enumerate(steps):
            v = _mean([r[k] for r in rows if k < len(r)])
            if v is not None:
                points.append((int(step), v))
        if points:
            out[name] = points
    return out


def final_metrics(trial: TrialRecord) -> dict[str, float]:
    """A finished trial's metrics (means over seeds), finite ones only.

    Example:
        >>> from jaxtune.store import TrialRecord
        >>> final_metrics(TrialRecord(0, {}, "complete", metrics={
        ...     "val_loss": {"mean": 0.5, "std": 0.0}, "train_loss": {"mean": None}}))
        {'val_loss': 0.5}
    """
    out = {}
    for name, m in trial.metrics.items():
        v = m.get("mean") if isinstance(m, dict) else None
        if v is not None and math.isfinite(float(v)):
            out[name] = float(v)
    return out


def __getattr__(name: str) -> Any:
    # the loggers' modules import nothing optional at import time, but stay out of
    # `import jaxtune` until used
    if name == "TensorBoard":
        from jaxtune.loggers.tensorboard import TensorBoard

        return TensorBoard
    if name == "MLflow":
        from jaxtune.loggers.mlflow import MLflow

        return MLflow
    raise AttributeError(f"module 'jaxtune.loggers' has no attribute {name!r}")
