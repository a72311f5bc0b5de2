"""The study report: ``report.md``, a self-contained ``index.html`` and a JSON summary.

:func:`write_report` reads every study of a store (read-only: the store is never
written), draws the figures of :mod:`jaxtune.plots`, and writes into one
folder::

    DIR/index.html        one page, every figure embedded (base64 PNG): mail it
    DIR/report.md         the same text; figures as files beside it
    DIR/figures/<study>/*.png
    DIR/summary.json      what :func:`study_summary` returns, per study

Each study's section gives its warnings (best trials at a range edge, many
diverged trials, a best result within seed noise of the runner-up, an
interrupted study), the best trials with a command that reproduces each, the
importance of each hyperparameter, the figures, the study's settings and the
environment it ran in. ``jaxtune report STORE --out DIR`` calls it.

Example:
    >>> import pathlib, tempfile
    >>> from jaxtune.store import Store, TrialRecord
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> with Store(tmp / "runs.db") as store:
    ...     sid = store.open_study("demo", {"objective": "val_loss"})
    ...     store.add_trials(sid, [TrialRecord(i, {"lr": 10.0 ** -i}, "complete",
    ...                                        objective=abs(i - 2) + 0.1) for i in range(4)])
    >>> summary = write_report(tmp / "runs.db", tmp / "report")
    >>> summary["studies"][0]["best"]["trial"], (tmp / "report" / "index.html").exists()
    (2, True)
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import os
import pathlib
import re
import shlex
import time
from collections.abc import Callable
from typing import Any

from jaxtune import render
from jaxtune.analysis import (
    StudyData,
    boundary_hits,
    divergence_driver,
    load_studies,
    load_study,
    metric_value,
    seed_noise,
)
from jaxtune.ranking import chosen_row, format_config
from jaxtune.store import Store

__all__ = ["DIVERGED_WARN", "reproduce_command", "study_summary", "write_report"]

#: Warn when at least this fraction of the finished trials diverged.
DIVERGED_WARN = 0.2



# ----------------------------------------------------------------------------- the summary


def reproduce_command(data: StudyData, trial: Any) -> str | None:
    """A shell command that trains one trial again, or ``None`` for a study made in Python.

    The study must have been created by the ``jaxtune`` command (its info names
    the experiment). Member keys derive from the study seed and the trial id, and
    the command pads the population as studies do and exposes one XLA host device
    per core as the command does; a long run at a high learning rate can still
    end elsewhere on another machine or device count (floating-point order).
    """
    import jaxtune.study

    ref = data.info.get("experiment_ref")
    if not ref:
        return None
    steps = data.info.get("steps")
    multiple = getattr(jaxtune.study, "SIZE_MULTIPLE", 8)
    load = f"jt.zoo.load({ref!r}" + (f", steps={int(steps)})" if steps else ")")
    code = (f"import jaxtune as jt; exp, objective, _ = {load}; "
            f"r = jt.train_population(exp, [{trial.config!r}], seeds={max(len(trial.seeds), 1)}, "
            f"seed={int(data.spec.get('seed', 0))}, trial_ids=[{trial.index}], "
            f"size_multiple={multiple}, evaluate_test=False); print(r.table(objective))")
    quoted = shlex.quote(code) if any(c in code for c in '"$`\\!') else f'"{code}"'
    return f"XLA_FLAGS=--xla_force_host_platform_device_count=$(nproc) python -c {quoted}"


def _finals_by_trial(data: StudyData) -> dict[int, dict[str, Any]]:
    return {r.get("trial"): r for r in data.finals}


def _std(trial: Any, metric: str) -> float | None:
    m = trial.metrics.get(metric)
    if isinstance(m, dict) and len(m.get("per_seed") or ()) > 1:
        return m.get("std")
    return None


def _settings(data: StudyData) -> dict[str, Any]:
    spec, exp = data.spec, data.spec.get("experiment") or {}
    study = data.info.get("study") or {}
    out = {"objective": data.objective, "direction": data.direction,
           "searcher": spec.get("searcher"), "searcher options": spec.get("searcher_options"),
           "seeds per trial": spec.get("seeds"), "population": spec.get("population"),
           "study seed": spec.get("seed"), "trials asked": data.info.get("trials"),
           "top-k re-evaluated": study.get("top_k"), "final seeds": study.get("final_seeds"),
           "experiment": exp.get("name"), "steps": exp.get("steps"),
           "eval every": exp.get("eval_every"), "batch mode": exp.get("batch_mode"),
           "data": (exp.get("data") or {}).get("name"), "defaults": exp.get("defaults")}
    return {k: v for k, v in out.items() if v not in (None, {}, [])}


def _environment(data: StudyData) -> dict[str, Any]:
    info = data.info
    out = {k: info[k] for k in sorted(info) if k.endswith("version")}
    out["devices"] = info.get("devices") or next(
        (b["devices"] for b in data.batches if b.get("devices")), "not recorded in this store")
    if info.get("created"):
        out["created"] = datetime.datetime.fromtimestamp(info["created"]).isoformat(
            sep=" ", timespec="seconds")
    if info.get("command"):
        out["command"] = info["command"]
    return out


def _pruned(data: StudyData) -> dict[str, Any] | None:
    pruned = [t for t in data.trials if t.status == "pruned"]
    if not pruned:
        return None
    steps = sorted(v for t in pruned if (v := metric_value(t, "steps")) is not None)
    rungs: dict[str, int] = {}
    for t in pruned:
        r = metric_value(t, "rung")
        if r is not None:
            rungs[f"{r:g}"] = rungs.get(f"{r:g}", 0) + 1
    out: dict[str, Any] = {"count": len(pruned)}
    if steps:
        out["steps"] = {"min": steps[0], "median": steps[len(steps) // 2], "max": steps[-1]}
    if rungs:
        out["rungs"] = rungs
    return out


def _warnings(data: StudyData, hits: list, noise: dict | None) -> list[str]:
    counts, out = data.counts(), []
    if counts["running"]:
        out.append(f"the study was interrupted: {counts['running']} trials are still "
                   f"`running` (continue it with `jaxtune resume {data.store or 'STORE'}`)")
    out += [h.advice for h in hits]
    finished = counts["complete"] + counts["diverged"] + counts["pruned"]
    if counts["diverged"] >= 2 and counts["diverged"] >= DIVERGED_WARN * finished:
        text = (f"{counts['diverged']} of {finished} finished trials "
                f"({counts['diverged'] / finished:.0%}) diverged")
        driver = divergence_driver(data)
        if driver:
            text += (f"; most at {driver['side']} {driver['name']} (median "
                     f"{driver['diverged_median']:.3g}, complete trials "
                     f"{driver['complete_median']:.3g}): narrow its range")
        out.append(text)
    if noise is None:
        return out
    s, f = noise.get("search"), noise.get("final")
    if s and s["within_noise"]:
        a, b = s["trials"]
        out.append(f"the best trial {a} ({s['best']:.4g}) is within seed noise of the "
                   f"runner-up {b} ({s['runner_up']:.4g}): gap {s['gap']:.3g} < 2 × "
                   f"{s['se']:.3g} (standard error of the difference)")
    if f and s and s["within_noise"]:
        a, b = f["trials"]
        better = (f["runner_up"] > f["best"]) == (data.direction == "maximize")
        verdict = ("still within seed noise" if f["within_noise"] else
                   f"trial {b if better else a} is better beyond seed noise")
        out.append(f"re-trained with fresh seeds: trial {a} {f['best']:.4g}, trial {b} "
                   f"{f['runner_up']:.4g} ({noise['metric']}): {verdict}")
    if not data.finals and counts["complete"]:
        out.append("no final re-evaluation of the top trials (the study did not finish, or "
                   "top_k / final_seeds was 0): seed noise is unknown")
    return out


def _lineages(trials: list[Any]) -> dict[int, list[dict[str, Any]]]:
    """The trained segments of trials whose configuration changed (PBT), by trial."""
    return {t.index: t.curves["segments"] for t in trials
            if len(t.curves.get("segments") or ()) > 1}


def study_summary(data: StudyData, *, k: int = 10, importance: Any = None) -> dict[str, Any]:
    """A JSON-serialisable summary of one study (the report's ``--json`` output).

    Keys: ``name``, ``store``, ``objective``, ``direction``, trial counts
    (``trials``, ``complete``, ``diverged``, ``pruned``, ``running``), ``best``,
    ``top`` (``k`` rows with config and ``command``), ``wall_s``, ``compiles``,
    ``variance``, ``seed_noise``, ``boundary_hits``, ``pruned_steps``, ``lineages``
    (the trained segments of top trials population-based training changed),
    ``importance`` (when given), ``settings``, ``environment``, ``warnings``.
    """
    ranked, counts, finals = data.ranked(), data.counts(), _finals_by_trial(data)
    objectives = data.spec.get("objectives")
    front = None
    if objectives:
        from jaxtune.objectives import Objective, front_of

        front = [t.index for t in front_of(data.trials, [Objective(*o) for o in objectives])]
    hits, noise = boundary_hits(data), seed_noise(data)
    test = "test_" + data.objective.removeprefix("val_")
    top = []
    for rank, t in enumerate(ranked[:k], 1):
        f = finals.get(t.index, {})
        top.append({"rank": rank, "trial": t.index, data.objective: t.objective,
                    "std": _std(t, data.objective), test: f.get(test),
                    test + "_std": f.get(test + "_std"), "config": t.config,
                    "command": reproduce_command(data, t)})
        if front is not None:
            top[-1].update({o: (t.metrics.get(o) or {}).get("mean") for o, _ in objectives[1:]})
            top[-1]["front"] = t.index in front
    best = None
    if ranked:
        row = chosen_row(data.finals)
        won = next((t for t in ranked if row is not None and t.index == row["trial"]), ranked[0])
        best = {"trial": won.index, "config": won.config, data.objective: won.objective,
                "search_rank": ranked.index(won) + 1}
        f = finals.get(won.index)
        if f:
            best.update({k_: v for k_, v in f.items() if k_.startswith(("test_", "val_"))})
            best["final_seeds"] = f.get("seeds")
            best["chosen_because"] = f.get("chosen_because")
    variance = None
    if noise and "trial_std" in noise:
        variance = {"metric": noise["metric"], "trial_var": noise["trial_std"] ** 2,
                    "seed_var": noise["seed_std"] ** 2, "top_k": len(noise["rows"])}
    return {
        "name": data.name, "store": data.store, "objective": data.objective,
        "direction": data.direction, "trials": len(data.trials), **counts, "best": best,
        "top": top, "wall_s": sum(b.get("wall_s") or 0.0 for b in data.batches),
        "compiles": sum(b.get("compiles") or 0 for b in data.batches), "variance": variance,
        "seed_noise": noise, "boundary_hits": [dataclasses.asdict(h) for h in hits],
        "pruned_steps": _pruned(data),
        "lineages": _lineages(ranked[:k]),
        "importance": None if importance is None else importance.to_dict(),
        "settings": _settings(data), "environment": _environment(data),
        "warnings": _warnings(data, hits, noise),
        **({"objectives": objectives, "front": front} if front is not None else {}),
    }


# ----------------------------------------------------------------------------- figures


@dataclasses.dataclass
class _Figure:
    key: str
    title: str
    caption: str
    png: bytes | None = None
    note: str | None = None


def _figures(data: StudyData, imp: Any, surrogate: Any) -> list[_Figure]:
    from jaxtune import plots, surrogate_plots

    space = data.space
    ranked_names = imp.ranked() if imp is not None else []
    scientific = [n for n in ["batch_size", *ranked_names] if space is not None and n in space]
    specs: list[tuple[str, str, str, Callable[[], Any] | None, str]] = [
        ("status", "Trial status", "complete, diverged, pruned and running trials per batch",
         lambda: plots.plot_status(data), ""),
        ("best_so_far", "Best so far", "the best objective after each trial and over wall time",
         lambda: plots.plot_best_so_far(data), ""),
        ("learning_curves", "Learning curves", "every trial's curves (mean over seeds); the "
         "best few in colour, pruned trials dashed", lambda: plots.plot_learning_curves(data),
         ""),
        ("importance", "Hyperparameter importance", "functional ANOVA of a tree-ensemble "
         "surrogate, with permutation importance as a cross-check",
         imp and (lambda: surrogate_plots.plot_importance(imp)), "no surrogate"),
        ("hyperparameters", "Objective against each hyperparameter", "orange: the best trials; "
         "red crosses: diverged trials; red band: the best trials sit at a range edge; "
         "dashed: the surrogate's partial dependence",
         lambda: plots.plot_hyperparameters(data, surrogate=surrogate, importance=imp), ""),
        ("partial_dependence", "Partial dependence", "the surrogate's partial dependence on "
         "the most important hyperparameters, alone and in pairs",
         surrogate and (lambda: surrogate_plots.plot_partial_dependence(
             surrogate, ranked_names[:4])),
         "no surrogate"),
        ("parallel_coordinates", "Parallel coordinates", "one line per trial, coloured by "
         "objective", lambda: plots.plot_parallel_coordinates(data), ""),
        ("isolation", "Isolation", "the best trial per value of one hyperparameter, every "
         "other hyperparameter tuned away",
         scientific and (lambda: plots.plot_isolation(data, scientific=scientific[:2])),
         "no hyperparameter to isolate"),
        ("seed_variance", "Seed noise", "the top configurations re-trained with fresh seeds: "
         "spread between seeds next to the spread between configurations",
         lambda: plots.plot_seed_variance(data), ""),
    ]
    if data.spec.get("objectives"):  # several objectives
        specs.insert(2, ("pareto_front", "Pareto front", "complete trials in the plane of the "
                         "first two objectives; orange: the trials no other trial beats in "
                         "every objective", lambda: plots.plot_pareto_front(data), ""))
    out = []
    for key, title, caption, draw, why_not in specs:
        fig = _Figure(key, title, caption)
        if not draw:
            fig.note = why_not
        else:
            try:
                buf = io.BytesIO()
                draw().savefig(buf, format="png", dpi=90)
                fig.png = buf.getvalue()
            except ValueError as e:
                fig.note = str(e)
            except Exception as e:  # a broken figure must not cost the rest of the report
                fig.note = f"failed: {type(e).__name__}: {e}"
        out.append(fig)
    return out


# ----------------------------------------------------------------------------- content


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return format_config(v) if v else "-"
    return str(v)


def _study_blocks(data: StudyData, summary: dict, figures: list[_Figure], k: int) -> list[tuple]:
    obj, counts = data.objective, summary
    exp = (data.spec.get("experiment") or {}).get("name", "?")
    blocks: list[tuple] = [("h", 2, f"Study `{data.name}`"), ("p", (
        f"experiment {exp}, searcher {data.spec.get('searcher', '?')}, objective {obj} "
        f"({data.direction}); {counts['trials']} trials: {counts['complete']} complete, "
        f"{counts['diverged']} diverged, {counts['pruned']} pruned, "
        + (f"{counts['infeasible']} infeasible, " if counts.get("infeasible") else "")
        + f"{counts['running']} running; {summary['wall_s']:.1f} s of training, "
        f"{summary['compiles']} compiles"))]
    if summary["warnings"]:
        blocks.append(("warnings", summary["warnings"]))
    best = summary["best"]
    if best:
        test = "test_" + obj.removeprefix("val_")
        extra = (f"; re-trained with {best['final_seeds']} fresh seeds: {obj} "
                 f"{_fmt(best.get(obj))}, {test} {_fmt(best.get(test))} ± "
                 f"{_fmt(best.get(test + '_std'))}") if best.get("final_seeds") else ""
        why = f" Chosen because {best['chosen_because']}." if best.get("chosen_because") else ""
        blocks.append(("p", f"Best: trial {best['trial']} (search rank {best['search_rank']}), "
                       f"{obj} {_fmt(best[obj])} in the search{extra}.{why} "
                       f"Config: `{format_config(best['config'])}`"))
    if summary["pruned_steps"]:
        p = summary["pruned_steps"]
        steps = p.get("steps")
        span = steps and (f"{steps['min']:g}" if steps["min"] == steps["max"] else
                          f"{steps['min']:g}-{steps['max']:g} (median {steps['median']:g})")
        blocks.append(("p", f"{p['count']} pruned trials" + (
            f", stopped after {span} steps" if steps else "") + (
            "; rungs reached: " + ", ".join(f"{r}: {n}" for r, n in p["rungs"].items())
            if p.get("rungs") else "")))
    if summary["lineages"]:
        blocks.append(("p", "Population-based training changed these top trials' "
                       "hyperparameters while they trained (steps: configuration, and the "
                       "trial whose state an exploit copied); importance leaves such trials "
                       "out. " + "; ".join(
                           f"trial {t}: " + ", then ".join(
                               f"{seg['start']}-{seg.get('end', 'end')}: "
                               f"`{format_config(seg['config'])}`"
                               + (f" (from trial {seg['source']})"
                                  if seg.get("source") is not None else "")
                               for seg in segs)
                           for t, segs in summary["lineages"].items())))
    if summary["top"]:
        test = "test_" + obj.removeprefix("val_")
        more = [o for o, _ in summary.get("objectives") or []][1:]
        rows = [[r["rank"], r["trial"], _fmt(r[obj]), _fmt(r["std"]), _fmt(r.get(test)),
                 *[_fmt(r.get(o)) for o in more],
                 *(["*" if r.get("front") else ""] if more else []),
                 f"`{format_config(r['config'])}`"] for r in summary["top"]]
        blocks += [("h", 3, f"Top {len(rows)} trials"),
                   ("table", ["rank", "trial", obj, "± std", test, *more,
                              *(["front"] if more else []), "config"], rows)]
        commands = [(r["trial"], r["command"]) for r in summary["top"][:5] if r["command"]]
        if commands:
            blocks.append(("p", "Commands that train a trial again (same seeds, same keys):"))
            blocks += [("code", f"# trial {t}\n{c}") for t, c in commands]
        else:
            blocks.append(("note", "This study was made in Python: train a trial again with "
                           "`jt.train_population(experiment, [config], seed=<study seed>, "
                           "trial_ids=[<trial>])`."))
    imp = summary["importance"]
    if imp:
        rows = [[n, f"{v:.1%}", f"{imp['permutation'][n]['mean']:.3f} ± "
                 f"{imp['permutation'][n]['std']:.3f}"]
                for n, v in sorted(imp["main"].items(), key=lambda kv: -kv[1])]
        inter = imp["interaction"]
        r2 = "n/a" if imp["r2_oob"] is None else f"{imp['r2_oob']:.2f}"
        blocks += [("h", 3, "Importance"),
                   ("table", ["hyperparameter", "main effect (fANOVA)",
                              "permutation (R² drop)"], rows),
                   ("p", (f"Strongest interaction: {inter['pair'][0]} × {inter['pair'][1]} "
                          f"({inter['fraction']:.1%}). " if inter else "") +
                    f"Surrogate: a forest of extremely randomized trees on {imp['n_trials']} "
                    "complete trials, "
                    f"out-of-bag R² {r2}.")]
    blocks.append(("h", 3, "Figures"))
    for fig in figures:
        blocks.append(("figure", fig) if fig.png else
                      ("note", f"{fig.title}: not drawn ({fig.note})."))
    blocks += [("h", 3, "Settings"),
               ("table", ["setting", "value"], [[k_, _fmt(v)] for k_, v in
                                                summary["settings"].items()])]
    if data.space is not None:
        blocks.append(("table", ["hyperparameter", "range"],
                       [[n, _space_text(d)] for n, d in data.space.items()]))
    env = summary["environment"]
    blocks += [("h", 3, "Environment"),
               ("table", ["item", "value"], [[k_, _fmt(v)] for k_, v in env.items()])]
    return blocks


def _space_text(dim: Any) -> str:
    if hasattr(dim, "low"):
        text = f"{type(dim).__name__.lower()} [{dim.low:g}, {dim.high:g}]" + (
            ", log" if dim.log else "")
    else:
        text = "choice of " + ", ".join(map(str, dim.values))
    when = " and ".join(f"{p} in {', '.join(map(str, v))}" for p, v in dim.conditions.items())
    return text + (", static" if dim.static else "") + (f"; only when {when}" if when else "")


# ----------------------------------------------------------------------------- writing


def _slug(name: str, taken: set[str]) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "study"
    base, n = slug, 1
    while slug in taken:
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug)
    return slug


def write_report(source: Any, out_dir: str | os.PathLike, *, name: str | None = None,
                 k: int = 10, seed: int = 0) -> dict[str, Any]:
    """Writes the report of every study of a store (or of study ``name``) into ``out_dir``.

    Args:
        source: a store path or :class:`~jaxtune.store.Store` (every study), or
            anything else :func:`~jaxtune.analysis.load_study` accepts (one study).
        out_dir: the folder (created) for ``index.html``, ``report.md``,
            ``summary.json`` and ``figures/``.
        name: report only this study.
        k: trials in each top-trials table.
        seed: randomness of the surrogate and its analyses.

    Returns:
        ``{"store", "out", "files", "seconds", "studies": [study_summary(...), ...]}``.
    """
    from jaxtune.surrogate import MIN_TRIALS, fit_surrogate, importance

    t0 = time.perf_counter()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # fail before the work, not after
    if name is None and isinstance(source, (str, os.PathLike, Store)):
        studies = load_studies(source)
    else:
        studies = [load_study(source, name)]
    if not studies:
        raise ValueError(f"store {source} holds no study")
    md, body, summaries, files, taken = [], [], [], [], set()
    for data in studies:
        imp = surrogate = None
        reason = ""
        try:
            surrogate = fit_surrogate(data, seed=seed)
            imp = importance(data, surrogate=surrogate, seed=seed)
        except ValueError as e:
            reason = str(e)
        summary = study_summary(data, k=k, importance=imp)
        if imp is None:
            summary["importance_note"] = reason
            summary["warnings"].append(f"no importance analysis: {reason}")
        elif imp.r2_oob is not None and imp.r2_oob < 0.3 and len(data.ranked()) >= MIN_TRIALS:
            summary["warnings"].append(
                f"the surrogate predicts held-out trials poorly (out-of-bag R² "
                f"{imp.r2_oob:.2f}): read the importance as a hint only")
        slug = _slug(data.name, taken)
        figures = _figures(data, imp, surrogate)
        fig_dir = out / "figures" / slug
        fig_dir.mkdir(parents=True, exist_ok=True)
        for fig in figures:
            if fig.png:
                (fig_dir / f"{fig.key}.png").write_bytes(fig.png)
                files.append(str(fig_dir / f"{fig.key}.png"))
        summary["figures"] = {f.key: f"figures/{slug}/{f.key}.png" if f.png else None
                              for f in figures}
        summary["figure_notes"] = {f.key: f.note for f in figures if f.note}
        blocks = _study_blocks(data, summary, figures, k)
        md.append(render.markdown(blocks, f"figures/{slug}"))
        body.append(render.html(blocks))
        summaries.append(summary)
    store = studies[0].store
    title = f"jaxtune report: {store or studies[0].name}"
    stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    header = f"{len(studies)} {'study' if len(studies) == 1 else 'studies'}, made {stamp}"
    (out / "report.md").write_text(f"# {title}\n\n{header}\n\n" + "\n".join(md))
    (out / "index.html").write_text(render.page(title, header, "\n".join(body)))
    result = {"store": store, "out": str(out), "seconds": round(time.perf_counter() - t0, 2),
              "files": [str(out / "index.html"), str(out / "report.md"),
                        str(out / "summary.json"), *files],
              "studies": summaries}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    return result
