"""What a finished (or interrupted) study says: its trials as a table, edge hits, isolation.

Everything here reads a study through :class:`StudyData`, a plain snapshot of
one study of a store (spec, trials, batches, final re-evaluation), made by
:func:`load_study` from a store path, a :class:`~jaxtune.store.Store`, a
:class:`~jaxtune.Study` or a :class:`~jaxtune.StudyResult`. Stores are opened
read-only and never written. Importance and partial dependence live in
:mod:`jaxtune.surrogate`, figures in :mod:`jaxtune.plots`.

Example:
    >>> from jaxtune.store import TrialRecord
    >>> spec = {"experiment": {"space": {"lr": {"type": "real", "low": 1e-4,
    ...         "high": 1e-1, "log": True, "static": False}}},
    ...         "objective": "val_loss", "direction": "minimize"}
    >>> trials = [TrialRecord(i, {"lr": lr}, "complete", objective=1.0 - lr)
    ...           for i, lr in enumerate([1e-4, 3e-3, 0.1])]
    >>> data = StudyData("demo", spec, {}, trials)
    >>> [t.index for t in data.ranked()]
    [2, 1, 0]
    >>> [(h.name, h.edge, h.trials) for h in boundary_hits(data, top=1)]
    [('lr', 'high', [2])]
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.ranking import default_direction, rank_trials
from jaxtune.space import Choice, Real, Space
from jaxtune.store import STATUSES, Store, TrialRecord

__all__ = [
    "BoundaryHit",
    "StudyData",
    "best_so_far",
    "boundary_hits",
    "divergence_driver",
    "edge_position",
    "isolation",
    "load_studies",
    "load_study",
    "metric_value",
    "seed_noise",
    "trials_dataframe",
]

_FIXED_COLUMNS = ("trial", "status", "objective", "batch", "started", "finished", "wall_s")


def metric_value(trial: TrialRecord, name: str) -> float | None:
    """The mean of metric ``name`` of a trial (``None`` if absent or not finite).

    Accepts the stored ``{"mean": .., "std": .., "per_seed": [..]}`` form and a plain number.
    """
    m = trial.metrics.get(name)
    if isinstance(m, Mapping):
        m = m.get("mean")
    try:
        value = float(m)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class StudyData:
    """A read-only snapshot of one study: what every analysis and figure reads.

    Attributes:
        name: The study's name in its store.
        spec: The study spec (``spec["experiment"]["space"]``, ``objective``, ...).
        info: Free-form study info (``command``, versions, ...).
        trials: All trials, in index order, whatever their status.
        finals: The top-k re-evaluation rows (empty if the study never finished).
        batches: Per-batch timings.
        store: Path of the store it was read from, if any.
    """

    name: str
    spec: dict[str, Any]
    info: dict[str, Any]
    trials: list[TrialRecord]
    finals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    batches: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    store: str | None = None

    @property
    def objective(self) -> str:
        return str(self.spec.get("objective") or "objective")

    @property
    def direction(self) -> str:
        return str(self.spec.get("direction") or default_direction(self.objective))

    @functools.cached_property
    def space(self) -> Space | None:
        """The study's space (from its spec, else inferred from the configs)."""
        try:
            return Space.from_spec(self.spec["experiment"]["space"])
        except (KeyError, TypeError, ValueError):
            return _infer_space([t.config for t in self.trials])

    def ranked(self) -> list[TrialRecord]:
        """Complete trials, best first (:func:`jaxtune.ranking.rank_trials`)."""
        return rank_trials(self.trials, self.direction)

    def counts(self) -> dict[str, int]:
        """Trials per status, every status present (zero if none)."""
        c = collections.Counter(t.status for t in self.trials)
        return {s: c.get(s, 0) for s in STATUSES}


