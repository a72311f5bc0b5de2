"""Searchers on standard test functions: median simple regret against evaluations.

One problem can flatter any searcher, so searchers are judged on a suite: eight
standard functions with known optima (Branin, six-hump camel, Hartmann-3,
Hartmann-6, Rosenbrock-4, Ackley-5, Levy-6, Styblinski-Tang-8) and four
variants with the dimensions a tuning space has: a log-scaled one
(Hartmann-6 of ``log10`` of two ``Real(..., log=True)`` dimensions), integer
ones (Levy-5 with two ``Int`` dimensions), a categorical one (Hartmann-3 plus
an offset chosen by a ``Choice``) and all three at once (Branin of
``log10(lr)`` and ``log10(weight_decay)``, an ``Int`` depth, a ``Choice`` of
optimizer). Every function is minimised over a jaxtune :class:`~jaxtune.space.Space`
and evaluated in numpy float64.

Each searcher gets a fixed budget of evaluations per function, asked in
batches of ``q`` (``ask(q)``, evaluate, ``tell``), for several seeds. The
**simple regret** after ``n`` evaluations is the best value found so far minus
the known optimum; the tables report its median over seeds.

Searchers: jaxtune's ``bayes`` as shipped (``bayes``) and its other settings
(``bayes_warm``: ``warm_start=True``; ``bayes_uniform``: uniform random
candidates only; ``bayes_lcb``, ``bayes_hedge``),
``random``, ``quasirandom``, Optuna's TPE (``TPESampler(constant_liar=True,
multivariate=True)``, a batch is ``q`` calls of ``study.ask`` before the
``tell``s), Optuna's ``GPSampler`` (``optuna_gp``; it needs torch, and is
skipped with a note where torch is not installed) and scikit-optimize's own
``Optimizer`` (``skopt``: ``ask(n_points=q)``, its defaults; a refit per
point makes it costly, so by default it runs at ``q=1`` only). Optuna's
searchers use each dimension's own ``optuna_distribution()``, skopt its
``skopt_dimension()``.

Usage::

    python experiments/bench_searchers.py --json   # or: jaxtune bench searchers --json
    python experiments/bench_searchers.py --quick  # a smoke test (seconds)

Example:
    >>> p = PROBLEMS["branin"]
    >>> abs(p(p.optimizers[0]) - p.optimum) < 1e-12
    True
    >>> r = run_searcher(p, "random", q=4, seed=0, budget=8)
    >>> len(r["values"]), bool(np.all(np.diff(regret_curve(r["values"], p.optimum)) <= 0))
    (8, True)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.space import Choice, Int, Real, Space

__all__ = ["PROBLEMS", "SEARCHERS", "Problem", "make_searcher", "regret_curve", "run_searcher",
           "suite"]

Config = dict[str, Any]


# --------------------------------------------------------------------------------------
# test functions (numpy float64, minimised)
# --------------------------------------------------------------------------------------
def branin(x1: float, x2: float) -> float:
    """Branin on ``[-5, 10] x [0, 15]``; minimum ``5 / (4 pi)`` at ``(-pi, 12.275)``,
    ``(pi, 2.275)`` and ``(3 pi, 2.475)``."""
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def six_hump_camel(x1: float, x2: float) -> float:
    """Six-hump camel on ``[-3, 3] x [-2, 2]``; minimum -1.0316284534898774 at
    ``+-(0.0898420131003, -0.7126564030207)``."""
    return (4 - 2.1 * x1**2 + x1**4 / 3) * x1**2 + x1 * x2 + (-4 + 4 * x2**2) * x2**2


_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array([[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547],
                         [381, 5743, 8828]])
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann(x: Sequence[float]) -> float:
    """Hartmann-3 or Hartmann-6 (by ``len(x)``) on the unit cube; minima
    :data:`H3_OPTIMUM` near (0.1146, 0.5556, 0.8525) and :data:`H6_OPTIMUM` near
    (0.2017, 0.1500, 0.4769, 0.2753, 0.3117, 0.6573)."""
    x = np.asarray(x, np.float64)
    A, P = (_H3_A, _H3_P) if len(x) == 3 else (_H6_A, _H6_P)
    return float(-_H_ALPHA @ np.exp(-np.sum(A * (x - P) ** 2, axis=1)))


def rosenbrock(x: Sequence[float]) -> float:
    """Rosenbrock; minimum 0 at ``(1, ..., 1)``."""
    x = np.asarray(x, np.float64)
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


def ackley(x: Sequence[float]) -> float:
    """Ackley (a=20, b=0.2, c=2 pi); minimum 0 at the origin."""
    x = np.asarray(x, np.float64)
    return float(-20.0 * math.exp(-0.2 * math.sqrt(np.mean(x**2)))
                 - math.exp(np.mean(np.cos(2 * math.pi * x))) + 20.0 + math.e)


def levy(x: Sequence[float]) -> float:
    """Levy; minimum 0 at ``(1, ..., 1)``."""
    w = 1.0 + (np.asarray(x, np.float64) - 1.0) / 4.0
    head = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2))
    tail = (w[-1] - 1) ** 2 * (1 + np.sin(2 * math.pi * w[-1]) ** 2)
    return float(np.sin(math.pi * w[0]) ** 2 + head + tail)


def styblinski_tang(x: Sequence[float]) -> float:
    """Styblinski-Tang; minimum ``d * f1(x*)`` at ``x* = (r, ..., r)``, ``r`` the
    root of ``4 r^3 - 32 r + 5`` in ``[-3, -2]`` (:data:`STYBLINSKI_TANG_ROOT`)."""
    x = np.asarray(x, np.float64)
    return float(0.5 * np.sum(x**4 - 16 * x**2 + 5 * x))


#: The minimiser of one Styblinski-Tang coordinate (a root of ``4 r^3 - 32 r + 5``).
STYBLINSKI_TANG_ROOT = -2.903534027771177

#: Hartmann minimisers and minima (L-BFGS from the published points, float64).
_H3_MIN = (0.11458887133078371, 0.5556488955562107, 0.852546983879289)
_H6_MIN = (0.20168951101991361, 0.1500106884468529, 0.4768739735081644, 0.27533243025104337,
           0.31165161727990587, 0.6573005335814022)
H3_OPTIMUM = -3.862779787332663
H6_OPTIMUM = -3.3223680114155147


# --------------------------------------------------------------------------------------
# problems: a function over a jaxtune Space
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Problem:
    """A test function over a jaxtune space, with its known minimum.

    Attributes:
        name: short name.
        space: the search space.
        objective: configuration -> value (float64), minimised.
        optimum: the known minimum.
        optimizers: configurations where the minimum is attained.
        budget: evaluations each searcher gets.
    """

    name: str
    space: Space
    objective: Callable[[Mapping[str, Any]], float]
    optimum: float
    optimizers: tuple[Config, ...]
    budget: int

    def __call__(self, config: Mapping[str, Any]) -> float:
        return float(self.objective(config))

    @property
    def dims(self) -> int:
        return len(self.space)


def _reals(prefix: str, d: int, low: float, high: float) -> dict[str, Real]:
    return {f"{prefix}{i}": Real(low, high) for i in range(d)}


def _vector(config: Mapping[str, Any], names: Sequence[str]) -> list[float]:
    return [float(config[n]) for n in names]


def _euclidean(name: str, fn: Callable[[Sequence[float]], float], d: int, low: float,
               high: float, optimum: float, minimisers: Sequence[Sequence[float]],
               budget: int) -> Problem:
    space = Space(_reals("x", d, low, high))
    names = space.names
    return Problem(name, space, lambda c: fn(_vector(c, names)), optimum,
                   tuple(dict(zip(names, map(float, m))) for m in minimisers), budget)


_H3_OFFSETS = {"a": 0.5, "b": 0.0, "c": 0.25, "d": 1.0}
_MIXED_OPT = {"adamw": 0.0, "sgd": 0.5, "lion": 0.2}


def _h6_log(c: Mapping[str, Any]) -> float:
    x = [(math.log10(c["lr"]) + 4) / 4, (math.log10(c["wd"]) + 6) / 4,
         *_vector(c, ("x2", "x3", "x4", "x5"))]
    return hartmann(x)


def _branin_mixed(c: Mapping[str, Any]) -> float:
    x1 = -5.0 + 3.0 * (math.log10(c["lr"]) + 5.0)
    x2 = 3.0 * (math.log10(c["weight_decay"]) + 6.0)
    return branin(x1, x2) + 0.05 * (c["depth"] - 3) ** 2 + _MIXED_OPT[c["optimizer"]]


def _make_problems() -> dict[str, Problem]:
    br_min = ((-math.pi, 12.275), (math.pi, 2.275), (3 * math.pi, 2.475))
    bspace = Space(x0=Real(-5.0, 10.0), x1=Real(0.0, 15.0))
    cspace = Space(x0=Real(-3.0, 3.0), x1=Real(-2.0, 2.0))
    camel_min = (0.0898420131003, -0.7126564030207)
    probs = [
        Problem("branin", bspace, lambda c: branin(c["x0"], c["x1"]), 5 / (4 * math.pi),
                tuple({"x0": a, "x1": b} for a, b in br_min), 64),
        Problem("camel", cspace, lambda c: six_hump_camel(c["x0"], c["x1"]),
                -1.0316284534898774, ({"x0": camel_min[0], "x1": camel_min[1]},
                                      {"x0": -camel_min[0], "x1": -camel_min[1]}), 64),
        _euclidean("hartmann3", hartmann, 3, 0.0, 1.0, H3_OPTIMUM, [_H3_MIN], 64),
        _euclidean("hartmann6", hartmann, 6, 0.0, 1.0, H6_OPTIMUM, [_H6_MIN], 96),
        _euclidean("rosenbrock4", rosenbrock, 4, -2.048, 2.048, 0.0, [(1.0,) * 4], 96),
        _euclidean("ackley5", ackley, 5, -32.768, 32.768, 0.0, [(0.0,) * 5], 96),
        _euclidean("levy6", levy, 6, -10.0, 10.0, 0.0, [(1.0,) * 6], 96),
        _euclidean("styblinski8", styblinski_tang, 8, -5.0, 5.0,
                   8 * styblinski_tang([STYBLINSKI_TANG_ROOT]), [(STYBLINSKI_TANG_ROOT,) * 8],
                   128),
    ]
    h6_space = Space(lr=Real(1e-4, 1.0, log=True), wd=Real(1e-6, 1e-2, log=True),
                     **_reals("x", 6, 0.0, 1.0))
    h6_space = Space({k: h6_space[k] for k in ("lr", "wd", "x2", "x3", "x4", "x5")})
    h6_opt = {"lr": 10 ** (4 * _H6_MIN[0] - 4), "wd": 10 ** (4 * _H6_MIN[1] - 6),
              **{f"x{i}": _H6_MIN[i] for i in range(2, 6)}}
    levy_space = Space(x0=Real(-10.0, 10.0), x1=Real(-10.0, 10.0), x2=Real(-10.0, 10.0),
                       n3=Int(-10, 10), n4=Int(-10, 10))
    h3_space = Space(**_reals("x", 3, 0.0, 1.0), kind=Choice(list(_H3_OFFSETS)))
    mixed_space = Space(lr=Real(1e-5, 1.0, log=True), weight_decay=Real(1e-6, 1e-1, log=True),
                        depth=Int(1, 8), optimizer=Choice(list(_MIXED_OPT)))
    probs += [
        Problem("hartmann6_log", h6_space, _h6_log, H6_OPTIMUM, (h6_opt,), 96),
        Problem("levy5_int", levy_space, lambda c: levy(_vector(c, levy_space.names)), 0.0,
                ({"x0": 1.0, "x1": 1.0, "x2": 1.0, "n3": 1, "n4": 1},), 96),
        Problem("hartmann3_choice", h3_space,
                lambda c: hartmann(_vector(c, ("x0", "x1", "x2"))) + _H3_OFFSETS[c["kind"]],
                H3_OPTIMUM, ({**dict(zip(("x0", "x1", "x2"), _H3_MIN)), "kind": "b"},),
                64),
        Problem("branin_mixed", mixed_space, _branin_mixed, 5 / (4 * math.pi),
                tuple({"lr": 10 ** ((a + 5) / 3 - 5), "weight_decay": 10 ** (b / 3 - 6),
                       "depth": 3, "optimizer": "adamw"} for a, b in br_min), 64),
    ]
    return {p.name: p for p in probs}


#: The suite, by name.
PROBLEMS: dict[str, Problem] = _make_problems()


# --------------------------------------------------------------------------------------
# searchers behind one ask/tell interface
# --------------------------------------------------------------------------------------
class _SkoptSearcher:
    """scikit-optimize's ``Optimizer`` with its defaults (GP, gp_hedge, 10 initial
    points; ``ask(n_points=q)`` is its constant liar, one refit per point)."""

    def __init__(self, space: Space, *, seed: int = 0):
        from skopt import Optimizer

        self.space = space
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._opt = Optimizer(space.skopt_dimensions(), base_estimator="GP",
                                  random_state=seed)

    def ask(self, n: int) -> list[Config]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pts = [self._opt.ask()] if n == 1 else self._opt.ask(n_points=n)
        return [self.space.from_point(p) for p in pts]

    def tell(self, configs: list[Config], losses: list[float]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._opt.tell([self.space.to_point(c) for c in configs], list(losses))


def _optuna(sampler: str, seed: int, space: Space) -> Any:
    import optuna

    from jaxtune.benchmarks.search import OptunaSearcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning (multivariate, GPSampler)
        if sampler == "tpe":
            s = optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
        else:
            s = optuna.samplers.GPSampler(seed=seed)
    return OptunaSearcher(space, seed=seed, sampler=s)


def _bayes(**kwargs: Any) -> Callable[[Space, int], Any]:
    def make(space: Space, seed: int) -> Any:
        from jaxtune.search import BayesSearcher

        return BayesSearcher(space, seed=seed, **kwargs)
    return make


def _basic(name: str) -> Callable[[Space, int], Any]:
    def make(space: Space, seed: int) -> Any:
        from jaxtune.search import make_searcher as make_jaxtune

        return make_jaxtune(name, space, seed=seed)
    return make


#: Searcher name -> factory ``(space, seed) -> object with ask(n) / tell(configs, losses)``.
SEARCHERS: dict[str, Callable[[Space, int], Any]] = {
    "bayes": _bayes(),
    "bayes_warm": _bayes(warm_start=True),
    "bayes_lcb": _bayes(acquisition="LCB"),
    "bayes_hedge": _bayes(acquisition="gp_hedge"),
    "bayes_uniform": _bayes(local_candidates=0.0),
    "random": _basic("random"),
    "quasirandom": _basic("quasirandom"),
    "tpe": lambda space, seed: _optuna("tpe", seed, space),
    "optuna_gp": lambda space, seed: _optuna("gp", seed, space),
    "skopt": lambda space, seed: _SkoptSearcher(space, seed=seed),
    # jaxtune's own searchers over Optuna's samplers (jaxtune.search.optuna_samplers)
    "optuna:tpe": _basic("optuna:tpe"),
    "optuna:cmaes": _basic("optuna:cmaes"),
    "optuna:nsga2": _basic("optuna:nsga2"),
}

#: Searchers of the default run. ``skopt`` is left out: its ``tell`` refits the GP
#: (2 kernel restarts) and its ``ask`` optimises gp_hedge with L-BFGS for every point,
#: 57-83 s per 64-96-evaluation run at q=1 on this 2-core CPU (hours for the suite).
DEFAULT_SEARCHERS = ("bayes", "bayes_warm", "random", "quasirandom", "tpe", "optuna_gp")
#: Batch sizes a searcher is limited to by default (``bayes_warm``: the setting the
#: issue measured; ``skopt``: ``ask(n_points=q)`` refits once per point).
ONLY_Q: dict[str, tuple[int, ...]] = {"bayes_warm": (8, 32), "skopt": (1,)}


def unavailable(name: str) -> str | None:
    """Why searcher ``name`` cannot run here (``None`` if it can)."""
    if (name in ("tpe", "optuna_gp") or name.startswith("optuna:")) \
            and importlib.util.find_spec("optuna") is None:
        return "optuna is not installed"
    if name == "optuna:cmaes" and importlib.util.find_spec("cmaes") is None:
        return "Optuna's CmaEsSampler needs cmaes, which is not installed"
    if name == "optuna_gp" and importlib.util.find_spec("torch") is None:
        return "Optuna's GPSampler needs torch, which is not installed"
    return None


def make_searcher(name: str, space: Space, seed: int) -> Any:
    """A fresh searcher of the suite (see :data:`SEARCHERS`).

    Raises:
        ValueError: an unknown name, or one that cannot run here (say why).
    """
    if name not in SEARCHERS:
        raise ValueError(f"unknown searcher {name!r}; expected one of {list(SEARCHERS)}")
    why = unavailable(name)
    if why:
        raise ValueError(f"searcher {name!r} cannot run: {why}")
    return SEARCHERS[name](space, seed)


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------
def regret_curve(values: Sequence[float], optimum: float) -> np.ndarray:
    """Simple regret after each evaluation: best value so far minus ``optimum``."""
    return np.minimum.accumulate(np.asarray(values, np.float64)) - float(optimum)


def run_searcher(problem: Problem, searcher: str, q: int, seed: int,
                 budget: int | None = None) -> dict[str, Any]:
    """``budget`` evaluations of ``problem`` in batches of ``q``: ask, evaluate, tell.

    Returns the values in evaluation order and the searcher's wall time (ask +
    tell, the evaluations are negligible).
    """
    from threadpoolctl import threadpool_limits

    budget = problem.budget if budget is None else int(budget)
    if q < 1 or budget < 1:
        raise ValueError(f"q and budget must be >= 1, got q={q}, budget={budget}")
    values: list[float] = []
    t0 = time.perf_counter()
    with threadpool_limits(1):  # every searcher on one BLAS thread, as jaxtune's GP
        s = make_searcher(searcher, problem.space, seed)
        while len(values) < budget:
            configs = s.ask(min(q, budget - len(values)))
            if not configs:  # pragma: no cover - only a finite space runs out
                break
            losses = [problem(c) for c in configs]
            s.tell(configs, losses)
            values.extend(losses)
    return {"values": values, "wall_s": time.perf_counter() - t0}


def checkpoints(budget: int) -> list[int]:
    """The evaluation counts at which regret is reported: 8, 16, 32, ... and the budget."""
    out, n = [], 8
    while n < budget:
        out.append(n)
        n *= 2
    return [*out, budget]


def suite(problems: Sequence[str] | None = None,
          searchers: Sequence[str] = DEFAULT_SEARCHERS, qs: Sequence[int] = (1, 8, 32),
          seeds: int = 10, budget_scale: float = 1.0,
          only_q: Mapping[str, Sequence[int]] | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Every searcher on every problem, batch size and seed.

    Args:
        problems: names in :data:`PROBLEMS` (default: all).
        searchers: names in :data:`SEARCHERS`.
        qs: batch sizes.
        seeds: seeds ``0 .. seeds - 1`` of every searcher.
        budget_scale: multiplies each problem's budget (``--quick``).
        only_q: searcher -> the batch sizes it runs at (default :data:`ONLY_Q`).
        progress: print one line per (problem, q).

    Returns:
        ``cells[problem][q][searcher]``: ``final`` (median final regret),
        ``curve`` (median regret at :func:`checkpoints`), ``per_seed_final``,
        ``wall_s`` (mean per run); plus ``skipped`` (searcher -> why) and the
        settings.
    """
    names = list(PROBLEMS) if problems is None else list(problems)
    for n in names:
        if n not in PROBLEMS:
            raise ValueError(f"unknown problem {n!r}; expected some of {list(PROBLEMS)}")
    for s in searchers:
        if s not in SEARCHERS:
            raise ValueError(f"unknown searcher {s!r}; expected some of {list(SEARCHERS)}")
    if seeds < 1 or any(q < 1 for q in qs) or not budget_scale > 0:
        raise ValueError(f"seeds and q must be >= 1 and budget_scale > 0, got seeds={seeds}, "
                         f"qs={list(qs)}, budget_scale={budget_scale}")
    skipped: dict[str, str] = {}
    for s in searchers:
        why = unavailable(s)
        if why:
            skipped[s] = why
    only_q = dict(ONLY_Q if only_q is None else only_q)
    for s in searchers:
        left = [q for q in qs if s in only_q and q not in only_q[s]]
        if left and s not in skipped:
            skipped[s] = f"not run at q={left} (limited to q in {list(only_q[s])})"
    cells: dict[str, Any] = {}
    for name in names:
        p = PROBLEMS[name]
        budget = max(2, int(round(p.budget * budget_scale)))
        marks = checkpoints(budget)
        cells[name] = {"budget": budget, "dims": p.dims, "checkpoints": marks, "q": {}}
        for q in qs:
            t0 = time.perf_counter()
            row: dict[str, Any] = {}
            for s in searchers:
                if unavailable(s) or (s in only_q and q not in only_q[s]):
                    continue
                regrets, walls = [], []
                for seed in range(seeds):
                    r = run_searcher(p, s, q, seed, budget)
                    regrets.append(regret_curve(r["values"], p.optimum))
                    walls.append(r["wall_s"])
                R = np.vstack(regrets)
                med = np.median(R, axis=0)
                row[s] = {"final": float(med[-1]), "curve": [float(med[m - 1]) for m in marks],
                          "per_seed_final": [float(x) for x in R[:, -1]],
                          "wall_s": float(np.mean(walls))}
            cells[name]["q"][str(q)] = row
            if progress:
                print(f"# {name} q={q}: {time.perf_counter() - t0:.1f} s", flush=True)
                print("# cell " + json.dumps({"problem": name, "q": q, "seeds": seeds,
                                               "budget_scale": budget_scale, "skipped": skipped,
                                               "cell": {**cells[name], "q": {str(q): row}}}),
                      flush=True)
    return {"problems": names, "searchers": list(searchers), "qs": list(qs), "seeds": seeds,
            "budget_scale": budget_scale, "only_q": {k: list(v) for k, v in only_q.items()},
            "skipped": skipped,
            "cells": cells}


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def winners(row: Mapping[str, Any]) -> list[str]:
    """The searchers with the lowest median final regret in one cell (ties: all)."""
    best = min(v["final"] for v in row.values())
    return [s for s, v in row.items() if v["final"] <= best + 1e-12 * max(1.0, abs(best))]


