"""Several objectives, Pareto fronts, costs (parameters, FLOPs from XLA) and constraints.

An *objective* is a name and a direction. Names are final metrics the engine records
(``val_accuracy``, ``val_loss``, ``train_loss`` ...), the costs :data:`COSTS`
(``params``: the member's parameter count; ``flops``: FLOPs of one training step
from XLA's cost analysis of the lowered step, nothing compiled), or the steps to a
target, ``steps_to:METRIC:VALUE`` (the first evaluation step at which ``METRIC``
reaches ``VALUE``, ``>=`` for accuracies and ``<=`` otherwise; the mean over
replicates; no value when a replicate never reaches it).

Everything here works on *losses* (lower is better): :func:`losses` turns values
and directions into losses, :func:`pareto_mask` and :func:`hypervolume` take
losses.

Example:
    >>> import numpy as np
    >>> objs = parse_objectives({"val_accuracy": "maximize", "params": "minimize"})
    >>> [(o.name, o.direction) for o in objs]
    [('val_accuracy', 'maximize'), ('params', 'minimize')]
    >>> Y = losses([[0.9, 100.0], [0.8, 50.0], [0.7, 80.0]], objs)
    >>> pareto_mask(Y).tolist()              # the third is worse than the second in both
    [True, True, False]
    >>> float(hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), [3.0, 3.0]))
    3.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "COSTS",
    "OPERATORS",
    "Constraint",
    "Objective",
    "chebyshev",
    "hypervolume",
    "losses",
    "normalise",
    "pareto_mask",
    "parse_objective",
    "parse_objectives",
    "steps_to_target",
]

#: Costs of a configuration known before it trains.
COSTS = ("params", "flops")
#: Comparison operators of a :class:`Constraint`.
OPERATORS = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal, ">": np.greater}
_DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize",
               "minimize": "minimize"}
STEPS_TO = "steps_to:"


@dataclasses.dataclass(frozen=True)
class Objective:
    """One objective: a name and ``"maximize"`` or ``"minimize"``."""

    name: str
    direction: str

    @property
    def sign(self) -> float:
        """``-1`` for maximize: ``sign * value`` is a loss."""
        return -1.0 if self.direction == "maximize" else 1.0

    @property
    def is_cost(self) -> bool:
        """Whether the value is known from the configuration alone (params, FLOPs)."""
        return self.name in COSTS


def _default_direction(name: str) -> str:
    if name.startswith(STEPS_TO) or name in COSTS:
        return "minimize"
    return "maximize" if name.endswith("accuracy") else "minimize"


def parse_objective(text: str) -> Objective:
    """``"val_accuracy:max"`` (or ``:maximize``/``:min``/``:minimize``; without a
    direction, accuracies are maximized and everything else minimized).

    Example:
        >>> parse_objective("params:min")
        Objective(name='params', direction='minimize')
        >>> parse_objective("steps_to:val_accuracy:0.9")
        Objective(name='steps_to:val_accuracy:0.9', direction='minimize')
    """
    head, _, tail = str(text).rpartition(":")
    if head and tail.lower() in _DIRECTIONS:
        return Objective(head, _DIRECTIONS[tail.lower()])
    return Objective(str(text), _default_direction(str(text)))


def parse_objectives(objectives: Mapping[str, str] | Sequence[str]) -> list[Objective]:
    """A mapping ``{name: direction}`` or a list of ``"name:dir"`` strings, checked.

    Raises:
        ValueError: no objective, a repeated name, an unknown direction, or a
            malformed ``steps_to:`` name.
    """
    if isinstance(objectives, Mapping):
        out = []
        for name, direction in objectives.items():
            d = _DIRECTIONS.get(str(direction).lower())
            if d is None:
                raise ValueError(f"objective {name!r}: direction must be 'maximize' or "
                                 f"'minimize', got {direction!r}")
            out.append(Objective(str(name), d))
    else:
        out = [parse_objective(o) for o in objectives]
    if not out:
        raise ValueError("objectives is empty: give at least one objective")
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise ValueError(f"objectives repeat a name: {names}")
    for o in out:
        if o.name.startswith(STEPS_TO):
            _steps_to_parts(o.name)
    return out


def _steps_to_parts(name: str) -> tuple[str, float]:
    parts = name[len(STEPS_TO):].split(":")
    try:
        if len(parts) != 2 or not parts[0]:
            raise ValueError
        return parts[0], float(parts[1])
    except ValueError:
        raise ValueError(f"objective {name!r}: write steps to a target as "
                         "'steps_to:METRIC:VALUE', e.g. 'steps_to:val_accuracy:0.9'") from None


def check_names(objectives: Sequence[Objective], metrics: Sequence[str]) -> None:
    """ValueError unless every objective is a final metric of ``metrics``, a cost or
    steps to a target of one of ``metrics``."""
    for o in objectives:
        base = _steps_to_parts(o.name)[0] if o.name.startswith(STEPS_TO) else o.name
        if base not in metrics and o.name not in COSTS:
            raise ValueError(
                f"objective {o.name!r} is not something this experiment records; choose final "
                f"metrics {sorted(metrics)}, costs {list(COSTS)} or "
                "'steps_to:METRIC:VALUE' (the test split is never used for selection)")


def steps_to_target(curves: Mapping[str, Any], name: str) -> float | None:
    """The mean over replicates of the first evaluation step at which the metric of
    ``name`` (``steps_to:METRIC:VALUE``) reaches ``VALUE``; ``None`` when a replicate
    never does.

    Example:
        >>> curves = {"step": [10, 20, 30], "val_accuracy": [[0.5, 0.9, 0.95], [0.6, 0.7, 0.92]]}
        >>> steps_to_target(curves, "steps_to:val_accuracy:0.9")
        25.0
    """
    metric, target = _steps_to_parts(name)
    up = _default_direction(metric) == "maximize"
    steps = list(curves.get("step") or [])
    found = []
    for values in curves.get(metric) or []:
        v = np.asarray([math.nan if x is None else x for x in values], float)
        hit = np.flatnonzero(v >= target if up else v <= target)
        if not len(hit) or hit[0] >= len(steps):
            return None
        found.append(float(steps[hit[0]]))
    return float(np.mean(found)) if found else None


def losses(values: Sequence[Sequence[float]] | np.ndarray,
           objectives: Sequence[Objective]) -> np.ndarray:
    """``values`` (rows of objective values) as losses: maximized columns negated."""
    Y = np.asarray(values, np.float64).reshape(-1, len(objectives))
    return Y * np.asarray([o.sign for o in objectives])


def pareto_mask(Y: np.ndarray) -> np.ndarray:
    """Which rows of ``Y`` (losses, lower is better) no other row dominates.

    A row dominates another when it is no worse in every column and better in one.
    Rows with a non-finite value are never on the front; equal rows all are.
    """
    Y = np.asarray(Y, np.float64)
    if Y.ndim != 2:
        raise ValueError(f"pareto_mask: Y must be 2-D (points x objectives), got {Y.shape}")
    finite = np.isfinite(Y).all(axis=1)
    mask = finite.copy()
    idx = np.flatnonzero(finite)
    F = Y[idx]
    for j, i in enumerate(idx):
        others = F[np.arange(len(F)) != j]
        dominated = np.any(np.all(others <= F[j], axis=1) & np.any(others < F[j], axis=1))
        mask[i] = not dominated
    return mask


def front_of(trials: Sequence[Any], objectives: Sequence[Objective]) -> list[Any]:
    """The complete trials (:class:`~jaxtune.store.TrialRecord`) on the Pareto front
    of ``objectives`` (values read from ``metrics[name]["mean"]``), best first by the
    first objective. A trial missing a value is not on the front."""
    done = [t for t in trials if t.status == "complete"]
    if not done:
        return []
    rows = [[(t.metrics.get(o.name) or {}).get("mean") for o in objectives] for t in done]
    Y = losses([[math.nan if v is None else v for v in r] for r in rows], objectives)
    on = [t for t, keep, y in zip(done, pareto_mask(Y), Y[:, 0], strict=True) if keep]
    return sorted(on, key=lambda t: (objectives[0].sign * t.metrics[objectives[0].name]["mean"],
                                     t.index))


def hypervolume(Y: np.ndarray, ref: Sequence[float]) -> float:
    """The volume dominated by the rows of ``Y`` (losses) and bounded by ``ref``.

    Exact, by slicing along the last objective (fine for the fronts of a study: a
    few hundred points in two or three objectives). Rows not strictly below ``ref``
    in every objective add nothing.
    """
    ref = np.asarray(ref, np.float64)
    Y = np.asarray(Y, np.float64).reshape(-1, len(ref))
    Y = Y[np.isfinite(Y).all(axis=1) & (ref > Y).all(axis=1)]
    if not len(Y):
        return 0.0
    Y = Y[pareto_mask(Y)]
    if len(ref) == 1:
        return float(ref[0] - Y[:, 0].min())
    Y = Y[np.argsort(Y[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(Y)):
        top = Y[i + 1, -1] if i + 1 < len(Y) else ref[-1]
        if top > Y[i, -1]:
            total += (top - Y[i, -1]) * hypervolume(Y[: i + 1, :-1], ref[:-1])
    return float(total)


def normalise(Y: np.ndarray) -> np.ndarray:
    """Each column of ``Y`` mapped to ``[0, 1]`` over its finite values (a constant
    column to 0); non-finite entries stay non-finite."""
    Y = np.asarray(Y, np.float64)
    out = np.full_like(Y, np.nan)
    for j in range(Y.shape[1]):
        col = Y[:, j]
        ok = np.isfinite(col)
        if ok.any():
            lo, hi = col[ok].min(), col[ok].max()
            out[ok, j] = (col[ok] - lo) / (hi - lo) if hi > lo else 0.0
        out[~np.isfinite(col), j] = col[~np.isfinite(col)]
    return out


def chebyshev(Y: np.ndarray, weights: Sequence[float], rho: float = 0.05) -> np.ndarray:
    """ParEGO's augmented Chebyshev scalarization of normalised losses ``Y``:
    ``max_j w_j y_j + rho * sum_j w_j y_j`` (Knowles 2006).

    Example:
        >>> chebyshev(np.array([[0.0, 1.0], [0.5, 0.5]]), [0.5, 0.5]).round(3).tolist()
        [0.525, 0.275]
    """
    W = np.asarray(weights, np.float64)
    WY = np.asarray(Y, np.float64) * W
    return WY.max(axis=1) + rho * WY.sum(axis=1)


# ----------------------------------------------------------------------------- constraints
@dataclasses.dataclass(frozen=True)
class Constraint:
    """A feasibility condition on the configuration or on the final metrics.

    ``Constraint(name, op, bound)``: ``name`` is a dimension of the space or a cost
    (``params``, ``flops``), checked before anything trains (an infeasible
    configuration is stored ``infeasible`` and never compiled), or a final metric
    (``val_loss`` ...), checked when the trial ends (stored ``infeasible`` with its
    metrics). ``Constraint(fn, on="config")`` or ``Constraint(fn, on="metrics")``: a
    function of the configuration (a dict) or of the final metrics (a dict of means,
    costs included) returning whether the trial is feasible.

    Example:
        >>> c = Constraint("params", "<=", 1e5)
        >>> c.on, c.check({"params": 2e5})
        ('config', False)
        >>> Constraint(lambda m: m["val_loss"] < 1.0, on="metrics").check({"val_loss": 0.5})
        True
    """

    what: str | Callable[[Mapping[str, Any]], bool]
    op: str = "<="
    bound: float = 0.0
    on: str | None = None

    def __post_init__(self) -> None:
        if callable(self.what):
            if self.on not in ("config", "metrics"):
                raise ValueError("a function constraint needs on='config' (a function of the "
                                 "configuration) or on='metrics' (of the final metrics)")
            return
        if not isinstance(self.what, str) or not self.what:
            raise ValueError(f"Constraint: give a name or a function, got {self.what!r}")
        if self.op not in OPERATORS:
            raise ValueError(f"Constraint {self.what!r}: operator must be one of "
                             f"{list(OPERATORS)}, got {self.op!r}")
        if not isinstance(self.bound, (int, float)) or not math.isfinite(self.bound):
            raise ValueError(f"Constraint {self.what!r}: bound must be a finite number, "
                             f"got {self.bound!r}")
        if self.on is None:
            object.__setattr__(self, "on", "config" if self.what in COSTS else None)

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """``"params<=1e5"`` (operators of :data:`OPERATORS`; spaces allowed).

        Example:
            >>> Constraint.parse("val_loss < 0.5")
            Constraint(what='val_loss', op='<', bound=0.5, on=None)
        """
        for op in ("<=", ">=", "<", ">"):
            name, found, bound = str(text).partition(op)
            if found:
                try:
                    return cls(name.strip(), op, float(bound))
                except ValueError:
                    break
        raise ValueError(f"constraint {text!r}: write NAME<=VALUE (or <, >=, >), "
                         "e.g. params<=1e5")

    def bind(self, dimensions: Sequence[str], metrics: Sequence[str]) -> Constraint:
        """This constraint with ``on`` resolved against an experiment's dimensions and
        final metrics; ValueError for a name that is neither."""
        if callable(self.what):
            return self
        if self.what in COSTS or self.what in dimensions:
            on = "config"
        elif self.what in metrics:
            on = "metrics"
        else:
            raise ValueError(
                f"constraint on {self.what!r}: no such dimension, cost or final metric; "
                f"choose dimensions {list(dimensions)}, costs {list(COSTS)} or metrics "
                f"{sorted(metrics)}")
        if self.on is not None and self.on != on:
            raise ValueError(f"constraint on {self.what!r} is a {on} constraint, not {self.on}")
        return dataclasses.replace(self, on=on)

    @property
    def needs(self) -> str | None:
        """The cost this constraint reads (``params``/``flops``), if any."""
        return self.what if isinstance(self.what, str) and self.what in COSTS else None

    def check(self, values: Mapping[str, Any]) -> bool:
        """Whether ``values`` (a configuration with its costs, or final metrics) is
        feasible; a missing or non-finite value is infeasible."""
        if callable(self.what):
            return bool(self.what(dict(values)))
        v = values.get(self.what)
        if not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
            return False
        return bool(OPERATORS[self.op](float(v), float(self.bound)))

    def describe(self) -> str:
        """``params <= 100000`` (or the function's name)."""
        if callable(self.what):
            return f"{getattr(self.what, '__name__', 'function')}({self.on})"
        return f"{self.what} {self.op} {self.bound:g}"

    def spec(self) -> dict[str, Any]:
        """What a study stores of it (a function by its name)."""
        return {"what": self.what if isinstance(self.what, str) else self.describe(),
                "op": self.op if isinstance(self.what, str) else None,
                "bound": self.bound if isinstance(self.what, str) else None, "on": self.on}


# ----------------------------------------------------------------------------- costs
def costs(experiment: Any, programs: Any, static: Mapping[str, Any],
          names: Sequence[str] = COSTS) -> dict[str, float]:
    """The costs ``names`` (of :data:`COSTS`) of one member of the bucket ``static``:
    its parameter count (shapes only) and the FLOPs of one training step from XLA's
    cost analysis of the lowered step (nothing is compiled).

    Args:
        experiment: the :class:`~jaxtune.experiment.Experiment`.
        programs: its :class:`~jaxtune.programs.Programs`.
        static: the bucket's static values.
        names: which costs.
    """
    import jax

    member = programs.member(static)
    state, data = programs.step_shapes(static)
    out: dict[str, float] = {}
    if "params" in names:
        out["params"] = float(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)))
    if "flops" in names:
        cost = jax.jit(member.train_step).lower(state, data).cost_analysis()
        if isinstance(cost, (list, tuple)):  # older JAX: one dict per device
            cost = cost[0]
        out["flops"] = float(cost["flops"])
    return out
