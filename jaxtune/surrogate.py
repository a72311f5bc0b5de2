"""Which hyperparameters mattered: a tree-ensemble surrogate, its functional ANOVA and
partial dependence.

A forest of extremely randomized trees (``sklearn.ensemble.ExtraTreesRegressor``,
bootstrapped for an out-of-bag score; its random thresholds find interactions
without main effects more often than a greedy random forest does) is fitted to
the complete trials of a study, every configuration encoded in the unit cube by
its space (log-aware; a choice sits at the centre of its cell, so a tree can
split any set of choices apart). The surrogate's prediction ``f`` is then
decomposed as in functional ANOVA (Hutter, Hoos & Leyton-Brown, ICML 2014),
under the uniform measure of the space::

    f(x) = f0 + sum_i f_i(x_i) + sum_{i<j} f_ij(x_i, x_j) + ...
    Var f = sum_i V_i + sum_{i<j} V_ij + ...

``V_i / Var f`` is hyperparameter ``i``'s *main effect*, ``V_ij / Var f`` the
pair's *interaction*. The marginals ``E[f | x_i]`` and ``E[f | x_i, x_j]``
are estimated by Monte-Carlo: the same uniform sample of the other
coordinates is shared by every grid point (common random numbers), so the
marginals of one pair decompose exactly on their grid. ``E[f | x_i]`` is
also the surrogate's partial dependence on ``x_i``.

sklearn's permutation importance on the same surrogate is the cross-check: it
measures how much the fit degrades when one column is shuffled, which also
counts that column's share of every interaction.

Example:
    >>> import numpy as np
    >>> from jaxtune.analysis import StudyData
    >>> from jaxtune.store import TrialRecord
    >>> from jaxtune.space import Real, Space
    >>> space = Space(a=Real(0, 1), b=Real(0, 1))
    >>> rng = np.random.default_rng(0)
    >>> trials = [TrialRecord(i, c, "complete", objective=5 * c["a"] + 0.1 * c["b"])
    ...           for i, c in enumerate(space.sample(64, seed=0))]
    >>> data = StudyData("demo", {"experiment": {"space": space.spec()},
    ...                  "objective": "val_loss"}, {}, trials)
    >>> imp = importance(data, n_trees=50)
    >>> imp.ranked()[0], imp.main["a"] > 0.9
    ('a', True)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from jaxtune.analysis import load_study
from jaxtune.space import Space

__all__ = ["MIN_TRIALS", "Importance", "Surrogate", "fit_surrogate", "functional_anova",
           "importance", "partial_dependence"]

#: Fewer complete trials than this give no surrogate (its answers would be noise).
MIN_TRIALS = 8


@dataclasses.dataclass
class Surrogate:
    """A tree ensemble predicting the objective from unit-cube encoded configurations.

    Attributes:
        space: The space the configurations are encoded with.
        forest: The fitted ``sklearn.ensemble.ExtraTreesRegressor``.
        X: ``(n, d)`` unit-cube encodings of the trials it was fitted to.
        y: Their objectives.
        trials: Their trial indices.
        objective: Name of the objective.
        direction: ``"maximize"`` or ``"minimize"``.
        r2_oob: Out-of-bag R^2: how well it predicts trials it did not see.
    """

    space: Space
    forest: Any
    X: np.ndarray
    y: np.ndarray
    trials: list[int]
    objective: str
    direction: str
    r2_oob: float | None

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    def predict(self, U: np.ndarray) -> np.ndarray:
        """The forest's mean prediction at unit-cube points ``(m, d)``."""
        U = np.asarray(U, float)
        if len(U) * len(self.forest.estimators_) <= _FLAT_MAX:
            return _flat(self.forest).predict(U)
        return self.forest.predict(U)

    def snap(self, U: np.ndarray) -> np.ndarray:
        """Maps unit-cube points to encodings of real configurations (ints, choices)."""
        return np.stack([self.space.to_unit(self.space.from_unit(u)) for u in U])


