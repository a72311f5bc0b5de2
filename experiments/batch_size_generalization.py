"""Batch size and generalization on MNIST-1D, in the spirit of Keskar et al. (2017).

    python experiments/batch_size_generalization.py            # about 16 minutes, 2-core CPU
    python experiments/batch_size_generalization.py --quick    # a smoke test

The MNIST-1D MLP (40-100-100-10, plain SGD, constant learning rate) is trained
for a fixed number of epochs at batch sizes from 16 to the whole training split
(3600 rows: every step sees every row), with the learning rate

(a) **fixed** (``--lr``, the same at every batch size), and
(b) **tuned per batch size** by jaxtune: a log-spaced grid of learning rates
    trained as one population per batch size, the best on the validation split
    kept, then re-trained on fresh seeds.

Each batch size is its own bucket (``batch_mode="bucketed"``), so a member pays
for its own batch only. At the end of training the engine's probes measure
every member (``Experiment(probes=Probes(...))``): the top Hessian eigenvalue of
the training loss (Lanczos on 1024 training rows) and Keskar et al.'s
epsilon-sharpness (box 1e-3). Printed: a table per batch size (test accuracy,
generalization gap = train minus test accuracy, sharpness; mean and standard
deviation over seeds), a figure (``experiments/figures/batch_size_generalization.png``)
and a last JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")


def experiment(jt: Any, batch_sizes: list[int], epochs: float, eval_every: int) -> Any:
    """The MNIST-1D MLP with batch size static and an epoch budget."""
    data = jt.data.mnist1d()
    steps = int(np.ceil(epochs * data.n_train / min(batch_sizes)))
    return jt.Experiment(
        data=data, model=jt.models.MLP(width=100, depth=2),
        space=jt.Space(lr=jt.Real(1e-3, 3.0, log=True),
                       batch_size=jt.Choice(batch_sizes, static=True)),
        steps=steps, eval_every=eval_every, batch_mode="bucketed",
        defaults={"optimizer": "sgd", "schedule": "constant", "warmup": 0.0,
                  "weight_decay": 0.0, "epochs": epochs},
        probes=jt.Probes(examples=1024, order=20, epsilon=1e-3, ascent_steps=10,
                         noise_scale=False),
        name="mnist1d-mlp-batch-size")


def summarize(r: Any, rows: np.ndarray) -> dict[str, Any]:
    """Mean and standard deviation over the members ``rows`` of one result."""
    f = r.final
    out: dict[str, Any] = {}
    for key, values in {
        "test_accuracy": f["test_accuracy"][rows],
        "train_accuracy": f["train_accuracy"][rows],
        "gap": f["train_accuracy"][rows] - f["test_accuracy"][rows],
        "sharpness": f["probe_sharpness"][rows],
        "eps_sharpness": f["probe_eps_sharpness"][rows],
        "steps": f["steps"][rows] if "steps" in f else np.full(len(rows), np.nan),
    }.items():
        out[key] = float(np.mean(values))
        out[key + "_std"] = float(np.std(values))
    return out


def run(jt: Any, exp: Any, programs: Any, batch_sizes: list[int], lr: float,
        lr_grid: np.ndarray, seeds: int) -> dict[str, Any]:
    fixed, tuned = {}, {}
    for b in batch_sizes:
        r = jt.train_population(exp, [{"lr": lr, "batch_size": b}], seeds=seeds, seed=1,
                                programs=programs, verbose=False)
        fixed[b] = summarize(r, np.arange(seeds)) | {"lr": lr}
        grid = jt.train_population(exp, [{"lr": float(v), "batch_size": b} for v in lr_grid],
                                   seed=2, programs=programs, verbose=False,
                                   evaluate_test=False)
        val = np.nan_to_num(grid.final["val_accuracy"], nan=-1.0)
        best = float(lr_grid[int(np.argmax(val))])
        r = jt.train_population(exp, [{"lr": best, "batch_size": b}], seeds=seeds, seed=3,
                                programs=programs, verbose=False)
        tuned[b] = summarize(r, np.arange(seeds)) | {
            "lr": best, "grid_val_accuracy": [float(v) for v in grid.final["val_accuracy"]]}
        print(f"  batch {b:5d}: fixed {fixed[b]['test_accuracy']:.4f}, tuned lr {best:.3g} "
              f"{tuned[b]['test_accuracy']:.4f}", flush=True)
    return {"fixed": fixed, "tuned": tuned}


def table(res: dict[str, Any], batch_sizes: list[int]) -> str:
    head = (f"{'batch':>6s} | {'lr':>6s} {'test acc':>15s} {'gap':>15s} {'sharpness':>13s} "
            f"{'eps-sharp %':>11s} | {'tuned lr':>8s} {'test acc':>15s} {'gap':>15s} "
            f"{'sharpness':>13s} {'eps-sharp %':>11s}")
    lines = [head, "-" * len(head)]
    for b in batch_sizes:
        cells = []
        for side in ("fixed", "tuned"):
            s = res[side][b]
            cells.append(f"{s['lr']:{6 if side == 'fixed' else 8}.3g} "
                         f"{s['test_accuracy']:.4f}±{s['test_accuracy_std']:.4f} "
                         f"{s['gap']:+.4f}±{s['gap_std']:.4f} "
                         f"{s['sharpness']:7.2f}±{s['sharpness_std']:5.2f} "
                         f"{s['eps_sharpness']:11.3f}")
        lines.append(f"{b:6d} | {cells[0]} | {cells[1]}")
    return "\n".join(lines)


def figure(res: dict[str, Any], batch_sizes: list[int], epochs: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("test_accuracy", "test accuracy"), ("gap", "train - test accuracy"),
              ("sharpness", "top Hessian eigenvalue (train loss)")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for side, colour in (("fixed", "tab:red"), ("tuned", "tab:blue")):
            mean = [res[side][b][key] for b in batch_sizes]
            std = [res[side][b][key + "_std"] for b in batch_sizes]
            name = (f"fixed lr {res['fixed'][batch_sizes[0]]['lr']:g}" if side == "fixed"
                    else "lr tuned per batch size")
            ax.errorbar(batch_sizes, mean, yerr=std, marker="o", ms=4, capsize=3,
                        color=colour, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(label)
        if key == "sharpness":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MNIST-1D MLP, SGD, {epochs:g} epochs at every batch size "
                 "(mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   default=[16, 32, 64, 128, 256, 512, 1024, 2048, 3600])
    p.add_argument("--epochs", type=float, default=30.0)
    p.add_argument("--lr", type=float, default=0.1, help="the fixed learning rate of (a)")
    p.add_argument("--grid", type=int, default=8, help="learning rates tried per batch size")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--quick", action="store_true", help="two batch sizes, one epoch")
    p.add_argument("--figure", default=os.path.join(FIGURES, "batch_size_generalization.png"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.epochs, args.grid, args.seeds = [64, 512], 1.0, 2, 2
        args.eval_every = 50
    from jaxtune.devices import set_host_devices

    set_host_devices()
    import jaxtune as jt
    from jaxtune.benchmarks.common import commit

    t0 = time.perf_counter()
    exp = experiment(jt, args.batch_sizes, args.epochs, args.eval_every)
    exp = dataclasses.replace(exp, max_batch_size=max(args.batch_sizes))
    programs = jt.Programs(exp)
    lr_grid = np.geomspace(3e-3, 3.0, args.grid)
    print(f"# commit {commit()}; MNIST-1D MLP, SGD, {args.epochs:g} epochs, "
          f"{args.seeds} seeds, lr grid {np.round(lr_grid, 4).tolist()}", flush=True)
    res = run(jt, exp, programs, args.batch_sizes, args.lr, lr_grid, args.seeds)
    wall = time.perf_counter() - t0
    print(table(res, args.batch_sizes))
    print(f"{wall:.0f} s, {programs.compiles} compiles")
    os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
    figure(res, args.batch_sizes, args.epochs, args.figure)
    small, large = args.batch_sizes[0], args.batch_sizes[-1]
    out = {"experiment": "batch_size_generalization", "commit": commit(), "wall_s": wall,
           "epochs": args.epochs, "seeds": args.seeds, "batch_sizes": args.batch_sizes,
           "fixed_test_drop_points": 100 * (res["fixed"][small]["test_accuracy"]
                                            - res["fixed"][large]["test_accuracy"]),
           "tuned_test_drop_points": 100 * (res["tuned"][small]["test_accuracy"]
                                            - res["tuned"][large]["test_accuracy"]),
           "results": {side: {str(b): v for b, v in res[side].items()}
                       for side in ("fixed", "tuned")}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
