"""Benchmarks for jaxtune.search.

Sections (each a function returning a JSON-serialisable dict):

* :func:`proposal_latency`: wall time to propose one batch of ``q`` points after
  ``n_obs`` observations, jaxtune's :class:`~jaxtune.search.BayesSearcher`
  (one GP fit + kriging-believer selection) against scikit-optimize's own
  ``Optimizer.tell(X, y)`` + ``ask(n_points=q)`` (constant liar ``"cl_min"``,
  which refits the GP once per point), on the same data, the same GP
  surrogate, the same acquisition (EI) and the same number of random
  candidates.

Usage::

    python experiments/bench_search.py --json      # or: jaxtune bench search --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from jaxtune.search import BayesSearcher
from jaxtune.space import Choice, Int, Real, Space

SCHEDULES = ("cosine", "linear", "constant", "rsqrt")
OPTIMIZERS = ("adamw", "sgd", "lion")


def tuning_space(dims: int = 8) -> Space:
    """A realistic mixed tuning space with the first ``dims`` (6 to 8) hyperparameters."""
    full = {
        "lr": Real(1e-5, 1e-1, log=True),
        "weight_decay": Real(1e-6, 1e-1, log=True),
        "warmup": Real(0.0, 0.2),
        "schedule": Choice(SCHEDULES),
        "batch_size": Int(16, 1024, log=True),
        "dropout": Real(0.0, 0.5),
        "optimizer": Choice(OPTIMIZERS, static=True),
        "width": Int(32, 1024, log=True, static=True),
    }
    if not 6 <= dims <= len(full):
        raise ValueError(f"dims must be in [6, {len(full)}], got {dims}")
    return Space({k: full[k] for k in list(full)[:dims]})


def synthetic_loss(space: Space, config: dict[str, Any]) -> float:
    """A smooth objective: a tilted bowl in unit coordinates plus categorical offsets."""
    u = space.to_unit(config)
    centre = np.linspace(0.3, 0.7, len(u))
    loss = float(np.sum((u - centre) ** 2 * np.linspace(2.0, 0.5, len(u))))
    loss += 0.1 * math.sin(5.0 * u[0]) * math.cos(3.0 * u[1])
    if "schedule" in config:
        loss += 0.05 * SCHEDULES.index(config["schedule"])
    if "optimizer" in config:
        loss += (0.0, 0.15, 0.05)[OPTIMIZERS.index(config["optimizer"])]
    return loss


def proposal_latency(q: int = 64, n_obs: int = 256, dims: int = 8, seed: int = 0,
                     n_candidates: int = 8192, skopt: bool = True,
                     skopt_points: int = 8) -> dict[str, Any]:
    """Times one batch proposal of ``q`` points after ``n_obs`` observations.

    (a) ``BayesSearcher(surrogate="GP", acquisition="EI").tell(history)`` then
    ``ask(q)`` (one surrogate fit + kriging-believer selection among
    ``n_candidates``); (b) ``skopt.Optimizer(..., base_estimator="GP",
    acq_func="EI", acq_optimizer="sampling", n_points=n_candidates)`` then
    ``tell(X, y)`` + ``ask(n_points=q)`` (default strategy ``"cl_min"``).

    skopt's ``cl_min`` refits the GP once per point, so its time is linear in
    ``q``: when ``skopt_points < q`` the benchmark times ``tell`` and
    ``ask(n_points=skopt_points)`` and extrapolates ``tell + q / skopt_points *
    ask`` (reported as ``skopt_extrapolated``). Both sides run with BLAS
    limited to one thread, the faster setting for these small matrices.

    Returns:
        ``{"proposal_s", "skopt_proposal_s", "proposal_speedup", "q", "n_obs"}``
        plus ``"fit_s"``/``"select_s"`` (jaxtune's split), ``"dims"`` and
        ``"n_candidates"``. With ``skopt=False`` the skopt fields are ``None``.
    """
    space = tuning_space(dims)
    history = space.sample(n_obs, seed=seed + 1)
    losses = [synthetic_loss(space, c) for c in history]

    searcher = BayesSearcher(space, seed=seed, surrogate="GP", acquisition="EI",
                             n_candidates=n_candidates)
    t0 = time.perf_counter()
    searcher.tell(history, losses)
    batch = searcher.ask(q)
    proposal_s = time.perf_counter() - t0
    assert len(batch) == q

    skopt_s = None
    if skopt:
        from skopt import Optimizer

        opt = Optimizer(space.skopt_dimensions(), base_estimator="GP", acq_func="EI",
                        acq_optimizer="sampling", acq_optimizer_kwargs={"n_points": n_candidates},
                        random_state=seed)
        X = [space.to_point(c) for c in history]
        k = min(q, skopt_points)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            opt.tell(X, losses)
            t1 = time.perf_counter()
            points = opt.ask(n_points=k)
            t2 = time.perf_counter()
        assert len(points) == k
        skopt_s = (t1 - t0) + (t2 - t1) * q / k
    return {
        "proposal_s": proposal_s,
        "skopt_proposal_s": skopt_s,
        "proposal_speedup": None if skopt_s is None else skopt_s / proposal_s,
        "q": q,
        "n_obs": n_obs,
        "skopt_extrapolated": bool(skopt and skopt_points < q),
        "skopt_points_timed": min(q, skopt_points) if skopt else None,
        "fit_s": searcher.last_fit_s,
        "select_s": searcher.last_select_s,
        "dims": dims,
        "n_candidates": n_candidates,
    }


def format_latency(r: dict[str, Any]) -> str:
    rows = [
        ("jaxtune BayesSearcher.ask (GP fit + KB)", r["proposal_s"],
         f"fit {r['fit_s']:.2f} s + select {r['select_s']:.2f} s"),
    ]
    if r["skopt_proposal_s"] is not None:
        note = f"speedup x{r['proposal_speedup']:.1f}"
        if r["skopt_extrapolated"]:
            note += f" (extrapolated from ask(n_points={r['skopt_points_timed']}))"
        rows.append(("skopt Optimizer tell + ask (cl_min)", r["skopt_proposal_s"], note))
    head = (f"proposal latency: q={r['q']}, n_obs={r['n_obs']}, dims={r['dims']}, "
            f"candidates={r['n_candidates']}")
    width = max(len(name) for name, _, _ in rows)
    lines = [head, f"{'method':<{width}}  {'seconds':>8}  note"]
    lines += [f"{name:<{width}}  {sec:8.2f}  {note}" for name, sec, note in rows]
    return "\n".join(lines)


def efficiency_experiment(steps: int = 600, eval_every: int = 200):
    """The MNIST-1D MLP with an all-traced space (one bucket, one compile for every study)."""
    import jaxtune as jt

    space = jt.Space(
        lr=jt.Real(1e-4, 1e-1, log=True),
        weight_decay=jt.Real(1e-6, 1e-1, log=True),
        warmup=jt.Real(0.0, 0.2),
        schedule=jt.Choice(["constant", "cosine", "linear", "exponential"]),
        batch_size=jt.Int(16, 128, log=True),
        b1=jt.Real(0.5, 0.99),
    )
    return jt.Experiment(data=jt.data.mnist1d(), model=lambda hp: jt.models.MLP(width=100),
                         space=space, steps=steps, eval_every=eval_every,
                         defaults={"optimizer": "adamw"}, name="mnist1d-mlp-traced")


class OptunaSearcher:
    """Optuna's TPE behind jaxtune's ask/tell interface (batches via ``study.ask``)."""

    def __init__(self, space: Space, *, seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self._optuna = optuna
        self._study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        self._pending: list[tuple[dict[str, Any], Any]] = []
        self._dists = {name: dim.optuna_distribution() for name, dim in space.items()}

    def ask(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            trial = self._study.ask(self._dists)
            config = dict(trial.params)
            self._pending.append((config, trial))
            out.append(config)
        return out

    def tell(self, configs: list[dict[str, Any]], losses: list[float | None]) -> None:
        for config, loss in zip(configs, losses):
            match = next((p for p in self._pending if p[0] == config), None)
            if match is None:
                continue
            self._pending.remove(match)
            if loss is None or not math.isfinite(loss):
                self._study.tell(match[1], state=self._optuna.trial.TrialState.FAIL)
            else:
                self._study.tell(match[1], float(loss))


def sample_efficiency(searchers: tuple[str, ...] = ("random", "quasirandom", "bayes", "tpe"),
                      study_seeds: int = 5, trials: int = 64, population: int = 16,
                      steps: int = 600) -> dict[str, Any]:
    """Best validation accuracy after ``trials`` trials, per searcher, over study seeds.

    Every study trains with the same engine and budget; only the searcher
    differs. ``tpe`` (Optuna) is skipped when Optuna is not installed.
    """
    import jaxtune as jt

    exp = efficiency_experiment(steps=steps)
    rows: dict[str, Any] = {}
    for name in searchers:
        if name == "tpe":
            try:
                import optuna  # noqa: F401
            except ImportError:
                continue
        bests, walls = [], []
        for seed in range(study_seeds):
            searcher = (OptunaSearcher(exp.space, seed=seed) if name == "tpe"
                        else jt.search.make_searcher(name, exp.space, seed=seed))
            study = jt.Study(exp, searcher=searcher, store=None, population=population,
                             seed=seed, top_k=0, objective="val_accuracy",
                             direction="maximize", progress=False, verbose=False)
            t0 = time.perf_counter()
            result = study.run(trials=trials)
            walls.append(time.perf_counter() - t0)
            ranked = result.ranked()
            bests.append(ranked[0].objective if ranked else float("nan"))
        rows[name] = {"median": float(np.median(bests)), "per_seed": bests,
                      "mean_wall_s": float(np.mean(walls))}
    return {"trials": trials, "population": population, "steps": steps,
            "study_seeds": study_seeds, "searchers": rows}


def format_efficiency(r: dict[str, Any]) -> str:
    lines = [f"sample efficiency: best val_accuracy after {r['trials']} trials "
             f"(population {r['population']}, {r['steps']} steps, {r['study_seeds']} study seeds)",
             f"{'searcher':<12} {'median':>8}  {'wall s/study':>12}  per seed"]
    for name, row in r["searchers"].items():
        per = " ".join(f"{v:.4f}" for v in row["per_seed"])
        lines.append(f"{name:<12} {row['median']:8.4f}  {row['mean_wall_s']:12.1f}  {per}")
    return "\n".join(lines)


def anytime(budget_s: float = 120.0, steps: int = 1000, eval_every: int = 250,
            population: int = 32, seed: int = 0) -> dict[str, Any]:
    """Best validation accuracy against wall-clock time, same objective and budget.

    jaxtune: a Bayesian study, batch after batch (each batch one population).
    Optuna: TPE over the same space, each trial the plain per-trial training
    loop of :mod:`jaxtune.benchmarks.population` (a jitted step called from
    Python, compiled per trial as an Optuna objective is usually written). Both
    train the MNIST-1D MLP at batch 100 for ``steps`` steps per trial, and both
    stop starting new work once ``budget_s`` has passed. Compile time counts.
    """
    import jaxtune as jt
    from jaxtune.benchmarks import population as bp

    data = jt.data.mnist1d()
    exp = bp._experiment(data, steps, eval_every, 100)
    study = jt.Study(exp, searcher="bayes", store=None, population=population, seed=seed,
                     top_k=0, objective="val_accuracy", direction="maximize",
                     progress=False, verbose=False)
    ours: list[tuple[float, int, float]] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        result = study.run(trials=len(ours) * population + population)
        ours.append((time.perf_counter() - t0, len(result.trials),
                     result.ranked()[0].objective))
    theirs: list[tuple[float, int, float]] = []
    try:
        import optuna
    except ImportError:
        optuna = None
    if optuna is not None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        objective = bp._objective(data, steps=steps, eval_every=eval_every, batch=100,
                                  jit_once=False, times=[], accs=[])
        ostudy = optuna.create_study(direction="maximize",
                                     sampler=optuna.samplers.TPESampler(seed=seed))
        t0 = time.perf_counter()
        ostudy.optimize(objective, timeout=budget_s, callbacks=[
            lambda st, tr: theirs.append((time.perf_counter() - t0, len(st.trials),
                                          st.best_value))])
    return {"budget_s": budget_s, "steps": steps, "population": population,
            "jaxtune": ours, "optuna_loop": theirs}


def format_anytime(r: dict[str, Any]) -> str:
    marks = [t for t in (10, 20, 30, 60, 90, 120, 180, 300, 600) if t <= r["budget_s"] * 1.5]

    def best_at(curve: list, t: float) -> str:
        done = [c for c in curve if c[0] <= t]
        return f"{done[-1][2]:.4f} ({done[-1][1]:>4})" if done else "     -       "

    lines = [f"anytime: best val_accuracy (trials finished) vs wall-clock, {r['steps']} steps "
             f"per trial, jaxtune population {r['population']}",
             f"{'seconds':>8}  {'jaxtune bayes':>16}  {'optuna TPE loop':>16}"]
    for t in marks:
        lines.append(f"{t:>8}  {best_at(r['jaxtune'], t):>16}  "
                     f"{best_at(r['optuna_loop'], t):>16}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["latency", "efficiency", "anytime"],
                   choices=["latency", "efficiency", "anytime"])
    p.add_argument("--q", type=int, default=64, help="batch size to propose")
    p.add_argument("--n-obs", type=int, default=256, help="observations told first")
    p.add_argument("--dims", type=int, default=8, help="hyperparameters (6 to 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-candidates", type=int, default=8192)
    p.add_argument("--no-skopt", action="store_true", help="skip the (slow) skopt baseline")
    p.add_argument("--skopt-points", type=int, default=8,
                   help="points skopt proposes for real; the rest is extrapolated")
    p.add_argument("--trials", type=int, default=64, help="trials per study (efficiency)")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--study-seeds", type=int, default=5)
    p.add_argument("--anytime-budget", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--steps-anytime", type=int, default=1000)
    p.add_argument("--population-anytime", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    p.add_argument("--json", action="store_true", help="print the results as a last JSON line")
    args = p.parse_args(argv)
    if args.quick:
        args.q, args.n_obs, args.skopt_points, args.n_candidates = 8, 32, 2, 1024
        args.trials, args.population, args.steps, args.study_seeds = 8, 4, 50, 1
        args.anytime_budget, args.steps_anytime, args.population_anytime = 10.0, 100, 4
    from jaxtune.benchmarks.population import set_host_devices

    set_host_devices(os.cpu_count() or 1)

    results: dict[str, Any] = {}
    if "latency" in args.sections:
        r = proposal_latency(q=args.q, n_obs=args.n_obs, dims=args.dims, seed=args.seed,
                             n_candidates=args.n_candidates, skopt=not args.no_skopt,
                             skopt_points=args.skopt_points)
        results.update({k: r[k] for k in ("proposal_s", "skopt_proposal_s",
                                           "proposal_speedup")})
        results["proposal_latency"] = r
        print(format_latency(r), flush=True)
    if "efficiency" in args.sections:
        r = sample_efficiency(study_seeds=args.study_seeds, trials=args.trials,
                              population=args.population, steps=args.steps)
        results["best_val_accuracy"] = {k: v["median"] for k, v in r["searchers"].items()}
        results["sample_efficiency"] = r
        print(format_efficiency(r), flush=True)
    if "anytime" in args.sections:
        r = anytime(budget_s=args.anytime_budget, steps=args.steps_anytime,
                    population=args.population_anytime, seed=args.seed)
        results["anytime"] = r
        print(format_anytime(r), flush=True)
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
