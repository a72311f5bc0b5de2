"""Gradient-based tuning on MNIST-1D: hypergradients, evolution strategies, knot schedules.

    python experiments/gradient_tuning.py              # about 13 minutes, busy 2-core CPU
    python experiments/gradient_tuning.py --quick      # a smoke run (a minute or two)

The MNIST-1D paper's MLP (40-100-100-10, Greydanus 2020) trained with Nesterov
momentum at batch size 64 (the momentum family has no ``sqrt(nu)`` whose derivative
is undefined at a parameter with zero gradient, see :mod:`jaxtune.hypergrad`).
Three parts:

(a) **Unroll length.** At one configuration, the reverse-mode hypergradient of the
    final validation loss in ``(log lr, momentum, log weight_decay)`` for unrolls
    of T steps (one program: the step budget is a traced hyperparameter), over
    ``--seeds-a`` member seeds, against the ES estimate (antithetic pairs, sigma
    in unit coordinates, the same seeds' runs) mapped to the same coordinates:
    norms, the spread over seeds and the cosine between the two. Also the cost of
    a hypergradient against a training run of the same members, side by side.
(b) **Refinement.** ``--seeds-b`` study seeds of Bayesian search alone
    (``--trials`` trials) against Bayesian search for half of them followed by ES
    or hypergradient refinement of the best configuration at an equal budget of
    member-steps (the hypergradients' cost is charged in member-steps at the ratio
    measured in (a)). Test accuracy of each study's chosen configuration
    (re-trained on 3 fresh seeds).
(c) **Knot schedule.** The best hand-designed schedule family (each family with
    its best lr from a grid, chosen on validation) against an 8-knot
    piecewise-linear schedule learned by hypergradient descent from the constant
    schedule at that lr: test accuracy over fresh seeds.

Printed: three tables and a last JSON line; figure
``experiments/figures/gradient_tuning.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

import numpy as np

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
KNOTS = 8


def mlp_experiment(jt: Any, space: Any, steps: int, eval_every: int, **defaults: Any) -> Any:
    return jt.Experiment(
        data=jt.data.mnist1d(), model=jt.models.MLP(width=100, depth=2), space=space,
        steps=steps, eval_every=eval_every,
        defaults={"optimizer": "nesterov", "batch_size": 64, **defaults}, name="mnist1d-mlp")


# --------------------------------------------------------------------------- (a)
def unroll(jt: Any, args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from jaxtune import hypergrad
    from jaxtune.benchmarks.common import CpuMeter

    lengths = list(args.unrolls)
    space = jt.Space(lr=jt.Real(1e-3, 1.0, log=True), momentum=jt.Real(0.0, 0.99),
                     weight_decay=jt.Real(1e-6, 1e-2, log=True),
                     steps=jt.Int(1, max(lengths)))
    exp = mlp_experiment(jt, space, max(lengths), args.eval_every)
    base = {"lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4}
    names = ("lr", "momentum", "weight_decay")
    seeds = args.seeds_a
    configs = [{**base, "steps": t} for t in lengths for _ in range(seeds)]
    keys = jax.random.split(jax.random.key(7), seeds)
    member_keys = jax.numpy.concatenate([keys] * len(lengths))
    static = exp.static_config(configs[0])
    data = jt.data.train_arrays(exp.data)

    # the hypergradient, and its cost next to a training run of the same members
    u = jax.numpy.asarray(hypergrad.to_unconstrained(space, names, configs))
    hp = exp.member_arrays(configs, static)
    call = (u, hp, member_keys, data)
    t0 = time.perf_counter()
    rev = hypergrad.make_hypergradient(exp, static, names, mode="reverse").lower(*call).compile()
    hg_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    train = jax.jit(jax.vmap(jt.make_train(exp, static).train, in_axes=(0, 0, None))
                    ).lower(hp, member_keys, data).compile()
    train_compile = time.perf_counter() - t0
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        jax.block_until_ready(train(hp, member_keys, data))
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        value, grad = jax.block_until_ready(rev(*call))
        hg_s = time.perf_counter() - t0
    grad = np.asarray(grad).reshape(len(lengths), seeds, len(names))

    # ES: antithetic pairs in unit coordinates, the same seeds, every length at once
    rng = np.random.default_rng(0)
    sigma, pairs = args.sigma, args.pairs
    width = np.array([math.log(1.0 / 1e-3), 0.99, math.log(1e-2 / 1e-6)])  # du/dz
    z0 = np.array([space[n].to_unit(base[n]) for n in names])
    eps = rng.standard_normal((pairs, len(names)))
    es_configs, es_keys = [], []
    for t in lengths:
        for j, e in enumerate(eps):
            for s in (1.0, -1.0):  # both members of a pair share a seed (common noise)
                z = np.clip(z0 + s * sigma * e, 0, 1)
                es_configs.append({**{n: space[n].from_unit(float(zi)) for n, zi in zip(names, z)},
                                   "steps": t})
                es_keys.append(keys[j % seeds])
    # the compiled training run above, len(configs) members at a time
    n = len(configs)
    es_configs += es_configs[:(-len(es_configs)) % n]
    es_keys += es_keys[:(-len(es_keys)) % n]
    final = []
    for i in range(0, len(es_configs), n):
        _, curves = train(exp.member_arrays(es_configs[i:i + n], static),
                          jax.numpy.stack(es_keys[i:i + n]), data)
        # the final loss at each member's own budget: the last evaluation (frozen after it)
        final.append(np.asarray(curves["val_loss"][:, -1]))
    losses = np.concatenate(final)[:len(lengths) * pairs * 2].reshape(len(lengths), pairs, 2)
    rows = []
    for i, t in enumerate(lengths):
        g_es = np.mean((losses[i, :, 0] - losses[i, :, 1])[:, None] / (2 * sigma) * eps, axis=0)
        g_es_u = g_es / width                     # dL/du from dL/dz
        g = grad[i]                               # (seeds, names), dL/du
        mean = g.mean(axis=0)
        cos = float(mean @ g_es_u / (np.linalg.norm(mean) * np.linalg.norm(g_es_u) + 1e-30))
        rows.append({"steps": t, "hg_norm": float(np.linalg.norm(mean)),
                     "hg_norm_max_seed": float(np.linalg.norm(g, axis=1).max()),
                     "hg_seed_spread": float(np.linalg.norm(g.std(axis=0))
                                             / (np.linalg.norm(mean) + 1e-30)),
                     "es_norm": float(np.linalg.norm(g_es_u)), "cosine": cos,
                     "val_loss": float(np.asarray(value).reshape(len(lengths), seeds)[i].mean())})
    return {"rows": rows, "cost": {"members": len(configs), "steps": max(lengths),
                                   "train_s": train_s, "reverse_s": hg_s,
                                   "reverse_over_train": hg_s / train_s,
                                   "hg_compile_s": hg_compile, "train_compile_s": train_compile,
                                   "contention": meter.contention}}


# --------------------------------------------------------------------------- (b)
def refinement(jt: Any, args: argparse.Namespace, cost_ratio: float) -> dict[str, Any]:
    space = jt.Space(lr=jt.Real(1e-3, 1.0, log=True), momentum=jt.Real(0.0, 0.99),
                     weight_decay=jt.Real(1e-6, 1e-2, log=True),
                     schedule=jt.Choice(["constant", "cosine", "linear"]))
    exp = mlp_experiment(jt, space, args.steps, args.eval_every)
    half = args.trials // 2
    pop = args.population
    # a gradient round: one hypergradient (cost_ratio runs) and `pop` proposals
    rounds = max(1, int((args.trials - half) // (pop + cost_ratio)))
    plans = {
        "bayes": dict(searcher="bayes", trials=args.trials),
        "bayes+es": dict(searcher="bayes+es", trials=args.trials, searcher_options={
            "switch_after": half, "top": 1, "then_options": {"pairs": pop // 2 or 1,
                                                             "sigma": 0.05, "lr": 0.05}}),
        "bayes+gradient": dict(searcher="bayes+gradient", trials=half + rounds * pop,
                               searcher_options={"switch_after": half, "top": 1,
                                                 "then_options": {"mode": "reverse",
                                                                  "lr": 0.05}}),
    }
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in plans}
    for seed in range(args.seeds_b):
        for name, plan in plans.items():
            t0 = time.perf_counter()
            study = jt.Study(exp, searcher=plan["searcher"], population=pop, seed=seed,
                             store=None, top_k=1, final_seeds=3, verbose=False, progress=False,
                             searcher_options=plan.get("searcher_options"))
            result = study.run(trials=plan["trials"])
            best = result.best
            runs = getattr(getattr(study.searcher, "refiner", None), "runs", 0)
            member_steps = len(result.finished) * exp.steps + runs * cost_ratio * exp.steps
            # trials are numbered in the order asked: the first `half` came from Bayes
            refined = name != "bayes" and best["trial"] >= half
            out[name].append({"seed": seed, "test_accuracy": best["test_accuracy"],
                              "val_accuracy": best["val_accuracy"], "config": best["config"],
                              "trials": len(result.finished), "hypergradients": runs,
                              "member_steps": member_steps,
                              "from_refiner": bool(refined),
                              "wall_s": time.perf_counter() - t0})
            print(f"  (b) seed {seed} {name:15s} test {best['test_accuracy']:.4f} "
                  f"val {best['val_accuracy']:.4f} member-steps {member_steps:,.0f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


# --------------------------------------------------------------------------- (c)
def knots(jt: Any, args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from jaxtune import hypergrad
    from jaxtune.search.refine import Adam

    families = ["constant", "cosine", "linear", "exponential", "one_cycle"]
    lrs = list(np.geomspace(0.01, 0.5, args.lr_grid))
    space = jt.Space(lr=jt.Real(1e-3, 1.0, log=True),
                     schedule=jt.Choice(families))
    exp = mlp_experiment(jt, space, args.steps, args.eval_every, momentum=0.9)
    data, test = jt.data.train_arrays(exp.data), jt.data.test_arrays(exp.data)
    seeds = args.seeds_c
    keys = jax.random.split(jax.random.key(11), seeds)
    fresh = jax.random.split(jax.random.key(12), seeds)

    programs: dict[int, Any] = {}

    def evaluate(exp_, configs, member_keys, with_test=False):
        static = exp_.static_config(configs[0])
        if id(exp_) not in programs:
            member = jt.make_train(exp_, static)
            programs[id(exp_)] = (jax.jit(jax.vmap(member.train, in_axes=(0, 0, None))),
                                  jax.jit(jax.vmap(member.test, in_axes=(0, None))))
        run, run_test = programs[id(exp_)]
        state, curves = run(exp_.member_arrays(configs, static), member_keys, data)
        val = np.asarray(curves["val_accuracy"][:, -1])
        if not with_test:
            return val, None
        return val, np.asarray(run_test(state, test)["test_accuracy"])

    grid = [{"lr": float(lr), "schedule": f} for f in families for lr in lrs]
    configs = [c for c in grid for _ in range(seeds)]
    val, _ = evaluate(exp, configs, jax.numpy.concatenate([keys] * len(grid)))
    val = val.reshape(len(grid), seeds).mean(axis=1)
    per_family = {}
    for f in families:
        i = max((j for j, c in enumerate(grid) if c["schedule"] == f), key=lambda j: val[j])
        per_family[f] = {"lr": grid[i]["lr"], "val_accuracy": float(val[i])}
    best_family = max(per_family, key=lambda f: per_family[f]["val_accuracy"])
    lr0 = per_family["constant"]["lr"]

    # learn 8 knots (multipliers of lr0) by hypergradient descent from the constant schedule
    names = tuple(f"knot_{i}" for i in range(KNOTS))
    kspace = jt.Space({n: jt.Real(0.02, 3.0, log=True) for n in names})
    kexp = mlp_experiment(jt, kspace, args.steps, args.eval_every, momentum=0.9,
                          schedule="knots", lr=lr0)
    static = kexp.static_config({n: 1.0 for n in names})
    fn = hypergrad.make_hypergradient(kexp, static, names, mode="reverse")
    u = np.zeros(KNOTS)
    opt = Adam(np.zeros(KNOTS), lr=args.knot_lr)
    hp = kexp.member_arrays([{n: 1.0 for n in names}] * seeds, static)
    history = []
    lo, hi = math.log(0.02), math.log(3.0)
    for _ in range(args.knot_steps):
        value, grad = fn(jax.numpy.asarray(np.tile(u, (seeds, 1))), hp, keys, data)
        g = np.asarray(grad).mean(axis=0)
        history.append({"val_loss": float(np.asarray(value).mean()),
                        "knots": np.exp(u).tolist()})
        if not np.all(np.isfinite(g)):
            break
        u = np.clip(u + opt.step(g), lo, hi)
    learned = {n: float(math.exp(v)) for n, v in zip(names, u)}

    # final: fresh seeds, test accuracy of the best family (its lr) and of the knots
    fam_cfg = {"lr": per_family[best_family]["lr"], "schedule": best_family}
    fam_val, fam_test = evaluate(exp, [fam_cfg] * seeds, fresh, with_test=True)
    const_val, const_test = evaluate(exp, [{"lr": lr0, "schedule": "constant"}] * seeds, fresh,
                                     with_test=True)
    knot_val, knot_test = evaluate(kexp, [learned] * seeds, fresh, with_test=True)
    return {"families": per_family, "best_family": best_family, "lr_grid": lrs,
            "history": history, "learned_knots": [learned[n] for n in names], "lr": lr0,
            "final": {
                f"best family ({best_family})": {"val": float(fam_val.mean()),
                                                 "test": float(fam_test.mean()),
                                                 "test_std": float(fam_test.std())},
                "constant (start)": {"val": float(const_val.mean()),
                                     "test": float(const_test.mean()),
                                     "test_std": float(const_test.std())},
                "learned knots": {"val": float(knot_val.mean()), "test": float(knot_test.mean()),
                                  "test_std": float(knot_test.std())}}}


# --------------------------------------------------------------------------- output
def figure(a: dict[str, Any], c: dict[str, Any], steps: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)
    t = [r["steps"] for r in a["rows"]]
    axes[0].loglog(t, [r["hg_norm"] for r in a["rows"]], "o-", label="hypergradient (mean)")
    axes[0].loglog(t, [r["hg_norm_max_seed"] for r in a["rows"]], "x:",
                   label="hypergradient (worst seed)")
    axes[0].loglog(t, [r["es_norm"] for r in a["rows"]], "s--", label="ES estimate")
    axes[0].set_xlabel("unrolled steps T")
    axes[0].set_ylabel("|dL/du|")
    axes[0].legend(fontsize=7)
    axes[0].set_title("(a) gradient norm vs unroll")
    axes[1].semilogx(t, [r["cosine"] for r in a["rows"]], "o-")
    axes[1].axhline(0, color="gray", lw=0.5)
    axes[1].set_ylim(-1.05, 1.05)
    for ax in axes[:2]:
        ax.set_xticks(t, [str(x) for x in t])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[1].set_xlabel("unrolled steps T")
    axes[1].set_title("(a) cosine(hypergradient, ES)")
    x = np.linspace(0, 1, 200)
    knots_v = np.asarray(c["learned_knots"])
    axes[2].plot(x * steps, np.interp(x, np.linspace(0, 1, len(knots_v)), knots_v) * c["lr"],
                 label="learned knots")
    axes[2].axhline(c["lr"], color="gray", ls="--", label="constant (start)")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("(c) learned schedule")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes")
    p.add_argument("--steps", type=int, default=300, help="(b), (c): steps per run")
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--unrolls", type=int, nargs="+", default=[25, 100, 400])
    p.add_argument("--lr", type=float, default=0.1, help="(a): the configuration's lr")
    p.add_argument("--seeds-a", type=int, default=4)
    p.add_argument("--pairs", type=int, default=12, help="(a): ES antithetic pairs")
    p.add_argument("--sigma", type=float, default=0.02, help="(a): ES sigma (unit coords)")
    p.add_argument("--seeds-b", type=int, default=5)
    p.add_argument("--trials", type=int, default=32, help="(b): Bayes-alone trials")
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--seeds-c", type=int, default=3)
    p.add_argument("--lr-grid", type=int, default=4)
    p.add_argument("--knot-steps", type=int, default=12)
    p.add_argument("--knot-lr", type=float, default=0.1)
    p.add_argument("--figure", default=os.path.join(FIGURES, "gradient_tuning.png"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.unrolls = 100, 50, [50, 100]
        args.seeds_a, args.pairs, args.seeds_b, args.trials = 2, 4, 1, 8
        args.seeds_c, args.lr_grid, args.knot_steps = 2, 2, 2
    t_start = time.perf_counter()

    import jaxtune as jt
    from jaxtune.benchmarks.common import commit

    a = unroll(jt, args)
    ratio = a["cost"]["reverse_over_train"]
    print(f"\n(a) hypergradient vs ES as the unroll grows (lr={args.lr}, momentum 0.9, wd 1e-4;"
          f" {args.seeds_a} seeds, {args.pairs} ES pairs, sigma {args.sigma})")
    print(f"{'T':>5} {'|hg| mean':>10} {'|hg| worst':>10} {'seed spread':>11} {'|es|':>9} "
          f"{'cosine':>7} {'val loss':>8}")
    for r in a["rows"]:
        print(f"{r['steps']:5d} {r['hg_norm']:10.3g} {r['hg_norm_max_seed']:10.3g} "
              f"{r['hg_seed_spread']:11.2f} {r['es_norm']:9.3g} {r['cosine']:7.2f} "
              f"{r['val_loss']:8.3f}")
    cost = a["cost"]
    print(f"cost, {cost['members']} members x {cost['steps']} steps: training run "
          f"{cost['train_s']:.2f} s, reverse hypergradient {cost['reverse_s']:.2f} s "
          f"({cost['reverse_over_train']:.1f}x); compile {cost['hg_compile_s']:.0f} s vs "
          f"{cost['train_compile_s']:.0f} s; contention {cost['contention']:.2f}", flush=True)

    b = refinement(jt, args, ratio)
    print(f"\n(b) test accuracy of the chosen configuration, {args.seeds_b} study seeds, "
          f"{args.trials} x {args.steps} member-steps each (population {args.population})")
    print(f"{'searcher':15s} {'test acc':>16} {'val acc':>8} {'member-steps':>12} "
          f"{'refiner chosen':>14}")
    for name, rows in b.items():
        t = np.array([r["test_accuracy"] for r in rows])
        v = np.array([r["val_accuracy"] for r in rows])
        ms = np.mean([r["member_steps"] for r in rows])
        chosen = sum(r["from_refiner"] for r in rows)
        print(f"{name:15s} {t.mean():.4f} +- {t.std():.4f} {v.mean():8.4f} {ms:12,.0f} "
              f"{chosen:>8d}/{len(rows)}")

    c = knots(jt, args)
    print(f"\n(c) schedules ({args.steps} steps, lr grid {len(c['lr_grid'])} per family, "
          f"{args.seeds_c} seeds): best lr per family on validation")
    for f, r in c["families"].items():
        print(f"  {f:12s} lr {r['lr']:.4f} val acc {r['val_accuracy']:.4f}")
    print(f"learned knots (x lr {c['lr']:.4f}): "
          + " ".join(f"{k:.2f}" for k in c["learned_knots"]))
    print(f"{'schedule':28s} {'val acc':>8} {'test acc':>16}  (fresh seeds)")
    for k, r in c["final"].items():
        print(f"{k:28s} {r['val']:8.4f} {r['test']:.4f} +- {r['test_std']:.4f}")
    if not args.quick:
        figure(a, c, args.steps, args.figure)
        print(f"figure: {args.figure}")
    summary = {
        "commit": commit(), "wall_s": time.perf_counter() - t_start,
        "sizes": {k: v for k, v in vars(args).items() if k != "figure"},
        "unroll": a["rows"], "cost": a["cost"],
        "refinement": {k: {"test_accuracy_mean": float(np.mean([r["test_accuracy"] for r in v])),
                           "test_accuracy": [r["test_accuracy"] for r in v],
                           "member_steps_mean": float(np.mean([r["member_steps"] for r in v])),
                           "refiner_chosen": int(sum(r["from_refiner"] for r in v))}
                       for k, v in b.items()},
        "knots": {"final": c["final"], "best_family": c["best_family"],
                  "learned_knots": c["learned_knots"], "lr": c["lr"]},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
