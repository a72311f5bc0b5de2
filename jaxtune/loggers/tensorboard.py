"""TensorBoard logger: one run per trial, curves at their steps, HParams plugin.

Layout under ``logdir``: the run ``<study>`` holds the HParams experiment (every
hyperparameter with its domain, the status and the final metrics); each trial is
the run ``<study>/trial_0007`` with

* its curves (``train_loss``, ``val_loss``, ``probe_*`` …) at the real step
  numbers, appended after every round while the trial trains (a live view);
* when it ends: ``final/<metric>`` (the trial's final metrics, means over
  seeds, at its last step), its hyperparameters and ``status`` (``complete``,
  ``pruned``, ``diverged``) as an HParams session (so TensorBoard's table,
  parallel-coordinates and scatter views filter on them), and the session's end
  (``STATUS_FAILURE`` for a diverged trial, ``STATUS_SUCCESS`` otherwise).

Events are written with TensorBoard's own ``EventFileWriter`` and protobufs
(``tensorboard`` only, no TensorFlow). See it with ``tensorboard --logdir DIR``.

Example:
    >>> import jaxtune as jt, tempfile
    >>> tb = jt.loggers.TensorBoard(tempfile.mkdtemp())  # doctest: +SKIP
    >>> jt.Study(exp, loggers=[tb]).run(trials=8)          # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from typing import Any

from jaxtune._extras import require
from jaxtune.loggers import Logger, final_metrics, trial_points
from jaxtune.store import TrialRecord

__all__ = ["TensorBoard", "run_name"]

#: The HParams status of each jaxtune status (a pruned trial ended as intended).
_SESSION_STATUS = {"complete": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS",
                   "diverged": "STATUS_FAILURE", "infeasible": "STATUS_SUCCESS"}


def run_name(study: str, trial: int) -> str:
    """The TensorBoard run of a trial: ``<study>/trial_0007`` (study name made path-safe).

    Example:
        >>> run_name("my study", 7)
        'my_study/trial_0007'
    """
    return f"{_safe(study)}/trial_{int(trial):04d}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "study"


class TensorBoard(Logger):
    """Writes a study as TensorBoard event files (see the module docstring).

    Args:
        logdir: the folder ``tensorboard --logdir`` reads (created if missing).

    Raises:
        ImportError: ``tensorboard`` is not installed (one line naming the extra).
    """

    def __init__(self, logdir: str | os.PathLike):
        require("tensorboard", "tensorboard", "TensorBoard logging")
        self.logdir = os.fspath(logdir)
        self._study = "study"
        self._writers: dict[int, Any] = {}
        self._written: dict[int, dict[str, int]] = {}  # points written per trial and curve

    def __repr__(self) -> str:
        return f"TensorBoard({self.logdir!r})"

    # -- the Logger protocol ----------------------------------------------------------
    def open(self, study: Any) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        self._study = str(study.name)
        hparams = [hp.HParam(name, _domain(hp, dim))
                   for name, dim in study.experiment.space.items()]
        hparams.append(hp.HParam("status", hp.Discrete(["complete", "pruned", "diverged",
                                                                "infeasible"])))
        metrics = [hp.Metric(f"final/{m}", display_name=m) for m in _metric_names(study)]
        metrics.append(hp.Metric("final/steps", display_name="steps"))
        writer = self._writer_for(None)
        writer.add_event(self._event(0, hp.hparams_config_pb(hparams, metrics)))
        writer.close()

    def log(self, trials: Sequence[TrialRecord]) -> None:
        touched = []
        for t in trials:
            writer = self._writers.get(t.index) or self._writer_for(t.index)
            self._writers[t.index] = writer
            written = self._written.setdefault(t.index, {})
            for name, points in trial_points(t).items():
                if len(points) < written.get(name, 0):  # trained again from its start
                    written[name] = 0
                for step, value in points[written.get(name, 0):]:
                    writer.add_event(self._event(step, _scalar(name, value)))
                written[name] = len(points)
            if t.status != "running":
                self._end(t, writer)
            else:
                touched.append(writer)
        for w in touched:
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    # -- helpers ----------------------------------------------------------------------
    def _writer_for(self, trial: int | None) -> Any:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        run = _safe(self._study) if trial is None else run_name(self._study, trial)
        path = os.path.join(self.logdir, *run.split("/"))
        os.makedirs(path, exist_ok=True)
        return EventFileWriter(path)

    @staticmethod
    def _event(step: int, summary: Any) -> Any:
        from tensorboard.compat.proto import event_pb2

        return event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)

    def _end(self, t: TrialRecord, writer: Any) -> None:
        """A finished trial's final metrics, HParams session and session end."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp

        finals = final_metrics(t)
        step = int(max(t.curves.get("step") or [0]))
        summary = summary_pb2.Summary()
        for name, value in finals.items():
            summary.value.add(tag=f"final/{name}", simple_value=value)
        writer.add_event(self._event(step, summary))
        values = {k: v for k, v in t.config.items()
                  if isinstance(v, (bool, int, float, str))}
        values["status"] = t.status
        start = hp.hparams_pb(values, trial_id=run_name(self._study, t.index),
                              start_time_secs=t.started or time.time())
        writer.add_event(self._event(0, start))
        end = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(
                status=api_pb2.Status.Value(_SESSION_STATUS.get(t.status, "STATUS_UNKNOWN")),
                end_time_secs=t.finished or time.time()),
            version=metadata.PLUGIN_DATA_VERSION)
        end_summary = summary_pb2.Summary()
        end_summary.value.add(tag=metadata.SESSION_END_INFO_TAG,
                              metadata=metadata.create_summary_metadata(end),
                              tensor=metadata.NULL_TENSOR)
        writer.add_event(self._event(step, end_summary))
        writer.close()
        self._writers.pop(t.index, None)


def _scalar(tag: str, value: float) -> Any:
    from tensorboard.compat.proto import summary_pb2

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, simple_value=float(value))
    return summary


def _domain(hp: Any, dim: Any) -> Any:
    """A dimension's HParams domain (none for a choice of mixed types)."""
    if dim.categorical:
        values = list(dim.all_values())
        try:
            return hp.Discrete(values)
        except (TypeError, ValueError):
            return None
    if dim.integral:
        return hp.IntInterval(int(dim.low), int(dim.high))
    return hp.RealInterval(float(dim.low), float(dim.high))


def _metric_names(study: Any) -> list[str]:
    names = ["train_loss", "val_loss"]
    if study.experiment.data.task == "classification":
        names += ["train_accuracy", "val_accuracy"]
    several = {o.name for o in getattr(study, "objectives", None) or []}  # costs too
    return sorted(set(names) | {study.objective} | several)
