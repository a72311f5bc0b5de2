"""Optuna written carefully: the per-trial tuner a demanding JAX user builds.

The side :mod:`experiments/time_to_target <>` races jaxtune against. Everything a
careful user does to make per-trial tuning fast is done:

* **TPE with** ``constant_liar`` (parallel trials do not all sample the same
  region) and the **median pruner** (Optuna's defaults: 5 startup trials);
* the training **chunk jitted once**: each trial trains with the same per-member
  functions jaxtune compiles (:func:`jaxtune.make_train`: identical model, loss,
  optimizers, schedules, dropout and data order), every continuous
  hyperparameter an argument, so a program is compiled once per static bucket
  and reused by every later trial;
* **batch sizes bucketed to powers of two** (the exact size traced inside, the
  rows padded to the bucket's capacity), so 16-256 take five programs per
  optimizer, not one per size;
* **one program per optimizer family** (a traced optimizer family is made
  static here: a trial trains one family and does not pay for the union);
* ``n_jobs=2`` threads (XLA releases the GIL while a chunk runs): both cores busy;
* JAX's persistent compilation cache when given a directory.

Only the orchestration differs from jaxtune: one trial per thread, trained
chunk by chunk, pruned by comparing with the median of earlier trials.

``python -m jaxtune.benchmarks.optuna_side '{"seed": 0, "target": 0.66, ...}'``
runs one study and prints a JSON line (the experiment starts it in a fresh
process so that start-up and compiles count).

Example:
    >>> import jaxtune as jt
    >>> exp = jt.zoo.mnist1d_mlp(steps=20, eval_every=10)
    >>> pow2_capacities(exp)
    (16, 32, 64, 128, 256)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from typing import Any

__all__ = ["pow2_capacities", "run"]


def pow2_capacities(experiment: Any) -> tuple[int, ...]:
    """Powers of two from the smallest to the largest batch size of ``experiment``."""
    dim = experiment.space["batch_size"]
    caps, c = [], 1
    while c < dim.high:
        if c >= dim.low:
            caps.append(c)
        c *= 2
    return (*caps, c)


def _suggest(trial: Any, name: str, dim: Any) -> Any:
    """The trial's value of one dimension (same bounds, log scale and choices)."""
    import optuna.distributions as od

    dist = dim.optuna_distribution()
    if isinstance(dist, od.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, od.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def run(experiment: Any, *, seed: int, target: float, time_budget: float,
        started: float, n_jobs: int = 2, objective: str = "val_accuracy") -> dict[str, Any]:
    """Runs the Optuna study until a complete trial reaches ``target`` (maximized) or
    ``time_budget`` seconds from ``started`` (a :func:`time.time` value) pass.

    Returns the Unix time the target was first reached (``None`` if never), the
    best objective, trial counts, the programs compiled, and the member-steps
    trained in all and when the target was first reached (every thread's chunks
    counted as they finish).
    """
    import jax
    import optuna

    import jaxtune as jt

    exp = dataclasses.replace(experiment, batch_capacities=pow2_capacities(experiment))
    if exp.traced_optimizer:  # per trial, one program per family (no union to pay for)
        dims = {n: dataclasses.replace(d, static=True) if n == "optimizer" else d
                for n, d in exp.space.items()}
        exp = dataclasses.replace(exp, space=jt.Space(**dims))
    data = jt.data.train_arrays(exp.data)
    chunks = -(-exp.steps // exp.eval_every)
    programs: dict[Any, tuple[Any, Any]] = {}
    lock = threading.Lock()

    def program(static: dict[str, Any]) -> tuple[Any, Any]:
        key = json.dumps(static, sort_keys=True)
        with lock:  # one compile per bucket, whichever thread needs it first
            if key not in programs:
                member = jt.make_train(exp, static)
                programs[key] = (jax.jit(member.init), jax.jit(member.chunk))
            return programs[key]

    steps = [0]  # member-steps trained so far, all threads

    def train(trial: Any) -> float:
        config = {name: _suggest(trial, name, dim) for name, dim in exp.space.items()}
        static = exp.static_config(config)
        init, chunk = program(static)
        hp = {k: v[0] for k, v in exp.member_arrays([config], static).items()}
        state = init(hp, jax.random.key(seed * 100_003 + trial.number))
        value, done = float("nan"), 0
        for i in range(chunks):
            state, metrics = chunk(state, data)
            value = float(metrics[objective])
            now = int(metrics["step"])
            with lock:
                steps[0] += now - done
            done = now
            trial.report(value, (i + 1) * exp.eval_every)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    reached: list[float] = []
    at_target: list[int] = []  # member-steps trained when the target was first reached

    def stop_at_target(study: Any, trial: Any) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value >= target:
            if not reached:
                reached.append(time.time())
                with lock:
                    at_target.append(steps[0])
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        pruner=optuna.pruners.MedianPruner())
    remaining = max(started + time_budget - time.time(), 0.0)
    study.optimize(train, timeout=remaining, n_jobs=n_jobs, callbacks=[stop_at_target],
                   catch=(FloatingPointError,))
    states = [t.state.name.lower() for t in study.trials]
    values = [t.value for t in study.trials if t.value is not None]
    return {"reached_at": reached[0] if reached else None,
            "best": max(values) if values else None, "trials": len(states),
            "complete": states.count("complete"), "pruned": states.count("pruned"),
            "compiles": len(programs), "member_steps": steps[0],
            "member_steps_to_target": at_target[0] if at_target else None}


def _main(argv: list[str]) -> None:
    request = json.loads(argv[0])
    from jaxtune.devices import set_host_devices

    set_host_devices(1)  # one device; its thread pool uses every core
    import jaxtune as jt
    from jaxtune import compilation_cache

    cache = request.get("cache")
    if cache:
        compilation_cache.enable(cache)
    else:
        compilation_cache.disable()
    exp, _, _ = jt.zoo.load(request["experiment"], steps=request["steps"])
    out = run(exp, seed=request["seed"], target=request["target"],
              time_budget=request["time_budget"], started=request["started"],
              n_jobs=request.get("n_jobs", 2))
    print(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1:])
