"""Several objectives: ParEGO against random search and Optuna's multi-objective TPE
by hypervolume on ZDT1/ZDT2.

Each problem has ``dim`` inputs in ``[0, 1]`` and two objectives to minimise
(Zitzler, Deb and Thiele 2000); the true Pareto front is known, so the table shows
the hypervolume a searcher's points dominate (reference point ``(1.1, 1.1)``) as a
fraction of the front's (``hv / hv*``), median over seeds, after each number of
evaluations. Every searcher asks batches of ``q`` through an ask/tell loop (Optuna's
own for TPE, told after the whole batch is asked); ParEGO starts with
``n_initial`` quasi-random points, TPE with its 10 random startup trials.

    python experiments/bench_multiobjective.py            # 2 problems, 5 seeds
    python experiments/bench_multiobjective.py --quick

Then constraints: Branin subject to ``x1 + x2 <= 8``, infeasible points told as
failed (the study's rule), Bayesian search against random search: the share of
infeasible proposals in the second half and the best feasible value's regret.

Prints a table, the machine's contention, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxtune.benchmarks.common import CpuMeter, commit

__all__ = ["PROBLEMS", "hv_star", "main", "run"]

REF = (1.1, 1.1)
#: A loose reference point as well (the final fraction only): with ``REF`` a searcher
#: scores 0 until one point is below 1.1 in both objectives.
LOOSE = (11.0, 11.0)


def zdt1(x: np.ndarray) -> np.ndarray:
    """ZDT1: convex front ``f2 = 1 - sqrt(f1)``."""
    g = 1.0 + 9.0 * np.mean(x[1:])
    return np.array([x[0], g * (1.0 - np.sqrt(x[0] / g))])


def zdt2(x: np.ndarray) -> np.ndarray:
    """ZDT2: concave front ``f2 = 1 - f1^2``."""
    g = 1.0 + 9.0 * np.mean(x[1:])
    return np.array([x[0], g * (1.0 - (x[0] / g) ** 2)])


#: name -> (function, area under the true front over f1 in [0, 1]).
PROBLEMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "zdt1": (zdt1, 2.0 / 3.0), "zdt2": (zdt2, 2.0 / 3.0)}


def hv_star(name: str, ref: tuple[float, float] = REF) -> float:
    """The hypervolume of the true front (closed form): the box ``[0, r1] x [0, r2]``
    less the area under ``f2 = front(f1)`` (``int_0^1 1 - sqrt(f) = 1/3`` for ZDT1,
    ``int_0^1 1 - f^2 = 2/3`` for ZDT2)."""
    under = {"zdt1": 1.0 / 3.0, "zdt2": 2.0 / 3.0}[name]
    return ref[0] * ref[1] - under


def run(problem: str, searcher: str, seed: int, *, dim: int, evals: int, q: int,
        n_candidates: int) -> dict[str, Any]:
    """One search: the hypervolume fraction after each batch, and the seconds asking."""
    import jaxtune as jt
    from jaxtune.objectives import hypervolume

    fn, _ = PROBLEMS[problem]
    if searcher == "optuna-tpe":
        return _run_optuna(problem, seed, dim=dim, evals=evals, q=q)
    space = jt.Space(**{f"x{i}": jt.Real(0.0, 1.0) for i in range(dim)})
    if searcher == "parego":
        s = jt.search.make_searcher("parego", space, seed=seed, n_objectives=2,
                                    n_candidates=n_candidates)
    else:
        s = jt.search.make_searcher(searcher, space, seed=seed)
    Y: list[np.ndarray] = []
    curve, ask_s = [], 0.0
    while len(Y) < evals:
        t = time.perf_counter()
        batch = s.ask(min(q, evals - len(Y)))
        ask_s += time.perf_counter() - t
        vals = [fn(np.array([c[f"x{i}"] for i in range(dim)])) for c in batch]
        s.tell(batch, [v.tolist() for v in vals] if searcher == "parego"
               else [float(v[0] + v[1]) for v in vals])
        Y.extend(vals)
        curve.append((len(Y), hypervolume(np.asarray(Y), REF) / hv_star(problem)))
    return {"curve": curve, "ask_s": ask_s,
            "loose": hypervolume(np.asarray(Y), LOOSE) / hv_star(problem, LOOSE)}


def _run_optuna(problem: str, seed: int, *, dim: int, evals: int, q: int) -> dict[str, Any]:
    """Optuna's TPE sampler (multi-objective since Optuna 3) through its ask/tell
    interface, in the same batches of ``q``."""
    import optuna

    from jaxtune.objectives import hypervolume

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fn, _ = PROBLEMS[problem]
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed))
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    Y: list[np.ndarray] = []
    curve, ask_s = [], 0.0
    while len(Y) < evals:
        t = time.perf_counter()
        trials = [study.ask({f"x{i}": dist for i in range(dim)})
                  for _ in range(min(q, evals - len(Y)))]
        ask_s += time.perf_counter() - t
        for tr in trials:
            v = fn(np.array([tr.params[f"x{i}"] for i in range(dim)]))
            study.tell(tr, v.tolist())
            Y.append(v)
        curve.append((len(Y), hypervolume(np.asarray(Y), REF) / hv_star(problem)))
    return {"curve": curve, "ask_s": ask_s,
            "loose": hypervolume(np.asarray(Y), LOOSE) / hv_star(problem, LOOSE)}


BRANIN_MIN = 0.397887


def branin(x1: float, x2: float) -> float:
    """Branin-Hoo on ``[-5, 10] x [0, 15]``; minimum 0.397887 at three points."""
    b, c, t = 5.1 / (4 * np.pi**2), 5 / np.pi, 1 / (8 * np.pi)
    return float((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10)


def run_constrained(searcher: str, seed: int, *, evals: int, q: int,
                    n_candidates: int) -> dict[str, Any]:
    """Branin subject to ``x1 + x2 <= 8`` (one of its three minima is feasible, about
    30% of the box is): infeasible points are told as failed (``None``), as a study
    tells a trial a constraint refused. Returns the fraction of infeasible proposals
    in the second half and the best feasible value's regret."""
    import jaxtune as jt

    space = jt.Space(x1=jt.Real(-5.0, 10.0), x2=jt.Real(0.0, 15.0))
    kw = {"n_candidates": n_candidates} if searcher == "bayes" else {}
    s = jt.search.make_searcher(searcher, space, seed=seed, **kw)
    feasible, best = [], np.inf
    while len(feasible) < evals:
        batch = s.ask(min(q, evals - len(feasible)))
        ok = [c["x1"] + c["x2"] <= 8.0 for c in batch]
        vals = [branin(c["x1"], c["x2"]) for c in batch]
        s.tell(batch, [v if f else None for v, f in zip(vals, ok, strict=True)])
        feasible += ok
        best = min([best, *[v for v, f in zip(vals, ok, strict=True) if f]])
    late = feasible[len(feasible) // 2:]
    return {"infeasible_late": 1.0 - float(np.mean(late)), "regret": best - BRANIN_MIN}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--evals", type=int, default=48)
    p.add_argument("--q", type=int, default=4)
    p.add_argument("--n-candidates", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="1 problem, 2 seeds, 24 evaluations")
    args = p.parse_args(argv)
    if args.quick:
        args.problems, args.seeds, args.evals = args.problems[:1], 2, 24
    rows = []
    with CpuMeter() as meter:
        for problem in args.problems:
            for searcher in ("random", "optuna-tpe", "parego"):
                runs = [run(problem, searcher, s, dim=args.dim, evals=args.evals, q=args.q,
                            n_candidates=args.n_candidates) for s in range(args.seeds)]
                at = sorted({n for r in runs for n, _ in r["curve"]})
                marks = [n for n in at if n in (at[len(at) // 3], at[2 * len(at) // 3], at[-1])]
                med = {n: float(np.median([dict(r["curve"])[n] for r in runs])) for n in marks}
                rows.append({"problem": problem, "searcher": searcher, "hv_fraction": med,
                             "hv_fraction_loose": float(np.median([r["loose"] for r in runs])),
                             "ask_s": float(np.median([r["ask_s"] for r in runs]))})
                cols = "  ".join(f"{n:>3}: {v:.3f}" for n, v in med.items())
                print(f"{problem:<6} {searcher:<10} median hv/hv* after  {cols}   "
                      f"ref {LOOSE}: {rows[-1]['hv_fraction_loose']:.4f}   "
                      f"(ask {rows[-1]['ask_s']:.1f}s)", flush=True)
        constrained = []
        for searcher in ("random", "bayes"):
            runs = [run_constrained(searcher, s, evals=args.evals, q=args.q,
                                    n_candidates=args.n_candidates) for s in range(args.seeds)]
            constrained.append({"searcher": searcher, **{
                k: float(np.median([r[k] for r in runs])) for k in runs[0]}})
            print(f"branin, x1 + x2 <= 8: {searcher:<7} median infeasible share of the "
                  f"second half {constrained[-1]['infeasible_late']:.2f}, median regret "
                  f"{constrained[-1]['regret']:.4f}", flush=True)
    print(f"machine contention {meter.contention:.2f} (other processes' CPU share); "
          f"commit {commit()}; dim={args.dim}, q={args.q}, {args.seeds} seeds, ref {REF}")
    print(json.dumps({"benchmark": "multiobjective", "commit": commit(), "dim": args.dim,
                      "q": args.q, "seeds": args.seeds, "evals": args.evals,
                      "contention": meter.contention, "rows": rows,
                      "constrained": constrained}))


if __name__ == "__main__":
    main()
