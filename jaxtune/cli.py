"""The ``jaxtune`` command: ``run``, ``resume``, ``report``, ``list``, ``bench``.

``jaxtune run`` with no arguments is the main job: a Bayesian study of the
MNIST-1D MLP stored in ``runs/jaxtune.db``.

On CPU, XLA exposes one device unless told otherwise; the command exposes one
host device per core (``XLA_FLAGS=--xla_force_host_platform_device_count``)
before JAX starts, so the population is sharded over every core. Set
``XLA_FLAGS`` yourself to override it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from jaxtune import search
from jaxtune.devices import set_host_devices
from jaxtune.store import DEFAULT_PATH
from jaxtune.trial_schedulers import SCHEDULERS

_IMPORTED = time.perf_counter()
#: Trials a study finishes when neither --trials nor --time-budget is given.
DEFAULT_TRIALS = 96

__all__ = ["main"]



class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _bytes(text: str) -> int:
    from jaxtune.memory import parse_bytes

    try:
        value = parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return value


def _population(text: str) -> int | str:
    return "auto" if text == "auto" else _positive(int)(text)


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxtune", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a tuning study (default: Bayesian, MNIST-1D MLP)")
    run.add_argument("experiment", nargs="?", default=None,
                     help="built-in experiment name (see `jaxtune list`) or a .py file "
                          "defining `experiment`")
    run.add_argument("--searcher", choices=search.SEARCHERS, default="bayes")
    run.add_argument("--trials", type=_positive(int), default=None,
                     help=f"trials to finish (complete, pruned or diverged); default "
                          f"{DEFAULT_TRIALS}, or none with --time-budget")
    run.add_argument("--population", type=_population, default=None,
                     help="members trained at once per bucket of static values (trials at "
                          "once x seeds; a multiple of --seeds); default auto: the smallest "
                          "size within 25%% of the best member-steps/s on this machine "
                          "(measured once per experiment and machine, cached; `jaxtune bench "
                          "population EXPERIMENT` shows the table); 16 with several processes")
    run.add_argument("--seeds", type=_positive(int), default=1)
    run.add_argument("--steps", type=_positive(int), default=None,
                     help="maximum optimizer steps per member (experiment default if omitted)")
    run.add_argument("--store", default=DEFAULT_PATH, help="SQLite store path")
    run.add_argument("--name", default="default", help="study name within the store")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--time-budget", type=_positive(float), default=None, metavar="SECONDS",
                     help="stop at the first chunk boundary this long after the command "
                          "started (trials still running are left to `jaxtune resume`)")
    run.add_argument("--member-steps", type=_positive(int), default=None, metavar="N",
                     help="budget of training steps summed over all members; trials start "
                          "only while their full budgets fit")
    run.add_argument("--target", type=float, default=None, metavar="VALUE",
                     help="stop once a complete trial's objective reaches VALUE")
    run.add_argument("--memory-limit", type=_bytes, default=None, metavar="SIZE",
                     help="memory a population may use, e.g. 4GB or 512MiB (default: 60%% of "
                          "the device memory or of the available RAM); a study whose "
                          "populations would not fit is refused before compiling")
    run.add_argument("--top-k", type=_non_negative, default=3,
                     help="trials re-evaluated on the test split")
    run.add_argument("--final-seeds", type=_non_negative, default=3)
    run.add_argument("--resolution", type=_positive(int), default=None,
                     help="grid searcher: points per real (and large integer) hyperparameter")
    run.add_argument("--surrogate", choices=search.SURROGATES, default="GP")
    run.add_argument("--acquisition", choices=search.ACQUISITIONS, default="EI")
    goals = run.add_argument_group("objectives, constraints and warm starts")
    goals.add_argument("--objective", action="append", default=None, metavar="NAME:DIR",
                       help="an objective, e.g. val_accuracy:max; repeat for several (a "
                            "Pareto front; bayes becomes ParEGO): a final metric, params, "
                            "flops (per step, from XLA) or steps_to:METRIC:VALUE; the first "
                            "must be a final metric")
    goals.add_argument("--constraint", action="append", default=None, metavar="NAME<=VALUE",
                       help="a feasibility condition on a hyperparameter, params or flops "
                            "(checked before training) or a final metric (after); repeatable")
    goals.add_argument("--enqueue", default=None, metavar="FILE.json",
                       help="a JSON list of configurations to evaluate first")
    goals.add_argument("--warm-start", default=None, metavar="STORE",
                       help="tell the searcher the finished trials of a study in STORE with "
                            "the same hyperparameter names")
    goals.add_argument("--warm-start-name", default="default", metavar="NAME",
                       help="the study within the --warm-start store")
    run.add_argument("--pruned", choices=("last", "exclude", "fidelity"), default="last",
                     help="what the searcher learns from a pruned trial: its last value "
                          "(last), that value at the fraction of the budget it trained, a "
                          "surrogate input (fidelity), or nothing (exclude)")
    sched = run.add_argument_group("trial scheduler (what stops or re-seeds running trials)")
    sched.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="asha",
                       help="asha (default: it reaches a good configuration soonest, see "
                            "docs/benchmarks.md): asynchronous successive halving; fifo: "
                            "every trial runs its budget; median: median stopping rule; "
                            "hyperband: ASHA brackets; pbt: population-based training")
    sched.add_argument("--eta", type=float, default=None,
                       help="asha, hyperband: reduction factor (default 3)")
    sched.add_argument("--min-steps", type=_positive(int), default=None,
                       help="asha, hyperband: the first rung in steps (default eval_every)")
    sched.add_argument("--grace", type=_non_negative, default=None,
                       help="median: steps before a trial may be stopped (default 0)")
    sched.add_argument("--min-trials", type=_positive(int), default=None,
                       help="median: other trials that must have reported first (default 4)")
    sched.add_argument("--interval", type=_positive(int), default=None,
                       help="pbt: steps between exploit/explore rounds (default eval_every)")
    sched.add_argument("--quantile", type=float, default=None,
                       help="pbt: bottom fraction that copies the top fraction (default 0.25)")
    run.add_argument("--tensorboard", default=None, metavar="DIR",
                     help="also write the study as it runs for `tensorboard --logdir DIR` "
                     "(one run per trial; needs jaxtune[tensorboard])")
    ckpt = run.add_argument_group("checkpoints of running populations (next to the store)")
    ckpt.add_argument("--checkpoint-rounds", type=_positive(int), default=None, metavar="N",
                      help="checkpoint every N rounds (default: by time only)")
    ckpt.add_argument("--checkpoint-seconds", type=_non_negative_float, default=60.0,
                      metavar="S", help="checkpoint every S seconds (default 60; 0: never "
                      "by time); a killed study resumes from its last checkpoint")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--json", action="store_true", help="print a JSON summary as last line")
    run.add_argument("--quiet", action="store_true")
    _processes(run)

    res = sub.add_parser("resume", help="continue a study from its store")
    res.add_argument("store")
    res.add_argument("--name", default=None)
    res.add_argument("--trials", type=_positive(int), default=None,
                     help="total trials wanted (default: the original request)")
    res.add_argument("--time-budget", type=_positive(float), default=None, metavar="SECONDS",
                     help="stop at the first chunk boundary this long after the command started")
    res.add_argument("--experiment", default=None, metavar="FILE.py",
                     help="the experiment file to run; needed when the study's file is missing "
                          "or changed since the study was created (a store never makes "
                          "jaxtune run a file on its own)")
    res.add_argument("--tensorboard", default=None, metavar="DIR",
                     help="also write the study for `tensorboard --logdir DIR`")
    res.add_argument("--no-progress", action="store_true")
    res.add_argument("--json", action="store_true")
    res.add_argument("--quiet", action="store_true")
    _processes(res)

    rep = sub.add_parser("report", help="summarize the studies of a store (read-only)")
    rep.add_argument("store")
    rep.add_argument("--name", default=None,
                     help="the study (default: the only one; with --out: every study)")
    rep.add_argument("-k", type=_positive(int), default=10, help="trials in the ranked table")
    rep.add_argument("--out", default=None, metavar="DIR",
                     help="write report.md, a self-contained index.html with figures, and "
                          "summary.json into DIR")
    rep.add_argument("--json", action="store_true", help="print the summary as JSON last")

    sub.add_parser("list", help="list the built-in experiments")

    export = sub.add_parser("export", help="write a store's studies into Optuna's storage "
                            "(optuna-dashboard, optuna.visualization); needs jaxtune[optuna]")
    export.add_argument("store")
    export.add_argument("--optuna", required=True, metavar="URL",
                        help="Optuna storage URL, e.g. sqlite:///optuna.db")
    export.add_argument("--name", action="append", default=None,
                        help="a study to export (repeatable; default: all)")

    exp_model = sub.add_parser("export-model", help="write a study's trained model to a folder "
                                                    "(params.msgpack, model.json)")
    exp_model.add_argument("store")
    exp_model.add_argument("dir")
    exp_model.add_argument("--name", default=None, help="study name (if the store has several)")
    exp_model.add_argument("--trial", type=int, default=None,
                           help="a top trial's index (default: the chosen trial)")

    bench = sub.add_parser("bench", help="run a benchmark (population or search)")
    bench.add_argument("which", choices=("population", "search", "memory", "capacities",
                                         "searchers"))
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _processes(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_argument_group(
        "several processes or hosts (jax.distributed; or JAXTUNE_COORDINATOR, "
        "JAXTUNE_NUM_PROCESSES, JAXTUNE_PROCESS_ID)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="process 0's address; every process gives the same")
    group.add_argument("--num-processes", type=_positive(int), default=None, metavar="N")
    group.add_argument("--process-id", type=_non_negative, default=None, metavar="I",
                       help="0 decides and writes the store; the others follow")
    group.add_argument("--join-timeout", type=_positive(int), default=60, metavar="SECONDS",
                       help="give up when the processes have not joined after this long")


def _start_processes(args: argparse.Namespace) -> None:
    """Joins the other processes when asked to (flags, else environment variables)."""
    if getattr(args, "command", None) not in ("run", "resume"):
        return
    from jaxtune import distributed

    options = distributed.options_from_env(args.coordinator, args.num_processes,
                                           args.process_id)
    if options is not None and options["num_processes"] > 1:
        distributed.initialize(**options, timeout_s=args.join_timeout)


def _build_study(ref: str, *, steps: int | None, study_kwargs: dict[str, Any],
                 searcher_options: dict[str, Any], info: dict[str, Any]):
    from jaxtune import zoo
    from jaxtune.study import Study

    kwargs = {"steps": steps} if steps is not None else {}
    try:
        experiment, objective, direction = zoo.load(ref, **kwargs)
    except TypeError as e:
        raise CLIError(f"experiment {ref!r} does not accept {sorted(kwargs)}: {e}") from None
    if study_kwargs.get("objectives"):  # --objective replaces the experiment's own
        objective = direction = None
    return Study(experiment, objective=objective, direction=direction,
                 searcher_options=searcher_options, info=info, **study_kwargs)


def _launched() -> float:
    """The :func:`time.perf_counter` reading when this process started (Linux: from
    ``/proc``; elsewhere: when this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.perf_counter() - max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


def _finish(study, trials: int | None, time_budget: float | None, as_json: bool,
            member_steps: int | None = None, target: float | None = None) -> int:
    result = study.run(trials=trials, time_budget=time_budget, started=_launched(),
                       member_steps=member_steps, target=target)
    from jaxtune import distributed

    if not distributed.is_leader():
        print(f"process {distributed.process_index()} of {distributed.process_count()}: "
              f"followed process 0 for {len(result.trials)} trials in {result.wall_s:.1f}s "
              "(process 0 writes the store)")
        return 130 if result.interrupted else 0
    print(result.table(k=10))
    if result.objectives and len(result.objectives) > 1:
        front = result.front()
        print(f"Pareto front of {', '.join(n for n, _ in result.objectives)}: "
              f"{len(front)} trials ({', '.join(str(t.index) for t in front)})")
    summary = result.summary()
    best = summary["best"]
    if best:
        test = best.get("test_" + result.objective.removeprefix("val_"))
        print(f"\nbest trial {best['trial']}: {result.objective} = "
              f"{best[result.objective]:.4f}" + (f", test = {test:.4f}" if test is not None
                                                else "") + f"  config {best['config']}")
        if best.get("chosen_because"):
            print(f"chosen because {best['chosen_because']}")
    if summary["variance"]:
        v = summary["variance"]
        print(f"top-{v['top_k']} {v['metric']}: trial variance {v['trial_var']:.2e}, "
              f"seed variance {v['seed_var']:.2e}")
    print(f"{_counts(summary)} in {summary['wall_s']:.1f}s, {summary['compiles']} compiles; "
          f"store {summary['store']}")
    if as_json:
        print(json.dumps(summary, default=str))
    if result.interrupted:  # Ctrl-C: what ended is stored, but scripts must see it
        print("jaxtune: interrupted; every trial that ended is in the store (continue with "
              "`jaxtune resume`)", file=sys.stderr)
        return 130
    return 0


def _counts(summary: dict[str, Any]) -> str:
    """``12 trials (8 complete, 4 pruned)``; trials still running are not trials yet."""
    parts = [f"{summary[k]} {k}" for k in ("complete", "pruned", "diverged", "infeasible")
             if summary.get(k)]
    running = f", {summary['running']} still running" if summary["running"] else ""
    return f"{summary['trials']} trials ({', '.join(parts) or 'none ended'}){running}"


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from jaxtune import distributed, zoo

    ref = args.experiment or zoo.DEFAULT
    if args.population is None:  # processes would each time the sizes apart
        args.population = "auto" if distributed.process_count() == 1 else 16
    searcher_options: dict[str, Any] = {}
    if args.searcher == "bayes":
        searcher_options = {"surrogate": args.surrogate, "acquisition": args.acquisition}
    elif args.searcher == "grid" and args.resolution is not None:
        searcher_options = {"resolution": args.resolution}
    trials = args.trials or (None if args.time_budget or args.member_steps else DEFAULT_TRIALS)
    options = {"eta": args.eta, "min_steps": args.min_steps, "grace": args.grace,
               "min_trials": args.min_trials, "interval": args.interval,
               "quantile": args.quantile}
    wanted = {"asha": ("eta", "min_steps"), "hyperband": ("eta", "min_steps"),
              "median": ("grace", "min_trials"), "pbt": ("interval", "quantile")}
    given = {k for k, v in options.items() if v is not None}
    if given - set(wanted.get(args.scheduler, ())):
        raise CLIError(f"--scheduler {args.scheduler} takes no "
                       f"{', '.join('--' + k.replace('_', '-') for k in sorted(given))}")
    info = {"command": "jaxtune " + " ".join(shlex.quote(a) for a in argv),
            "experiment_ref": os.path.abspath(ref) if ref.endswith(".py") else ref,
            "experiment_sha256": _file_hash(ref) if ref.endswith(".py") else None,
            "steps": args.steps, "trials": trials, "member_steps": args.member_steps,
            "target": args.target, "searcher": args.searcher,
            "searcher_options": searcher_options,
            "study": {"seeds": args.seeds, "population": args.population, "seed": args.seed,
                      "top_k": args.top_k, "final_seeds": args.final_seeds,
                      "scheduler": args.scheduler, "memory_limit": args.memory_limit,
                      "pruned": args.pruned,
                      "checkpoint_rounds": args.checkpoint_rounds,
                      "checkpoint_seconds": args.checkpoint_seconds or None,
                      "scheduler_options": {k: options[k] for k in sorted(given)}}}
    goals = {"objectives": args.objective, "constraints": args.constraint}
    info["study"].update({k: v for k, v in goals.items() if v})
    if args.warm_start:  # told again on resume
        info["warm_start"] = {"store": os.path.abspath(args.warm_start),
                              "name": args.warm_start_name}
    enqueued = _read_configs(args.enqueue) if args.enqueue else None
    stored = _check_same_file(args.store, args.name, info["experiment_sha256"])
    population = args.population
    if population == "auto" and stored.get("population"):
        population = stored["population"]  # continuing a study: the size it measured
    try:
        study = _build_study(
            ref, steps=args.steps, searcher_options=searcher_options, info=info,
            study_kwargs=dict(searcher=args.searcher, store=args.store, name=args.name,
                              seeds=args.seeds, population=population, seed=args.seed,
                              top_k=args.top_k, final_seeds=args.final_seeds,
                              scheduler=args.scheduler, memory_limit=args.memory_limit,
                              pruned=args.pruned,
                              checkpoint_rounds=args.checkpoint_rounds,
                              checkpoint_seconds=args.checkpoint_seconds or None,
                              scheduler_options=info["study"]["scheduler_options"],
                              progress=False if args.no_progress else None,
                              verbose=not args.quiet, loggers=_loggers(args),
                              **{k: v for k, v in goals.items() if v}))
    except ValueError as e:
        if args.searcher == "grid" and "resolution" in str(e):
            raise CLIError(f"{e} (on the command line: --resolution N)") from None
        raise
    if enqueued:
        study.enqueue(enqueued)
    if args.warm_start:
        if not os.path.exists(args.warm_start):
            raise CLIError(f"--warm-start: {args.warm_start} does not exist")
        told = study.warm_start(args.warm_start, name=args.warm_start_name)
        if not args.quiet:
            print(f"jaxtune: warm start: told the searcher {told} trials of study "
                  f"{args.warm_start_name!r} in {args.warm_start}", file=sys.stderr)
    return _finish(study, trials, args.time_budget, args.json, member_steps=args.member_steps,
                   target=args.target)


def _loggers(args: argparse.Namespace) -> list[Any]:
    """The loggers the command line asks for (``--tensorboard DIR``)."""
    if args.tensorboard is None:
        return []
    from jaxtune.loggers.tensorboard import TensorBoard

    return [TensorBoard(args.tensorboard)]

def _read_configs(path: str) -> list[dict[str, Any]]:
    """The configurations of an ``--enqueue`` file: a JSON list of objects (or one)."""
    try:
        with open(path) as f:
            configs = json.load(f)
    except OSError as e:
        raise CLIError(f"--enqueue: cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise CLIError(f"--enqueue: {path} is not JSON: {e}") from None
    configs = [configs] if isinstance(configs, dict) else configs
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise CLIError(f"--enqueue: {path} must hold a JSON list of configurations (objects)")
    return configs


def _check_same_file(store_path: str, name: str, digest: str | None) -> dict[str, Any]:
    """Refuses to continue a stored study from an experiment file other than its own;
    returns the stored study's info (``{}`` when there is none)."""
    from jaxtune.store import Store, StoreError

    if not os.path.exists(store_path):
        return {}
    try:
        with Store(store_path, readonly=True) as store:
            info = store.study(name)["info"] or {}
    except StoreError:
        return {}  # no such study yet (or not a store: Study says so)
    if "experiment_sha256" in info and info["experiment_sha256"] != digest:
        raise CLIError(f"study {name!r} in {store_path} was made with another experiment "
                       f"file ({info.get('experiment_ref')}, SHA-256 "
                       f"{str(info['experiment_sha256'])[:12]}...); this one's is "
                       f"{str(digest)[:12]}...: start a new study (--name or --store) or "
                       "run the original file")
    return info


def _file_hash(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _trusted_experiment(info: dict[str, Any], explicit: str | None) -> str:
    """The experiment to rebuild on resume. A stored ``.py`` path runs only if the file
    is unchanged (same SHA-256 as when the study was created) or passed explicitly."""
    ref = info["experiment_ref"]
    if explicit is not None:
        return explicit
    if not ref.endswith(".py"):
        return ref  # a built-in experiment: no file is executed
    digest = _file_hash(ref)
    if digest is None:
        raise CLIError(f"the study's experiment file {ref} is missing; pass the file to run "
                       "with --experiment FILE.py")
    if digest != info.get("experiment_sha256"):
        raise CLIError(f"the study's experiment file {ref} is not the one it was created with "
                       "(its SHA-256 differs, or the store records none); check it, then pass "
                       "it explicitly with --experiment FILE.py to resume")
    return ref


def _open_store(path: str):
    from jaxtune.store import Store

    if not os.path.exists(path):
        raise CLIError(f"{path} does not exist")
    return Store(path, readonly=True)


def _pick_study(store, name: str | None) -> dict[str, Any]:
    studies = store.studies()
    if not studies:
        raise CLIError(f"{store.path} holds no study")
    if name is None:
        if len(studies) > 1:
            raise CLIError(f"{store.path} holds several studies "
                           f"({[s['name'] for s in studies]}); pick one with --name")
        return studies[0]
    return store.study(name)


def _cmd_resume(args: argparse.Namespace) -> int:
    from jaxtune import distributed

    study_row = None
    if distributed.is_leader():  # several processes: process 0 reads the store
        with _open_store(args.store) as store:
            study_row = _pick_study(store, args.name)
    study_row = distributed.agree(study_row, "the study to resume")
    info = study_row["info"] or {}
    if "experiment_ref" not in info:
        raise CLIError(f"study {study_row['name']!r} was not created by the jaxtune command; "
                       "resume it from Python with the same Study(...) arguments")
    s = dict(info["study"])
    if s.get("population") == "auto":  # the size the run measured, not a new measurement
        s["population"] = info.get("population", "auto")
    study = _build_study(
        _trusted_experiment(info, args.experiment), steps=info.get("steps"),
        searcher_options=info.get("searcher_options") or {}, info=info,
        study_kwargs=dict(searcher=info["searcher"], store=args.store,
                          name=study_row["name"], progress=False if args.no_progress else None,
                          verbose=not args.quiet, loggers=_loggers(args), **s))
    warm = info.get("warm_start")
    if warm and os.path.exists(warm["store"]):
        told = study.warm_start(warm["store"], name=warm["name"])
        if not args.quiet:
            print(f"jaxtune: warm start: told the searcher {told} trials of study "
                  f"{warm['name']!r} in {warm['store']} again", file=sys.stderr)
    trials = args.trials or info.get("trials")
    member_steps = info.get("member_steps")
    if trials is None and args.time_budget is None and member_steps is None:
        raise CLIError("the study was run with a time budget only: give --trials or "
                       "--time-budget")
    return _finish(study, trials, args.time_budget, args.json, member_steps=member_steps,
                   target=info.get("target"))


def _print_table(store, row: dict[str, Any], k: int):
    from jaxtune.study import StudyResult

    trials = store.trials(row["id"])
    batches = store.batches(row["id"])
    spec = row["spec"]
    result = StudyResult(trials=trials, finals=store.finals(row["id"]),
                         objective=spec["objective"], direction=spec["direction"],
                         objectives=spec.get("objectives"),
                         wall_s=sum(b.get("wall_s") or 0 for b in batches),
                         compiles=sum(b.get("compiles") or 0 for b in batches),
                         store=str(store.path))
    print(f"study {row['name']!r}: experiment {spec['experiment']['name']}, searcher "
          f"{spec['searcher']}, {_counts(result.summary())} in {len(batches)} rounds")
    print(result.table(k=k))
    return result


def _cmd_report(args: argparse.Namespace) -> int:
    with _open_store(args.store) as store:
        if args.out is None:
            result = _print_table(store, _pick_study(store, args.name), args.k)
            if args.json:
                print(json.dumps(result.summary(), default=str))
            return 0
        if args.name is None and not store.studies():
            raise CLIError(f"{store.path} holds no study")
        from jaxtune.report import write_report

        try:
            report = write_report(store, args.out, name=args.name, k=args.k)
        except OSError as e:
            raise CLIError(f"cannot write the report into {args.out}: {e}") from None
    for summary in report["studies"]:
        print(f"study {summary['name']!r}: {summary['trials']} trials, "
              f"{summary['complete']} complete, {summary['diverged']} diverged, "
              f"{summary['pruned']} pruned, {summary['running']} running")
        for warning in summary["warnings"]:
            print(f"  warning: {warning}")
    out = report["out"]
    print(f"report: {os.path.join(out, 'index.html')} and {os.path.join(out, 'report.md')} "
          f"({len(report['files']) - 3} figures, {report['seconds']:.1f} s)")
    if args.json:
        print(json.dumps(report, default=str))
    return 0


def _cmd_export_model(args: argparse.Namespace) -> int:
    """``params.msgpack`` (flax serialization of the variables) and ``model.json``."""
    import pathlib

    from jaxtune.ranking import chosen_row

    with _open_store(args.store) as store:
        row = _pick_study(store, args.name)
        models = {m["trial"]: m for m in store.models(row["id"])}
        finals = store.finals(row["id"])
    if not models:
        raise CLIError(f"study {row['name']!r} in {args.store} keeps no trained model (it "
                       "has no final evaluation, or predates kept models)")
    chosen = chosen_row(finals) or (finals[0] if finals else None)
    trial = args.trial if args.trial is not None else (
        chosen["trial"] if chosen else min(models))
    if trial not in models:
        raise CLIError(f"no stored model for trial {trial}; stored: {sorted(models)}")
    out = pathlib.Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.msgpack").write_bytes(models[trial]["params"])
    final = next((r for r in finals if r.get("trial") == trial), {})
    meta = {**models[trial]["info"], "trial": trial, "study": row["name"],
            "store": str(args.store), "final": final,
            "load": "flax.serialization.msgpack_restore(open('params.msgpack', 'rb').read()) "
                    "gives the variables of the module in 'repr'; or "
                    "jaxtune.StudyResult.load(store).best_model"}
    (out / "model.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"trial {trial} of study {row['name']!r}: {out / 'params.msgpack'} "
          f"({len(models[trial]['params'])} bytes), {out / 'model.json'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from jaxtune.integrations.optuna import export_to_optuna

    _open_store(args.store).close()  # a missing or foreign file: one line
    names = export_to_optuna(args.store, args.optuna, names=args.name)
    print(f"exported {len(names)} stud{'y' if len(names) == 1 else 'ies'} "
          f"({', '.join(names)}) to {args.optuna}; see them with: optuna-dashboard {args.optuna}")
    return 0


def _cmd_list() -> int:
    from jaxtune import zoo

    for name, entry in zoo.EXPERIMENTS.items():
        star = "*" if name == zoo.DEFAULT else " "
        print(f"{star} {name:<16} {entry.objective:<13} {entry.description}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    importlib.import_module(f"jaxtune.benchmarks.{args.which}").main(args.args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxtune`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv:
        argv = ["run"]
    args = parser.parse_args(argv)
    set_host_devices()
    from jaxtune.distributed import DistributedError

    try:
        _start_processes(args)
    except (ValueError, DistributedError) as e:
        print(f"jaxtune: error: {e}", file=sys.stderr)
        return 2
    try:
        code = _command(parser, args, argv)
    except Exception as e:  # several processes: the others stop too, at once
        _abort(e)
        raise
    if code and "jax" in sys.modules:
        from jaxtune import distributed

        if distributed.process_count() > 1:  # a process failed: skip the shutdown barrier
            sys.stdout.flush()                # (it would wait for the heartbeat timeout)
            sys.stderr.flush()
            os._exit(code)
    return code


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace,
             argv: Sequence[str]) -> int:
    from jaxtune.distributed import DistributedError

    try:
        if args.command == "run":
            return _cmd_run(args, argv)
        if args.command == "resume":
            return _cmd_resume(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "list":
            return _cmd_list()
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "export-model":
            return _cmd_export_model(args)
        if args.command == "bench":
            return _cmd_bench(args)
    except (CLIError, DistributedError) as e:
        print(f"jaxtune: error: {e}", file=sys.stderr)
        _abort(e)
        return 2
    except (ValueError, ImportError) as e:  # StoreError, validation, a missing extra
        print(f"jaxtune: error: {_one_line(e)}", file=sys.stderr)
        _abort(e)
        return 2
    except Exception as e:  # jax's runtime errors are no ValueError: a process was lost
        if not _lost_process(e):
            raise
        print(f"jaxtune: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxtune: interrupted; every trial that ended is in the store "
              "(continue with `jaxtune resume`)", file=sys.stderr)
        return 130
    parser.print_help()
    return 2


def _lost_process(error: Exception) -> bool:
    """Whether a collective failed because another process stopped (several processes)."""
    if "jax" not in sys.modules or "Gloo" not in str(error):
        return False
    from jaxtune import distributed

    return distributed.process_count() > 1


def _one_line(error: Exception) -> str:
    """The error's message; a collective that lost a process says which problem it is."""
    text = str(error)
    if not _lost_process(error):
        return text
    from jaxtune import distributed

    first = text.strip().splitlines()[0][:200]
    return (f"process {distributed.process_index()}: another process stopped or cannot be "
            f"reached ({first}); process 0's store holds every round it committed (continue "
            "with `jaxtune resume`)")


def _abort(error: Exception) -> None:
    """Several processes: process 0 tells the others it stopped (they stop at once)."""
    if "jax" in sys.modules:
        from jaxtune import distributed

        distributed.abort(f"{error}")


if __name__ == "__main__":
    sys.exit(main())
