"""The persistent compilation cache: a second process compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import jaxtune.compilation_cache as cc

CHILD = """
import json, jax
events = []  # compile requests and persistent-cache hits (a miss is a real compile)
jax.monitoring.register_event_listener(lambda e, **k: events.append(e))
import jaxtune as jt
exp = jt.Experiment(data=jt.data.teacher_student(n_train=120, n_test=20, dim=3),
                    model=jt.models.MLP(width=4, num_outputs=1),
                    space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=10, eval_every=10,
                    defaults={"batch_size": 8})
res = jt.train_population(exp, [{"lr": 0.01}, {"lr": 0.02}], progress=False)
misses = (events.count("/jax/compilation_cache/compile_requests_use_cache")
          - events.count("/jax/compilation_cache/cache_hits"))
print(json.dumps({"backend_compiles": misses, "programs": res.compiles,
                  "dir": jt.compilation_cache.cache_dir(),
                  "val_loss": res.final["val_loss"].tolist()}))
"""


def _child(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_compiles_nothing(tmp_path):
    env = {**os.environ, cc.ENV: str(tmp_path / "xla")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cold, warm = _child(env), _child(env)
    assert cold["dir"] == str(tmp_path / "xla") and cold["backend_compiles"] > 0
    assert warm["backend_compiles"] == 0  # every program came from the cache
    assert warm["programs"] == cold["programs"] == 1
    assert warm["val_loss"] == cold["val_loss"]
    off = _child({**env, cc.ENV: "0"})
    assert off["dir"] is None and off["backend_compiles"] > 0


def test_jax_settings_of_the_user_are_kept(monkeypatch, tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        monkeypatch.delenv(cc.ENV, raising=False)
        assert cc.enable_default() == str(tmp_path)  # left alone
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_turned_off_by_the_environment(monkeypatch, value):
    monkeypatch.setenv(cc.ENV, value)
    assert cc.enable_default() is None
