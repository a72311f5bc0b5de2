"""Run a tuning study of a built-in experiment from Python (what ``jaxtune run`` does).

    python experiments/study.py                                  # the MNIST-1D MLP, Bayesian
    python experiments/study.py --experiment mnist1d-cnn --trials 64 --population 16
"""

from __future__ import annotations

import argparse


def main() -> None:
    from jaxtune.devices import set_host_devices

    set_host_devices()  # one XLA device per core, before JAX starts
    import jaxtune as jt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default=jt.zoo.DEFAULT, choices=list(jt.zoo.EXPERIMENTS))
    p.add_argument("--searcher", default="bayes", choices=list(jt.search.SEARCHERS))
    p.add_argument("--trials", type=int, default=96)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="the experiment's default if omitted")
    p.add_argument("--store", default=None, help="default runs/<experiment>.db")
    args = p.parse_args()
    exp, objective, direction = jt.zoo.load(
        args.experiment, **({"steps": args.steps} if args.steps else {}))
    study = jt.Study(exp, searcher=args.searcher, population=args.population,
                     store=args.store or f"runs/{args.experiment}.db",
                     objective=objective, direction=direction)
    result = study.run(trials=args.trials)
    print(result.table())
    print("best:", result.best)


if __name__ == "__main__":
    main()
