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


def test_cache_limit_from_the_environment(monkeypatch):
    monkeypatch.delenv(cc.LIMIT_ENV, raising=False)
    assert cc.limit_bytes() == 4_000_000_000
    monkeypatch.setenv(cc.LIMIT_ENV, "0.5")
    assert cc.limit_bytes() == 500_000_000
    monkeypatch.setenv(cc.LIMIT_ENV, "0")
    assert cc.limit_bytes() is None  # no limit
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv(cc.LIMIT_ENV, bad)
        with pytest.raises(ValueError, match=cc.LIMIT_ENV):
            cc.limit_bytes()


COMPILING_CHILD = """
import json, pathlib, sys, jax, jax.numpy as jnp
import jaxtune as jt
for k in range(int(sys.argv[1])):  # different programs, each cached
    jax.jit(lambda x, k=k: jnp.sin(x) * k + jnp.cos(x) ** (k + 1)).lower(jnp.ones(7)).compile()
d = pathlib.Path(jt.compilation_cache.cache_dir())
sizes = [p.stat().st_size for p in d.glob("*-cache")]
print(json.dumps({"entries": len(sizes), "bytes": sum(sizes),
                  "max_size": jax.config.jax_compilation_cache_max_size}))
"""


def test_the_cache_is_cut_to_the_limit_when_turned_on(tmp_path):
    """Six programs cached without a limit; a later process with a limit of about two
    entries keeps at most two (the most recent) and JAX's own eviction stays off (it
    fails on directories written without it). In child processes: JAX sets its cache up
    once per process."""
    def child(limit_gb: str, programs: int) -> dict:
        env = {**os.environ, cc.ENV: str(tmp_path / "xla"), cc.LIMIT_ENV: limit_gb}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        proc = subprocess.run([sys.executable, "-c", COMPILING_CHILD, str(programs)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Error writing persistent compilation cache" not in proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    free = child("0", 6)
    assert free["max_size"] == -1 and free["entries"] >= 6
    largest = max(p.stat().st_size for p in (tmp_path / "xla").glob("*-cache"))
    limited = child(f"{2.5 * largest / 1e9:.9f}", 0)
    assert limited["max_size"] == -1
    assert 1 <= limited["entries"] <= 2 and limited["bytes"] <= 2.5 * largest, limited
    again = child(f"{2.5 * largest / 1e9:.9f}", 6)  # writes still work after the cut
    assert again["entries"] >= 1


def test_stored_programs_keep_to_the_limit(tmp_path, monkeypatch):
    """The program store removes its least recently used entries beyond the limit; an
    entry loaded recently counts as used."""
    import jax

    import jaxtune.executables as ex

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv(ex.ENV, raising=False)
    monkeypatch.setenv(cc.LIMIT_ENV, "0")
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path))
        blob = b"x" * 10_000
        for i, key in enumerate(["k0", "k1", "k2"]):
            ex.save(key, {"blob": blob})
            path = ex.directory() / f"{key}.pkl"
            os.utime(path, (1000 + i, 1000 + i))
        assert ex.load("k0")["blob"] == blob  # used now: the newest
        size = (ex.directory() / "k0.pkl").stat().st_size
        monkeypatch.setenv(cc.LIMIT_ENV, f"{3.5 * size / 1e9:.9f}")
        ex.save("k3", {"blob": blob})  # four entries, room for three: k1 goes
        assert sorted(p.stem for p in ex.directory().glob("*.pkl")) == ["k0", "k2", "k3"]
        assert ex.load("k1") is None and ex.load("k2")["blob"] == blob
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
