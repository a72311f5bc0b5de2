"""The integrations against the real components: TensorBoard's event reader and
server, Optuna's storage and dashboard, MLflow's client, a headless browser.

One small study (random search, ASHA, two seeds, some learning rates large
enough to diverge, parameter-norm probes) is run once with the loggers attached;
every test compares what a tool reads back with the store.
"""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest

import jaxtune as jt
from tests.integrations import dump_dom, free_port, server, small_experiment

pytest.importorskip("tensorboard")

TRIALS = 10


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """``(study result, store path, TensorBoard logdir)`` of one small study."""
    d = tmp_path_factory.mktemp("integrations")
    tb = d / "tb"
    study = jt.Study(small_experiment(), searcher="random", scheduler="asha", seeds=2,
                     population=8, store=str(d / "runs.db"), name="small study",
                     objective="val_loss", seed=3, top_k=0, verbose=False,
                     loggers=[jt.loggers.TensorBoard(tb)])
    result = study.run(trials=TRIALS)
    return result, str(d / "runs.db"), str(tb)


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
    result, _, _ = stored
    assert {t.status for t in result.trials} == {"complete", "pruned", "diverged"}


def test_tensorboard_events_match_the_store(stored):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    result, _, logdir = stored
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


def test_tensorboard_serves_the_runs_to_a_browser(stored):
    result, _, logdir = stored
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
