"""What a JAX user writes without jaxtune: the baselines of the population benchmark.

The problem (shared with :mod:`jaxtune.benchmarks.population`): the MNIST-1D
paper's MLP (40-100-100-10) trained with Adam plus coupled weight decay, with
traced learning rate, weight decay and ``b1``, minibatches of ``batch`` rows drawn
with replacement on the device, train and validation loss/accuracy every
``eval_every`` steps. Randomness uses the classic threefry lowering on every side
(what jaxtune uses: the partitionable one compiles far slower on CPU).

* :func:`run_trials` — one trial after another, as in an Optuna objective:

  - ``mode="jit_once"`` (the strongest per-trial baseline): the chunk of
    ``eval_every`` steps is a ``lax.scan`` jitted **once**, the
    hyperparameters live in the ``optax.inject_hyperparams`` state, so only the
    first trial compiles;
  - ``mode="recompile"`` (what an Optuna objective typically looks like): the
    optimizer is built from the trial's values and the step is jitted inside the
    objective and called from Python, so every trial compiles.

  :func:`run_workers` runs several such loops in parallel processes, one per
  device jaxtune uses (on CPU: one core each), the trials split between them.
* :func:`hand_vmap` — a hand-written ``jax.vmap`` over the population, as a
  PureJaxRL-style user writes it: one jitted function (init, a scan over steps,
  evaluations) with the population axis sharded over the devices.

``model`` (:data:`MODELS`) swaps the network and its data: ``"mlp"`` (the
default above), ``"cnn1d"`` (the MNIST-1D paper's CNN, :class:`jaxtune.models.CNN1D`)
or ``"cnn2d"`` (:class:`jaxtune.models.CNN2D` on scikit-learn digits). The
baselines call the model with Flax's plain ``nn.Conv`` (XLA's convolution), as a
user's own loop does; ``conv="patches"`` (an extra, labelled baseline) runs
their convolutions as :mod:`jaxtune.conv` does.

Example:
    >>> import jaxtune as jt
    >>> data = jt.data.mnist1d()
    >>> out = run_trials(data, [{"lr": 1e-3, "weight_decay": 1e-5, "b1": 0.9}], steps=20,
    ...                  eval_every=10, batch=32, mode="jit_once")
    >>> len(out["trial_s"]), 0.0 <= out["val_accuracy"][0] <= 1.0
    (1, True)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["MODELS", "MODES", "dataset", "hand_vmap", "network", "run_trials", "run_workers"]

MODES = ("jit_once", "recompile")
MODELS = ("mlp", "cnn1d", "cnn2d")
#: One core per worker process: one XLA device, no intra-op thread pool.
WORKER_XLA_FLAGS = ("--xla_force_host_platform_device_count=1 "
                    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def network(model: str = "mlp") -> Any:
    """The Flax module of a benchmark ``model`` (see :data:`MODELS`)."""
    import jaxtune as jt

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model == "cnn1d":
        return jt.models.CNN1D()
    if model == "cnn2d":
        return jt.models.CNN2D()
    return jt.models.MLP(width=100, depth=2, num_outputs=10)


def dataset(model: str = "mlp") -> Any:
    """The dataset of a benchmark ``model``: MNIST-1D, or digits for ``"cnn2d"``."""
    import jaxtune as jt

    return jt.data.digits() if model == "cnn2d" else jt.data.mnist1d()


def _tools(batch: int, model_name: str = "mlp", conv: str = "native"):
    """Model, loss, evaluation and the optimizer factory a user writes once."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxtune.conv import conv_mode

    net = network(model_name)

    class _Model:  # the module, its convolutions run as ``conv``
        init = staticmethod(net.init)

        @staticmethod
        def apply(params, x):
            with conv_mode(conv):
                return net.apply(params, x)

    model = _Model()

    def loss_fn(params, x, y):
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def evaluate(params, x, y):
        logits = model.apply(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    def adam_wd(learning_rate, weight_decay, b1):
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.adam(learning_rate, b1=b1))

    def step_with(tx):
        def step(params, opt_state, key, x, y):
            key, sub = jax.random.split(key)
            idx = jax.random.randint(sub, (batch,), 0, x.shape[0])
            grads = jax.grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, key
        return step

    return model, evaluate, adam_wd, step_with


