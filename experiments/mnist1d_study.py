"""The default study as a script: Bayesian search over the MNIST-1D MLP.

Same as ``jaxtune run`` with no arguments:

    python experiments/mnist1d_study.py --trials 96 --population 32
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=96)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--store", default="runs/mnist1d_mlp.db")
    args = p.parse_args()
    os.environ.setdefault("XLA_FLAGS",
                          f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")
    import jaxtune as jt

    exp = jt.zoo.mnist1d_mlp(steps=args.steps)
    study = jt.Study(exp, searcher="bayes", store=args.store, population=args.population,
                     objective="val_accuracy", direction="maximize")
    result = study.run(trials=args.trials)
    print(result.table())
    print("best:", result.best)


if __name__ == "__main__":
    main()
