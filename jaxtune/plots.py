"""Figures of a study, each a matplotlib :class:`~matplotlib.figure.Figure`.

Every function takes anything :func:`jaxtune.analysis.load_study` accepts (a
store path, a :class:`~jaxtune.store.Store`, a :class:`~jaxtune.Study`, a
:class:`~jaxtune.analysis.StudyData`) and returns a figure built without
pyplot, so it works headless, leaves pyplot's figure list alone, and shows
in a notebook when it is the cell's value. A figure with nothing to show
(no complete trial, no seed replicates, ...) raises :class:`ValueError` saying
why. Save one with :func:`save`.

The surrogate's figures (importance, partial dependence) are in
:mod:`jaxtune.surrogate_plots`.

Example:
    >>> import pathlib, tempfile
    >>> from jaxtune.analysis import StudyData
    >>> from jaxtune.store import TrialRecord
    >>> data = StudyData("demo", {"objective": "val_loss"}, {},
    ...                  [TrialRecord(i, {"lr": 10.0 ** -i}, "complete", objective=1 / (i + 1))
    ...                   for i in range(5)])
    >>> path = save(plot_best_so_far(data), pathlib.Path(tempfile.mkdtemp()) / "best.png")
    >>> path.stat().st_size > 0
    True
"""

from __future__ import annotations

import math
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from jaxtune.analysis import (
    StudyData,
    best_so_far,
    boundary_hits,
    edge_position,
    isolation,
    load_study,
    seed_noise,
)

__all__ = [
    "plot_best_so_far",
    "plot_hyperparameters",
    "plot_isolation",
    "plot_learning_curves",
    "plot_parallel_coordinates",
    "plot_pareto_front",
    "plot_seed_variance",
    "plot_status",
    "save",
]

