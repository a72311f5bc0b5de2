"""The population axis sharded over several (host) devices gives the same members.

XLA exposes several CPU devices only when ``--xla_force_host_platform_device_count``
is set before the backend starts, so the sharded run happens in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import jaxtune as jt
    exp = jt.Experiment(
        data=jt.data.teacher_student(n_train=128, n_test=32, dim=4),
        model=jt.models.MLP(width=8, num_outputs=1),
        space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True), batch_size=jt.Int(4, 16)),
        steps=20, eval_every=10,
        probes=jt.Probes(order=8, examples=64, b_small=4, b_big=16, draws=2, epsilon=1e-3))
    configs = exp.space.sample(3, seed=1)
    res = jt.train_population(exp, configs, seeds=1, seed=7, progress=False)
    print(json.dumps({"devices": len(jax.devices()),
                      "sizes": [b["size"] for b in res.buckets],
                      "val_loss": res.final["val_loss"].tolist(),
                      "curve": res.curves["train_loss"].tolist(),
                      "probes": {k: res.final[k].tolist() for k in exp.probes.names}}))
""")


def _run(devices: int) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_population_matches_single_device():
    one, two = _run(1), _run(2)
    assert one["devices"] == 1 and two["devices"] == 2
    assert two["sizes"] == [4]  # 3 members padded to a multiple of the device count
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["curve"], one["curve"], rtol=1e-5, atol=1e-6)
    for name, values in one["probes"].items():  # probes run per device, no collectives
        np.testing.assert_allclose(two["probes"][name], values, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
