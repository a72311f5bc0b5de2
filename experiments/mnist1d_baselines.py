"""Tune the MNIST-1D paper's three baselines with jaxtune and compare with its table.

    python experiments/mnist1d_baselines.py          # over 15 minutes, 2-core CPU (the CNN)
    python experiments/mnist1d_baselines.py --models logistic mlp --trials 32

Greydanus (2020), "Scaling down deep learning", reports test accuracy on
MNIST-1D (4000 training, 1000 test examples) of 32% for logistic regression,
68% for the MLP and 94% for the 1-D CNN. Each model here gets one study: Bayesian
search with successive halving (ASHA), ``--trials`` trials of at most the
experiment's step budget, population 16 per bucket, on the same 4000/1000
split (10% of the training examples held out for validation). The best trial
on validation is re-trained with 3 fresh seeds and scored on the test split.
Printed: a table next to the published figures, a bar figure
(``experiments/figures/mnist1d_baselines.png``) and a last JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
PUBLISHED = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94}


def experiments(jt: Any, steps: dict[str, int]) -> dict[str, Any]:
    """The three baselines: logistic regression and the built-in MLP and CNN."""
    logistic = jt.Experiment(
        data=jt.data.mnist1d(), model=jt.models.Logistic(),
        space=jt.Space(lr=jt.Real(1e-4, 1e-1, log=True),
                       weight_decay=jt.Real(1e-6, 1e-1, log=True),
                       batch_size=jt.Int(16, 256, log=True)),
        steps=steps["logistic"], eval_every=250, defaults={"optimizer": "adamw"},
        name="mnist1d-logistic")
    return {"logistic": logistic,
            "mlp": jt.zoo.mnist1d_mlp(steps=steps["mlp"]),
            "cnn": jt.zoo.mnist1d_cnn(steps=steps["cnn"])}


def tune(jt: Any, exp: Any, trials: int, population: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = jt.Study(exp, searcher="bayes", scheduler="asha", population=population,
                      store=None, top_k=1, final_seeds=3, seed=seed, verbose=False,
                      progress=False).run(trials=trials)
    best = result.best
    return {"test_accuracy": best["test_accuracy"],
            "test_accuracy_std": next(r.get("test_accuracy_std") for r in result.finals
                                      if r["trial"] == best["trial"]),
            "val_accuracy": best["val_accuracy"], "config": best["config"],
            "trials": len(result.finished), "wall_s": time.perf_counter() - t0,
            "compiles": result.compiles, "steps": exp.steps}


def figure(rows: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [PUBLISHED[n] for n in names], 0.4, color="grey",
           label="published (Greydanus 2020)")
    ax.bar([i + 0.2 for i in x], [rows[n]["test_accuracy"] for n in names], 0.4,
           yerr=[rows[n]["test_accuracy_std"] for n in names], capsize=3, color="tab:blue",
           label="tuned by jaxtune (3 seeds)")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("MNIST-1D test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--steps", type=int, nargs=3, default=[2000, 1500, 3000],
                   metavar=("LOGISTIC", "MLP", "CNN"), help="step budget of a trial")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default=os.path.join(FIGURES, "mnist1d_baselines.png"))
    args = p.parse_args(argv)
    from jaxtune.devices import set_host_devices

    set_host_devices()
    import jaxtune as jt
    from jaxtune.benchmarks.common import commit

    exps = experiments(jt, dict(zip(PUBLISHED, args.steps, strict=True)))
    print(f"# commit {commit()}; Bayesian search + ASHA, {args.trials} trials per model, "
          f"population {args.population}", flush=True)
    rows = {}
    for name in args.models:
        rows[name] = tune(jt, exps[name], args.trials, args.population, args.seed)
        print(f"  {name}: test {rows[name]['test_accuracy']:.4f} "
              f"({rows[name]['wall_s']:.0f} s)", flush=True)
    print(f"{'model':10s}{'published':>10s}{'jaxtune test':>16s}{'points':>8s}"
          f"{'trials':>8s}{'steps':>7s}{'wall s':>8s}")
    for name, r in rows.items():
        diff = 100 * (r["test_accuracy"] - PUBLISHED[name])
        print(f"{name:10s}{PUBLISHED[name]:10.2f}{r['test_accuracy']:10.4f}±"
              f"{r['test_accuracy_std']:.3f}{diff:+8.1f}{r['trials']:8d}{r['steps']:7d}"
              f"{r['wall_s']:8.0f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
    figure(rows, args.figure)
    out = {"experiment": "mnist1d_baselines", "commit": commit(), "published": PUBLISHED,
           "test_accuracy": {n: r["test_accuracy"] for n, r in rows.items()},
           "points_vs_published": {n: 100 * (r["test_accuracy"] - PUBLISHED[n])
                                   for n, r in rows.items()},
           "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
