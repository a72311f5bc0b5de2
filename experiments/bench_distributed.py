"""Two processes (jax.distributed, 127.0.0.1) against one process on the same total
number of devices: wall time, and whether the stored trials match.

Runs the same ``jaxtune run`` twice, one after the other: once as one process of
``2 x D`` CPU devices, once as two processes of ``D`` devices each joined through
``--coordinator``. Each run's wall time is the command's, launch to exit (start-up,
compiles, the study, the final evaluation); the study's own time is the sum of its
stored rounds. Then the two stores are compared trial by trial (configuration,
status, objective within 1e-5 relative).

    python experiments/bench_distributed.py [--devices 1] [--trials 32] [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

from jaxtune.benchmarks.common import CpuMeter, commit
from jaxtune.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return e


def launch(args: list[str], devices: int, log: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxtune", *args], env=env(devices),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def timed(procs: list[subprocess.Popen], timeout: float) -> float:
    t0 = time.perf_counter()
    for p in procs:
        try:
            code = p.wait(timeout=max(timeout - (time.perf_counter() - t0), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise SystemExit("a run timed out") from None
        if code:
            raise SystemExit(f"a run failed with status {code}: see {p.args}")
    return time.perf_counter() - t0


def read(store: str) -> tuple[list, float]:
    with Store(store, readonly=True) as s:
        sid = s.study("default")["id"]
        return s.trials(sid), sum(b["wall_s"] or 0 for b in s.batches(sid))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="mnist1d-mlp")
    p.add_argument("--devices", type=int, default=1, help="devices per process (two runs)")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="bench-distributed-")
    study = ["run", args.experiment, "--searcher", "bayes", "--scheduler", "asha",
             "--trials", str(args.trials), "--steps", str(args.steps), "--population",
             str(args.population), "--top-k", "1", "--final-seeds", "1", "--no-progress",
             "--quiet", "--checkpoint-seconds", "0"]
    one_db, two_db = os.path.join(folder, "one.db"), os.path.join(folder, "two.db")
    with CpuMeter() as m1:
        one_s = timed([launch([*study, "--store", one_db], 2 * args.devices,
                              os.path.join(folder, "one.log"))], args.timeout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with CpuMeter() as m2:
        procs = [launch([*study, "--store", two_db, "--coordinator", f"127.0.0.1:{port}",
                         "--num-processes", "2", "--process-id", str(i)], args.devices,
                        os.path.join(folder, f"p{i}.log")) for i in (0, 1)]
        two_s = timed(procs, args.timeout)
    (t1, study1), (t2, study2) = read(one_db), read(two_db)
    match = len(t1) == len(t2) and all(
        (a.index, a.config, a.status) == (b.index, b.config, b.status)
        and (a.objective is None) == (b.objective is None)
        and (a.objective is None or math.isclose(a.objective, b.objective, rel_tol=1e-5))
        for a, b in zip(t1, t2))
    print(f"two processes against one, {2 * args.devices} CPU devices in all: "
          f"{args.experiment}, bayes + ASHA, {args.trials} trials of {args.steps} steps, "
          f"population {args.population}; commit {commit()}")
    print(f"{'run':<34} {'wall s':>8} {'study s':>8} {'busy':>6}")
    print(f"{'1 process x ' + str(2 * args.devices) + ' devices':<34} {one_s:>8.1f} "
          f"{study1:>8.1f} {m1.contention:>6.0%}")
    print(f"{'2 processes x ' + str(args.devices) + ' device(s), gloo':<34} {two_s:>8.1f} "
          f"{study2:>8.1f} {m2.contention:>6.0%}")
    print(f"ratio two/one: wall {two_s / one_s:.2f}, study {study2 / max(study1, 1e-9):.2f}; "
          f"stored trials match: {match} ({len(t1)} trials)")
    print("busy: CPU time of other processes during the run, as a share of the machine "
          "(a shared machine; seconds are only comparable within one run)", file=sys.stderr)
    if args.json:
        print(json.dumps({"bench": "distributed", "commit": commit(), "one_s": one_s,
                          "two_s": two_s, "one_study_s": study1, "two_study_s": study2,
                          "match": match, "trials": len(t1), "devices_per_process":
                          args.devices, "contention": [m1.contention, m2.contention]}))


if __name__ == "__main__":
    main()