COLORS = {"complete": "#4c72b0", "top": "#dd8452", "diverged": "#c44e52",
          "pruned": "#8c8c8c", "running": "#c7c7c7", "best": "#2a9d3f",
          "infeasible": "#8172b3"}


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 90) -> pathlib.Path:
    """Writes ``fig`` as PNG (parents created) and returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _figure(rows: int, cols: int, *, w: float = 4.2, h: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    return fig, axes


def _grid(n: int, cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _label(data: StudyData) -> str:
    return f"{data.objective} ({'higher' if data.direction == 'maximize' else 'lower'} is better)"


def _top(data: StudyData, k: int) -> list:
    return data.ranked()[:k]


def _diverged_rug(ax: Any, xs: Sequence[float]) -> None:
    """Red crosses along the bottom of ``ax`` at ``xs`` (diverged trials: no objective)."""
    if len(xs):
        ax.scatter(xs, np.full(len(xs), 0.03), marker="x", color=COLORS["diverged"], s=22,
                   transform=ax.get_xaxis_transform(), label=f"diverged ({len(xs)})",
                   clip_on=False, zorder=3)


def _log_axis(ax: Any, dim: Any) -> None:
    """A log x axis; an integer dimension gets plain labels at powers of two."""
    ax.set_xscale("log")
    if dim.integral:
        ax.xaxis.set_major_locator(mpl.ticker.LogLocator(base=2))
        ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())


def _need(condition: bool, why: str) -> None:
    if not condition:
        raise ValueError(why)


# ----------------------------------------------------------------------------- progress


def plot_best_so_far(source: Any, name: str | None = None) -> Figure:
    """The best objective so far against trials and against wall time."""
    data = load_study(source, name)
    b = best_so_far(data)
    _need(len(b["trial"]) > 0, f"study {data.name!r} has no complete trial")
    fig, (ax1, ax2) = _figure(1, 2)
    ax1.scatter(b["trial"], b["objective"], s=12, color=COLORS["complete"], alpha=0.5,
                label="trial")
    ax1.step(b["trial"], b["best"], where="post", color=COLORS["best"], lw=2, label="best so far")
    _diverged_rug(ax1, [t.index for t in data.trials if t.status == "diverged"])
    ax1.set(xlabel="trial", ylabel=_label(data), title="best so far, by trial")
    ax1.legend(fontsize=8)
    if len(b["seconds"]):
        ax2.step(b["seconds"], b["best_by_time"], where="post", color=COLORS["best"], lw=2)
        ax2.scatter(b["seconds"], b["best_by_time"], s=10, color=COLORS["best"])
        ax2.set(xlabel="seconds since the study started", title="best so far, by wall time")
    else:
        ax2.text(0.5, 0.5, "no timestamps in the store", ha="center", va="center")
        ax2.set_axis_off()
    return fig


def plot_learning_curves(source: Any, name: str | None = None, *, top: int = 5,
                         metrics: Sequence[str] | None = None) -> Figure:
    """Learning curves of every trial (mean over seeds), the ``top`` best highlighted.

    Args:
        metrics: curves to draw (default: the objective and ``train_loss``).
    """
    data = load_study(source, name)
    have = [t for t in data.trials if t.curves.get("step")]
    _need(bool(have), f"study {data.name!r} has no learning curves")
    if metrics is None:
        metrics = [m for m in dict.fromkeys([data.objective, "train_loss"])
                   if any(m in t.curves for t in have)]
    _need(bool(metrics), f"study {data.name!r} stores no curve of {data.objective}")
    best = {t.index: r for r, t in enumerate(_top(data, top))}
    fig, axes = _figure(1, len(metrics))
    for ax, metric in zip(axes, metrics):
        for t in sorted(have, key=lambda t: -best.get(t.index, -1)):
            if metric not in t.curves:
                continue
            with warnings.catch_warnings():  # an evaluation every seed missed: NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                y = np.nanmean(np.atleast_2d(np.asarray(t.curves[metric], float)), axis=0)
            x = np.asarray(t.curves["step"], float)[: len(y)]
            if t.index in best:
                ax.plot(x, y, lw=2, zorder=3, color=f"C{best[t.index] + 1}",
                        label=f"#{best[t.index] + 1}: trial {t.index} ({t.objective:.4g})")
            else:
                color = COLORS.get(t.status, COLORS["complete"])
                ax.plot(x, y, lw=0.8, alpha=0.35, color=color,
                        ls="--" if t.status == "pruned" else "-")
        ax.set(xlabel="step", ylabel=metric, title=f"{metric}: all trials, top {len(best)} "
               "in colour")
        if metric.endswith("loss"):
            ax.set_yscale("log")
        if best:
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles[::-1], labels[::-1], fontsize=7)
    return fig


def plot_status(source: Any, name: str | None = None) -> Figure:
    """Complete, diverged, pruned (and still running) trials per batch."""
    data = load_study(source, name)
    _need(bool(data.trials), f"study {data.name!r} has no trial")
    batches = sorted({-1 if t.batch is None else t.batch for t in data.trials})
    fig, (ax,) = _figure(1, 1, w=6.5)
    bottom = np.zeros(len(batches))
    for status, n in data.counts().items():
        if not n:
            continue
        counts = np.asarray([sum(t.status == status and (t.batch if t.batch is not None else -1)
                                 == b for t in data.trials) for b in batches], float)
        ax.bar(np.arange(len(batches)), counts, bottom=bottom, color=COLORS[status],
               label=f"{status} ({n})")
        bottom += counts
    ax.set_xticks(np.arange(len(batches)), ["-" if b < 0 else str(b) for b in batches])
    ax.set(xlabel="batch", ylabel="trials", title=f"trial status ({len(data.trials)} trials)")
    ax.legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- hyperparameters


def _position(dim: Any, value: Any) -> float | None:
    """A value's place on a parallel-coordinates axis: edge position, or choice index."""
    if dim.categorical:
        k = len(dim.values)
        return dim.values.index(value) / (k - 1) if k > 1 and value in dim.values else 0.5
    return edge_position(dim, value)


