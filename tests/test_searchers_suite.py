"""Tests for jaxtune.benchmarks.searchers: the test functions and the suite's smoke run."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from jaxtune.benchmarks import searchers as S


def test_branin_camel_styblinski_closed_forms():
    # Branin's minimum is s * t = 10 / (8 pi) at its three minimisers
    for x1, x2 in ((-math.pi, 12.275), (math.pi, 2.275), (3 * math.pi, 2.475)):
        assert S.branin(x1, x2) == pytest.approx(10 / (8 * math.pi), abs=1e-12)
    # Styblinski-Tang: a root of the derivative 2 x^3 - 16 x + 2.5 (numpy's roots)
    roots = np.roots([4.0, 0.0, -32.0, 5.0])
    r = float(np.real(roots[np.argmin(np.real(roots))]))
    assert pytest.approx(r, abs=1e-12) == S.STYBLINSKI_TANG_ROOT
    assert S.styblinski_tang([r] * 8) == pytest.approx(8 * 0.5 * (r**4 - 16 * r**2 + 5 * r))
    # the camel is symmetric: f(x) = f(-x)
    assert S.six_hump_camel(0.3, -0.2) == S.six_hump_camel(-0.3, 0.2)


@pytest.mark.parametrize("name", list(S.PROBLEMS))
def test_value_at_the_optimiser_is_the_optimum(name):
    p = S.PROBLEMS[name]
    assert 2 <= p.dims <= 10
    for x in p.optimizers:
        assert p.space.contains(x)
        assert p(x) == pytest.approx(p.optimum, abs=1e-9)
    # nothing below the optimum: 5000 uniform configurations and a local search from the
    # optimiser over the real dimensions (in the unit cube of the space)
    configs = p.space.sample(5000, seed=0)
    assert min(p(c) for c in configs) > p.optimum
    x0 = p.optimizers[0]
    reals = [n for n, d in p.space.items() if not d.categorical and not d.integral]
    u0 = p.space.to_unit(x0)
    idx = [p.space.names.index(n) for n in reals]

    def f(v):
        u = u0.copy()
        u[idx] = np.clip(v, 0.0, 1.0)
        return p({**x0, **{n: p.space.from_unit(u)[n] for n in reals}})

    res = minimize(f, u0[idx], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 1500})
    assert res.fun >= p.optimum - 1e-9


def test_suite_covers_log_integer_and_categorical_dimensions():
    dims = [d for p in S.PROBLEMS.values() for d in p.space._dims.values()]
    assert any(d.categorical for d in dims) and any(d.integral for d in dims)
    assert any(getattr(d, "log", False) for d in dims)
    assert len(S.PROBLEMS) >= 8
    # the log variant is Hartmann-6 of log10: the same value at corresponding points
    h6, lg = S.PROBLEMS["hartmann6"], S.PROBLEMS["hartmann6_log"]
    x = {f"x{i}": 0.1 * (i + 1) for i in range(6)}
    y = {"lr": 10 ** (4 * 0.1 - 4), "wd": 10 ** (4 * 0.2 - 6),
         **{f"x{i}": x[f"x{i}"] for i in range(2, 6)}}
    assert lg(y) == pytest.approx(h6(x), rel=1e-12)


def test_regret_curve_against_a_loop():
    vals = [3.0, 5.0, 1.0, 2.0, 0.5]
    ref, best = [], math.inf
    for v in vals:
        best = min(best, v)
        ref.append(best - 0.25)
    np.testing.assert_array_equal(S.regret_curve(vals, 0.25), ref)
    assert S.checkpoints(96) == [8, 16, 32, 64, 96]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown searcher"):
        S.make_searcher("nope", S.PROBLEMS["branin"].space, 0)
    with pytest.raises(ValueError, match="unknown problem"):
        S.suite(["nope"])
    with pytest.raises(ValueError, match="q and budget"):
        S.run_searcher(S.PROBLEMS["branin"], "random", 0, 0)


def test_quick_run_end_to_end():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        S.main(["--quick", "--json", "--problems", "branin", "branin_mixed",
                "--searchers", "bayes", "random", "tpe"])
    out = buf.getvalue().splitlines()
    r = json.loads(out[-1])
    assert r["benchmark"] == "searchers" and r["seeds"] == 2 and r["qs"] == [1, 4]
    assert {"commit", "contention", "vs_tpe", "vs_random", "cells", "wall_s"} <= set(r)
    assert any("default bayes beats tpe" in line for line in out)
    for name in ("branin", "branin_mixed"):
        cell = r["cells"][name]
        assert cell["budget"] == 16 and cell["checkpoints"][-1] == 16
        for q in ("1", "4"):
            assert set(cell["q"][q]) == {"bayes", "random", "tpe"}
            for row in cell["q"][q].values():
                curve = np.asarray(row["curve"])
                assert np.all(curve >= 0) and np.all(np.diff(curve) <= 0)
                assert row["final"] == curve[-1] >= 0
                assert len(row["per_seed_final"]) == 2 and min(row["per_seed_final"]) >= 0
    assert r["vs_tpe"]["1"]["n"] == 2


def test_merge_runs():
    def part(problems, qs):
        cell = {"final": 1.0, "curve": [1.0], "per_seed_final": [1.0], "wall_s": 0.1}
        return {"seeds": 2, "budget_scale": 1.0, "problems": problems, "searchers": ["random"],
                "qs": qs, "skipped": {}, "commit": "abc",
                "cells": {n: {"budget": 8, "dims": 2, "checkpoints": [8],
                              "q": {str(q): {"random": cell} for q in qs}} for n in problems}}

    r = S.merge([part(["branin", "camel"], [8, 32]), part(["camel", "branin"], [1])])
    assert r["qs"] == [1, 8, 32] and r["problems"] == ["branin", "camel"]
    assert set(r["cells"]["camel"]["q"]) == {"1", "8", "32"}
    assert "random" in S.format_markdown(r)
    with pytest.raises(ValueError, match="no run has camel at q=1"):
        S.merge([part(["branin", "camel"], [8]), part(["branin"], [1])])
