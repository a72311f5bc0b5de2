"""Population sizes: the measurement, the recommendation, the cache and its use."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

import jaxtune as jt
from jaxtune import sizing

EXPERIMENT_FILE = '''
import jaxtune as jt

experiment = jt.Experiment(
    data=jt.data.linear_classes(n_train=100, n_test=20),
    model=jt.models.MLP(width=4, num_outputs=3), space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    steps=30, eval_every=10, defaults={"batch_size": 8, "optimizer": "sgd"}, name="sizing-file")
'''


@pytest.fixture(scope="module")
def exp() -> jt.Experiment:
    return jt.Experiment(data=jt.data.linear_classes(n_train=100, n_test=20),
                         model=jt.models.MLP(width=4, num_outputs=3),
                         space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=30,
                         eval_every=10, defaults={"batch_size": 8, "optimizer": "sgd"},
                         name="sizing")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXTUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


CONTENTION_NOW = sizing.contention_now


class FakeMeter:
    """A contention measurement that reads ``value`` whatever the machine does."""

    value = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.contention = FakeMeter.value


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """A quiet machine, whatever the other processes on this one do (a busy measurement
    is replaced by the next quiet one: the tests must not depend on the load)."""
    monkeypatch.setattr(FakeMeter, "value", 0.0)
    monkeypatch.setattr(sizing, "_meter", FakeMeter)
    monkeypatch.setattr(sizing, "contention_now", lambda seconds=1.0: 0.0)


def test_recommend_takes_the_smallest_size_near_the_best():
    rows = [{"size": s, "member_steps_per_s": r} for s, r in [(4, 50.0), (8, 95.0), (16, 100.0)]]
    assert sizing.recommend(rows) == 8
    assert sizing.recommend(rows, tolerance=0.01) == 16
    assert sizing.recommend(rows, tolerance=0.6) == 4
    with pytest.raises(ValueError, match="no measured sizes"):
        sizing.recommend([])


def test_throughput_measures_each_size(exp):
    rows = sizing.throughput(exp, [1, 2], chunks=1)
    assert [r["size"] for r in rows] == [1, 2]
    for r in rows:
        assert r["member_steps_per_s"] > 0 and r["seconds"] > 0
        assert r["member_steps_per_s"] == pytest.approx(r["size"] * 10 / r["seconds"])
    with pytest.raises(ValueError, match="chunks"):
        sizing.throughput(exp, [1], chunks=3)  # 3 chunks in all: one is the warm-up
    with pytest.raises(ValueError, match="sizes"):
        sizing.throughput(exp, [0])


def test_default_population_is_measured_once_and_cached(exp, monkeypatch, cache_dir):
    assert sizing.default_population(exp, measure=False) is None
    calls = []

    def fake(experiment, sizes, **kwargs):
        calls.append(list(sizes))
        return [{"size": s, "member_steps_per_s": min(s, 8) * 10.0} for s in sizes]

    monkeypatch.setattr(sizing, "throughput", fake)
    lines = []
    assert sizing.default_population(exp, log=lines.append) == 8
    assert sizing.default_population(exp) == 8 and len(calls) == 1
    assert "8 members" in lines[0] and "measured in" in lines[0]
    assert sizing.default_population(exp, log=lines.append) == 8
    assert "8 members" in lines[1] and "cached in" in lines[1]
    stored = json.loads((cache_dir / "sizing.json").read_text())
    assert [v["recommended"] for v in stored.values()] == [8]
    # a study with population="auto" uses the cached size
    study = jt.Study(exp, searcher="random", population="auto", store=None, verbose=False)
    assert study.population == 8 and len(calls) == 1


def test_a_busy_measurement_is_used_but_replaced_by_the_next_quiet_one(exp, monkeypatch,
                                                                      cache_dir):
    """A measurement made while other processes kept the CPUs busy decides this run's size
    and is cached marked busy; a later run on a machine still busy uses it (measuring again
    would be as busy), the first on a quiet machine measures again and replaces it."""
    peak = {"size": 2}  # the busy machine's rates peak at 2 members, the quiet one's at 8
    calls, probes = [], []

    def fake(experiment, sizes, **kwargs):
        calls.append(list(sizes))
        return [{"size": s, "member_steps_per_s": min(s, peak["size"]) * 10.0} for s in sizes]

    def now(seconds=1.0):
        probes.append(FakeMeter.value)
        return FakeMeter.value

    monkeypatch.setattr(sizing, "throughput", fake)
    monkeypatch.setattr(sizing, "contention_now", now)
    lines = []

    def entry():
        return next(iter(json.loads((cache_dir / "sizing.json").read_text()).values()))

    FakeMeter.value = 0.5
    assert sizing.default_population(exp, [2, 4, 8], log=lines.append) == 2
    assert "50% busy" in lines[-1] and "cached marked busy" in lines[-1], lines[-1]
    assert entry()["contention"] == 0.5 and entry()["recommended"] == 2
    FakeMeter.value = 0.4  # still busy: the busy entry is used, nothing measured
    assert sizing.default_population(exp, [2, 4, 8], log=lines.append) == 2
    assert len(calls) == 1 and probes == [0.4] and "still busy (40%)" in lines[-1], lines[-1]
    FakeMeter.value, peak["size"] = 0.05, 8  # quiet: measured again, the entry replaced
    assert sizing.default_population(exp, [2, 4, 8], log=lines.append) == 8
    assert len(calls) == 2 and "measured again now that it is quiet" in lines[-1], lines[-1]
    assert entry()["contention"] == 0.05 and entry()["recommended"] == 8
    # a quiet entry is used as it is: no contention sampled, nothing measured
    assert sizing.default_population(exp, [2, 4, 8]) == 8
    assert len(calls) == 2 and len(probes) == 2


def test_default_sizes_start_at_one_member_per_device():
    import jax

    sizes = sizing.default_sizes()
    n_dev = len(jax.devices())
    if jax.devices()[0].platform == "cpu":
        assert sizes[0] == n_dev and sizes[-1] == max(32, n_dev)
    assert all(b == 2 * a for a, b in itertools.pairwise(sizes))


def test_past_peak_stops_once_the_rate_falls():
    rows = [{"size": s, "member_steps_per_s": r} for s, r in [(2, 100.0), (4, 95.0), (8, 80.0)]]
    assert not sizing.past_peak(rows[:1]) and not sizing.past_peak(rows[:2])
    assert sizing.past_peak(rows, tolerance=0.1) and not sizing.past_peak(rows, tolerance=0.25)


def test_throughput_in_order_stops_past_the_peak(exp, monkeypatch):
    # the measured rates fall with size: only the sizes up to the first fall are timed
    monkeypatch.setattr(sizing, "past_peak", lambda rows, tol: rows[-1]["size"] >= 2)
    rows = sizing.throughput(exp, [4, 1, 2], chunks=1, stop_below=0.1)
    assert [r["size"] for r in rows] == [1, 2]


def test_default_population_skips_sizes_that_do_not_fit(exp, monkeypatch):
    calls = []

    def fake(experiment, sizes, **kwargs):
        calls.append(list(sizes))
        return [{"size": s, "member_steps_per_s": s * 10.0} for s in sizes]

    monkeypatch.setattr(sizing, "throughput", fake)
    member = jt.programs.Programs(exp).member_bytes(sizing._bucket(exp))
    assert sizing.default_population(exp, [1, 2, 4, 8], memory_limit=int(2.5 * member)) == 2
    assert calls == [[1, 2]]
    # not even the smallest fits: nothing is measured (the study refuses it)
    assert sizing.default_population(exp, [2, 4], memory_limit=member) == 2 and len(calls) == 1


def test_a_single_chunk_trial_is_not_timed(exp, monkeypatch):
    monkeypatch.setattr(sizing, "throughput", lambda *a, **k: pytest.fail("measured"))
    short = dataclasses.replace(exp, steps=10)  # one chunk of 10 steps
    lines = []
    assert sizing.default_population(short, [1, 2, 4], log=lines.append) == 2
    assert "not measured" in lines[0]


def test_bench_population_of_an_experiment_file(tmp_path, capsys):
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT_FILE)
    out = sizing.main([str(path), "--sizes", "1", "2", "--chunks", "1"])
    assert [r["size"] for r in out["rows"]] == [1, 2] and out["recommended"] == 2
    rates = [r["member_steps_per_s"] for r in out["rows"]]
    assert out["vectorize_speedup"] == pytest.approx(max(rates) / rates[0])
    text = capsys.readouterr().out
    assert "recommended population: 2" in text
    assert json.loads(text.strip().splitlines()[-1])["benchmark"] == "population_sizes"


def test_bench_population_on_a_busy_machine_keeps_it_marked(tmp_path, capsys, monkeypatch,
                                                          cache_dir):
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT_FILE)
    monkeypatch.setattr(sizing, "throughput", lambda exp, sizes, **kw: [
        {"size": s, "member_steps_per_s": min(s, 4) * 10.0, "compile_s": 0.0} for s in sizes])
    FakeMeter.value = 0.5
    assert sizing.main([str(path)])["contention"] == 0.5
    assert "marked busy (contention 0.50 > 0.2)" in capsys.readouterr().out
    stored = json.loads((cache_dir / "sizing.json").read_text())
    assert [v["contention"] for v in stored.values()] == [0.5]


def test_docstring_examples():
    import doctest

    # the real contention measurement, not the quiet machine's
    assert doctest.testmod(sizing, extraglobs={"contention_now": CONTENTION_NOW}).failed == 0