def plot_parallel_coordinates(source: Any, name: str | None = None, *, top: int = 5) -> Figure:
    """One line per trial across every hyperparameter's axis and the objective's.

    Lines are coloured by objective (best brightest, drawn last, the ``top``
    thickest); diverged trials are red, under the objective axis.
    """
    data = load_study(source, name)
    space = data.space
    _need(space is not None and bool(data.ranked()), f"study {data.name!r} has no complete "
          "trial with a known space")
    names = list(space.names)
    ranked = data.ranked()
    obj = np.asarray([t.objective for t in ranked])
    lo, hi = float(obj.min()), float(obj.max())
    fig, (ax,) = _figure(1, 1, w=max(7.0, 1.3 * (len(names) + 1)), h=4.0)
    norm = mpl.colors.Normalize(lo, hi)
    cm = mpl.colormaps["viridis" if data.direction == "maximize" else "viridis_r"]
    xs = np.arange(len(names) + 1)

    def ys(t: Any, tail: float) -> list[float]:
        return [_position(space[n], t.config.get(n)) or 0.0 for n in names] + [tail]

    for t in [t for t in data.trials if t.status == "diverged"]:
        ax.plot(xs, ys(t, -0.08), color=COLORS["diverged"], lw=0.8, alpha=0.5, ls="--")
    span = (hi - lo) or 1.0
    for r, t in reversed(list(enumerate(ranked))):
        y = ys(t, (t.objective - lo) / span if data.direction == "maximize"
               else (hi - t.objective) / span)
        ax.plot(xs, y, color=cm(norm(t.objective)), lw=2.4 if r < top else 0.9,
                alpha=1.0 if r < top else 0.6, zorder=3 if r < top else 2)
    for x, n in enumerate(names):
        dim = space[n]
        ax.axvline(x, color="k", lw=0.6)
        if dim.categorical:
            for v in dim.values:
                ax.text(x + 0.03, _position(dim, v), str(v), fontsize=7, va="center")
        else:
            ax.text(x + 0.03, 0, f"{dim.low:g}", fontsize=7, va="bottom")
            ax.text(x + 0.03, 1, f"{dim.high:g}", fontsize=7, va="top")
    ax.axvline(len(names), color="k", lw=0.6)
    ax.text(len(names) + 0.03, -0.08, "diverged", fontsize=7, color=COLORS["diverged"],
            va="center")
    ax.set_xticks(xs, [*names, data.objective], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.14, 1.06)
    ax.set_xlim(-0.2, len(names) + 0.5)
    ax.set_title(f"parallel coordinates ({len(ranked)} complete trials, top {top} thick)")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, label=data.objective)
    return fig


def _xy(dim: Any, trials: Sequence[Any], name: str, rng: np.random.Generator) -> np.ndarray:
    if dim.categorical:
        return np.asarray([dim.values.index(t.config[name]) + rng.uniform(-0.15, 0.15)
                           for t in trials])
    return np.asarray([float(t.config[name]) for t in trials])


def plot_hyperparameters(source: Any, name: str | None = None, *, top: int = 5,
                         surrogate: Any = None, importance: Any = None) -> Figure:
    """The objective against each hyperparameter, one panel each.

    Log axes for log dimensions; the ``top`` best trials in orange; diverged
    trials as red crosses along the bottom; a range edge where the best trials
    gather (:func:`~jaxtune.analysis.boundary_hits`) shaded red; with a
    ``surrogate``, its partial dependence as a dashed line; with an
    ``importance``, each title gives the main effect.
    """
    data = load_study(source, name)
    space, ranked = data.space, data.ranked()
    _need(space is not None and bool(ranked), f"study {data.name!r} has no complete trial "
          "with a known space")
    rows, cols = _grid(len(space))
    fig, axes = _figure(rows, cols, w=3.4, h=2.8)
    hits = {(h.name, h.edge): h for h in boundary_hits(data, top=top)}
    rng = np.random.default_rng(0)
    best = ranked[:top]
    diverged = [t for t in data.trials if t.status == "diverged"]
    for ax, n in zip(axes, space.names):
        dim = space[n]
        have = [t for t in ranked if n in t.config]
        ax.scatter(_xy(dim, have, n, rng), [t.objective for t in have], s=12, alpha=0.55,
                   color=COLORS["complete"])
        ax.scatter(_xy(dim, best, n, rng), [t.objective for t in best], s=30,
                   color=COLORS["top"], edgecolor="k", lw=0.6, zorder=3)
        _diverged_rug(ax, _xy(dim, [t for t in diverged if n in t.config], n, rng))
        if dim.categorical:
            ax.set_xticks(range(len(dim.values)), [str(v) for v in dim.values], fontsize=7,
                          rotation=20 if len(dim.values) > 3 else 0)
        elif dim.log:
            _log_axis(ax, dim)
        edges = [edge for edge in ("low", "high") if (n, edge) in hits]
        for edge in edges:
            _shade_edge(ax, dim, edge)
        if surrogate is not None and n in surrogate.names:
            from jaxtune.surrogate import partial_dependence

            pd = partial_dependence(surrogate, n)
            choice = dim.categorical
            x = np.arange(len(pd["value"])) if choice else pd["value"].astype(float)
            ax.plot(x, pd["mean"], "_" if choice else "--", color="k", lw=1.2, ms=18,
                    mew=2, label="surrogate")
        title = n + (f"  ({importance.main[n]:.0%} of variance)"
                     if importance is not None and n in importance.main else "")
        title += "".join(f"\nbest at {edge} edge: widen" for edge in edges)
        ax.set_title(title, fontsize=9, color=COLORS["diverged"] if edges else "k")
        ax.set_ylabel(data.objective, fontsize=8)
    for ax in axes[len(space):]:
        ax.set_axis_off()
    fig.suptitle(f"{data.objective} against each hyperparameter (orange: top {top}; "
                 "red band: best trials at a range edge)", fontsize=10)
    return fig


