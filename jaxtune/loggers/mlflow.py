"""MLflow logger: one run per trial, nested under one parent run per study.

In the experiment ``experiment`` (default ``"jaxtune"``) of the tracking store
``tracking_uri`` (``sqlite:///mlflow.db``, a server's URL, a folder …):

* the study's parent run (named as the study, tagged ``jaxtune.study``), with
  the study's settings as parameters (``objective``, ``direction``,
  ``searcher``, ``scheduler``, ``seeds``, ``population``, ``seed``);
* a child run per trial (``trial 7``, tag ``mlflow.parentRunId``): its
  configuration as parameters, its curves as metrics at their real step
  numbers (means over seeds, appended after every round while it trains), and
  when it ends its final metrics as ``final/<metric>``, the tag
  ``jaxtune.status`` (``complete``, ``pruned``, ``diverged``) and the run status
  ``FINISHED`` (complete), ``KILLED`` (pruned) or ``FAILED`` (diverged).

Everything goes through ``mlflow.MlflowClient`` (no active-run global state), in
one ``log_batch`` per trial and round, from a background thread: a tracking
store's writes (about 0.1 s per trial and round with ``sqlite:``) overlap the
training instead of delaying the next round (``experiments/bench_loggers.py``).
:meth:`MLflow.close` waits until everything is written; an error of the writer
is raised by the next ``log`` or by ``close``. Needs the ``[mlflow]`` extra
(``mlflow-skinny``). A study resumed later gets a new parent run.

Example:
    >>> import jaxtune as jt
    >>> logger = jt.loggers.MLflow("sqlite:///mlflow.db")    # doctest: +SKIP
    >>> jt.Study(exp, loggers=[logger]).run(trials=8)         # doctest: +SKIP
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from jaxtune._extras import require
from jaxtune.loggers import Logger, final_metrics, trial_points
from jaxtune.store import TrialRecord

__all__ = ["RUN_STATUS", "MLflow"]

#: MLflow's run status for each jaxtune status.
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "diverged": "FAILED",
              "infeasible": "FINISHED"}


class MLflow(Logger):
    """Logs a study to MLflow (see the module docstring).

    Args:
        tracking_uri: the tracking store (``None``: MLflow's default, from
            ``MLFLOW_TRACKING_URI``).
        experiment: the MLflow experiment (created if missing).

    Raises:
        ImportError: mlflow is not installed (one line naming the extra).
    """

    def __init__(self, tracking_uri: str | None = None, *, experiment: str = "jaxtune"):
        require("mlflow", "mlflow", "MLflow logging")
        self.tracking_uri, self.experiment = tracking_uri, str(experiment)
        self.client: Any = None
        self.parent_run_id: str | None = None
        self._runs: dict[int, str] = {}  # trial index -> run id
        self._written: dict[int, dict[str, int]] = {}
        self._experiment_id: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"MLflow({self.tracking_uri!r}, experiment={self.experiment!r})"

    def open(self, study: Any) -> None:
        """Queues the study's parent run (the writer thread creates it)."""
        spec = study.spec
        settings = {"objective": study.objective, "direction": study.direction,
                    "searcher": spec.get("searcher"),
                    "scheduler": (spec.get("scheduler") or {}).get("name"),
                    "seeds": study.seeds, "population": study.population, "seed": study.seed}
        self._runs, self._written, self._error = {}, {}, None
        self._put(("open", str(study.name), settings))

    def _open(self, name: str, settings: dict[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(self.tracking_uri)
        found = self.client.get_experiment_by_name(self.experiment)
        self._experiment_id = found.experiment_id if found is not None else \
            self.client.create_experiment(self.experiment)
        parent = self.client.create_run(self._experiment_id, run_name=name,
                                        tags={"jaxtune.study": name})
        self.parent_run_id = parent.info.run_id
        self.client.log_batch(self.parent_run_id,
                              params=[Param(k, str(v)) for k, v in settings.items()])

    def log(self, trials: Sequence[TrialRecord]) -> None:
        """Queues the trials' new points for the writer thread (returns at once)."""
        self._raise()
        self._put(("log", [_Snapshot(t) for t in trials]))

    def _put(self, job: tuple) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="jaxtune-mlflow",
                                            daemon=True)
            self._thread.start()
        self._queue.put(job)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._open(*job[1:]) if job[0] == "open" else self._write(job[1])
                except BaseException as e:  # raised in the study's thread, at the next call
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, trials: Sequence[_Snapshot]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        for t in trials:
            run_id = self._runs.get(t.index)
            params: list[Any] = []
            if run_id is None:
                run = self.client.create_run(
                    self._experiment_id, run_name=f"trial {t.index}",
                    start_time=int((t.started or time.time()) * 1000),
                    tags={"mlflow.parentRunId": self.parent_run_id,
                          "jaxtune.trial": str(t.index), "jaxtune.status": "running"})
                run_id = self._runs[t.index] = run.info.run_id
                params = [Param(k, str(v)) for k, v in t.config.items()]
            written = self._written.setdefault(t.index, {})
            metrics = []
            for name, points in t.points.items():
                if len(points) < written.get(name, 0):  # trained again from its start
                    written[name] = 0
                metrics += [Metric(name, v, now, step) for step, v in points[written.get(name, 0):]]
                written[name] = len(points)
            tags = []
            if t.status != "running":
                metrics += [Metric(f"final/{k}", v, now, t.last_step)
                            for k, v in t.finals.items()]
                tags = [RunTag("jaxtune.status", t.status)]
            for i in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000],
                                      params=params if i == 0 else [],
                                      tags=tags if i == 0 else [])
            if t.status != "running":
                self.client.set_terminated(run_id, RUN_STATUS.get(t.status, "FAILED"),
                                           end_time=int((t.finished or time.time()) * 1000))
                self._runs.pop(t.index)

    def close(self) -> None:
        """Waits for the writer thread, then ends the runs left open and the parent."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise()
        if self.client is None or self.parent_run_id is None:
            return
        for run_id in self._runs.values():  # trials left running (a time budget, Ctrl-C)
            self.client.set_terminated(run_id, "KILLED")
        self._runs.clear()
        self.client.set_terminated(self.parent_run_id, "FINISHED")


class _Snapshot:
    """What the writer thread needs of a trial, taken in the study's thread."""

    def __init__(self, t: TrialRecord):
        self.index, self.status, self.config = t.index, t.status, dict(t.config)
        self.started, self.finished = t.started, t.finished
        self.points = trial_points(t)
        self.finals = final_metrics(t) if t.status != "running" else {}
        self.last_step = int(max(t.curves.get("step") or [0]))
