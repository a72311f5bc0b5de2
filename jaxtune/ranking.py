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

__all__ = ["DIRECTIONS", "default_direction", "format_config", "rank_table", "rank_trials"]

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


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_config(config: Mapping[str, Any]) -> str:
    """``lr=0.01, optimizer=adamw`` (floats to 3 significant digits)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def rank_table(rows: Sequence[tuple[int, float, float | None, Mapping[str, Any]]],
               metric: str) -> str:
    """A plain-text table of ranked rows ``(trial, mean, std or None, config)``.

    A ``std`` of ``None`` (one seed: no spread to show) prints as ``-``.
    """
    lines = [f"{'rank':>4} {'trial':>5} {metric:>14} {'±std':>8}  config"]
    for r, (trial, mean, std, config) in enumerate(rows, 1):
        spread = "-" if std is None or not math.isfinite(std) else f"{std:.4f}"
        lines.append(f"{r:>4} {trial:>5} {mean:>14.4f} {spread:>8}  {format_config(config)}")
    return "\n".join(lines)