def _shade_edge(ax: Any, dim: Any, edge: str, margin: float = 0.05) -> None:
    lo, hi = float(dim.low), float(dim.high)
    if dim.log:
        a, b = (lo, lo * (hi / lo) ** margin) if edge == "low" else (hi / (hi / lo) ** margin, hi)
    else:
        a, b = (lo, lo + margin * (hi - lo)) if edge == "low" else (hi - margin * (hi - lo), hi)
    ax.axvspan(a, b, color=COLORS["diverged"], alpha=0.18, lw=0)


def plot_isolation(source: Any, name: str | None = None, *,
                   scientific: Sequence[str] | None = None, bins: int = 8) -> Figure:
    """Best trial per value of a *scientific* hyperparameter, the others tuned away.

    Args:
        scientific: the hyperparameters to isolate (default: ``batch_size`` if the
            space has it, else its first hyperparameter).
        bins: bins of a ranged hyperparameter with many distinct values.
    """
    data = load_study(source, name)
    space = data.space
    _need(space is not None and bool(data.ranked()), f"study {data.name!r} has no complete "
          "trial with a known space")
    if scientific is None:
        scientific = ["batch_size" if "batch_size" in space else space.names[0]]
    fig, axes = _figure(1, len(scientific), w=4.6)
    for ax, n in zip(axes, scientific):
        dim, rows = space[n], isolation(data, n, bins=bins)
        y = [r["objective"] for r in rows]
        if dim.categorical:
            x = [dim.values.index(r["value"]) for r in rows]
            ax.set_xticks(x, [str(r["value"]) for r in rows], fontsize=8)
        else:
            x = [float(r["value"]) for r in rows]
            err = [[v - float(r["low"]) for v, r in zip(x, rows)],
                   [float(r["high"]) - v for v, r in zip(x, rows)]]
            ax.errorbar(x, y, xerr=np.maximum(err, 0), fmt="none", ecolor="#999999", lw=1)
            if dim.log:
                _log_axis(ax, dim)
        ax.margins(y=0.18)
        ax.plot(x, y, "o-", color=COLORS["best"], lw=1.5)
        for xi, yi, r in zip(x, y, rows):
            ax.annotate(f"n={r['n']}", (xi, yi), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
        ax.set(xlabel=n, ylabel=f"best {data.objective}",
               title=f"best {data.objective} per {n}\n(other hyperparameters tuned away)")
    return fig


# ----------------------------------------------------------------------------- seeds


def plot_seed_variance(source: Any, name: str | None = None) -> Figure:
    """Seed variance of the top configurations next to the variance between them.

    Left: each re-evaluated top configuration's mean ± std over fresh seeds (the
    objective's metric and the test metric) and its search objective. Right: the
    spread between configurations (trial std) and within them (seed std).
    """
    data = load_study(source, name)
    noise = seed_noise(data)
    _need(noise is not None and len(noise["rows"]) >= 1,
          f"study {data.name!r} has no re-evaluation of its top trials with several seeds")
    rows = noise["rows"]
    fig, (ax1, ax2) = _figure(1, 2, w=4.4)
    x = np.arange(len(rows))
    ax1.errorbar(x - 0.1, [r["mean"] for r in rows], yerr=[r["std"] or 0 for r in rows],
                 fmt="o", capsize=4, color=COLORS["complete"],
                 label=f"{noise['metric']}, fresh seeds")
    if all(r["test"] is not None for r in rows):
        ax1.errorbar(x + 0.1, [r["test"] for r in rows], yerr=[r["test_std"] or 0 for r in rows],
                     fmt="s", capsize=4, color=COLORS["top"], label=noise["test_metric"])
    ax1.scatter(x, [np.nan if r["search"] is None else r["search"] for r in rows],
                marker="_", s=200, color="k", label="search objective", zorder=3)
    ax1.set_xticks(x, [f"trial {r['trial']}" for r in rows], fontsize=8)
    ax1.set(ylabel=noise["metric"],
            title=f"top {len(rows)} re-trained with {rows[0]['n']} seeds (±1 std)")
    ax1.legend(fontsize=7)
    if "trial_std" in noise:
        ax2.bar(["between top trials", "between seeds"], [noise["trial_std"], noise["seed_std"]],
                color=[COLORS["complete"], COLORS["top"]])
        ax2.set(ylabel=f"std of {noise['metric']}", title="trial spread vs seed noise")
    else:
        ax2.text(0.5, 0.5, "one re-evaluated trial:\nno spread between trials", ha="center",
                 va="center")
        ax2.set_axis_off()
    return fig


# ----------------------------------------------------------------------------- objectives


def plot_pareto_front(source: Any, name: str | None = None) -> Figure:
    """A study with several objectives: every complete trial in the plane of the first
    two objectives, the Pareto front (over all objectives) highlighted and joined, and
    infeasible trials as grey crosses."""
    from jaxtune.objectives import Objective, front_of

    data = load_study(source, name)
    pairs = data.spec.get("objectives") or []
    _need(len(pairs) >= 2, f"study {data.name!r} has one objective")
    objs = [Objective(n, d) for n, d in pairs]
    a, b = objs[0].name, objs[1].name

    def xy(trials: Sequence[Any]) -> np.ndarray:
        rows = [[(t.metrics.get(a) or {}).get("mean"), (t.metrics.get(b) or {}).get("mean")]
                for t in trials]
        return np.asarray([r for r in rows if None not in r], float).reshape(-1, 2)

    done = [t for t in data.trials if t.status == "complete"]
    front = front_of(data.trials, objs)
    _need(len(front) > 0, f"study {data.name!r} has no complete trial with every objective")
    fig, (ax,) = _figure(1, 1, w=5.6, h=4.2)
    allp, fp = xy(done), xy(front)
    ax.scatter(allp[:, 0], allp[:, 1], s=14, color=COLORS["complete"], alpha=0.5,
               label=f"complete ({len(allp)})")
    bad = xy([t for t in data.trials if t.status == "infeasible"])
    if len(bad):
        ax.scatter(bad[:, 0], bad[:, 1], s=18, marker="x", color=COLORS["pruned"],
                   label=f"infeasible ({len(bad)})")
    # the attainment boundary: in loss coordinates (both lower is better) each front
    # point holds until the next one's first objective, then drops to its second
    signs = np.asarray([objs[0].sign, objs[1].sign])
    L = fp * signs
    L = L[np.argsort(L[:, 0])]
    corners = np.repeat(L, 2, axis=0)[1:]
    corners[1::2, 1] = L[:-1, 1]
    line = corners * signs
    ax.plot(line[:, 0], line[:, 1], color=COLORS["top"], lw=1.5)
    ax.scatter(fp[:, 0], fp[:, 1], s=30, color=COLORS["top"], zorder=3,
               label=f"Pareto front ({len(fp)})")
    for o, setter in ((objs[0], ax.set_xlabel), (objs[1], ax.set_ylabel)):
        setter(f"{o.name} ({'higher' if o.direction == 'maximize' else 'lower'} is better)")
    if b in ("params", "flops") and fp[:, 1].min() > 0:
        ax.set_yscale("log")
    ax.set_title("objectives" + (f" (front over all {len(objs)})" if len(objs) > 2 else ""))
    ax.legend(fontsize=8)
    return fig
