"""Bucket programs stored by their sources and loaded without tracing."""

from __future__ import annotations

import dataclasses
import importlib
import sys

import jax
import numpy as np
import pytest

import jaxtune as jt
from jaxtune import executables


def _experiment(width: int = 4, model=None) -> jt.Experiment:
    return jt.Experiment(
        data=jt.data.teacher_student(n_train=64, n_test=16, dim=3, seed=0),
        model=model if model is not None else jt.models.MLP(width=width, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True), batch_size=jt.Int(4, 16, log=True)),
        steps=20, eval_every=10)


@pytest.fixture()
def store_dir(tmp_path, monkeypatch):
    """An empty store, and JAX's persistent cache off: every program compiles here (one
    loaded from JAX's cache is never stored), whatever the tests before did."""
    monkeypatch.setattr(executables, "directory", lambda: tmp_path)
    with executables.compiled_here():
        yield tmp_path


def test_fingerprint_follows_what_the_program_depends_on():
    exp = _experiment()
    key = executables.fingerprint(exp, {}, size=4, variant="v")
    assert key == executables.fingerprint(_experiment(), {}, size=4, variant="v")
    others = [executables.fingerprint(_experiment(width=5), {}, size=4, variant="v"),
              executables.fingerprint(exp, {}, size=8, variant="v"),
              executables.fingerprint(exp, {}, size=4, variant="w"),
              executables.fingerprint(exp, {"width": 3}, size=4, variant="v")]
    assert None not in others and len({key, *others}) == 5


def test_fingerprint_follows_user_code_into_imported_modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "netlib.py").write_text(
        "import flax.linen as nn\n"
        "def head(x):\n    return nn.Dense(1)(x)\n")
    (tmp_path / "usernet.py").write_text(
        "import flax.linen as nn\nimport netlib\n"
        "class Net(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n        return netlib.head(nn.relu(nn.Dense(4)(x)))\n")

    def key():
        for name in ("netlib", "usernet"):
            sys.modules.pop(name, None)
        net = importlib.import_module("usernet").Net
        return executables.fingerprint(_experiment(model=lambda hp: net()), {}, size=4,
                                       variant="v")

    first = key()
    assert first is not None and key() == first
    (tmp_path / "netlib.py").write_text(  # a helper two imports away changes
        "import flax.linen as nn\n"
        "def head(x):\n    return nn.Dense(1, use_bias=False)(x)\n")
    assert key() not in (None, first)


def test_code_without_a_source_file_is_never_stored():
    scope: dict = {}
    exec("import jaxtune as jt\nmodel = lambda hp: jt.models.MLP(width=4, num_outputs=1)",
         scope)
    assert executables.fingerprint(_experiment(model=scope["model"]), {}, size=4,
                                   variant="v") is None


def test_fingerprint_follows_jax_config_in_effect():
    exp = _experiment()
    key = executables.fingerprint(exp, {}, size=4, variant="v")
    with jax.enable_x64(True):
        assert executables.fingerprint(exp, {}, size=4, variant="v") != key
    assert executables.fingerprint(exp, {}, size=4, variant="v") == key


def test_environment_covers_xla_flags(monkeypatch):
    before = executables._environment()
    executables._environment.cache_clear()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    try:
        assert executables._environment() != before
    finally:
        executables._environment.cache_clear()


def _run(programs: jt.Programs, exp: jt.Experiment):
    configs = [{"lr": 0.05, "batch_size": 4}, {"lr": 0.01, "batch_size": 16}]
    program, _ = programs.get({}, 2)
    static = {}
    hp = exp.member_arrays(configs, static)
    keys = jax.random.split(jax.random.key(3), 2)
    state = program.init(hp, keys)
    state, metrics = program.chunk(state, jt.data.train_arrays(exp.data))
    return program, jax.device_get((state.params, metrics))


def test_a_stored_program_trains_exactly_as_a_compiled_one(store_dir):
    exp = _experiment()
    fresh, expected = _run(jt.Programs(exp), exp)
    assert not fresh.stored and len(list(store_dir.glob("*.pkl"))) == 1
    assert jt.Programs(exp).member_bytes({}) == jt.Programs(exp).member_bytes({})
    loaded, got = _run(jt.Programs(exp), exp)
    assert loaded.stored
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_programs_are_stored_when_jax_cache_holds_init_and_merge(tmp_path, monkeypatch):
    """init and merge compile outside JAX's cache (where an executable that could not be
    stored waits), so the bucket is stored, and a later process loads programs that
    train the same."""
    from jax._src.compilation_cache import reset_cache

    store = tmp_path / "store"
    monkeypatch.setattr(executables, "directory", lambda: store)
    saved = jax.config.jax_compilation_cache_dir
    jt.compilation_cache.enable(tmp_path / "xla")
    reset_cache()
    try:
        first = _experiment(width=7)
        _run(jt.Programs(first), first)  # fills JAX's cache with init and merge
        other = dataclasses.replace(first, eval_every=5)  # another chunk, same init, merge
        hits = executables.cache_hits()
        fresh, expected = _run(jt.Programs(other), other)
        assert executables.cache_hits() == hits and not fresh.stored
        assert len(list(store.glob("*.pkl"))) == 2
        loaded, got = _run(jt.Programs(other), other)
        assert loaded.stored
        jax.tree.map(np.testing.assert_array_equal, got, expected)
    finally:
        jax.config.update("jax_compilation_cache_dir", saved)
        reset_cache()


def test_a_corrupt_entry_is_compiled_again_and_replaced(store_dir):
    exp = _experiment(width=6)
    _run(jt.Programs(exp), exp)
    for path in store_dir.glob("*.pkl"):
        path.write_bytes(path.read_bytes()[:100])  # truncated
    program, _ = _run(jt.Programs(exp), exp)
    assert not program.stored
    assert _run(jt.Programs(exp), exp)[0].stored


def test_startup_benchmark_reads_the_study_log():
    from jaxtune.benchmarks.startup import parse_first_chunk

    line = ("jaxtune: first chunk training 12.5s after launch (3.25s of it compiling or "
            "loading 2 programs, 1 stored)")
    assert parse_first_chunk("noise\n" + line + "\nmore") == (12.5, 3.25, 1)
    assert parse_first_chunk("no such line") is None


def test_compiler_options_are_part_of_the_stored_key(tmp_path, monkeypatch):
    monkeypatch.setattr(executables, "directory", lambda: tmp_path)
    exp = _experiment()
    programs = jt.Programs(exp)
    key = programs._stored_key({}, 4, "programs")
    monkeypatch.setattr(jt.programs, "CPU_COMPILER_OPTIONS",
                        {"xla_backend_optimization_level": 1})
    assert key is not None and programs._stored_key({}, 4, "programs") not in (None, key)


def test_compiler_options_this_xla_does_not_know_are_dropped():
    from jaxtune.programs import _usable

    known = {"xla_backend_optimization_level": 1}
    assert _usable(known) == known
    assert _usable({"xla_no_such_option_anywhere": True}) is None
    assert _usable({}) is None
