"""Steps to a target against batch size on MNIST-1D, in the spirit of Shallue et al. (2019).

    python experiments/steps_to_target.py            # about 4 minutes, 2-core CPU
    python experiments/steps_to_target.py --quick    # a smoke test

For each batch size, the MNIST-1D MLP with Nesterov momentum is trained with
``--trials`` configurations of (learning rate, momentum) from jaxtune's
quasi-random searcher (the same points at every batch size), all as one
population per batch size (``batch_mode="bucketed"``: each batch size its own
program). A member trains at most ``--epochs`` epochs (and ``--max-steps``
steps); its validation accuracy is evaluated every ``--eval-every`` steps. The
result per batch size is the fewest steps at which any configuration reaches
``--target`` validation accuracy (:func:`jaxtune.probes.steps_to_target`).

The engine's probes also measure McCandlish et al.'s gradient noise scale
``B_simple`` on every member every ``--probe-every`` evaluations; the
figure overlays its median over members of every batch size at the first
probe after they reached the target: the critical batch size it predicts,
where perfect scaling (steps halve when the batch doubles) gives way to
diminishing returns.

Printed: a table, a log-log figure (``experiments/figures/steps_to_target.png``)
with the perfect-scaling line through the smallest batch size, and a last JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")


def experiment(jt: Any, batch_sizes: list[int], epochs: float, max_steps: int,
               eval_every: int, probe_every: int) -> Any:
    """The MNIST-1D MLP with Nesterov momentum; batch size static; an epoch budget."""
    return jt.Experiment(
        data=jt.data.mnist1d(), model=jt.models.MLP(width=100, depth=2),
        space=jt.Space(lr=jt.Real(1e-3, 3.0, log=True), momentum=jt.Real(0.0, 0.99),
                       batch_size=jt.Choice(batch_sizes, static=True)),
        steps=max_steps, eval_every=eval_every, batch_mode="bucketed",
        max_batch_size=max(batch_sizes),
        defaults={"optimizer": "nesterov", "schedule": "constant", "warmup": 0.0,
                  "weight_decay": 0.0, "epochs": epochs},
        probes=jt.Probes(every=probe_every, final=False, sharpness=False, norms=False,
                         noise_scale=True, b_small=32, b_big=512, draws=4),
        name="mnist1d-mlp-steps-to-target")


def per_batch_size(jt: Any, r: Any, target: float) -> dict[str, Any]:
    """Fewest steps to the target over the members of one result, and the noise scale."""
    steps = np.asarray(r.curves["step"], float)
    val = np.asarray(r.curves["val_accuracy"], float)
    first = np.asarray(jt.probes.steps_to_target(steps, val, target, higher_is_better=True))
    reached = np.isfinite(first)
    best = int(np.nanargmin(np.where(reached, first, np.nan))) if reached.any() else None
    # B_simple at the first probe at or after each member reached the target
    noise = np.asarray(r.curves["probe_noise_scale"], float)
    at_target = []
    for m in np.flatnonzero(reached):
        hit = int(np.argmax(val[m] >= target))
        later = np.flatnonzero(np.isfinite(noise[m, hit:]))
        if later.size:
            at_target.append(noise[m, hit + later[0]])
    return {"steps": float(first[best]) if best is not None else None,
            "reached": int(reached.sum()), "members": len(first),
            "best_config": r.configs[best] if best is not None else None,
            "noise_scale_at_target": at_target}


def figure(rows: dict[int, dict[str, Any]], b_crit: float | None, target: float,
           path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = [b for b in rows if rows[b]["steps"] is not None]
    steps = [rows[b]["steps"] for b in bs]
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.plot(bs, steps, "o-", color="tab:blue", label="fewest steps (best of the trials)")
    if bs:
        ax.plot(bs, [steps[0] * bs[0] / b for b in bs], "--", color="grey",
                label="perfect scaling (steps ∝ 1/batch)")
    if b_crit is not None and np.isfinite(b_crit):
        ax.axvline(b_crit, color="tab:red", ls=":",
                   label=f"noise scale B_simple ≈ {b_crit:.0f} (median)")
    missed = [b for b in rows if rows[b]["steps"] is None]
    for b in missed:
        ax.axvline(b, color="black", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"steps to validation accuracy {target:g}")
    ax.set_title("MNIST-1D MLP, Nesterov momentum", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   default=[16, 32, 64, 128, 256, 512, 1024, 2048])
    p.add_argument("--trials", type=int, default=12, help="configurations per batch size")
    p.add_argument("--target", type=float, default=0.6, help="validation accuracy")
    p.add_argument("--epochs", type=float, default=40.0)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--probe-every", type=int, default=4, help="evaluations between probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="two batch sizes, few steps")
    p.add_argument("--figure", default=os.path.join(FIGURES, "steps_to_target.png"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.trials, args.target = [32, 256], 3, 0.3
        args.epochs, args.max_steps = 2.0, 300
    from jaxtune.devices import set_host_devices

    set_host_devices()
    import jaxtune as jt
    from jaxtune.benchmarks.common import commit

    t0 = time.perf_counter()
    exp = experiment(jt, args.batch_sizes, args.epochs, args.max_steps, args.eval_every,
                     args.probe_every)
    programs = jt.Programs(exp)
    searcher = jt.search.make_searcher(
        "quasirandom", jt.Space(lr=exp.space["lr"], momentum=exp.space["momentum"]),
        seed=args.seed)
    points = searcher.ask(args.trials)
    print(f"# commit {commit()}; target val accuracy {args.target}, {args.trials} quasi-random "
          f"(lr, momentum) per batch size, at most {args.epochs:g} epochs / "
          f"{args.max_steps} steps", flush=True)
    rows: dict[int, dict[str, Any]] = {}
    for b in args.batch_sizes:
        r = jt.train_population(exp, [c | {"batch_size": b} for c in points], seed=args.seed,
                                programs=programs, verbose=False, evaluate_test=False,
                                warn_capped=False)
        rows[b] = per_batch_size(jt, r, args.target)
        s = rows[b]["steps"]
        print(f"  batch {b:5d}: {'-' if s is None else int(s)} steps "
              f"({rows[b]['reached']}/{rows[b]['members']} reached)", flush=True)
    wall = time.perf_counter() - t0
    scales = [v for b in rows for v in rows[b]["noise_scale_at_target"]]
    b_crit = float(np.median(scales)) if scales else None
    print(f"{'batch':>6s}{'steps':>8s}{'reached':>9s}{'speed-up vs half batch':>24s}"
          f"{'B_simple at target (median)':>29s}   best (lr, momentum)")
    prev = None
    for b, row in rows.items():
        s = row["steps"]
        gain = f"{prev / s:.2f}" if prev and s else "-"
        ns = np.median(row["noise_scale_at_target"]) if row["noise_scale_at_target"] else np.nan
        cfg = row["best_config"]
        best = f"({cfg['lr']:.3g}, {cfg['momentum']:.3f})" if cfg else "-"
        print(f"{b:6d}{'-' if s is None else int(s):>8}{row['reached']:>6d}/{row['members']:<2d}"
              f"{gain:>24s}{ns:29.1f}   {best}")
        prev = s
    print(f"noise scale B_simple at the target, median over members of every batch size: "
          f"{b_crit if b_crit is None else round(b_crit, 1)}; {wall:.0f} s, "
          f"{programs.compiles} compiles")
    os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
    figure(rows, b_crit, args.target, args.figure)
    out = {"experiment": "steps_to_target", "commit": commit(), "wall_s": wall,
           "target": args.target, "critical_batch_size_noise_scale": b_crit,
           "steps": {str(b): r["steps"] for b, r in rows.items()},
           "rows": {str(b): r for b, r in rows.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
