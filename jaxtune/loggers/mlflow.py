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
one ``log_batch`` per trial and round. Needs the ``[mlflow]`` extra
(``mlflow-skinny``). A study resumed later gets a new parent run.

Example:
    >>> import jaxtune as jt
    >>> logger = jt.loggers.MLflow("sqlite:///mlflow.db")    # doctest: +SKIP
    >>> jt.Study(exp, loggers=[logger]).run(trials=8)         # doctest: +SKIP
"""

from __future__ import annotations

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

    def __repr__(self) -> str:
        return f"MLflow({self.tracking_uri!r}, experiment={self.experiment!r})"

    def open(self, study: Any) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(self.tracking_uri)
        found = self.client.get_experiment_by_name(self.experiment)
        self._experiment_id = found.experiment_id if found is not None else \
            self.client.create_experiment(self.experiment)
        parent = self.client.create_run(self._experiment_id, run_name=str(study.name),
                                        tags={"jaxtune.study": str(study.name)})
        self.parent_run_id = parent.info.run_id
        spec = study.spec
        settings = {"objective": study.objective, "direction": study.direction,
                    "searcher": spec.get("searcher"),
                    "scheduler": (spec.get("scheduler") or {}).get("name"),
                    "seeds": study.seeds, "population": study.population, "seed": study.seed}
        self.client.log_batch(self.parent_run_id,
                              params=[Param(k, str(v)) for k, v in settings.items()])
        self._runs, self._written = {}, {}

    def log(self, trials: Sequence[TrialRecord]) -> None:
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
            for name, points in trial_points(t).items():
                if len(points) < written.get(name, 0):  # trained again from its start
                    written[name] = 0
                metrics += [Metric(name, v, now, step) for step, v in points[written.get(name, 0):]]
                written[name] = len(points)
            tags = []
            if t.status != "running":
                step = int(max(t.curves.get("step") or [0]))
                metrics += [Metric(f"final/{k}", v, now, step)
                            for k, v in final_metrics(t).items()]
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
        if self.client is None or self.parent_run_id is None:
            return
        for run_id in self._runs.values():  # trials left running (a time budget, Ctrl-C)
            self.client.set_terminated(run_id, "KILLED")
        self._runs.clear()
        self.client.set_terminated(self.parent_run_id, "FINISHED")