def compare(r: Mapping[str, Any], a: str = "bayes", b: str = "tpe") -> dict[str, Any]:
    """Per batch size: on how many problems ``a``'s median final regret is below ``b``'s
    (``wins``), equal (``ties``) or above; and per-seed wins over all problems."""
    out: dict[str, Any] = {}
    for q in r["qs"]:
        rows = [r["cells"][n]["q"][str(q)] for n in r["problems"]]
        rows = [row for row in rows if a in row and b in row]
        if not rows:
            continue
        fa = [row[a]["final"] for row in rows]
        fb = [row[b]["final"] for row in rows]
        seeds_a = np.concatenate([row[a]["per_seed_final"] for row in rows])
        seeds_b = np.concatenate([row[b]["per_seed_final"] for row in rows])
        out[str(q)] = {"wins": sum(x < y for x, y in zip(fa, fb)),
                       "ties": sum(x == y for x, y in zip(fa, fb)), "n": len(rows),
                       "seed_wins": int(np.sum(seeds_a < seeds_b)), "seed_n": len(seeds_a)}
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def format_results(r: Mapping[str, Any]) -> str:
    """The tables: per problem x q, median final regret per searcher and the winner;
    then the median regret at half the budget; then the summary against TPE."""
    from jaxtune.benchmarks.search import _table

    cols = [s for s in r["searchers"] if any(
        s in r["cells"][n]["q"][str(q)] for n in r["problems"] for q in r["qs"])]
    out = []
    for title, pick in (("median final regret", lambda v, marks: v["final"]),
                        ("median regret at half the budget",
                         lambda v, marks: v["curve"][_half(marks)])):
        rows = []
        for n in r["problems"]:
            c = r["cells"][n]
            for q in r["qs"]:
                row = c["q"][str(q)]
                vals = {s: pick(v, c["checkpoints"]) for s, v in row.items()}
                best = min(vals.values())
                win = [s for s, v in vals.items() if v <= best + 1e-12 * max(1.0, abs(best))]
                rows.append([n, str(c["dims"]), str(q),
                             str(c["budget"] if title.endswith("regret")
                                 else c["checkpoints"][_half(c["checkpoints"])]),
                             *(_fmt(vals[s]) if s in vals else "-" for s in cols),
                             ",".join(win)])
        head = (f"{title} over {r['seeds']} seeds (lower is better; '-': not run)")
        out.append(_table(head, ["problem", "d", "q", "evals", *cols, "best"], rows,
                          align="lrrr" + "r" * len(cols) + "l"))
    walls = [[s, *(_fmt(statistics.mean(r["cells"][n]["q"][str(q)][s]["wall_s"]
                                        for n in r["problems"]))
                   if s in r["cells"][r["problems"][0]]["q"][str(q)] else "-"
                   for q in r["qs"])] for s in cols]
    out.append(_table("searcher seconds per run (ask + tell, mean over problems)",
                      ["searcher", *(f"q={q}" for q in r["qs"])], walls))
    for s, why in r["skipped"].items():
        out.append(f"skipped {s}: {why}")
    if "skopt" not in r["searchers"]:
        out.append("skopt (scikit-optimize's Optimizer) not run: a refit with 2 kernel restarts "
                   "and an L-BFGS acquisition search per point, about a minute per q=1 run "
                   "here; run it with --searchers skopt")
    for other in ("tpe", "random"):
        for q, c in compare(r, "bayes", other).items():
            out.append(f"default bayes beats {other} on {c['wins']} of {c['n']} functions at "
                       f"q={q} (ties {c['ties']}; per seed {c['seed_wins']} of {c['seed_n']})")
    return "\n".join(out)


