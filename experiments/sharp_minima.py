"""Keskar et al. (2017) in their own setting: small against large batch at equal training fit.

    python experiments/sharp_minima.py               # 5 min on 2 CPU cores (33 if 89% busy)
    python experiments/sharp_minima.py --model cnn   # the MNIST-1D paper's 1-D CNN
    python experiments/sharp_minima.py --quick       # a smoke test

Keskar et al. trained every batch size to the same (near-zero) training loss
and found that large batches generalize worse and end in sharper minima.
Here: the MNIST-1D MLP (40-100-100-10) or, with ``--model cnn``, the MNIST-1D
paper's 1-D CNN (the built-in ``mnist1d-cnn`` experiment's model), SGD with
momentum 0.9 at a constant learning rate (Keskar et al. used Adam; the scaling
rules below are SGD's), a small batch (``--small``, 32)
against large ones (``--large``: 512 = 14% of the 3600-row training split, and
3600 = full batch). Every member trains until its **training accuracy reaches
``--target``** (the engine's stop rule ``stop_train_accuracy``, checked every
``--eval-every`` steps), at most ``--steps`` steps; all batch sizes train in
one population (``batch_mode="masked"``: a member computes about its own
batch's rows, and one that has stopped almost nothing).

1. **Tune** the learning rate per batch size on the validation split: a small
   grid per batch size, one seed, every point in one population; the best
   validation accuracy among the members that reached the target is kept.
2. **Compare**, with ``--seeds`` fresh seeds, in one population:
   the small batch at its tuned rate, and each large batch with
   ``same lr``: the small batch's tuned rate (Keskar et al.'s comparison: the
   same optimizer settings); ``linear+warmup``: that rate scaled linearly with
   the batch size (Goyal et al. 2017) after a linear warmup of
   ``--warmup-epochs`` epochs; ``sqrt+warmup``: scaled by the square root of the
   batch-size ratio (Hoffer et al. 2017) with the same warmup; ``tuned``: its
   own tuned rate. The scaling is the engine's rule
   ``lr * (batch_size / reference_batch_size) ** lr_scaling``.
3. **Measure** each member's final parameters (``keep_params=True``): test
   accuracy, generalization gap (training minus test accuracy), the top
   Hessian eigenvalue of the training loss (Lanczos) and Keskar et al.'s
   epsilon-sharpness (box ``--epsilon``) on the training split, and Keskar's
   1-D interpolation (:mod:`jaxtune.landscape`) between a small-batch and a
   large-batch solution: loss and accuracy along ``(1 - a) w_small + a w_large``,
   ``a`` in ``[-1, 2]``.

Printed: the tuning grid, a table per arm (mean ± std over seeds), how much of
the small-to-large test-accuracy gap each rule closes, the interpolation, a
figure (``experiments/figures/sharp_minima.png``, ``sharp_minima_cnn.png`` for the
CNN) and a last JSON line.
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

#: the learning-rate grid tried at each batch size (per batch size: where the fastest
#: rates that still converge lie for SGD with momentum 0.9 on MNIST-1D)
GRIDS = {32: (0.003, 0.01, 0.03, 0.1), 512: (0.03, 0.1, 0.3, 1.0),
         3600: (0.1, 0.3, 1.0, 3.0)}


def grid_for(b: int) -> tuple[float, ...]:
    """The learning rates tried at batch size ``b`` (the nearest listed batch size's)."""
    near = min(GRIDS, key=lambda k: abs(math.log(k / b)))
    return GRIDS[near]


#: the compared networks: their name in the output, and their model (the CNN is the
#: built-in ``mnist1d-cnn`` experiment's)
MODELS = {"mlp": "MNIST-1D MLP", "cnn": "MNIST-1D CNN"}


def model_of(jt: Any, model: str) -> Any:
    """The network of ``--model``: the MNIST-1D MLP or the built-in experiment's CNN."""
    if model == "cnn":
        return jt.zoo.EXPERIMENTS["mnist1d-cnn"].build().model
    return jt.models.MLP(width=100, depth=2)


def experiment(jt: Any, batch_sizes: list[int], steps: int, eval_every: int,
               target: float, model: str = "mlp") -> Any:
    """The MNIST-1D MLP or CNN, SGD with momentum, traced batch size, a training-accuracy
    stop."""
    data = jt.data.mnist1d()
    return jt.Experiment(
        data=data, model=model_of(jt, model),
        space=jt.Space(lr=jt.Real(1e-4, 10.0, log=True),
                       batch_size=jt.Int(min(batch_sizes), data.n_train, log=True),
                       lr_scaling=jt.Real(0.0, 1.0), warmup=jt.Real(0.0, 0.5),
                       reference_batch_size=jt.Int(1, data.n_train)),
        steps=steps, eval_every=eval_every, batch_mode="masked",
        max_batch_size=max(batch_sizes),
        defaults={"optimizer": "momentum", "momentum": 0.9, "schedule": "constant",
                  "weight_decay": 0.0, "stop_train_accuracy": target},
        name=f"mnist1d-{model}-sharp-minima")


def reached(r: Any, i: int, target: float) -> bool:
    return bool(r.status[i] == "complete" and r.final["train_accuracy"][i] >= target)


def give_up(jt: Any, after: int, chance: float = 0.2) -> Any:
    """A scheduler that stops members still near chance training accuracy after ``after``
    chunks: a rate too large for the batch leaves the network dead (accuracy 0.1 without a
    NaN), and such a member would otherwise run every remaining step of the budget."""

    def scheduler(report: Any) -> Any:
        if report.chunk + 1 < after or "train_accuracy" not in report.history:
            return None
        acc = report.history["train_accuracy"][:, -1]
        stop = [int(s) for s, a, alive in zip(report.slots, acc, report.alive, strict=True)
                if alive and a < chance]
        return jt.Actions(stop=stop) if stop else None

    return scheduler


def tune(jt: Any, exp: Any, programs: Any, batch_sizes: list[int], target: float,
         seed: int, scheduler: Any) -> dict[int, dict[str, Any]]:
    """The best learning rate per batch size on validation, among members that reached
    the target (one seed, every grid point in one population)."""
    configs = [{"batch_size": b, "lr": lr, "lr_scaling": 0.0, "warmup": 0.0,
                "reference_batch_size": b} for b in batch_sizes for lr in grid_for(b)]
    r = jt.train_population(exp, configs, seed=seed, programs=programs, verbose=False,
                            evaluate_test=False, scheduler=scheduler)
    out = {}
    for b in batch_sizes:
        rows = [i for i, c in enumerate(r.configs) if c["batch_size"] == b]
        grid = [{"lr": r.configs[i]["lr"], "val_accuracy": float(r.final["val_accuracy"][i]),
                 "steps": int(r.final["steps"][i]), "status": r.status[i],
                 "reached": reached(r, i, target)} for i in rows]
        ok = [g for g in grid if g["reached"]] or grid
        best = max(ok, key=lambda g: -1.0 if math.isnan(g["val_accuracy"])
                   else g["val_accuracy"])
        lrs = [g["lr"] for g in grid]
        out[b] = {"lr": best["lr"], "grid": grid,
                  "edge": best["lr"] in (min(lrs), max(lrs)) and len(lrs) > 1}
    return out


def arms(small: int, large: list[int], tuned: dict[int, dict[str, Any]], warmup_epochs: float,
         n_train: int, steps: int) -> list[dict[str, Any]]:
    """The compared configurations: (batch, arm name, config)."""
    lr_s = tuned[small]["lr"]
    out = [{"batch": small, "arm": "tuned", "config": {
        "batch_size": small, "lr": lr_s, "lr_scaling": 0.0, "warmup": 0.0,
        "reference_batch_size": small}}]
    for b in large:
        warm = min(0.5, warmup_epochs * math.ceil(n_train / b) / steps)
        for arm, lr, k, w in (("same lr", lr_s, 0.0, 0.0), ("linear+warmup", lr_s, 1.0, warm),
                              ("sqrt+warmup", lr_s, 0.5, warm),
                              ("tuned", tuned[b]["lr"], 0.0, 0.0)):
            out.append({"batch": b, "arm": arm, "config": {
                "batch_size": b, "lr": lr, "lr_scaling": k, "warmup": w,
                "reference_batch_size": small}})
    return out


def curvature(exp: Any, static: dict[str, Any], params: list[Any], examples: int, order: int,
              epsilon: float, ascent_steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top Hessian eigenvalue and epsilon-sharpness (%) of the training loss, per member."""
    import jax

    from jaxtune import probes as P

    loss_fn = P.make_loss_fn(exp, static)
    n = min(examples, exp.data.n_train)
    data = (exp.data.x_train[:n], exp.data.y_train[:n])
    stacked = jax.tree.map(lambda *a: np.stack(a), *params)
    keys = jax.random.split(jax.random.key(seed), len(params))

    def one(p, k):
        k1, k2 = jax.random.split(k)
        top = P.hessian_lanczos(loss_fn, p, data, k1, order=order).top
        eps = P.epsilon_sharpness(loss_fn, p, data, k2, eps=epsilon, steps=ascent_steps)
        return top, eps.sharpness

    # one device: the batched eigvalsh hangs partitioned over host devices (docs/probes.md)
    dev = jax.devices()[0]
    top, eps = jax.jit(jax.vmap(one))(*jax.device_put((stacked, keys), dev))
    return np.asarray(top, np.float64), np.asarray(eps, np.float64)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over the seeds of one arm that reached the target (NaN if none did)."""
    ok = [r for r in rows if r["reached"]]
    out: dict[str, Any] = {"seeds": len(rows), "reached": len(ok),
                           "statuses": sorted({r["status"] for r in rows})}
    for key in ("steps", "train_loss", "train_accuracy", "test_accuracy", "gap",
                "sharpness", "eps_sharpness"):
        v = np.asarray([r[key] for r in ok], np.float64)
        out[key] = float(np.mean(v)) if ok else math.nan
        out[key + "_std"] = float(np.std(v)) if ok else math.nan
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'batch':>6} {'arm':<14} {'lr':>7} {'reached':>7} {'steps':>7} "
            f"{'train loss':>10} {'test acc':>15} {'gap (train-test)':>17} "
            f"{'top eigenvalue':>16} {'eps-sharp %':>13}")
    lines = [head, "-" * len(head)]
    for a in results:
        s = a["summary"]
        lines.append(
            f"{a['batch']:>6} {a['arm']:<14} {a['lr_effective']:>7.3g} "
            f"{s['reached']:>3}/{s['seeds']:<3} {s['steps']:>7.0f} {s['train_loss']:>10.4f} "
            f"{s['test_accuracy']:.4f}±{s['test_accuracy_std']:.4f} "
            f"{s['gap']:>+8.4f}±{s['gap_std']:.4f} "
            f"{s['sharpness']:>8.2f}±{s['sharpness_std']:<7.2f} "
            f"{s['eps_sharpness']:>6.2f}±{s['eps_sharpness_std']:<5.2f}")
    return "\n".join(lines)