def _infer_space(configs: Sequence[Mapping[str, Any]]) -> Space | None:
    """A space spanning the configs seen: numbers as ranges, anything else as choices."""
    values: dict[str, list[Any]] = {}
    for c in configs:
        for k, v in c.items():
            values.setdefault(k, []).append(v)
    dims: dict[str, Any] = {}
    for k, vs in values.items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)
        lo, hi = (min(vs), max(vs)) if numeric else (None, None)
        if numeric and lo < hi:
            dims[k] = Real(float(lo), float(hi), log=lo > 0 and hi / lo >= 100)
        else:
            dims[k] = Choice(sorted(set(vs), key=repr))
    try:
        return Space(dims) if dims else None
    except ValueError:
        return None


def _from_store(store: Store, row: dict[str, Any]) -> StudyData:
    sid = row["id"]
    return StudyData(name=row["name"], spec=row["spec"] or {}, info=row["info"] or {},
                     trials=store.trials(sid), finals=store.finals(sid),
                     batches=store.batches(sid), store=str(store.path))


def load_studies(source: str | os.PathLike | Store) -> list[StudyData]:
    """Every study of a store (opened read-only when given a path)."""
    if isinstance(source, Store):
        return [_from_store(source, row) for row in source.studies()]
    with Store(source, readonly=True) as store:
        return [_from_store(store, row) for row in store.studies()]


def load_study(source: Any, name: str | None = None) -> StudyData:
    """One study as :class:`StudyData`.

    Args:
        source: a store path, a :class:`~jaxtune.store.Store`, a
            :class:`~jaxtune.Study` (its store), a :class:`~jaxtune.StudyResult`
            or a :class:`StudyData` (returned as is).
        name: the study's name; needed only when a store holds several.

    Raises:
        ValueError: the store holds no study, several without ``name``, or none so named.
    """
    if isinstance(source, StudyData):
        return source
    if isinstance(getattr(source, "store", None), Store):  # a Study
        store = source.store
        return _from_store(store, store.study(name or source.name))
    if hasattr(source, "trials") and hasattr(source, "objective"):  # a StudyResult
        spec = {"objective": source.objective, "direction": source.direction}
        return StudyData(name or "result", spec, {}, list(source.trials),
                         list(getattr(source, "finals", []) or []), [], source.store)
    if isinstance(source, Store):
        return _from_store(source, _pick(source, name))
    with Store(source, readonly=True) as store:
        return _from_store(store, _pick(store, name))


def _pick(store: Store, name: str | None) -> dict[str, Any]:
    if name is not None:
        return store.study(name)
    rows = store.studies()
    if not rows:
        raise ValueError(f"store {store.path} holds no study")
    if len(rows) > 1:
        raise ValueError(f"store {store.path} holds several studies "
                         f"({[r['name'] for r in rows]}); pick one by name")
    return rows[0]


# ----------------------------------------------------------------------------- the table


def _trial_row(t: TrialRecord, hp_names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"trial": t.index, "status": t.status, "objective": t.objective,
                           "batch": t.batch, "started": t.started, "finished": t.finished,
                           "wall_s": t.wall_s}
    row.update({k: t.config.get(k) for k in hp_names})
    for name, m in sorted(t.metrics.items()):
        col = f"metric_{name}" if name in row else name
        row[col] = metric_value(t, name)
        if isinstance(m, Mapping) and len(m.get("per_seed") or ()) > 1:
            row[col + "_std"] = m.get("std")
    return row


