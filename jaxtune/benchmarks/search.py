"""Benchmarks for jaxtune.search.

Sections (each a function returning a JSON-serialisable dict):

* :func:`proposal_latency`: wall time of ``BayesSearcher.ask(q)`` after
  ``n_obs`` observations of a synthetic objective on an 8-dimensional mixed
  space, as a study sees it (the previous batch fitted the GP on ``n_obs - q``
  observations), with the defaults (kernel fitted from scratch, a quarter of
  the candidates local), with ``warm_start=True`` and with uniform random
  candidates only (``local_candidates=0``); the surrogate's quality warm and
  from scratch (log marginal likelihood, held-out RMSE); and
  scikit-optimize's own ``Optimizer.tell`` +
  ``ask(n_points=q)`` (constant liar, one GP refit per point) against
  jaxtune on the same data with the **same number of kernel restarts** on
  both sides (0, and skopt's default 2).
* :func:`sample_efficiency`: the **test accuracy of the configuration each
  searcher picks** (the best validation trial of a 64-trial study, re-trained
  with fresh seeds and evaluated on the test split by the study), over study
  seeds, with paired tests (Wilcoxon signed-rank and paired t) of each
  searcher against random search. The best validation accuracy of the search
  itself (a maximum over 64 noisy trials, biased upward) is printed as well,
  labelled as such.

How soon a whole study reaches a target against Optuna written carefully is
measured by ``experiments/time_to_target.py``.

Run time on a quiet 2-core CPU with the defaults: about 11 minutes (latency
with both skopt baselines about 2 min; efficiency, 4 searchers x 20 study
seeds of 64 trials, about 9 min after a one-off compile of about 15 s).
``--quick`` runs every section on tiny settings in about
a minute (a smoke test, not a measurement).

Usage::

    python experiments/bench_search.py --json      # or: jaxtune bench search --json
    python experiments/bench_search.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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


def _losses(space: Space, configs: list[dict[str, Any]]) -> list[float]:
    return [synthetic_loss(space, c) for c in configs]


def study_ask(space: Space, q: int, n_obs: int, seed: int, n_candidates: int,
              warm_start: bool, n_heldout: int = 2000,
              local_candidates: float = 0.25) -> dict[str, Any]:
    """``ask(q)`` after ``n_obs`` observations, in the state a study leaves it.

    ``n_obs - q`` random configurations are told, one Bayesian batch of ``q``
    is asked and told (its fit, on ``n_obs - q`` observations, is the one a
    warm start starts from), then the next ``ask(q)`` is timed. Both settings
    of ``warm_start`` see identical data (the first fit is from scratch either
    way). Quality of the timed fit: its log marginal likelihood and the RMSE
    of its predictions at ``n_heldout`` fresh random configurations.
    """
    history = space.sample(n_obs - q, seed=seed + 1)
    s = BayesSearcher(space, seed=seed, surrogate="GP", acquisition="EI",
                      n_candidates=n_candidates, warm_start=warm_start,
                      local_candidates=local_candidates,
                      n_initial=min(max(8, 2 * len(space)), n_obs - q))
    s.tell(history, _losses(space, history))
    previous = s.ask(q)
    s.tell(previous, _losses(space, previous))
    t0 = time.perf_counter()
    batch = s.ask(q)
    ask_s = time.perf_counter() - t0
    assert len(batch) == q and s.last_fit_warm == warm_start
    heldout = space.sample(n_heldout, seed=seed + 10_000)
    rmse = float(np.sqrt(np.mean((s.predict(heldout) - _losses(space, heldout)) ** 2)))
    configs, losses = s.observations()
    return {"ask_s": ask_s, "fit_s": s.last_fit_s, "select_s": s.last_select_s,
            "log_marginal_likelihood": float(s.fit().log_marginal_likelihood_value_),
            "heldout_rmse": rmse, "configs": configs, "losses": losses.tolist()}


def skopt_proposal(space: Space, configs: list[dict[str, Any]], losses: list[float], q: int,
                   points: int, restarts: int, n_candidates: int, seed: int) -> dict[str, Any]:
    """skopt's ``Optimizer.tell(X, y)`` + ``ask(n_points=q)`` (``"cl_min"``).

    The GP is skopt's default (``cook_estimator("GP")``) with
    ``n_restarts_optimizer=restarts``. ``cl_min`` refits the GP once per point,
    so the ask is linear in ``q``: only ``ask(n_points=points)`` is run and the
    time for ``q`` is extrapolated as ``tell + ask * q / points``.
    """
    from skopt import Optimizer
    from skopt.utils import cook_estimator

    dims = space.skopt_dimensions()
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        gp = cook_estimator("GP", space=dims, random_state=seed, n_restarts_optimizer=restarts)
        opt = Optimizer(dims, base_estimator=gp, acq_func="EI", acq_optimizer="sampling",
                        acq_optimizer_kwargs={"n_points": n_candidates}, random_state=seed)
        k = min(q, points)
        t0 = time.perf_counter()
        opt.tell([space.to_point(c) for c in configs], list(losses))
        t1 = time.perf_counter()
        asked = opt.ask(n_points=k)
        t2 = time.perf_counter()
    assert len(asked) == k
    return {"tell_s": t1 - t0, "ask_s": t2 - t1, "points_timed": k,
            "extrapolated": k < q, "proposal_s": (t1 - t0) + (t2 - t1) * q / k}


def proposal_latency(q: int = 64, n_obs: int = 256, dims: int = 8, seed: int = 0,
                     n_candidates: int = 8192, skopt: bool = True, skopt_points: int = 8,
                     restarts: tuple[int, ...] = (0, 2),
                     quality_seeds: int = 3) -> dict[str, Any]:
    """Times one batch proposal of ``q`` points after ``n_obs`` observations.

    (a) As in a study (:func:`study_ask`): the defaults, ``warm_start=True``
    and ``local_candidates=0``, for
    ``quality_seeds`` seeds (medians reported, per-seed rows kept). (b) On the
    ``n_obs`` observations of seed ``seed``, told at once to a fresh searcher
    (so its fit is from scratch, like skopt's), for each number of GP restarts
    in ``restarts``: ``BayesSearcher(gp_restarts=r)`` tell + ask(q) against
    :func:`skopt_proposal` with ``n_restarts_optimizer=r``, the same GP,
    acquisition (EI) and number of candidates. Both sides run with BLAS
    limited to one thread, the faster setting for these small matrices.

    Returns:
        ``proposal_s`` (median ask with the defaults), ``proposal_warm_s``
        (warm-started), ``proposal_uniform_s`` (random candidates only),
        ``fit_s``/``select_s`` (medians, defaults), ``quality`` (per seed,
        each way), ``matched`` (per restart count: ``jaxtune_s``,
        ``skopt`` timings, ``speedup``), and the settings.
    """
    space = tuning_space(dims)
    runs: dict[str, list[dict[str, Any]]] = {"scratch": [], "warm": [], "uniform": []}
    for sd in range(seed, seed + quality_seeds):
        for name in runs:
            runs[name].append(study_ask(space, q, n_obs, sd, n_candidates,
                                        warm_start=name == "warm",
                                        local_candidates=0.0 if name == "uniform" else 0.25))
    configs, losses = runs["scratch"][0]["configs"], runs["scratch"][0]["losses"]
    quality = {name: [{k: v for k, v in r.items() if k not in ("configs", "losses")}
                      for r in rs] for name, rs in runs.items()}
    matched: dict[str, Any] = {}
    for r in restarts:
        s = BayesSearcher(space, seed=seed, surrogate="GP", acquisition="EI",
                          n_candidates=n_candidates, gp_restarts=r)
        t0 = time.perf_counter()
        s.tell(configs, losses)
        assert len(s.ask(q)) == q
        row: dict[str, Any] = {"jaxtune_s": time.perf_counter() - t0, "fit_s": s.last_fit_s,
                               "select_s": s.last_select_s, "skopt": None, "speedup": None}
        if skopt:
            row["skopt"] = skopt_proposal(space, configs, losses, q, skopt_points, r,
                                          n_candidates, seed)
            row["speedup"] = row["skopt"]["proposal_s"] / row["jaxtune_s"]
        matched[str(r)] = row

    def median(name: str, key: str) -> float:
        return float(statistics.median(x[key] for x in quality[name]))

    first = matched[str(restarts[0])]
    return {
        "proposal_s": median("scratch", "ask_s"), "proposal_warm_s": median("warm", "ask_s"),
        "proposal_uniform_s": median("uniform", "ask_s"),
        "fit_s": median("scratch", "fit_s"), "select_s": median("scratch", "select_s"),
        "fit_warm_s": median("warm", "fit_s"), "select_warm_s": median("warm", "select_s"),
        "select_uniform_s": median("uniform", "select_s"),
        "skopt_proposal_s": first["skopt"]["proposal_s"] if skopt else None,
        "proposal_speedup": first["speedup"], "speedup_restarts": restarts[0],
        "quality": quality, "matched": matched, "q": q, "n_obs": n_obs, "dims": dims,
        "n_candidates": n_candidates, "quality_seeds": quality_seeds,
    }


def _table(head: str, columns: list[str], rows: list[list[str]], align: str = "") -> str:
    """A plain-text table; ``align`` per column, ``l`` or ``r`` (default: first left)."""
    align = align or "l" + "r" * (len(columns) - 1)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(f"{c:<{w}}" if a == "l" else f"{c:>{w}}"
                                   for c, w, a in zip(cells, widths, align)).rstrip()
    return "\n".join([head, line(columns), *(line(r) for r in rows)])


def format_latency(r: dict[str, Any]) -> str:
    n = r["quality_seeds"]
    head = (f"proposal latency: ask(q={r['q']}) after n_obs={r['n_obs']} observations, "
            f"dims={r['dims']}, candidates={r['n_candidates']}, BLAS 1 thread")
    rows = [[f"jaxtune ask in a study, defaults (median of {n})", "0",
             f"{r['proposal_s']:.2f}", f"fit {r['fit_s']:.2f} + select {r['select_s']:.2f}"],
            [f"jaxtune ask in a study, warm_start=True (median of {n})", "0",
             f"{r['proposal_warm_s']:.2f}",
             f"fit {r['fit_warm_s']:.2f} + select {r['select_warm_s']:.2f}"],
            [f"jaxtune ask in a study, local_candidates=0 (median of {n})", "0",
             f"{r['proposal_uniform_s']:.2f}", f"select {r['select_uniform_s']:.2f}"]]
    for restarts, m in r["matched"].items():
        rows.append([f"jaxtune tell {r['n_obs']} + ask, fresh searcher", restarts,
                     f"{m['jaxtune_s']:.2f}", f"fit {m['fit_s']:.2f} + select {m['select_s']:.2f}"])
        sk = m["skopt"]
        if sk is not None:
            note = (f"x{m['speedup']:.0f} vs the row above; "
                    + (f"EXTRAPOLATED: tell {sk['tell_s']:.1f} + ask(n_points="
                       f"{sk['points_timed']}) {sk['ask_s']:.1f} x {r['q']}/{sk['points_timed']}"
                       if sk["extrapolated"] else "timed in full"))
            rows.append(["skopt Optimizer tell + ask(n_points), cl_min", restarts,
                         f"{sk['proposal_s']:.2f}", note])
    out = _table(head, ["method", "GP restarts", "seconds", "note"], rows, align="lrrl")
    qrows = []
    for i in range(n):
        w, c = r["quality"]["warm"][i], r["quality"]["scratch"][i]
        qrows.append([str(i), f"{w['fit_s']:.2f}", f"{c['fit_s']:.2f}",
                      f"{w['log_marginal_likelihood']:.3f}", f"{c['log_marginal_likelihood']:.3f}",
                      f"{w['heldout_rmse']:.5f}", f"{c['heldout_rmse']:.5f}"])
    qhead = ("surrogate quality of that fit, warm-started vs from scratch (log marginal "
             "likelihood, higher is better; RMSE at 2000 held-out random configurations)")
    return out + "\n" + _table(qhead, ["seed", "fit warm", "fit scratch", "LML warm",
                                        "LML scratch", "RMSE warm", "RMSE scratch"], qrows)


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
    """An Optuna sampler (default: TPE) behind jaxtune's ask/tell interface.

    A batch of ``n`` is ``n`` calls of ``study.ask`` with each dimension's own
    ``optuna_distribution()``, told when its losses arrive.

    Args:
        space: the search space.
        seed: seeds the default ``TPESampler(seed=seed)``.
        sampler: another Optuna sampler (seeded by the caller), e.g.
            ``TPESampler(constant_liar=True, multivariate=True)`` or ``GPSampler``.
    """

    def __init__(self, space: Space, *, seed: int = 0, sampler: Any = None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self._optuna = optuna
        if sampler is None:
            sampler = optuna.samplers.TPESampler(seed=seed)
        self._study = optuna.create_study(sampler=sampler)
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
                      study_seeds: int = 20, trials: int = 64, population: int = 16,
                      steps: int = 600, final_seeds: int = 3) -> dict[str, Any]:
    """Test accuracy of the configuration each searcher picks, over study seeds.

    Each study (public :class:`jaxtune.Study` API, no store) runs ``trials``
    trials maximising the validation accuracy, then re-trains its best trial
    with ``final_seeds`` fresh seeds and evaluates it on the test split
    (``top_k=1``): that mean test accuracy is the searcher's score for the
    seed. Every study trains with the same engine and budget; only the
    searcher differs. Study seed ``i`` of every searcher uses the same member
    keys, so scores are paired by seed: :func:`paired_tests` compares each
    searcher with random search. ``tpe`` (Optuna) is skipped when Optuna is
    not installed.
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
        tests, vals, walls = [], [], []
        for seed in range(study_seeds):
            searcher = (OptunaSearcher(exp.space, seed=seed) if name == "tpe"
                        else jt.search.make_searcher(name, exp.space, seed=seed))
            study = jt.Study(exp, searcher=searcher, store=None, population=population,
                             seed=seed, top_k=1, final_seeds=final_seeds,
                             objective="val_accuracy", direction="maximize", progress=False,
                             verbose=False)
            t0 = time.perf_counter()
            best = study.run(trials=trials).best or {}
            walls.append(time.perf_counter() - t0)
            tests.append(float(best.get("test_accuracy", math.nan)))
            vals.append(float(best.get("val_accuracy", math.nan)))
        rows[name] = {"test_accuracy": float(np.mean(tests)), "per_seed_test": tests,
                      "best_val_median": float(np.median(vals)), "per_seed_best_val": vals,
                      "mean_wall_s": float(np.mean(walls))}
    return {"trials": trials, "population": population, "steps": steps,
            "study_seeds": study_seeds, "final_seeds": final_seeds, "searchers": rows,
            "vs_random": paired_tests(rows)}


def paired_tests(rows: dict[str, Any], baseline: str = "random") -> dict[str, Any]:
    """Each searcher's per-seed test accuracy against ``baseline``'s, paired by seed.

    Returns, per searcher: the mean difference, wins/ties/losses, and the
    p-values of the Wilcoxon signed-rank test (zero differences dropped) and
    the paired t-test, one-sided (``searcher > baseline``) and two-sided.
    ``None`` where a test is undefined (fewer than two seeds, or every
    difference zero).
    """
    from scipy import stats

    if baseline not in rows:
        return {}
    base = np.asarray(rows[baseline]["per_seed_test"], float)
    out = {}
    for name, row in rows.items():
        if name == baseline:
            continue
        d = np.asarray(row["per_seed_test"], float) - base
        res: dict[str, Any] = {"mean_diff": float(np.mean(d)), "wins": int(np.sum(d > 0)),
                               "ties": int(np.sum(d == 0)), "losses": int(np.sum(d < 0)),
                               "n": len(d)}
        defined = len(d) >= 2 and np.any(d != 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for alt, tag in (("greater", "one_sided"), ("two-sided", "two_sided")):
                res[f"wilcoxon_p_{tag}"] = (float(stats.wilcoxon(d, alternative=alt).pvalue)
                                           if defined else None)
                res[f"t_p_{tag}"] = (float(stats.ttest_rel(row["per_seed_test"], base,
                                                           alternative=alt).pvalue)
                                     if defined and np.std(d) > 0 else None)
        out[name] = res
    return out


def format_efficiency(r: dict[str, Any]) -> str:
    head = (f"sample efficiency: test accuracy of the configuration each searcher picks "
            f"(best val of {r['trials']} trials, re-trained with {r['final_seeds']} fresh "
            f"seeds), population {r['population']}, {r['steps']} steps, "
            f"{r['study_seeds']} study seeds")
    rows = [[name, f"{row['test_accuracy']:.4f}", f"{row['best_val_median']:.4f}",
             f"{row['mean_wall_s']:.1f}", " ".join(f"{v:.4f}" for v in row["per_seed_test"])]
            for name, row in r["searchers"].items()]
    out = _table(head, ["searcher", "mean test", "median best val (biased)", "wall s/study",
                        "test per seed"], rows, align="lrrrl")

    def p(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    prows = [[name, f"{t['mean_diff']:+.4f}", f"{t['wins']}/{t['ties']}/{t['losses']}",
              p(t["wilcoxon_p_one_sided"]), p(t["wilcoxon_p_two_sided"]),
              p(t["t_p_one_sided"]), p(t["t_p_two_sided"])]
             for name, t in r["vs_random"].items()]
    if prows:
        out += "\n" + _table(
            "paired by study seed against random (test accuracy; one-sided: searcher > random)",
            ["searcher", "mean diff", "win/tie/loss", "Wilcoxon p 1-sided", "Wilcoxon p 2-sided",
             "paired-t p 1-sided", "paired-t p 2-sided"], prows)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["latency", "efficiency"],
                   choices=["latency", "efficiency"])
    p.add_argument("--q", type=int, default=64, help="batch size to propose")
    p.add_argument("--n-obs", type=int, default=256, help="observations before the timed ask")
    p.add_argument("--dims", type=int, default=8, help="hyperparameters (6 to 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-candidates", type=int, default=8192)
    p.add_argument("--quality-seeds", type=int, default=3,
                   help="seeds of the warm-start vs from-scratch comparison")
    p.add_argument("--no-skopt", action="store_true", help="skip the (slow) skopt baseline")
    p.add_argument("--skopt-points", type=int, default=8,
                   help="points skopt proposes for real; the rest is extrapolated")
    p.add_argument("--restarts", type=int, nargs="+", default=[0, 2],
                   help="GP kernel restarts, matched on both sides of the skopt comparison")
    p.add_argument("--trials", type=int, default=64, help="trials per study (efficiency)")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--study-seeds", type=int, default=20)
    p.add_argument("--final-seeds", type=int, default=3,
                   help="fresh seeds re-training each study's pick for its test accuracy")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
    p.add_argument("--json", action="store_true", help="print the results as a last JSON line")
    args = p.parse_args(argv)
    if args.quick:
        args.q, args.n_obs, args.skopt_points, args.n_candidates = 8, 32, 2, 1024
        args.quality_seeds = 1
        args.trials, args.population, args.steps, args.study_seeds = 16, 4, 50, 2
        args.final_seeds = 2
    from jaxtune.devices import set_host_devices

    set_host_devices()
    from jaxtune.benchmarks.common import CpuMeter, commit

    results: dict[str, Any] = {"benchmark": "search", "commit": commit()}
    print(f"# commit {results['commit']}", flush=True)
    with CpuMeter() as meter:
        if "latency" in args.sections:
            r = proposal_latency(q=args.q, n_obs=args.n_obs, dims=args.dims, seed=args.seed,
                                 n_candidates=args.n_candidates, skopt=not args.no_skopt,
                                 skopt_points=args.skopt_points, restarts=tuple(args.restarts),
                                 quality_seeds=args.quality_seeds)
            results.update({k: r[k] for k in ("proposal_s", "proposal_warm_s",
                                               "proposal_uniform_s", "skopt_proposal_s",
                                               "proposal_speedup")})
            for restarts, m in r["matched"].items():
                results[f"proposal_s_restarts{restarts}"] = m["jaxtune_s"]
                results[f"skopt_proposal_s_restarts{restarts}"] = (
                    m["skopt"]["proposal_s"] if m["skopt"] else None)
                results[f"proposal_speedup_restarts{restarts}"] = m["speedup"]
            results["proposal_latency"] = r
            print(format_latency(r), flush=True)
        if "efficiency" in args.sections:
            r = sample_efficiency(study_seeds=args.study_seeds, trials=args.trials,
                                  population=args.population, steps=args.steps,
                                  final_seeds=args.final_seeds)
            for name, row in r["searchers"].items():
                results[f"{name}_test_accuracy"] = row["test_accuracy"]
                results[f"{name}_best_val_accuracy"] = row["best_val_median"]
            for name, t in r["vs_random"].items():
                results[f"{name}_vs_random_wilcoxon_p"] = t["wilcoxon_p_one_sided"]
            results["best_val_accuracy"] = {k: v["best_val_median"]
                                            for k, v in r["searchers"].items()}
            results["test_accuracy"] = {k: v["test_accuracy"] for k, v in r["searchers"].items()}
            results["sample_efficiency"] = r
            print(format_efficiency(r), flush=True)
    results["contention"] = meter.contention
    print(f"# contention {meter.contention:.3f} (CPU time of other processes / capacity)")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
