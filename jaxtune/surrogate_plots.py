"""Figures of a study's surrogate: importance bars and partial dependence.

Both take what :mod:`jaxtune.surrogate` computes and return a matplotlib
:class:`~matplotlib.figure.Figure`. :func:`plot_partial_dependence` uses
``skopt.plots.plot_objective`` where it fits (see :func:`skopt_unfit_reason`);
that function draws with pyplot, so the Agg backend is chosen first unless
pyplot is already in use or ``MPLBACKEND`` names a backend (as a notebook
kernel does), and the figure is handed back without staying in pyplot's list.

Example:
    >>> from jaxtune.surrogate import Importance
    >>> imp = Importance("val_loss", {"lr": 0.7, "wd": 0.1}, {("lr", "wd"): 0.05},
    ...                  {"lr": (0.5, 0.05), "wd": (0.1, 0.02)}, 0.8, 40)
    >>> len(plot_importance(imp).axes)
    2
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from jaxtune.plots import COLORS, _figure, _grid, _log_axis

__all__ = ["plot_importance", "plot_partial_dependence", "skopt_unfit_reason"]


def plot_importance(importance: Any) -> Figure:
    """Functional-ANOVA main effects and the strongest interaction, next to
    permutation importance (an :class:`~jaxtune.surrogate.Importance`)."""
    names = importance.ranked()[::-1]
    fig, (ax1, ax2) = _figure(1, 2, w=4.4, h=max(2.6, 0.38 * len(names) + 1.2))
    labels, values, colors = list(names), [importance.main[n] for n in names], [
        COLORS["complete"]] * len(names)
    inter = importance.interaction
    if inter is not None:
        labels.insert(0, f"{inter[0]} × {inter[1]}")
        values.insert(0, inter[2])
        colors.insert(0, COLORS["top"])
    ax1.barh(labels, values, color=colors)
    ax1.set(xlabel="fraction of the surrogate's variance",
            title="functional ANOVA\n(main effects; orange: strongest pair)")
    ax1.set_xlim(0, max(1e-9, max(values)) * 1.15)
    mean = [importance.permutation[n][0] for n in names]
    std = [importance.permutation[n][1] for n in names]
    ax2.barh(names, mean, xerr=std, color="#8172b3")
    r2 = "n/a" if importance.r2_oob is None else f"{importance.r2_oob:.2f}"
    ax2.set(xlabel="drop of R² when shuffled",
            title=f"permutation importance\n({importance.n_trials} trials, out-of-bag R² {r2})")
    return fig


def skopt_unfit_reason(surrogate: Any, names: Sequence[str]) -> str | None:
    """Why ``skopt.plots.plot_objective`` cannot draw these hyperparameters, or ``None``.

    It fits when scikit-optimize imports and at least two of the hyperparameters
    vary. It shows the *minimized* value, so a maximized objective is drawn
    negated. It does not fit a single hyperparameter (no pairs to draw), and
    its cost grows with the square of its grid for each pair, so the report
    passes it the four most important hyperparameters only.
    """
    try:
        import skopt.plots  # noqa: F401
    except Exception as e:  # an import error, or an incompatible numpy/matplotlib
        return f"scikit-optimize's plots do not import here ({type(e).__name__}: {e})"
    varying = [n for n in names if not (surrogate.space[n].categorical
                                        and len(surrogate.space[n].values) < 2)]
    if len(varying) < 2:
        return "plot_objective needs two hyperparameters that vary; the space has fewer"
    return None


def _skopt_space(space: Any) -> Any:
    from skopt.space import Categorical, Space

    # categories by value (readable tick labels), ranges as the space defines them
    return Space([Categorical(list(dim.values), name=n) if dim.categorical
                  else dim.skopt_dimension(n) for n, dim in space.items()])


class _OnSkoptSpace:
    """The surrogate as a model of skopt's transformed space (what plot_objective calls)."""

    def __init__(self, surrogate: Any, sk_space: Any, sign: float):
        self.surrogate, self.sk_space, self.sign = surrogate, sk_space, sign

    def predict(self, Xt: np.ndarray) -> np.ndarray:
        names = self.surrogate.names
        points = self.sk_space.inverse_transform(np.asarray(Xt))
        U = np.stack([self.surrogate.space.to_unit({n: _plain(v) for n, v in zip(names, p)})
                      for p in points])
        return self.sign * self.surrogate.predict(U)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _pyplot() -> Any:
    """pyplot, on the Agg backend unless pyplot is in use or MPLBACKEND chooses one."""
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_partial_dependence(surrogate: Any, names: Sequence[str] | None = None, *,
                            method: str = "auto", n_points: int = 10,
                            n_samples: int = 100, seed: int = 0) -> Figure:
    """Partial dependence of the objective on the fitted surrogate.

    With ``method="skopt"`` (or ``"auto"`` when :func:`skopt_unfit_reason` finds
    no reason against it), ``skopt.plots.plot_objective`` draws each
    hyperparameter's partial dependence on the diagonal and each pair's below
    it (skopt minimizes: a maximized objective is drawn negated, and the title
    says so). Otherwise (``"1d"``) one panel per hyperparameter shows the
    partial dependence with its spread over the forest's trees.

    Args:
        surrogate: a :class:`~jaxtune.surrogate.Surrogate`.
        names: hyperparameters to show (default: all of them).
    """
    names = list(names or surrogate.names)
    reason = skopt_unfit_reason(surrogate, names) if method != "1d" else "1-D panels asked"
    if method == "skopt" and reason is not None:
        raise ValueError(reason)
    if reason is None:
        return _skopt_figure(surrogate, names, n_points, n_samples, seed)
    from jaxtune.surrogate import partial_dependence

    rows, cols = _grid(len(names))
    fig, axes = _figure(rows, cols, w=3.2, h=2.6)
    for ax, n in zip(axes, names):
        pd, dim = partial_dependence(surrogate, n, seed=seed), surrogate.space[n]
        choice = dim.categorical
        x = np.arange(len(pd["value"])) if choice else pd["value"].astype(float)
        if choice:
            ax.errorbar(x, pd["mean"], yerr=pd["std"], fmt="o", capsize=4,
                        color=COLORS["complete"])
            ax.set_xticks(x, [str(v) for v in pd["value"]], fontsize=7)
            ax.margins(x=0.25)
        else:
            ax.fill_between(x, pd["mean"] - pd["std"], pd["mean"] + pd["std"], alpha=0.25,
                            color=COLORS["complete"], lw=0)
            ax.plot(x, pd["mean"], "-", color=COLORS["complete"])
            if dim.log:
                _log_axis(ax, dim)
        ax.set(xlabel=n, ylabel=surrogate.objective)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.suptitle("partial dependence on the surrogate (band: spread over its trees)"
                 + ("" if method == "1d" else f"\n{reason}"), fontsize=9)
    return fig