def run_trials(data: Any, configs: Sequence[dict[str, float]], *, steps: int, eval_every: int,
               batch: int, mode: str, model: str = "mlp",
               conv: str = "native") -> dict[str, Any]:
    """Trains ``configs`` one after another; wall time of each trial and its accuracy."""
    import jax
    import optax

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    jax.config.update("jax_threefry_partitionable", False)
    model, evaluate, adam_wd, step_with = _tools(batch, model, conv)
    evaluate = jax.jit(evaluate)
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val
    tx_once = optax.inject_hyperparams(adam_wd)(learning_rate=0.0, weight_decay=0.0, b1=0.9)
    step_once = step_with(tx_once)

    @jax.jit
    def chunk_once(params, opt_state, key, x, y):
        def body(carry, _):
            return step_once(*carry, x, y), None
        (params, opt_state, key), _ = jax.lax.scan(body, (params, opt_state, key), None,
                                                   length=eval_every)
        return params, opt_state, key

    times, accs = [], []
    for number, c in enumerate(configs):
        t0 = time.perf_counter()
        init_key, key = jax.random.split(jax.random.key(number))
        params = model.init(init_key, x[:1])
        if mode == "jit_once":
            opt_state = optax.inject_hyperparams(adam_wd)(
                learning_rate=c["lr"], weight_decay=c["weight_decay"], b1=c["b1"]).init(params)
            for _ in range(steps // eval_every):
                params, opt_state, key = chunk_once(params, opt_state, key, x, y)
                evaluate(params, x, y)  # train metrics, as the engine records them
                acc = float(evaluate(params, xv, yv)[1])
        else:
            tx = adam_wd(c["lr"], c["weight_decay"], c["b1"])
            opt_state = tx.init(params)
            step = jax.jit(step_with(tx))
            for i in range(1, steps + 1):
                params, opt_state, key = step(params, opt_state, key, x, y)
                if i % eval_every == 0:
                    evaluate(params, x, y)
                    acc = float(evaluate(params, xv, yv)[1])
        times.append(time.perf_counter() - t0)
        accs.append(acc)
    return {"trial_s": times, "val_accuracy": accs}


def _worker_main(args: Sequence[str]) -> None:
    """``python -m jaxtune.benchmarks.baselines WORK.json``: one worker's trials."""
    with open(args[0]) as f:
        work = json.load(f)
    model = work.get("model", "mlp")
    out = run_trials(dataset(model), work["configs"], steps=work["steps"],
                     eval_every=work["eval_every"], batch=work["batch"], mode=work["mode"],
                     model=model, conv=work.get("conv", "native"))
    print(json.dumps(out))


def run_workers(configs: Sequence[dict[str, float]], *, workers: int, steps: int,
                eval_every: int, batch: int, mode: str, model: str = "mlp",
                conv: str = "native") -> dict[str, Any]:
    """Runs the trials in ``workers`` processes (each one core), the trials dealt out in
    turn. ``wall_s`` is the longest worker's time from its first trial to its last
    (every compile included; starting Python, importing JAX and generating the data
    are not, as they are not in jaxtune's times)."""
    env = {**os.environ, "XLA_FLAGS": WORKER_XLA_FLAGS, "JAXTUNE_COMPILATION_CACHE": "0"}
    shares = [list(configs[w::workers]) for w in range(workers)]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for w, share in enumerate(shares):
            path = os.path.join(tmp, f"work{w}.json")
            with open(path, "w") as f:
                json.dump({"configs": share, "steps": steps, "eval_every": eval_every,
                           "batch": batch, "mode": mode, "model": model, "conv": conv}, f)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "jaxtune.benchmarks.baselines", path], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = []
        for p in procs:
            stdout, stderr = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"baseline worker failed: {stderr[-2000:]}")
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    wall = max(sum(o["trial_s"]) for o in outs)
    trial_s = [t for o in outs for t in o["trial_s"]]
    # steady state: every trial but each worker's first (which compiles in jit_once mode)
    later = [t for o in outs for t in o["trial_s"][1:]] or trial_s
    return {"wall_s": wall, "trial_s": trial_s, "steady_trial_s": sum(later) / len(later),
            "val_accuracy": [a for o in outs for a in o["val_accuracy"]], "workers": workers}


def hand_vmap(data: Any, configs: Sequence[dict[str, float]], *, steps: int, eval_every: int,
              batch: int, model: str = "mlp") -> dict[str, Any]:
    """The population as one hand-written ``jit(vmap(...))``, sharded over the devices:
    compile-included and steady (second call) wall times."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    jax.config.update("jax_threefry_partitionable", False)
    model, evaluate, adam_wd, step_with = _tools(batch, model)
    tx = optax.inject_hyperparams(adam_wd)(learning_rate=0.0, weight_decay=0.0, b1=0.9)
    step = step_with(tx)
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val

    def member(hp, key):
        init_key, key = jax.random.split(key)
        params = model.init(init_key, x[:1])
        opt_state = tx.init(params)
        opt_state = opt_state._replace(hyperparams={
            **opt_state.hyperparams, "learning_rate": hp["lr"],
            "weight_decay": hp["weight_decay"], "b1": hp["b1"]})

        def chunk(carry, _):
            carry, _ = jax.lax.scan(lambda c, _: (step(*c, x, y), None), carry, None,
                                    length=eval_every)
            metrics = (*evaluate(carry[0], x, y), *evaluate(carry[0], xv, yv))
            return carry, metrics

        _, curves = jax.lax.scan(chunk, (params, opt_state, key), None,
                                 length=steps // eval_every)
        return curves

    devices = jax.devices()
    shard = NamedSharding(Mesh(np.asarray(devices), ("pop",)), PartitionSpec("pop"))
    hp = {k: jax.device_put(jnp.asarray([c[k] for c in configs], jnp.float32), shard)
          for k in ("lr", "weight_decay", "b1")}
    keys = jax.device_put(jax.random.split(jax.random.key(0), len(configs)), shard)
    run = jax.jit(jax.vmap(member))
    t0 = time.perf_counter()
    curves = jax.block_until_ready(run(hp, keys))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(run(hp, keys))
    steady = time.perf_counter() - t0
    return {"first_s": first, "steady_s": steady,
            "val_accuracy": float(np.mean(np.asarray(curves[3])[:, -1]))}


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
