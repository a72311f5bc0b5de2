"""The integrations against the real components: TensorBoard's event reader and
server, Optuna's storage and dashboard, MLflow's client, a headless browser.

One small study (random search, ASHA, two seeds, some learning rates large
enough to diverge, parameter-norm probes) is run once with the loggers attached;
every test compares what a tool reads back with the store.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import urllib.request
import warnings

import numpy as np
import pytest
from integration_helpers import dump_dom, free_port, server, small_experiment

import jaxtune as jt

pytest.importorskip("tensorboard")

TRIALS = 10


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """``(study result, store path, TensorBoard logdir, MLflow tracking URI)`` of one
    small study (the MLflow URI ``None`` without mlflow)."""
    d = tmp_path_factory.mktemp("integrations")
    tb = d / "tb"
    live = _ReadWhileRunning(jt.loggers.TensorBoard(tb), tb)
    loggers = [live]
    uri = None
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("mlflow") is not None:
            # MLflow's plain-folder store, allowed for the test (users: sqlite:///mlflow.db)
            mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (d / "mlruns").as_uri()
            loggers.append(jt.loggers.MLflow(uri))
        study = jt.Study(small_experiment(), searcher="random", scheduler="asha", seeds=2,
                         population=8, store=str(d / "runs.db"), name="small study",
                         objective="val_loss", seed=3, top_k=0, verbose=False,
                         loggers=loggers)
        result = study.run(trials=TRIALS)
        assert live.seen, "no round had a trial still running"
        yield result, str(d / "runs.db"), str(tb), uri


class _ReadWhileRunning(jt.loggers.Logger):
    """Delegates to a TensorBoard logger and, after the first round that leaves trials
    running, reads the event files back: what TensorBoard shows while the study runs."""

    last = None  # the latest instance (the module's study's)

    def __init__(self, inner, logdir):
        self.inner, self.logdir, self.seen = inner, str(logdir), {}
        _ReadWhileRunning.last = self

    def open(self, study):
        self.inner.open(study)

    def close(self):
        self.inner.close()

    def log(self, trials):
        self.inner.log(trials)
        running = [t for t in trials if t.status == "running"]
        if self.seen or not running:
            return
        from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

        mux = EventMultiplexer()
        mux.AddRunsFromDirectory(self.logdir)
        mux.Reload()
        for t in running:
            acc = mux.GetAccumulator(f"small_study/trial_{t.index:04d}")
            self.seen[t.index] = ([e.step for e in acc.Scalars("val_loss")],
                                  list(t.curves["step"]))


def _mean_curve(per_seed) -> np.ndarray:
    """Reference: numpy's nanmean over seeds (None and NaN are gaps)."""
    n = max(len(r) for r in per_seed)
    a = np.full((len(per_seed), n), np.nan)
    for i, row in enumerate(per_seed):
        a[i, : len(row)] = [np.nan if v is None else v for v in row]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN
        return np.nanmean(a, axis=0)


def test_study_has_every_status(stored):
    result, _, _, _ = stored
    assert {t.status for t in result.trials} == {"complete", "pruned", "diverged"}


def test_tensorboard_events_match_the_store(stored):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    result, _, logdir, _ = stored
    mux = EventMultiplexer(size_guidance={"scalars": 0, "tensors": 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    runs = mux.Runs()
    assert set(runs) == {"small_study"} | {f"small_study/trial_{t.index:04d}"
                                           for t in result.trials}
    for t in result.trials:
        run = f"small_study/trial_{t.index:04d}"
        acc = mux.GetAccumulator(run)
        scalars = set(acc.Tags()["scalars"])
        steps = np.asarray(t.curves["step"])
        curves = [k for k in t.curves if k not in ("step", "steps_done")]
        assert "probe_weight_norm" in curves
        for name in curves:
            ref = _mean_curve(t.curves[name])
            finite = np.isfinite(ref)
            events = acc.Scalars(name) if name in scalars else []
            assert [e.step for e in events] == steps[: len(ref)][finite].tolist(), (run, name)
            np.testing.assert_allclose([e.value for e in events], ref[finite], rtol=1e-6)
        for name, m in t.metrics.items():
            if m["mean"] is not None and math.isfinite(m["mean"]):
                (e,) = acc.Scalars(f"final/{name}")
                assert e.step == steps[-1]
                assert e.value == pytest.approx(m["mean"], rel=1e-6)
            else:
                assert f"final/{name}" not in scalars
        assert len(acc.Tensors("_hparams_/session_start_info")) == 1
        meta = acc.SummaryMetadata("_hparams_/session_start_info")
        info = plugin_data_pb2.HParamsPluginData.FromString(
            meta.plugin_data.content).session_start_info
        values = {k: v.string_value or v.number_value for k, v in info.hparams.items()}
        assert values == {**t.config, "status": t.status}
        assert values["lr"] == t.config["lr"]  # the exact float
        end = plugin_data_pb2.HParamsPluginData.FromString(acc.SummaryMetadata(
            "_hparams_/session_end_info").plugin_data.content).session_end_info
        assert end.status == (2 if t.status == "diverged" else 1)  # FAILURE / SUCCESS


def test_tensorboard_shows_running_trials_while_the_study_runs(stored):
    live = _ReadWhileRunning.last
    for steps_read, steps_trained in live.seen.values():
        assert steps_read == steps_trained and steps_read  # every point so far, on disk


def test_tensorboard_serves_the_runs_to_a_browser(stored):
    result, _, logdir, _ = stored
    port = free_port()
    argv = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port),
            "--host", "127.0.0.1", "--load_fast", "false"]
    runs = {f"small_study/trial_{t.index:04d}" for t in result.trials}
    with server(argv, f"http://127.0.0.1:{port}/data/runs", timeout=90,
                ready=lambda body: runs <= set(json.loads(body))):
        dom = dump_dom(f"http://127.0.0.1:{port}/")  # the time-series dashboard
    for run in runs:
        assert run in dom
    assert "val_loss" in dom


