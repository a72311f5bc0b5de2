"""Tune the MNIST-1D paper's 1-D CNN (learning rate, weight decay, schedule, batch size).

    python experiments/mnist1d_cnn_study.py --trials 64 --population 16
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--searcher", default="bayes",
                   choices=["grid", "random", "quasirandom", "bayes"])
    p.add_argument("--store", default="runs/mnist1d_cnn.db")
    args = p.parse_args()
    os.environ.setdefault("XLA_FLAGS",
                          f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")
    import jaxtune as jt

    exp = jt.zoo.mnist1d_cnn(steps=args.steps)
    study = jt.Study(exp, searcher=args.searcher, store=args.store,
                     population=args.population)
    result = study.run(trials=args.trials)
    print(result.table())
    print("best:", result.best)


if __name__ == "__main__":
    main()