def closed(results: list[dict[str, Any]], small: int, large: list[int]) -> dict[str, Any]:
    """Per large batch: the small-batch minus large-batch test accuracy of each arm, and
    the fraction of the ``same lr`` arm's deficit each other arm closes."""
    by = {(a["batch"], a["arm"]): a["summary"] for a in results}
    base = by[(small, "tuned")]["test_accuracy"]
    out: dict[str, Any] = {}
    for b in large:
        same = base - by[(b, "same lr")]["test_accuracy"]
        row = {"same lr deficit": same}
        for arm in ("linear+warmup", "sqrt+warmup", "tuned"):
            deficit = base - by[(b, arm)]["test_accuracy"]
            ok = math.isfinite(deficit) and math.isfinite(same) and same > 1e-9
            row[arm] = {"deficit": deficit, "closed": (same - deficit) / same if ok else None}
        out[str(b)] = row
    return out


def figure(results: list[dict[str, Any]], curves: dict[str, dict[str, np.ndarray]],
           small: int, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colours = {"same lr": "tab:red", "linear+warmup": "tab:orange", "sqrt+warmup": "tab:green",
               "tuned": "tab:blue"}
    ax = axes[0]
    for a in results:
        s = a["summary"]
        if not s["reached"]:
            continue
        ax.errorbar(s["sharpness"], s["test_accuracy"], xerr=s["sharpness_std"],
                    yerr=s["test_accuracy_std"], fmt="o" if a["batch"] == small else "s",
                    color=colours[a["arm"]] if a["batch"] != small else "black", ms=4,
                    capsize=2, alpha=0.9)
        ax.annotate(str(a["batch"]), (s["sharpness"], s["test_accuracy"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("top Hessian eigenvalue (training loss)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"black: batch {small}; colours: arms (legend right)", fontsize=8)
    for name, curve in curves.items():
        colour = colours.get(name.split(": ", 1)[-1], "grey")
        ls = "-" if name.startswith(str(max(a["batch"] for a in results))) else "--"
        axes[1].plot(curve["alpha"], curve["train_loss"], ls, color=colour, label=name)
        axes[2].plot(curve["alpha"], curve["train_accuracy"], ls, color=colour, label=name)
        axes[2].plot(curve["alpha"], curve["test_accuracy"], ls, color=colour, alpha=0.4)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("training loss")
    axes[2].set_ylabel("accuracy (faint: test)")
    for ax in axes[1:]:
        ax.set_xlabel(f"a: (1-a) w_{small} + a w_large")
        ax.axvline(0, color="grey", lw=0.5)
        ax.axvline(1, color="grey", lw=0.5)
    axes[2].legend(fontsize=6, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--small", type=int, default=32)
    p.add_argument("--large", type=int, nargs="+", default=[512, 3600])
    p.add_argument("--target", type=float, default=0.995,
                   help="training accuracy every member trains to")
    p.add_argument("--steps", type=int, default=6000, help="at most this many steps")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--give-up", type=int, default=5,
                   help="stop members below 0.2 training accuracy after this many chunks")
    p.add_argument("--warmup-epochs", type=float, default=5.0)
    p.add_argument("--examples", type=int, default=3600,
                   help="training rows the curvature is measured on")
    p.add_argument("--order", type=int, default=20, help="Lanczos steps")
    p.add_argument("--epsilon", type=float, default=1e-3)
    p.add_argument("--ascent-steps", type=int, default=10)
    p.add_argument("--alphas", type=int, default=31, help="points in [-1, 2]")
    p.add_argument("--quick", action="store_true", help="tiny budget, 2 seeds")
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.large, args.target, args.steps, args.seeds = [512], 0.8, 600, 2
        args.examples, args.order, args.ascent_steps, args.alphas = 256, 5, 3, 7
    figure_path = args.figure or os.path.join(
        FIGURES, "sharp_minima.png" if args.model == "mlp" else f"sharp_minima_{args.model}.png")
    from jaxtune.devices import set_host_devices

    set_host_devices()
    import jaxtune as jt
    from jaxtune import landscape
    from jaxtune.benchmarks.common import CpuMeter, commit

    t0, measured = time.perf_counter(), commit()  # the code that runs, read once
    sizes = [args.small, *args.large]
    exp = experiment(jt, sizes, args.steps, args.eval_every, args.target, args.model)
    programs = jt.Programs(exp)
    n_train = exp.data.n_train
    print(f"# commit {measured}; {MODELS[args.model]}, SGD momentum 0.9, constant lr; "
          f"train to training accuracy {args.target} (at most {args.steps} steps, checked "
          f"every {args.eval_every}); batch {args.small} against {args.large} of {n_train} "
          f"rows; {args.seeds} seeds", flush=True)
    with CpuMeter() as meter:
        stop = give_up(jt, after=args.give_up)
        tuned = tune(jt, exp, programs, sizes, args.target, seed=100, scheduler=stop)
        t_tune = time.perf_counter() - t0
        for b in sizes:
            grid = ", ".join(f"{g['lr']:g}: {g['val_accuracy']:.3f}"
                             + ("" if g["reached"] else f" ({g['status']}, not reached)")
                             + f" @{g['steps']}" for g in tuned[b]["grid"])
            print(f"  tune batch {b:5d}: lr {tuned[b]['lr']:g}"
                  f"{' (grid edge)' if tuned[b]['edge'] else ''}; val acc @steps {grid}",
                  flush=True)
        compared = arms(args.small, args.large, tuned, args.warmup_epochs, n_train, args.steps)
        r = jt.train_population(exp, [a["config"] for a in compared], seeds=args.seeds, seed=0,
                                programs=programs, verbose=False, keep_params=True,
                                scheduler=stop)
        t_train = time.perf_counter() - t0 - t_tune
        static = exp.static_config(compared[0]["config"])
        top, eps = curvature(exp, static, r.params, args.examples, args.order, args.epsilon,
                             args.ascent_steps, seed=7)
        members = []
        for i in range(len(r)):
            members.append({
                "status": r.status[i], "reached": reached(r, i, args.target),
                "steps": float(r.final["steps"][i]),
                "train_loss": float(r.final["train_loss"][i]),
                "train_accuracy": float(r.final["train_accuracy"][i]),
                "test_accuracy": float(r.final["test_accuracy"][i]),
                "gap": float(r.final["train_accuracy"][i] - r.final["test_accuracy"][i]),
                "sharpness": float(top[i]), "eps_sharpness": float(eps[i])})
        results = []
        for j, a in enumerate(compared):
            rows = [members[j * args.seeds + s] for s in range(args.seeds)]
            c = a["config"]
            lr_eff = c["lr"] * (c["batch_size"] / c["reference_batch_size"]) ** c["lr_scaling"]
            results.append({"batch": a["batch"], "arm": a["arm"], "config": c,
                            "lr_effective": lr_eff, "summary": summarize(rows),
                            "members": rows})
        # Keskar's 1-D plot: seed 0 of the small batch against seed 0 of each large arm
        metrics_fn = landscape.make_metrics_fn(exp, static)
        alphas = np.linspace(-1.0, 2.0, args.alphas)
        curves = {}
        w_small = r.params[0]
        for j, a in enumerate(compared):
            if a["batch"] == args.small or a["arm"] not in ("same lr", "tuned"):
                continue
            w_large = r.params[j * args.seeds]
            tr = landscape.interpolation_curve(metrics_fn, w_small, w_large,
                                               (exp.data.x_train, exp.data.y_train), alphas)
            te = landscape.interpolation_curve(metrics_fn, w_small, w_large,
                                               (exp.data.x_test, exp.data.y_test), alphas)
            curves[f"{a['batch']}: {a['arm']}"] = {
                "alpha": alphas, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                "test_loss": te["loss"], "test_accuracy": te["accuracy"]}
    wall = time.perf_counter() - t0
    print(table(results))
    gaps = closed(results, args.small, args.large)
    for b, row in gaps.items():
        parts = "; ".join(
            f"{arm} {v['deficit'] * 100:+.1f} points"
            + ("" if v["closed"] is None else f" (closes {v['closed']:.0%})")
            for arm, v in row.items() if arm != "same lr deficit")
        print(f"batch {args.small} minus batch {b} test accuracy: same lr "
              f"{row['same lr deficit'] * 100:+.1f} points; {parts}")
    print("interpolation (seed 0), training loss at a = -1, -0.5, 0, 0.5, 1, 1.5, 2:")
    marks = [int(np.argmin(np.abs(alphas - v))) for v in (-1, -0.5, 0, 0.5, 1, 1.5, 2)]
    for name, c in curves.items():
        print(f"  {args.small} -> {name:<18} "
              + " ".join(f"{c['train_loss'][k]:8.3g}" for k in marks)
              + f"   barrier max loss in [0, 1]: "
              f"{np.max(c['train_loss'][(alphas >= 0) & (alphas <= 1)]):.3g}")
    print(f"{wall:.0f} s (tuning {t_tune:.0f} s, comparison {t_train:.0f} s), "
          f"{programs.compiles} compiles; other processes used {meter.contention:.0%} of the "
          f"machine")
    os.makedirs(os.path.dirname(os.path.abspath(figure_path)), exist_ok=True)
    figure(results, curves, args.small, figure_path,
           f"{MODELS[args.model]}, SGD momentum 0.9, every member trained to training "
           f"accuracy {args.target}; mean ± std over {args.seeds} seeds; interpolation: seed 0")
    out = {"experiment": "sharp_minima", "commit": measured, "wall_s": wall,
           "contention": meter.contention, "model": args.model, "target": args.target,
           "small": args.small, "large": args.large, "seeds": args.seeds,
           "tuned": {str(b): v for b, v in tuned.items()},
           "results": [{k: v for k, v in a.items()} for a in results], "gap_closed": gaps,
           "interpolation": {k: {m: [float(x) for x in v] for m, v in c.items()}
                             for k, c in curves.items()}}
    print(json.dumps(out, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return out


if __name__ == "__main__":
    main()