def _skopt_figure(surrogate: Any, names: list[str], n_points: int, n_samples: int,
                  seed: int) -> Figure:
    from skopt.plots import plot_objective
    from skopt.utils import create_result

    maximize = surrogate.direction == "maximize"
    sign = -1.0 if maximize else 1.0
    sk_space = _skopt_space(surrogate.space)
    X = [[_unit_to_value(surrogate, i, u) for i, u in enumerate(row)] for row in surrogate.X]
    result = create_result(X, list(sign * surrogate.y), space=sk_space,
                           models=[_OnSkoptSpace(surrogate, sk_space, sign)])
    plt = _pyplot()
    state = np.random.get_state()
    np.random.seed(seed)  # plot_objective samples with numpy's global generator
    try:
        axes = plot_objective(result, n_points=n_points, n_samples=n_samples,
                              plot_dims=names, size=2.3)
    finally:
        np.random.set_state(state)
    fig = np.ravel(axes)[0].figure
    plt.close(fig)  # the figure is returned, not kept by pyplot
    fig.subplots_adjust(top=0.9)
    for ax in fig.axes:  # skopt labels minor log ticks too; they collide on short ranges
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_minor_formatter(mpl.ticker.NullFormatter())
    fig.suptitle(f"skopt plot_objective on the surrogate: partial dependence of "
                 f"{'−' if maximize else ''}{surrogate.objective}"
                 f"{' (skopt minimizes)' if maximize else ''}; red star: best trial",
                 fontsize=9)
    return fig


def _unit_to_value(surrogate: Any, i: int, u: float) -> Any:
    n = surrogate.names[i]
    return surrogate.space[n].from_unit(u, n)
