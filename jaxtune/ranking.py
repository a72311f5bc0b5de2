"""Ranking trials and printing ranked tables: one rule and one table format for the library.

Example:
    >>> from jaxtune.store import TrialRecord
    >>> trials = [TrialRecord(0, {"lr": 0.1}, "complete", objective=0.5),
    ...           TrialRecord(1, {"lr": 0.01}, "complete", objective=0.7),
    ...           TrialRecord(2, {"lr": 1.0}, "diverged")]
    >>> [t.index for t in rank_trials(trials, "maximize")]
    [1, 0]
    >>> print(rank_table([(1, 0.7, None, {"lr": 0.01})], "val_accuracy"))
    rank trial   val_accuracy     ±std  config
       1     1         0.7000        -  lr=0.01
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["DIRECTIONS", "choose_final", "chosen_row", "default_direction", "format_config",
           "rank_table", "rank_trials"]

DIRECTIONS = ("maximize", "minimize")


def default_direction(objective: str) -> str:
    """``"maximize"`` for accuracies, ``"minimize"`` for everything else (losses)."""
    return "maximize" if objective.endswith("accuracy") else "minimize"


def rank_trials(trials: Iterable[Any], direction: str) -> list[Any]:
    """Complete trials with an objective, best first (ties broken by trial index).

    Args:
        trials: records with ``status``, ``objective`` and ``index``
            (:class:`~jaxtune.store.TrialRecord`).
        direction: ``"maximize"`` or ``"minimize"``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    sign = -1.0 if direction == "maximize" else 1.0
    done = [t for t in trials if t.status == "complete" and t.objective is not None]
    return sorted(done, key=lambda t: (sign * t.objective, t.index))


def choose_final(rows: Sequence[Mapping[str, Any]], objective: str,
                 direction: str) -> tuple[int | None, str]:
    """The final choice among the top trials re-trained with fresh seeds.

    The search ranks trials by one noisy run each, and its best is the maximum of
    many noisy values (biased toward luck). The final evaluation re-trains the top
    trials with seeds the search never used, so their re-trained ``objective``
    (a validation or training metric, never the test split) is an unbiased
    estimate; the trial with the best re-trained mean wins. Rows whose re-training
    diverged, or that lack the metric, cannot win; with no such row left the
    search's order stands (the first row).

    Args:
        rows: the final-evaluation rows in search order (keys ``trial``,
            ``status``, ``search_objective``, ``seeds``, ``objective`` and
            ``objective + "_std"``).
        objective: the study's objective metric.
        direction: ``"maximize"`` or ``"minimize"``.

    Returns:
        ``(trial index, reason)``; ``(None, reason)`` without rows.

    Example:
        >>> rows = [{"trial": 3, "status": "complete", "search_objective": 0.71, "seeds": 3,
        ...          "val_accuracy": 0.68, "val_accuracy_std": 0.01},
        ...         {"trial": 5, "status": "complete", "search_objective": 0.70, "seeds": 3,
        ...          "val_accuracy": 0.70, "val_accuracy_std": 0.01}]
        >>> choose_final(rows, "val_accuracy", "maximize")[0]
        5
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    if not rows:
        return None, "no final re-evaluation"
    sign = -1.0 if direction == "maximize" else 1.0

    def value(r: Mapping[str, Any]) -> float | None:
        v = r.get(objective)
        ok = r.get("status", "complete") == "complete" and isinstance(v, (int, float))
        return float(v) if ok and math.isfinite(v) else None

    valid = [(i, r) for i, r in enumerate(rows) if value(r) is not None]
    first = rows[0]
    if not valid:
        return first.get("trial"), (f"no re-trained {objective} to compare: the search's best "
                                    f"trial {first.get('trial')} stands")
    order = sorted(valid, key=lambda ir: (sign * value(ir[1]), ir[0]))
    i, win = order[0]
    n = win.get("seeds")

    def show(r: Mapping[str, Any]) -> str:
        std = r.get(objective + "_std")
        spread = f" ± {std:.3g}" if isinstance(std, (int, float)) and math.isfinite(std) else ""
        return f"{value(r):.4g}{spread}"

    if len(order) == 1:
        return win.get("trial"), (f"trial {win.get('trial')} is the only top trial whose "
                                  f"re-training gave {objective}")
    runner = order[1][1]
    if i == 0:
        why = (f"the search's best trial {win.get('trial')} also re-trained best: {objective} "
               f"{show(win)} over {n} fresh seeds, against {show(runner)} for trial "
               f"{runner.get('trial')}")
    else:
        why = (f"trial {win.get('trial')} (search rank {i + 1}) re-trained best: {objective} "
               f"{show(win)} over {n} fresh seeds, against {show(first)} for the search's "
               f"best trial {first.get('trial')}")
    return win.get("trial"), why


def chosen_row(finals: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The final-evaluation row marked ``chosen`` (``None`` if none is)."""
    return next((r for r in finals if r.get("chosen")), None)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_config(config: Mapping[str, Any]) -> str:
    """``lr=0.01, optimizer=adamw`` (floats to 3 significant digits)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def rank_table(rows: Sequence[tuple[int, float, float | None, Mapping[str, Any]]],
               metric: str, *, extra: Sequence[tuple[str, Sequence[float | None]]] = (),
               front: Sequence[bool] | None = None) -> str:
    """A plain-text table of ranked rows ``(trial, mean, std or None, config)``.

    A ``std`` of ``None`` (one seed: no spread to show) prints as ``-``. ``extra``:
    more columns ``(name, values per row)`` (other objectives); ``front``: per row,
    whether it is on the Pareto front (a ``*`` column).

    Example:
        >>> print(rank_table([(1, 0.7, None, {"w": 8})], "val_accuracy",
        ...                  extra=[("params", [120.0])], front=[True]))
        rank trial   val_accuracy     ±std         params front  config
           1     1         0.7000        -            120     *  w=8
    """
    head = "".join(f" {name:>14}" for name, _ in extra) + (" front" if front else "")
    lines = [f"{'rank':>4} {'trial':>5} {metric:>14} {'±std':>8}{head}  config"]
    for r, (trial, mean, std, config) in enumerate(rows, 1):
        spread = "-" if std is None or not math.isfinite(std) else f"{std:.4f}"
        more = "".join(f" {_cell(values[r - 1]):>14}" for _, values in extra)
        if front:
            more += f" {'*' if front[r - 1] else '':>5}"
        lines.append(f"{r:>4} {trial:>5} {mean:>14.4f} {spread:>8}{more}  "
                     f"{format_config(config)}")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