def trials_dataframe(source: Any, name: str | None = None, *, as_pandas: bool | None = None):
    """All trials of a study, one row each: a pandas ``DataFrame`` or a list of dicts.

    Columns: ``trial, status, objective, batch, started, finished, wall_s``, one
    per hyperparameter, then the mean of every metric (``val_accuracy``,
    ``steps`` (steps done: where a pruned trial stopped), ``rung`` if the
    scheduler stored one, ...) and ``<metric>_std`` where a trial has several
    seeds. A metric whose name clashes with an earlier column is ``metric_<name>``.

    Args:
        source: anything :func:`load_study` accepts.
        name: the study, for a store holding several.
        as_pandas: ``True`` requires pandas, ``False`` returns dicts, ``None``
            returns a DataFrame when pandas is installed and otherwise dicts,
            with a warning saying so.

    Example:
        >>> from jaxtune.store import TrialRecord
        >>> data = StudyData("demo", {"objective": "val_loss"}, {},
        ...                  [TrialRecord(0, {"lr": 0.1}, "complete", objective=0.5,
        ...                               metrics={"val_loss": {"mean": 0.5}})])
        >>> rows = trials_dataframe(data, as_pandas=False)
        >>> rows[0]["lr"], rows[0]["val_loss"]
        (0.1, 0.5)
    """
    data = load_study(source, name)
    names = list(data.space.names) if data.space is not None else []
    rows = [_trial_row(t, names) for t in data.trials]
    if as_pandas is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_pandas:
            raise ImportError("trials_dataframe(as_pandas=True) needs pandas: "
                              "pip install pandas") from None
        warnings.warn("pandas is not installed: trials_dataframe returns a list of dicts "
                      "(pip install pandas for a DataFrame)", stacklevel=2)
        return rows
    columns = list(dict.fromkeys([*_FIXED_COLUMNS, *names, *(k for r in rows for k in r)]))
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- edges


def edge_position(dim: Any, value: Any) -> float | None:
    """Where ``value`` lies in a ranged dimension: 0 at ``low``, 1 at ``high`` (log-aware).

    ``None`` for a :class:`~jaxtune.space.Choice` (no edges) or a value it cannot place.
    """
    if not hasattr(dim, "low"):
        return None
    try:
        lo, hi = dim.to_unit(dim.low), dim.to_unit(dim.high)
        return float(min(max((dim.to_unit(value) - lo) / (hi - lo), 0.0), 1.0))
    except (TypeError, ValueError, ZeroDivisionError):
        return None


@dataclasses.dataclass
class BoundaryHit:
    """The best trials sit at an edge of a hyperparameter's range.

    Attributes:
        name: The hyperparameter.
        edge: ``"low"`` or ``"high"``.
        bound: The range's value at that edge.
        trials: Indices of the top trials within the margin of that edge.
        values: Their values of ``name``.
        advice: One sentence for the user.
    """

    name: str
    edge: str
    bound: float
    trials: list[int]
    values: list[Any]
    advice: str


def boundary_hits(data: StudyData, *, top: int = 5, margin: float = 0.05) -> list[BoundaryHit]:
    """Ranged hyperparameters whose best trials lie within ``margin`` of a range edge.

    An edge is flagged when the best trial lies within ``margin`` (a fraction of
    the range, in log units for log dimensions) of it, or when at least half of
    the ``top`` best trials do: the optimum may lie outside the range.
    """
    space, best = data.space, data.ranked()[:top]
    if space is None or not best:
        return []
    hits, by_index = [], {t.index: t for t in best}
    for name, dim in space.items():
        pos = {t.index: edge_position(dim, t.config[name]) for t in best if name in t.config}
        for edge, near in (("low", lambda p: p <= margin), ("high", lambda p: p >= 1 - margin)):
            close = [i for i, p in pos.items() if p is not None and near(p)]
            if close and (best[0].index in close or 2 * len(close) >= len(best)):
                bound = dim.low if edge == "low" else dim.high
                side = "below" if edge == "low" else "above"
                hits.append(BoundaryHit(
                    name, edge, bound, close, [by_index[i].config[name] for i in close],
                    f"{len(close)} of the top {len(best)} trials lie at the {edge} edge of "
                    f"{name} ({bound:g}): widen its range {side} {bound:g}"))
    return hits


