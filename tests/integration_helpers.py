"""Helpers of the integration tests: a small stored study, free ports, real servers
started and always stopped, and a headless chromium that returns a page's DOM."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

import pytest

import jaxtune as jt


@functools.cache  # one object per setting: its compiled programs are shared
def small_experiment(lr_high: float = 100.0) -> jt.Experiment:
    """Teacher-student regression trained by SGD, lr log-uniform up to ``lr_high``
    (large values diverge), a schedule choice, parameter-norm probes every 20 steps."""
    return jt.Experiment(
        data=jt.data.teacher_student(n_train=128, n_test=32, dim=4),
        model=jt.models.MLP(width=8, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-3, lr_high, log=True),
                       schedule=jt.Choice(["constant", "cosine"])),
        steps=30, eval_every=10, defaults={"batch_size": 16, "optimizer": "sgd"},
        probes=jt.Probes(every=20, sharpness=False, noise_scale=False))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(argv: Sequence[str], url: str, timeout: float = 60.0,
           ready: Callable[[bytes], bool] = lambda body: True) -> Iterator[str]:
    """Starts ``argv`` (a server), waits (bounded) until ``url`` answers with a body
    that is ``ready``, yields the url, and always kills the process group."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise AssertionError(f"{argv[0]} exited with {proc.returncode}: {out[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200 and ready(r.read()):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} did not answer {url} within {timeout}s")
            time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def chromium() -> str:
    """The chromium binary, or the test is skipped (with the reason)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary on PATH (CI installs it: apt-get install -y chromium)")


def _browse(args: Sequence[str], budget_ms: int, timeout: float) -> str:
    """Runs headless chromium (its own throw-away profile, bounded) and returns stdout."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="jaxtune-chromium-") as profile:
        out = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                              "--hide-scrollbars", f"--virtual-time-budget={budget_ms}",
                              f"--user-data-dir={profile}", *args],
                             capture_output=True, timeout=timeout, check=True)
    return out.stdout.decode(errors="replace")


def dump_dom(url: str, budget_ms: int = 15000, timeout: float = 90.0) -> str:
    """The page's DOM after its scripts ran (a tall window: lists render whole)."""
    return _browse(["--window-size=1280,4000", "--dump-dom", url], budget_ms, timeout)


def screenshot(url: str, path: str, size: str = "1280,800", budget_ms: int = 15000,
               timeout: float = 90.0) -> None:
    """A PNG of the page."""
    _browse([f"--window-size={size}", f"--screenshot={path}", url], budget_ms, timeout)