#: Below this many (rows x trees), :class:`_FlatForest` predicts (sklearn's per-call
#: overhead, ~10 ms for 100 trees, dominates small batches such as skopt's plots).
_FLAT_MAX = 50_000


class _FlatForest:
    """All trees of a fitted sklearn forest as flat arrays, walked level by level in numpy.

    Gives the forest's own predictions (inputs are compared in float32, like sklearn).
    """

    def __init__(self, forest: Any):
        trees = [e.tree_ for e in forest.estimators_]
        self.roots = np.cumsum([0] + [t.node_count for t in trees[:-1]])
        left = np.concatenate([t.children_left + o for t, o in zip(trees, self.roots)])
        right = np.concatenate([t.children_right + o for t, o in zip(trees, self.roots)])
        leaf = np.concatenate([t.children_left < 0 for t in trees])
        nodes = np.arange(len(leaf))
        self.left, self.right = np.where(leaf, nodes, left), np.where(leaf, nodes, right)
        self.feature = np.where(leaf, 0, np.concatenate([t.feature for t in trees]))
        self.threshold = np.concatenate([t.threshold for t in trees])
        self.value = np.concatenate([t.value[:, 0, 0] for t in trees])
        self.depth = max(t.max_depth for t in trees)

    def predict(self, U: np.ndarray) -> np.ndarray:
        X = np.asarray(U, np.float32).astype(np.float64)
        node = np.repeat(self.roots[:, None], len(X), axis=1)
        rows = np.arange(len(X))[None, :]
        for _ in range(self.depth):
            go_left = X[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node].mean(axis=0)


_FLAT_CACHE: dict[int, tuple[Any, _FlatForest]] = {}


def _flat(forest: Any) -> _FlatForest:
    key = id(forest)
    if key not in _FLAT_CACHE or _FLAT_CACHE[key][0] is not forest:
        _FLAT_CACHE.clear()
        _FLAT_CACHE[key] = (forest, _FlatForest(forest))
    return _FLAT_CACHE[key][1]


def fit_surrogate(source: Any, name: str | None = None, *, n_trees: int = 100,
                  seed: int = 0) -> Surrogate:
    """Fits the surrogate (extremely randomized trees) to the complete trials of a study.

    Trials whose hyperparameters changed while they trained (population-based
    training: more than one stored segment) are left out: no single configuration
    produced their objective.

    Args:
        source: anything :func:`~jaxtune.analysis.load_study` accepts.
        name: the study, for a store holding several.
        n_trees: trees in the forest.
        seed: its random state.

    Raises:
        ValueError: with fewer than :data:`MIN_TRIALS` usable complete trials.
    """
    from sklearn.ensemble import ExtraTreesRegressor

    data = load_study(source, name)
    space = data.space
    rows, y, index = [], [], []
    for t in data.ranked():
        if space is None:
            break
        if len(t.curves.get("segments") or ()) > 1:
            continue  # population-based training changed its configuration: no one
            # configuration produced its objective
        try:
            rows.append(space.to_unit(space.validate({k: t.config.get(k) for k in space})))
        except (KeyError, ValueError):
            continue  # a config outside the space (the space was changed): not usable
        y.append(t.objective)
        index.append(t.index)
    if len(y) < MIN_TRIALS:
        raise ValueError(f"study {data.name!r}: {len(y)} complete trials, a surrogate needs "
                         f"at least {MIN_TRIALS}")
    X = np.asarray(rows, float)
    forest = ExtraTreesRegressor(n_estimators=n_trees, min_samples_leaf=1, bootstrap=True,
                                   oob_score=True, random_state=seed, n_jobs=1)
    forest.fit(X, np.asarray(y, float))
    r2 = getattr(forest, "oob_score_", None)
    return Surrogate(space, forest, X, np.asarray(y, float), index, data.objective,
                     data.direction, None if r2 is None or not np.isfinite(r2) else float(r2))