def format_markdown(r: Mapping[str, Any]) -> str:
    """The median final regret as a Markdown table (the docs' table), best in bold."""
    cols = [s for s in r["searchers"] if any(
        s in r["cells"][n]["q"][str(q)] for n in r["problems"] for q in r["qs"])]
    lines = ["| function | d | q | evals | " + " | ".join(cols) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for n in r["problems"]:
        c = r["cells"][n]
        for q in r["qs"]:
            row = c["q"][str(q)]
            win = winners(row)
            cells = [("**" + _fmt(row[s]["final"]) + "**" if s in win else _fmt(row[s]["final"]))
                     if s in row else "-" for s in cols]
            lines.append(f"| {n} | {c['dims']} | {q} | {c['budget']} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def _half(marks: Sequence[int]) -> int:
    """Index of the checkpoint nearest half the budget."""
    return int(np.argmin([abs(m - marks[-1] / 2) for m in marks]))


def merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Results of several runs (e.g. one per batch size or per group of problems) as one.

    Raises:
        ValueError: the runs differ in seeds or budget scale.
    """
    if len({(p["seeds"], p["budget_scale"]) for p in parts}) != 1:
        raise ValueError("merge: the runs differ in seeds or budget scale")
    out: dict[str, Any] = {k: parts[0][k] for k in ("seeds", "budget_scale")}
    out["problems"] = [n for n in PROBLEMS if any(n in p["problems"] for p in parts)]
    out["searchers"] = [s for s in SEARCHERS if any(s in p["searchers"] for p in parts)]
    out["qs"] = sorted({q for p in parts for q in p["qs"]})
    out["skipped"] = {k: v for p in parts for k, v in p["skipped"].items()}
    out["commits"] = sorted({p.get("commit", "unknown") for p in parts})
    out["cells"] = {}
    for p in parts:
        for n, c in p["cells"].items():
            cell = out["cells"].setdefault(n, {**c, "q": {}})
            cell["q"].update(c["q"])
    for n in out["problems"]:
        for q in out["qs"]:
            if str(q) not in out["cells"][n]["q"]:
                raise ValueError(f"merge: no run has {n} at q={q}")
    return out


def _read_run(path: str) -> dict[str, Any]:
    """A run's results from its output: the final JSON line, or, for a run stopped
    before its end, the cells it finished (its ``# cell`` lines)."""
    with open(path) as f:
        lines = f.read().splitlines()
    commit_ = next((x.split()[2] for x in lines if x.startswith("# commit ")), "unknown")
    done = [x for x in lines if x.startswith("{")]
    if done:
        return json.loads(done[-1])
    cells = [json.loads(x[len("# cell "):]) for x in lines if x.startswith("# cell ")]
    if not cells:
        raise ValueError(f"merge: {path} has no results")
    out: dict[str, Any] = {"commit": commit_, "seeds": cells[0]["seeds"],
                           "budget_scale": cells[0]["budget_scale"], "problems": [],
                           "searchers": [], "qs": [], "skipped": cells[0]["skipped"],
                           "cells": {}}
    for c in cells:
        name, q = c["problem"], c["q"]
        out["problems"] += [] if name in out["problems"] else [name]
        out["qs"] += [] if q in out["qs"] else [q]
        row = c["cell"]["q"][str(q)]
        out["searchers"] += [s for s in row if s not in out["searchers"]]
        out["cells"].setdefault(name, {**c["cell"], "q": {}})["q"][str(q)] = row
    return out


def _parse_only_q(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in items:
        name, _, qs = item.partition("=")
        try:
            out[name] = tuple(int(q) for q in qs.split(","))
        except ValueError:
            raise ValueError(f"--only-q expects SEARCHER=Q,Q,..., got {item!r}") from None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", default=None, choices=list(PROBLEMS))
    p.add_argument("--searchers", nargs="+", default=list(DEFAULT_SEARCHERS),
                   choices=list(SEARCHERS))
    p.add_argument("--q", type=int, nargs="+", default=[1, 8, 32], help="batch sizes")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiplies each function's evaluation budget")
    p.add_argument("--only-q", nargs="*", default=[f"{k}={','.join(map(str, v))}"
                                                   for k, v in ONLY_Q.items()],
                   metavar="SEARCHER=Q,Q", help="limit searchers to some batch sizes")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    p.add_argument("--markdown", action="store_true", help="also print the Markdown table")
    p.add_argument("--merge", nargs="+", metavar="FILE", default=None,
                   help="print the tables of earlier runs (their --json output) merged")
    p.add_argument("--json", action="store_true", help="print the results as a last JSON line")
    args = p.parse_args(argv)
    if args.quick:
        args.problems = args.problems or ["branin", "hartmann3_choice", "branin_mixed"]
        args.seeds, args.budget_scale, args.q = 2, 0.25, [1, 4]
        args.only_q = []
    if args.merge:
        parts = [_read_run(path) for path in args.merge]
        r = merge(parts)
        print(f"# commits {' '.join(r['commits'])}")
        print(format_results(r))
        if args.markdown:
            print(format_markdown(r))
        if args.json:
            print(json.dumps({"benchmark": "searchers", **r, "vs_tpe": compare(r, "bayes", "tpe"),
                              "vs_random": compare(r, "bayes", "random")}))
        return r
    from jaxtune.benchmarks.common import CpuMeter, commit

    results: dict[str, Any] = {"benchmark": "searchers", "commit": commit()}
    print(f"# commit {results['commit']}", flush=True)
    t0 = time.perf_counter()
    with CpuMeter() as meter:
        r = suite(args.problems, args.searchers, args.q, args.seeds, args.budget_scale,
                  _parse_only_q(args.only_q))
    results.update(r)
    results["vs_tpe"] = compare(r, "bayes", "tpe")
    results["vs_random"] = compare(r, "bayes", "random")
    results["wall_s"] = time.perf_counter() - t0
    results["contention"] = meter.contention
    print(format_results(r))
    print(f"# {results['wall_s']:.0f} s; contention {meter.contention:.3f} "
          "(CPU time of other processes / capacity)")
    if args.markdown:
        print(format_markdown(r))
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
