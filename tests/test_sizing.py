"""Population sizes: the measurement, the recommendation, the cache and its use."""

from __future__ import annotations

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

    def fake(experiment, sizes):
        calls.append(list(sizes))
        return [{"size": s, "member_steps_per_s": min(s, 8) * 10.0} for s in sizes]

    monkeypatch.setattr(sizing, "throughput", fake)
    lines = []
    assert sizing.default_population(exp, log=lines.append) == 8
    assert sizing.default_population(exp) == 8 and len(calls) == 1
    assert "8 members" in lines[0]
    stored = json.loads((cache_dir / "sizing.json").read_text())
    assert [v["recommended"] for v in stored.values()] == [8]
    # a study with population="auto" uses the cached size
    study = jt.Study(exp, searcher="random", population="auto", store=None, verbose=False)
    assert study.population == 8 and len(calls) == 1


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


def test_docstring_examples():
    import doctest

    assert doctest.testmod(sizing).failed == 0