def _grid(surrogate: Surrogate, i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct unit-cube values of dimension ``i`` on an ``n``-point grid, and weights."""
    dim, name = surrogate.space[surrogate.names[i]], surrogate.names[i]
    snapped = [dim.to_unit(dim.from_unit((k + 0.5) / n, name)) for k in range(n)]
    values, counts = np.unique(np.round(snapped, 12), return_counts=True)
    return values, counts / counts.sum()


def _marginals(surrogate: Surrogate, Z: np.ndarray, cols: tuple[int, ...],
               grids: list[np.ndarray]) -> np.ndarray:
    """``E_z[f]`` with columns ``cols`` set to every point of the product of ``grids``."""
    points = list(itertools.product(*grids))
    batch = np.repeat(Z[None], len(points), axis=0)
    for k, c in enumerate(cols):
        batch[:, :, c] = np.asarray([p[k] for p in points])[:, None]
    means = surrogate.predict(batch.reshape(-1, Z.shape[1])).reshape(len(points), len(Z))
    return means.mean(axis=1).reshape([len(g) for g in grids])


def _wvar(values: np.ndarray, weights: np.ndarray) -> float:
    mean = np.sum(values * weights)
    return float(np.sum(weights * (values - mean) ** 2))


@dataclasses.dataclass
class Importance:
    """A functional-ANOVA variance decomposition and its permutation cross-check.

    Attributes:
        objective: The objective explained.
        main: Fraction of the surrogate's variance explained by each hyperparameter alone.
        pairs: Fraction explained by each pair's interaction (beyond both main effects).
        permutation: ``name -> (mean, std)`` drop of the surrogate's R^2 on the trials
            when that column is shuffled (sklearn's permutation importance).
        r2_oob: The surrogate's out-of-bag R^2 (low: the numbers are unreliable).
        n_trials: Complete trials the surrogate was fitted to.
    """

    objective: str
    main: dict[str, float]
    pairs: dict[tuple[str, str], float]
    permutation: dict[str, tuple[float, float]]
    r2_oob: float | None
    n_trials: int

    def ranked(self) -> list[str]:
        """Hyperparameters by main effect, largest first."""
        return sorted(self.main, key=lambda k: -self.main[k])

    @property
    def interaction(self) -> tuple[str, str, float] | None:
        """The strongest pairwise interaction ``(a, b, fraction)``, if any pair exists."""
        if not self.pairs:
            return None
        (a, b), v = max(self.pairs.items(), key=lambda kv: kv[1])
        return a, b, v

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        inter = self.interaction
        return {"objective": self.objective, "main": self.main,
                "interaction": None if inter is None else
                {"pair": [inter[0], inter[1]], "fraction": inter[2]},
                "pairs": {f"{a}*{b}": v for (a, b), v in self.pairs.items()},
                "permutation": {k: {"mean": m, "std": s}
                                for k, (m, s) in self.permutation.items()},
                "r2_oob": self.r2_oob, "n_trials": self.n_trials}


def functional_anova(surrogate: Any, *, grid: int = 16, pair_grid: int = 8,
                     samples: int = 256, seed: int = 0
                     ) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Main-effect and pairwise-interaction fractions of a surrogate's variance.

    Args:
        surrogate: a :class:`Surrogate` (anything with its ``names``, ``space``,
            ``predict`` and ``snap``).
        grid: points per hyperparameter for the main effects.
        pair_grid: points per hyperparameter for the pairwise interactions.
        samples: Monte-Carlo samples of the other coordinates per grid point
            (half as many for pairs).
        seed: the samples' randomness.

    Returns:
        ``(main, pairs)``: ``name -> V_i / Var f`` and ``(a, b) -> V_ab / Var f``
        (all zero for a constant surrogate).
    """
    s = surrogate
    rng = np.random.default_rng(seed)
    d = len(s.names)
    var = float(np.var(s.predict(s.snap(rng.random((4 * samples, d))))))
    scale = 1.0 / var if var > 0 else 0.0
    Z = s.snap(rng.random((samples, d)))
    main = {}
    for i, n in enumerate(s.names):
        values, w = _grid(s, i, grid)
        main[n] = _wvar(_marginals(s, Z, (i,), [values]), w) * scale
    pairs = {}
    Zp = Z[: max(samples // 2, 1)]
    for i, j in itertools.combinations(range(d), 2):
        (gi, wi), (gj, wj) = _grid(s, i, pair_grid), _grid(s, j, pair_grid)
        m = _marginals(s, Zp, (i, j), [gi, gj])
        w = wi[:, None] * wj[None, :]
        row = (m * wj[None, :]).sum(1, keepdims=True)
        col = (m * wi[:, None]).sum(0, keepdims=True)
        resid = m - row - col + np.sum(m * w)  # f_ij on the grid: exactly centred
        pairs[(s.names[i], s.names[j])] = float(np.sum(w * resid**2)) * scale
    return main, pairs


def importance(source: Any, name: str | None = None, *, surrogate: Surrogate | None = None,
               grid: int = 16, pair_grid: int = 8, samples: int = 256, n_trees: int = 100,
               n_repeats: int = 10, seed: int = 0) -> Importance:
    """Main effects, pairwise interactions and permutation importance of a study.

    Args:
        source: anything :func:`~jaxtune.analysis.load_study` accepts (ignored
            when ``surrogate`` is given).
        name: the study, for a store holding several.
        surrogate: a fitted :class:`Surrogate` (default: :func:`fit_surrogate`).
        grid, pair_grid, samples: see :func:`functional_anova`.
        n_trees: trees of the default surrogate.
        n_repeats: shuffles per column for permutation importance.
        seed: all randomness (forest, samples, shuffles).

    Raises:
        ValueError: too few complete trials (see :func:`fit_surrogate`).
    """
    from sklearn.inspection import permutation_importance

    s = surrogate or fit_surrogate(source, name, n_trees=n_trees, seed=seed)
    main, pairs = functional_anova(s, grid=grid, pair_grid=pair_grid, samples=samples,
                                   seed=seed)
    perm = permutation_importance(s.forest, s.X, s.y, n_repeats=n_repeats, random_state=seed,
                                  n_jobs=1)
    permutation = {n: (float(perm.importances_mean[i]), float(perm.importances_std[i]))
                   for i, n in enumerate(s.names)}
    return Importance(s.objective, main, pairs, permutation, s.r2_oob, len(s.y))


def partial_dependence(surrogate: Surrogate, name: str, *, grid: int = 24, samples: int = 128,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """The surrogate's partial dependence ``E[f | name = v]`` on one hyperparameter.

    Returns ``{"value": grid values (the hyperparameter's own units; a choice's
    values), "unit": their unit-cube positions, "mean": the partial dependence,
    "std": its spread across the forest's trees}``.

    Example:
        >>> import numpy as np
        >>> from jaxtune.analysis import StudyData
        >>> from jaxtune.store import TrialRecord
        >>> from jaxtune.space import Real, Space
        >>> space = Space(lr=Real(1e-4, 1.0, log=True))
        >>> trials = [TrialRecord(i, c, "complete", objective=-abs(np.log10(c["lr"]) + 2))
        ...           for i, c in enumerate(space.sample(40, seed=1))]
        >>> s = fit_surrogate(StudyData("d", {"experiment": {"space": space.spec()},
        ...                   "objective": "val_accuracy"}, {}, trials), n_trees=20)
        >>> pd = partial_dependence(s, "lr", grid=9)
        >>> round(float(pd["value"][np.argmax(pd["mean"])]), 2)
        0.01
    """
    i = surrogate.names.index(name)
    rng = np.random.default_rng(seed)
    Z = surrogate.snap(rng.random((samples, len(surrogate.names))))
    values, _ = _grid(surrogate, i, grid)
    batch = np.repeat(Z[None], len(values), axis=0)
    batch[:, :, i] = values[:, None]
    flat = batch.reshape(-1, Z.shape[1])
    per_tree = np.stack([t.predict(flat) for t in surrogate.forest.estimators_])
    curves = per_tree.reshape(len(per_tree), len(values), len(Z)).mean(axis=2)
    dim = surrogate.space[name]
    return {"value": np.asarray([dim.from_unit(u, name) for u in values], dtype=object),
            "unit": values, "mean": curves.mean(axis=0), "std": curves.std(axis=0)}
