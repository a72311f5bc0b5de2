"""The engine's probe partitioned over two host devices, without its gather (uses jaxtune).

``jaxtune/programs.py`` (``build_probe``) copies the population to the first device
before probing because the partitioned program never finished (jaxlib 0.10.2).
This script turns that copy off for one run (it swaps the ``jax`` that
``jaxtune.programs`` sees for one whose ``device_put`` to a single device is the
identity; nothing else changes) and trains ``tests/test_sharding.py``'s experiment
with every probe on, in a child process under a timeout:

    python docs/repro/engine_probe_without_gather.py [--timeout 120] [--members 3]
        [--devices 2] [--gather]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

CHILD = """
import sys, time, types
import jax
import jaxtune as jt
import jaxtune.programs as programs

if sys.argv[2] == "nogather":
    real_put = jax.device_put
    proxy = types.ModuleType("jax_without_gather")
    proxy.__getattr__ = lambda name: getattr(jax, name)
    proxy.device_put = lambda x, device=None, *a, **k: (
        x if isinstance(device, jax.Device) else real_put(x, device, *a, **k))
    programs.jax = proxy
exp = jt.Experiment(
    data=jt.data.teacher_student(n_train=128, n_test=32, dim=4),
    model=jt.models.MLP(width=8, num_outputs=1),
    space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True), batch_size=jt.Int(4, 16)),
    steps=20, eval_every=10,
    probes=jt.Probes(order=8, examples=64, b_small=4, b_big=16, draws=2, epsilon=1e-3))
t0 = time.perf_counter()
res = jt.train_population(exp, exp.space.sample(int(sys.argv[1]), seed=1), seeds=1, seed=7,
                          progress=False, verbose=False)
print(f"finished in {time.perf_counter() - t0:.1f} s on {len(jax.devices())} devices, "
      f"bucket sizes {[b['size'] for b in res.buckets]}, probe_sharpness "
      f"{[round(v, 3) for v in res.final['probe_sharpness'].tolist()]}", flush=True)
"""


def main(argv: list[str]) -> None:
    opts = {"--timeout": "120", "--members": "3", "--devices": "2"}
    gather = "--gather" in argv
    argv = [a for a in argv if a != "--gather"]
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        opts[k] = v
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={opts['--devices']}"}
    mode = "gather" if gather else "nogather"
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, opts["--members"], mode], env=env,
                           capture_output=True, text=True, timeout=float(opts["--timeout"]))
        msg = p.stdout.strip() or f"failed: {p.stderr.strip().splitlines()[-1:]}"
    except subprocess.TimeoutExpired:
        msg = f"hung after {float(opts['--timeout']):.0f} s"
    print(f"{mode}: {msg} [{time.perf_counter() - t0:.1f} s]")


if __name__ == "__main__":
    main(sys.argv[1:])