def divergence_driver(data: StudyData) -> dict[str, Any] | None:
    """The ranged hyperparameter that best separates diverged from complete trials.

    Uses the probability that a diverged trial's value exceeds a complete one's
    (the Mann-Whitney AUC, log-aware). Returns ``{"name", "side", "auc",
    "diverged_median", "complete_median"}`` when ``|auc - 0.5| >= 0.25``, else ``None``.
    """
    space = data.space
    div = [t for t in data.trials if t.status == "diverged"]
    ok = [t for t in data.trials if t.status == "complete"]
    if space is None or not div or not ok:
        return None
    best = None
    for name, dim in space.items():
        a = [edge_position(dim, t.config.get(name)) for t in div if name in t.config]
        b = [edge_position(dim, t.config.get(name)) for t in ok if name in t.config]
        a, b = [x for x in a if x is not None], [x for x in b if x is not None]
        if not a or not b:
            continue
        x, y = np.asarray(a)[:, None], np.asarray(b)[None, :]
        auc = float(np.mean((x > y) + 0.5 * (x == y)))
        if best is None or abs(auc - 0.5) > abs(best["auc"] - 0.5):
            best = {"name": name, "side": "high" if auc > 0.5 else "low", "auc": auc,
                    "diverged_median": float(np.median([t.config[name] for t in div
                                                        if name in t.config])),
                    "complete_median": float(np.median([t.config[name] for t in ok
                                                        if name in t.config]))}
    return best if best is not None and abs(best["auc"] - 0.5) >= 0.25 else None


# ----------------------------------------------------------------------------- curves


def best_so_far(data: StudyData) -> dict[str, np.ndarray]:
    """The best objective after each trial, by trial index and by wall time.

    Returns arrays ``trial``, ``objective``, ``best`` (complete trials in index
    order), and ``seconds``, ``best_by_time`` (the same trials ordered by when
    they finished, seconds since the study's first start; empty when the store
    has no timestamps).
    """
    sign = 1.0 if data.direction == "maximize" else -1.0
    done = sorted((t for t in data.trials if t.status == "complete" and t.objective is not None),
                  key=lambda t: t.index)
    obj = np.asarray([t.objective for t in done], float)
    running = (lambda v: sign * np.maximum.accumulate(sign * v)) if len(obj) else np.asarray
    out = {"trial": np.asarray([t.index for t in done], int), "objective": obj,
           "best": running(obj)}
    starts = [t.started for t in data.trials if t.started is not None]
    timed = sorted((t for t in done if t.finished is not None), key=lambda t: t.finished)
    t0 = min(starts) if starts else None
    if t0 is None or not timed:
        out["seconds"], out["best_by_time"] = np.zeros(0), np.zeros(0)
        return out
    out["seconds"] = np.asarray([t.finished - t0 for t in timed], float)
    out["best_by_time"] = running(np.asarray([t.objective for t in timed], float))
    return out


def isolation(data: StudyData, name: str, *, bins: int = 8) -> list[dict[str, Any]]:
    """The best trial per value (or per bin) of one hyperparameter, the others tuned away.

    A :class:`~jaxtune.space.Choice`, or a ranged dimension with at most ``bins``
    distinct values, gets one group per value; otherwise the range is cut into
    ``bins`` equal bins (log-aware). Returns one dict per non-empty group:
    ``{"value", "low", "high", "objective", "trial", "n"}`` where ``value`` is the
    best trial's own value.
    """
    space = data.space
    if space is None or name not in space:
        raise ValueError(f"study {data.name!r} has no hyperparameter {name!r}")
    dim = space[name]
    ranked = [t for t in data.ranked() if name in t.config]
    distinct = sorted({t.config[name] for t in ranked}, key=repr)
    groups: dict[Any, list[TrialRecord]] = {}
    ranged = hasattr(dim, "low") and len(distinct) > bins
    for t in ranked:  # best first, so each group's first trial is its best
        v = t.config[name]
        key = min(int((edge_position(dim, v) or 0.0) * bins), bins - 1) if ranged else v
        groups.setdefault(key, []).append(t)
    order = [v for v in dim.values if v in groups] if dim.categorical else sorted(groups)
    rows = []
    for key in order:
        members = groups[key]
        lo = hi = members[0].config[name]
        if ranged:
            lo, hi = _bin_edge(dim, key / bins), _bin_edge(dim, (key + 1) / bins)
        rows.append({"value": members[0].config[name], "low": lo, "high": hi,
                     "objective": members[0].objective, "trial": members[0].index,
                     "n": len(members)})
    return rows


