"""Regenerates docs/tensorboard_study.png: a small study in TensorBoard's HParams table.

Runs a small study (the teacher-student experiment of tests/integration_helpers.py, random
search, ASHA, 24 trials) with the TensorBoard logger, serves the logs with
``tensorboard --logdir`` on a free port and takes the picture with the tests'
headless chromium. Not part of CI; run it from the repository root after
changing what the logger writes:

    PYTHONPATH=. python docs/make_screenshot.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jaxtune as jt
from tests.integration_helpers import free_port, screenshot, server, small_experiment

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tensorboard_study.png")


def main() -> None:
    d = tempfile.mkdtemp(prefix="jaxtune_screenshot_")
    tb = os.path.join(d, "tb")
    study = jt.Study(small_experiment(lr_high=1.0), searcher="random", scheduler="asha",
                     population=8, store=os.path.join(d, "runs.db"), name="demo",
                     objective="val_loss", seed=0, top_k=0, verbose=False,
                     loggers=[jt.loggers.TensorBoard(tb)])
    result = study.run(trials=24)
    runs = {f"demo/trial_{t.index:04d}" for t in result.trials}
    port = free_port()
    argv = [sys.executable, "-m", "tensorboard.main", "--logdir", tb, "--port", str(port),
            "--host", "127.0.0.1", "--load_fast", "false"]
    with server(argv, f"http://127.0.0.1:{port}/data/runs", timeout=90,
                ready=lambda body: runs <= set(json.loads(body))):
        screenshot(f"http://127.0.0.1:{port}/#hparams", OUT,  # the HParams table
                   size="1100,650", budget_ms=20000)
    print(f"wrote {OUT} ({os.path.getsize(OUT) // 1024} KiB)")


if __name__ == "__main__":
    main()
