"""Conditional against flattened spaces: evaluations to reach the optimum of a conditional function.

The function is a synthetic loss of a training set-up whose hyperparameters
depend on each other the way real ones do: ``momentum`` matters only for
``sgd``/``nesterov``, ``b1``/``b2`` only for ``adam``, ``warmup`` only for the
``cosine`` schedule and ``step_factor`` only for ``step``, and a second layer's
``width2`` only when ``depth >= 2``. Its minimum, 0, is at ``nesterov``,
``lr = 0.05``, ``momentum = 0.9``, ``cosine`` with ``warmup = 0.1``, ``depth
= 2`` and ``width2 = 64`` (:func:`conditional_loss`).

The same searcher (``bayes``, the default GP, or any of :data:`jaxtune.search.SEARCHERS`)
runs on two spaces with the same dimensions: the *conditional* one (``when=``,
inactive dimensions absent) and the *flattened* one (every dimension always
present; the function ignores the irrelevant ones, so the searcher has to
learn that they do not matter). Each run asks batches of ``q`` until the best
loss is within ``epsilon`` of the minimum or the budget is spent; the figure is
the number of evaluations it took (the budget plus one when it never got
there), and the table gives its median over seeds. The searchers' proposals
are all that differ: no training runs, so the measurement does not depend on
the machine (the wall time is printed with the contention).

    python experiments/bench_conditional.py                # 10 seeds, budget 160, q=8
    python experiments/bench_conditional.py --quick        # 3 seeds, budget 64

Example:
    >>> conditional_loss(OPTIMUM)
    0.0
    >>> sorted(CONDITIONAL_SPACE.validate(OPTIMUM)) == sorted(OPTIMUM)
    True
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.benchmarks.common import CpuMeter, commit
from jaxtune.search import make_searcher
from jaxtune.space import Choice, Int, Real, Space

__all__ = ["CONDITIONAL_SPACE", "FLAT_SPACE", "OPTIMUM", "conditional_loss", "evals_to_target",
           "main", "run"]

_ADAM = ("adam",)
_MOMENTUM = ("sgd", "nesterov")


def _dims(conditional: bool) -> dict[str, Any]:
    def when(**cond: Any) -> dict[str, Any]:
        return {"when": cond} if conditional else {}

    return {
        "optimizer": Choice(["adam", "sgd", "nesterov"]),
        "lr": Real(1e-4, 1.0, log=True),
        "momentum": Real(0.5, 0.99, **when(optimizer=_MOMENTUM)),
        "b1": Real(0.5, 0.99, **when(optimizer=_ADAM)),
        "b2": Real(0.9, 0.9999, log=True, **when(optimizer=_ADAM)),
        "schedule": Choice(["constant", "cosine", "step"]),
        "warmup": Real(0.0, 0.5, **when(schedule="cosine")),
        "step_factor": Real(0.05, 0.5, log=True, **when(schedule="step")),
        "depth": Int(1, 3),
        "width2": Int(8, 512, log=True, **when(depth=range(2, 4))),
    }


#: The space with conditions.
CONDITIONAL_SPACE = Space(_dims(True))
#: The same dimensions, all always active.
FLAT_SPACE = Space(_dims(False))
#: Where :func:`conditional_loss` is 0.
OPTIMUM = {"optimizer": "nesterov", "lr": 0.05, "momentum": 0.9, "schedule": "cosine",
           "warmup": 0.1, "depth": 2, "width2": 64}


def conditional_loss(config: Mapping[str, Any]) -> float:
    """The synthetic loss: a sum of smooth terms, each read only where it is active.

    Every optimizer has its own best learning rate and its own offset (``adam``
    0.1, ``sgd`` 0.05, ``nesterov`` 0), as do the schedules (``constant`` 0.15,
    ``step`` 0.05, ``cosine`` 0) and the depths (1: 0.2, 3: 0.02). Inactive
    hyperparameters are never read, so the flattened space's extra values do
    not change the loss.
    """
    opt = config["optimizer"]
    best_lr = {"adam": 3e-3, "sgd": 0.1, "nesterov": 0.05}[opt]
    loss = 0.5 * math.log10(config["lr"] / best_lr) ** 2
    loss += {"adam": 0.1, "sgd": 0.05, "nesterov": 0.0}[opt]
    if opt in _MOMENTUM:
        loss += 8.0 * (config["momentum"] - 0.9) ** 2
    else:
        loss += 4.0 * (config["b1"] - 0.9) ** 2 + 0.2 * math.log10(
            (1.0 - config["b2"]) / 1e-3) ** 2
    sched = config["schedule"]
    if sched == "constant":
        loss += 0.15
    elif sched == "cosine":
        loss += 2.0 * (config["warmup"] - 0.1) ** 2
    else:
        loss += 0.05 + 0.5 * math.log10(config["step_factor"] / 0.2) ** 2
    depth = config["depth"]
    if depth == 1:
        loss += 0.2
    else:
        loss += (0.02 if depth == 3 else 0.0) + 0.1 * math.log2(config["width2"] / 64) ** 2
    return float(loss)


def evals_to_target(space: Space, *, searcher: str = "bayes", seed: int = 0, q: int = 8,
                    budget: int = 160, epsilon: float = 0.05, **kw: Any) -> dict[str, Any]:
    """Runs ``searcher`` on ``space`` in batches of ``q`` until the best loss is within
    ``epsilon`` of the minimum (0) or ``budget`` evaluations are spent.

    Returns:
        ``{"evals": n, "reached": bool, "best": loss, "inactive_told": k}``: ``n``
        the evaluations up to and including the first within ``epsilon`` (``budget
        + 1`` if none), ``k`` how many told configurations held a value the function
        did not read (always 0 for a conditional space).

    Example:
        >>> r = evals_to_target(CONDITIONAL_SPACE, searcher="random", q=4, budget=8)
        >>> r["evals"] <= 9 and r["inactive_told"]
        0
    """
    s = make_searcher(searcher, space, seed=seed, **kw)
    best, n, first, inactive = math.inf, 0, None, 0
    while n < budget and first is None:
        batch = s.ask(min(q, budget - n))
        if not batch:
            break
        losses = []
        for c in batch:
            cond = CONDITIONAL_SPACE.prune(c)
            inactive += int(len(cond) != len(c))
            losses.append(conditional_loss(cond))
            n += 1
            best = min(best, losses[-1])
            if first is None and best <= epsilon:
                first = n
        s.tell(batch, losses)
    return {"evals": first if first is not None else budget + 1, "reached": first is not None,
            "best": best, "inactive_told": inactive}


def run(seeds: Sequence[int] = range(10), *, searcher: str = "bayes", q: int = 8,
        budget: int = 160, epsilon: float = 0.05) -> dict[str, Any]:
    """Both spaces, every seed: the per-seed results and their medians."""
    out: dict[str, Any] = {"searcher": searcher, "q": q, "budget": budget, "epsilon": epsilon,
                           "seeds": list(seeds)}
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        for label, space in (("conditional", CONDITIONAL_SPACE), ("flattened", FLAT_SPACE)):
            runs = [evals_to_target(space, searcher=searcher, seed=s, q=q, budget=budget,
                                    epsilon=epsilon) for s in seeds]
            evals = [r["evals"] for r in runs]
            out[label] = {"evals": evals, "median_evals": float(np.median(evals)),
                          "reached": sum(r["reached"] for r in runs),
                          "median_best": float(np.median([r["best"] for r in runs]))}
        wall = time.perf_counter() - t0
    out["ratio_flat_to_conditional"] = (out["flattened"]["median_evals"]
                                        / out["conditional"]["median_evals"])
    out.update(wall_s=wall, contention=meter.contention, commit=commit())
    return out


def _table(r: Mapping[str, Any]) -> str:
    lines = [f"# commit {r['commit']}; searcher {r['searcher']}, q={r['q']}, budget "
             f"{r['budget']}, epsilon {r['epsilon']}, {len(r['seeds'])} seeds; wall "
             f"{r['wall_s']:.0f} s, contention {r['contention']:.0%}",
             f"{'space':<12} {'median evals':>12} {'reached':>8} {'median best':>12}  evals"]
    for label in ("conditional", "flattened"):
        x = r[label]
        lines.append(f"{label:<12} {x['median_evals']:>12.1f} {x['reached']:>5}/{len(r['seeds'])}"
                     f" {x['median_best']:>12.4f}  {x['evals']}")
    lines.append(f"flattened / conditional median evaluations: "
                 f"{r['ratio_flat_to_conditional']:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--searcher", default="bayes")
    p.add_argument("--q", type=int, default=8)
    p.add_argument("--budget", type=int, default=160)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="3 seeds, budget 64")
    a = p.parse_args(argv)
    seeds, budget = (3, 64) if a.quick else (a.seeds, a.budget)
    r = run(range(seeds), searcher=a.searcher, q=a.q, budget=budget, epsilon=a.epsilon)
    print(_table(r))
    print(json.dumps(r))
    return r