def _bin_edge(dim: Any, p: float) -> float:
    """The value at position ``p`` of a ranged dimension (inverse of :func:`edge_position`)."""
    lo, hi = dim.to_unit(dim.low), dim.to_unit(dim.high)
    return dim.from_unit(lo + p * (hi - lo))


# ----------------------------------------------------------------------------- seed noise


def seed_noise(data: StudyData) -> dict[str, Any] | None:
    """Is the best trial better than the runner-up by more than seed noise?

    Two comparisons, each present when the store allows it:

    * ``search``: the two best search objectives; the noise is the standard
      error of their difference, from the trials' own seeds when they have
      several, else from the seeds of the final re-evaluation.
    * ``final``: the same two configurations re-trained with fresh seeds
      (``finals``), on the objective's metric.

    Each is ``{"best", "runner_up", "trials", "gap", "se", "within_noise"}``,
    where ``within_noise`` means ``gap < 2 * se``. Also returns ``rows``, the
    final re-evaluation per trial (``trial``, ``search``, ``mean``, ``std``,
    ``test``, ``test_std``, ``n``), and ``trial_std`` / ``seed_std`` of the top
    configurations. ``None`` when there are fewer than two complete trials.
    """
    ranked = data.ranked()
    if len(ranked) < 2:
        return None
    metric, test = data.objective, "test_" + data.objective.removeprefix("val_")
    rows = [{"trial": r.get("trial"), "search": r.get("search_objective"),
             "mean": r.get(metric), "std": r.get(metric + "_std"), "test": r.get(test),
             "test_std": r.get(test + "_std"), "n": int(r.get("seeds") or 0)}
            for r in data.finals if r.get(metric) is not None]
    by_trial = {r["trial"]: r for r in rows}
    a, b = ranked[0], ranked[1]
    out: dict[str, Any] = {"metric": metric, "test_metric": test, "rows": rows}

    def spread(t: TrialRecord) -> tuple[float | None, int]:
        m = t.metrics.get(metric)
        per_seed = m.get("per_seed") if isinstance(m, Mapping) else None
        if per_seed and len(per_seed) > 1:
            return float(np.std([np.nan if v is None else v for v in per_seed])), len(per_seed)
        r = by_trial.get(t.index)
        return (r["std"], 1) if r and r["std"] is not None else (None, 1)

    (sa, na), (sb, nb) = spread(a), spread(b)
    if sa is not None and sb is not None:
        out["search"] = _compare(a.objective, b.objective, sa, sb, na, nb, (a.index, b.index))
    ra, rb = by_trial.get(a.index), by_trial.get(b.index)
    if ra and rb and ra["std"] is not None and rb["std"] is not None:
        out["final"] = _compare(ra["mean"], rb["mean"], ra["std"], rb["std"],
                                max(ra["n"], 1), max(rb["n"], 1), (a.index, b.index))
    if len(rows) >= 2:
        out["trial_std"] = float(np.std([r["mean"] for r in rows]))
        out["seed_std"] = float(np.sqrt(np.mean([(r["std"] or 0.0) ** 2 for r in rows])))
    return out


def _compare(a: float, b: float, sa: float, sb: float, na: int, nb: int,
             trials: tuple[int, int]) -> dict[str, Any]:
    se = math.sqrt(sa**2 / na + sb**2 / nb)
    gap = abs(a - b)
    return {"best": a, "runner_up": b, "trials": list(trials), "gap": gap, "se": se,
            "within_noise": gap < 2 * se}