# ------------------------------------------------------------------------------- Optuna
@pytest.fixture(scope="module")
def exported(stored, tmp_path_factory):
    """The stored study exported by ``jaxtune export --optuna`` (twice: replaced)."""
    pytest.importorskip("optuna")
    from jaxtune import cli

    _, db, _, _ = stored
    url = f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'optuna.db'}"
    for _ in range(2):
        assert cli.main(["export", db, "--optuna", url]) == 0
    return url


def test_optuna_reads_back_the_store(stored, exported):
    import optuna

    result, _, _, _ = stored
    (summary,) = optuna.get_all_study_summaries(exported)
    assert summary.study_name == "small study"
    study = optuna.load_study(study_name="small study", storage=exported)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["objective"] == "val_loss"
    assert study.user_attrs["scheduler"] == "asha"
    trials = sorted(study.trials, key=lambda ft: ft.user_attrs["jaxtune_trial"])
    assert [ft.user_attrs["jaxtune_trial"] for ft in trials] == [t.index for t in result.trials]
    states = {"complete": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL"}
    for t, ft in zip(result.trials, trials, strict=True):
        assert ft.state.name == states[t.status]
        assert ft.params == t.config
        assert ft.distributions["lr"] == optuna.distributions.FloatDistribution(
            1e-3, 100.0, log=True)
        assert ft.distributions["schedule"] == optuna.distributions.CategoricalDistribution(
            ["constant", "cosine"])
        ref = _mean_curve(t.curves["val_loss"])
        steps = np.asarray(t.curves["step"])[: len(ref)]
        finite = np.isfinite(ref)
        assert ft.intermediate_values == pytest.approx(
            dict(zip(steps[finite].tolist(), ref[finite].tolist(), strict=True)), rel=1e-12)
        if t.status == "complete":
            assert ft.value == t.objective
        elif t.status == "pruned":
            assert ft.value == pytest.approx(ref[finite][-1], rel=1e-12)
        else:
            assert ft.value is None
        assert ft.user_attrs["seeds"] == t.seeds and ft.user_attrs["status"] == t.status
        assert ft.user_attrs["steps"] == t.metrics["steps"]["mean"]
        assert ft.user_attrs["metrics"].get("probe_weight_norm") == t.metrics.get(
            "probe_weight_norm", {}).get("mean")
        assert ft.datetime_start.timestamp() == pytest.approx(t.started, abs=1e-3)
    best = min((t for t in result.trials if t.status == "complete"), key=lambda t: t.objective)
    assert study.best_trial.user_attrs["jaxtune_trial"] == best.index


def test_several_objectives_become_a_multi_objective_optuna_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    from jaxtune.integrations.optuna import export_to_optuna

    db, url = str(tmp_path / "runs.db"), f"sqlite:///{tmp_path / 'optuna.db'}"
    study = jt.Study(small_experiment(), searcher="random", population=8, store=db, seed=1,
                     objectives=["val_loss:min", "train_loss:min"], top_k=0, verbose=False)
    result = study.run(trials=8)
    assert export_to_optuna(db, url) == ["default"]
    exported = optuna.load_study(study_name="default", storage=url)
    assert exported.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert exported.metric_names == ["val_loss", "train_loss"]
    by_index = {ft.user_attrs["jaxtune_trial"]: ft for ft in exported.trials}
    assert sorted(by_index) == [t.index for t in result.trials]
    for t in result.trials:
        ft = by_index[t.index]
        if t.status == "complete":
            assert ft.values == [t.metrics["val_loss"]["mean"], t.metrics["train_loss"]["mean"]]
        else:
            assert ft.state.name == "FAIL" and ft.values is None
    assert any(t.status == "complete" for t in result.trials)


def test_optuna_dashboard_shows_the_study_and_its_trials(stored, exported):
    pytest.importorskip("optuna_dashboard")
    result, _, _, _ = stored
    port = free_port()
    argv = [sys.executable, "-c", "from optuna_dashboard._cli import main; main()", exported,
            "--port", str(port), "--host", "127.0.0.1"]
    with server(argv, f"http://127.0.0.1:{port}/api/studies", timeout=60,
                ready=lambda body: b"small study" in body) as url:
        (study,) = json.loads(urllib.request.urlopen(url, timeout=10).read())["study_summaries"]
        dom = dump_dom(f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}/trials")
    assert "small study" in dom
    for t in result.trials:  # Optuna numbers the trials in the order they were added
        assert f"Trial {t.index}" in dom
    assert "Pruned" in dom and "Fail" in dom and "Complete" in dom


# ------------------------------------------------------------------------------- MLflow
def test_mlflow_runs_match_the_store(stored, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result, _, _, uri = stored
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("jaxtune")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "small study" and parent.info.status == "FINISHED"
    assert parent.data.params["objective"] == "val_loss"
    assert parent.data.params["scheduler"] == "asha"
    children = {int(r.data.tags["jaxtune.trial"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == [t.index for t in result.trials]
    statuses = {"complete": "FINISHED", "pruned": "KILLED", "diverged": "FAILED"}
    for t in result.trials:
        run = children[t.index]
        assert run.data.params == {k: str(v) for k, v in t.config.items()}
        assert run.data.tags["jaxtune.status"] == t.status
        assert run.info.status == statuses[t.status]
        steps = np.asarray(t.curves["step"])
        for name in [k for k in t.curves if k not in ("step", "steps_done")]:
            ref = _mean_curve(t.curves[name])
            finite = np.isfinite(ref)
            history = sorted(client.get_metric_history(run.info.run_id, name),
                             key=lambda m: m.step)
            assert [m.step for m in history] == steps[: len(ref)][finite].tolist()
            np.testing.assert_allclose([m.value for m in history], ref[finite], rtol=1e-12)
        for name, m in t.metrics.items():
            if m["mean"] is not None and math.isfinite(m["mean"]):
                assert run.data.metrics[f"final/{name}"] == pytest.approx(m["mean"], rel=1e-12)


def test_an_mlflow_error_in_the_writer_thread_reaches_the_study():
    pytest.importorskip("mlflow")
    from types import SimpleNamespace

    logger = jt.loggers.MLflow("no-such-scheme://nowhere")
    logger.open(SimpleNamespace(spec={}, objective="val_loss", direction="minimize",
                                seeds=1, population=4, seed=0, name="s"))
    with pytest.raises(Exception, match="no-such-scheme"):
        logger.close()
    logger.close()  # raised once; closing again is quiet


# --------------------------------------------------------------------------- the rest
def test_a_missing_extra_is_one_line_naming_it():
    from jaxtune._extras import require

    with pytest.raises(ImportError, match=r"^TensorBoard logging needs no_such_module_x: "
                                          r"pip install 'jaxtune\[tensorboard\]'$"):
        require("no_such_module_x.sub", "tensorboard", "TensorBoard logging")


def test_the_command_line_flag_makes_a_tensorboard_logger(tmp_path):
    from jaxtune import cli
    from jaxtune.loggers.tensorboard import TensorBoard

    for argv in (["run", "--tensorboard", str(tmp_path)],
                 ["resume", "runs.db", "--tensorboard", str(tmp_path)]):
        (logger,) = cli._loggers(cli._parser().parse_args(argv))
        assert isinstance(logger, TensorBoard) and logger.logdir == str(tmp_path)
    assert cli._loggers(cli._parser().parse_args(["run"])) == []


def test_a_logger_without_the_protocol_is_refused():
    with pytest.raises(ValueError, match="no open/log/close"):
        jt.Study(small_experiment(), store=None, loggers=[object()], verbose=False)


def test_the_docstring_examples_run():
    import doctest

    import jaxtune._extras
    import jaxtune.integrations.optuna
    import jaxtune.loggers
    import jaxtune.loggers.tensorboard
    import jaxtune.search.optuna_samplers

    for module in (jaxtune._extras, jaxtune.loggers, jaxtune.loggers.tensorboard,
                   jaxtune.integrations.optuna, jaxtune.search.optuna_samplers):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@pytest.mark.parametrize(("module", "extra", "build"), [
    ("tensorboard", "tensorboard", lambda d: jt.loggers.TensorBoard(d)),
    ("mlflow", "mlflow", lambda d: jt.loggers.MLflow(f"sqlite:///{d}/m.db")),
    ("optuna", "optuna", lambda d: jt.search.make_searcher("optuna:tpe", small_experiment().space)),
])
def test_each_integration_without_its_package_names_its_extra(monkeypatch, tmp_path, module,
                                                              extra, build):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=rf"needs {module}: pip install 'jaxtune\[{extra}\]'$"):
        build(tmp_path)


def test_export_errors_are_one_line(stored, tmp_path, capsys):
    from jaxtune import cli

    _, db, _, _ = stored
    url = f"sqlite:///{tmp_path / 'o.db'}"
    assert cli.main(["export", str(tmp_path / "missing.db"), "--optuna", url]) == 2
    assert cli.main(["export", db, "--optuna", url, "--name", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].endswith("missing.db does not exist")
    assert "has no study named 'nope'" in err[1] and len(err) == 2
