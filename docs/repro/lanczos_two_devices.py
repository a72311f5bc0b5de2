"""A vmapped Lanczos loop partitioned over two XLA:CPU host devices: does it finish?

Only jax. Every variant runs in its own child process under a timeout, so a hang
is reported as "hung after N s" instead of hanging this script:

    python docs/repro/lanczos_two_devices.py                 # all variants, 60 s each
    python docs/repro/lanczos_two_devices.py --timeout 30 full no_vmap

The base program (``full``): a population of MLPs (``--size small``: 3-8-1 tanh, 41
parameters, 4 members; ``--size mnist1d``: 40-100-100-10, 15,210 parameters, 512 rows,
16 members, order 20, like the engine's default probe of the MNIST-1D MLP),
``jit(vmap(lanczos))`` with the population sharded over a 2-device mesh
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``); Lanczos is a
``lax.fori_loop`` of ``order`` steps, each a Hessian-vector product
(forward-over-reverse) and a full re-orthogonalization against the basis, then
``eigvalsh`` of the tridiagonal matrix. The other variants each change one thing
(see ``VARIANTS``).

Found with jax 0.10.2 / jaxlib 0.10.2, python 3.11.7, 2 CPU cores: at ``--size
mnist1d`` every variant that keeps the vmapped (batched) ``eigvalsh`` on two devices
hangs (``full``, ``scan``, ``while``, ``no_reorth``, ``no_hvp``, ``grad_only``,
``shard_map``); ``no_eigh``, ``one_device`` and ``no_vmap`` finish. At ``--size
small`` everything finishes. ``docs/probes.md`` has the table and the stacks.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

#: (layer sizes, rows, population, Lanczos order) of each --size
SIZES = {"small": ((3, 8, 1), 16, 4, 8),
         "mnist1d": ((40, 100, 100, 10), 512, 16, 20)}   # the engine's MNIST-1D MLP, Probes()

VARIANTS = {
    "full": "jit(vmap(lanczos)), population sharded over 2 devices, fori_loop, HVP",
    "one_device": "the same on a 1-device mesh (control)",
    "no_vmap": "one member, no vmap, inputs replicated on the 2-device mesh",
    "no_vmap_sharded_rows": "one member, no vmap, the batch rows sharded over 2 devices",
    "no_hvp": "matvec = a fixed diagonal matrix per member instead of the HVP",
    "no_reorth": "without the re-orthogonalization",
    "scan": "lax.scan instead of lax.fori_loop",
    "while": "lax.while_loop instead of lax.fori_loop",
    "unrolled": "a Python loop (no XLA loop)",
    "shard_map": "shard_map over the population axis, vmap inside",
    "grad_only": "the loop's matvec is a gradient at v (no second-order AD)",
    "no_eigh": "the loop without the final eigvalsh of the tridiagonal matrix (returns alphas)",
}


def run(variant: str, size: str) -> str:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as Ps

    n_dev = 1 if variant == "one_device" else 2
    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("pop",))
    rng = np.random.default_rng(0)
    layers, rows, pop_size, order = SIZES[size]
    x = jnp.asarray(rng.normal(size=(rows, layers[0])), jnp.float32)
    y = jnp.asarray(rng.normal(size=(rows, layers[-1])), jnp.float32)
    shapes = [s for a, b in itertools.pairwise(layers) for s in ((a, b), (b,))]
    n_params = sum(int(np.prod(s)) for s in shapes)

    def loss(flat, x, y):
        h, i = x, 0
        for k, s in enumerate(shapes):
            p = flat[i:i + int(np.prod(s))].reshape(s)
            i += p.size
            h = h @ p if k % 2 == 0 else h + p
            if k % 2 == 1 and k < len(shapes) - 1:
                h = jnp.tanh(h)
        return jnp.mean(0.5 * jnp.sum((h - y) ** 2, axis=-1))

    def lanczos(flat, v0, mat, x, y):
        if variant == "no_hvp":
            matvec = lambda v: mat * v
        elif variant == "grad_only":
            matvec = lambda v: jax.grad(loss)(flat + 1e-3 * v, x, y)
        else:
            matvec = lambda v: jax.jvp(lambda f: jax.grad(loss)(f, x, y), (flat,), (v,))[1]

        def body(i, carry):
            basis, alphas, betas, v, v_prev, beta_prev = carry
            basis = basis.at[i].set(v)
            w = matvec(v)
            alpha = jnp.vdot(v, w)
            w = w - alpha * v - beta_prev * v_prev
            if variant != "no_reorth":
                w = w - basis.T @ (basis @ w)
            beta = jnp.linalg.norm(w)
            alphas, betas = alphas.at[i].set(alpha), betas.at[i].set(beta)
            return basis, alphas, betas, w / beta, v, beta

        v0 = v0 / jnp.linalg.norm(v0)
        carry = (jnp.zeros((order, n_params)), jnp.zeros(order), jnp.zeros(order), v0,
                 jnp.zeros(n_params), jnp.zeros(()))
        if variant == "scan":
            carry, _ = lax.scan(lambda c, i: (body(i, c), None), carry, jnp.arange(order))
        elif variant == "while":
            carry = lax.while_loop(lambda c: c[0] < order, lambda c: (c[0] + 1, body(c[0], c[1])),
                                   (0, carry))[1]
        elif variant == "unrolled":
            for i in range(order):
                carry = body(i, carry)
        else:
            carry = lax.fori_loop(0, order, body, carry)
        _, alphas, betas, *_ = carry
        tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
        if variant == "no_eigh":
            return jnp.max(alphas) + jnp.sum(tri)
        return jnp.linalg.eigvalsh(tri)[-1]

    params = jnp.asarray(rng.normal(size=(pop_size, n_params)) / 4, jnp.float32)
    v0 = jnp.asarray(rng.normal(size=(pop_size, n_params)), jnp.float32)
    mats = jnp.asarray(rng.normal(size=(pop_size, n_params)), jnp.float32)
    pop, rep = NamedSharding(mesh, Ps("pop")), NamedSharding(mesh, Ps())
    if variant.startswith("no_vmap"):
        rows = NamedSharding(mesh, Ps("pop")) if variant.endswith("rows") else rep
        args = (jax.device_put(params[0], rep), jax.device_put(v0[0], rep),
                jax.device_put(mats[0], rep), jax.device_put(x, rows), jax.device_put(y, rows))
        fn = jax.jit(lanczos)
    elif variant == "shard_map":
        from jax import shard_map
        args = (jax.device_put(params, pop), jax.device_put(v0, pop), jax.device_put(mats, pop),
                jax.device_put(x, rep), jax.device_put(y, rep))
        fn = jax.jit(shard_map(jax.vmap(lanczos, in_axes=(0, 0, 0, None, None)), mesh=mesh,
                               in_specs=(Ps("pop"), Ps("pop"), Ps("pop"), Ps(), Ps()),
                               out_specs=Ps("pop"), check_vma=False))
    else:
        args = (jax.device_put(params, pop), jax.device_put(v0, pop), jax.device_put(mats, pop),
                jax.device_put(x, rep), jax.device_put(y, rep))
        fn = jax.jit(jax.vmap(lanczos, in_axes=(0, 0, 0, None, None)))
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    t2 = time.perf_counter()
    return (f"finished: compile {t1 - t0:.2f} s, run {t2 - t1:.3f} s, "
            f"top {np.round(np.atleast_1d(np.asarray(out)), 3).tolist()[:4]}")


def _error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "Error" in ln] or stderr.splitlines()[-1:]
    return lines[-1].strip() if lines else "(no message)"


def main(argv: list[str]) -> None:
    timeout, size = 60.0, "small"
    while argv[:1] in (["--timeout"], ["--size"]):
        if argv[0] == "--timeout":
            timeout = float(argv[1])
        else:
            size = argv[1]
        argv = argv[2:]
    if argv[:1] == ["--child"]:
        print(run(argv[1], size), flush=True)
        return
    import jax
    import jaxlib
    print(f"# python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib "
          f"{jaxlib.__version__}; {os.cpu_count()} CPUs; timeout {timeout:.0f} s per variant; "
          f"size {size}: layers, rows, population, order = {SIZES[size]}")
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_force_host_platform_device_count=2").strip(),
           "JAX_PLATFORMS": "cpu"}
    for name in argv or list(VARIANTS):
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, __file__, "--size", size, "--child", name],
                               env=env,
                               capture_output=True, text=True, timeout=timeout)
            msg = (p.stdout.strip().splitlines() or ["(no output)"])[-1] if p.returncode == 0 \
                else f"failed (exit {p.returncode}): {_error(p.stderr)}"
        except subprocess.TimeoutExpired:
            msg = f"hung after {timeout:.0f} s"
        print(f"{name:<22} {msg}   [{VARIANTS[name]}; {time.perf_counter() - t0:.1f} s]",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
