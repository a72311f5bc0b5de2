"""Searchers: propose configurations of a :class:`~jaxtune.space.Space` with one ask/tell API.

Every searcher implements::

    configs = searcher.ask(n)          # up to n NEW configurations (plain dicts)
    searcher.tell(configs, losses)     # report their losses

Conventions shared by all searchers:

* **Losses are minimised.** A study that maximises a metric (accuracy) negates it
  before telling; searchers never see "maximize".
* **Diverged trials.** A loss of ``None`` or a non-finite number (NaN, inf) marks
  a diverged/failed trial. With ``diverged="penalty"`` (the default) it is
  modelled as the worst finite loss observed so far (over all tells; the value
  is recomputed at every surrogate fit, so it follows the running maximum). If
  no finite loss exists yet, the failure is held back and enters the model, with
  that penalty, as soon as one does. With ``diverged="exclude"`` it is dropped.
  NaN or inf never reaches scikit-optimize. Either way the failed configuration
  counts as *seen* and is never proposed again.
* **No repeats.** A searcher never proposes a configuration twice: neither one
  already told nor one already returned by :meth:`Searcher.ask` and not yet told
  (*pending*). Configurations are compared by a canonical key: the tuple of
  values in space order, reals rounded to 12 significant digits, choices by
  index. ``ask(n)`` returns fewer than ``n`` configurations only when the
  (finite) space is exhausted.
* **Reproducible.** All randomness comes from the ``seed`` constructor argument:
  the same seed and the same sequence of calls give the same proposals.
* **Resumable.** Telling a stored history into a fresh searcher is supported:
  configurations that were never asked may be told.
* :attr:`Searcher.last_ask_s` is the wall time of the last :meth:`Searcher.ask`.

Searchers (also via :func:`make_searcher`):

``"grid"`` (:class:`GridSearcher`)
    The cartesian product, in a fixed order.
``"random"`` (:class:`RandomSearcher`)
    Uniform / log-uniform sampling.
``"quasirandom"`` (:class:`QuasiRandomSearcher`)
    A scrambled Halton sequence mapped through :meth:`Space.from_unit`.
``"bayes"`` (:class:`BayesSearcher`)
    Batch Bayesian optimisation on a scikit-optimize surrogate (GP, RF or ET).
    The surrogate is fitted once per :meth:`~Searcher.ask`; the ``q`` points of
    a batch are then chosen among random candidates without refitting: for a
    GP with the *kriging believer* (fantasised value = posterior mean, kernel
    fixed, an exact rank-one update of the posterior variance per pick); for
    forests with *local penalisation* of the acquisition around each pick.

Example:
    >>> from jaxtune.space import Space, Real, Choice
    >>> space = Space(lr=Real(1e-4, 1e-1, log=True), opt=Choice(["adam", "sgd"]))
    >>> s = make_searcher("random", space, seed=0)
    >>> batch = s.ask(3)
    >>> s.tell(batch, [0.5, None, 0.2])   # None: diverged
    >>> len(s.ask(2))
    2
"""

from __future__ import annotations

import functools
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular
from scipy.stats import norm, qmc
from threadpoolctl import ThreadpoolController

from .space import Choice, Int, Real, Space

__all__ = [
    "SEARCHERS",
    "BayesSearcher",
    "GridSearcher",
    "QuasiRandomSearcher",
    "RandomSearcher",
    "Searcher",
    "config_key",
    "config_to_point",
    "make_searcher",
    "point_to_config",
    "skopt_dimensions",
]

Config = dict[str, Any]
Key = tuple

SEARCHERS = ("grid", "random", "quasirandom", "bayes")
MAX_GRID_POINTS = 1_000_000
_MAX_INT_ENUMERATION = 64
_ACQUISITIONS = ("EI", "PI", "LCB", "gp_hedge")
_SURROGATES = ("GP", "RF", "ET")
_GBRT_MESSAGE = (
    "surrogate 'GBRT' is not supported: scikit-optimize's GradientBoostingQuantileRegressor "
    "fails with current scikit-learn ('... has to be a regressor'); use surrogate='GP', "
    "'RF' or 'ET'"
)


# --------------------------------------------------------------------------------------
# canonical keys and conversions
# --------------------------------------------------------------------------------------
def _canon_float(v: Any) -> float:
    return float(f"{float(v):.12g}")


def config_key(space: Space, config: Mapping[str, Any]) -> Key:
    """The canonical identity of a (validated) configuration.

    A tuple in space order: reals rounded to 12 significant digits, ints as
    ``int``, choices as the index of the value.
    """
    out: list[Any] = []
    for name, dim in space.items():
        v = config[name]
        if isinstance(dim, Real):
            out.append(_canon_float(v))
        elif isinstance(dim, Int):
            out.append(int(v))
        else:
            out.append(dim.index(v))
    return tuple(out)


def _cardinality(space: Space) -> float:
    """Number of distinct configurations (``inf`` when a Real is present)."""
    n = 1.0
    for _, dim in space.items():
        if isinstance(dim, Real):
            return math.inf
        n *= (int(dim.high) - int(dim.low) + 1) if isinstance(dim, Int) else len(dim.values)
    return n


def skopt_dimensions(space: Space) -> list[Any]:
    """The scikit-optimize dimensions of ``space`` (in :attr:`Space.names` order).

    ``Real``/``Int`` map to ``skopt.space.Real``/``Integer`` (prior
    ``"log-uniform"`` where ``log=True``); a ``Choice`` maps to a
    ``Categorical`` over the *indices* of its values, so that the exact Python
    values round-trip (see :func:`config_to_point` / :func:`point_to_config`).
    """
    from skopt.space import Categorical, Integer
    from skopt.space import Real as SkReal

    dims: list[Any] = []
    for name, dim in space.items():
        if isinstance(dim, Real):
            prior = "log-uniform" if dim.log else "uniform"
            dims.append(SkReal(float(dim.low), float(dim.high), prior=prior, name=name))
        elif isinstance(dim, Int):
            prior = "log-uniform" if dim.log else "uniform"
            dims.append(Integer(int(dim.low), int(dim.high), prior=prior, name=name))
        else:
            dims.append(Categorical(list(range(len(dim.values))), name=name))
    return dims


def config_to_point(space: Space, config: Mapping[str, Any]) -> list[Any]:
    """A configuration as a scikit-optimize point (choices as indices)."""
    out: list[Any] = []
    for name, dim in space.items():
        v = config[name]
        if isinstance(dim, Real):
            out.append(float(v))
        elif isinstance(dim, Int):
            out.append(int(v))
        else:
            out.append(dim.index(v))
    return out


def point_to_config(space: Space, point: Sequence[Any]) -> Config:
    """Inverse of :func:`config_to_point`: Python types, clipped to the bounds."""
    out: Config = {}
    for (name, dim), v in zip(space.items(), point, strict=True):
        if isinstance(dim, Real):
            out[name] = float(min(max(float(v), float(dim.low)), float(dim.high)))
        elif isinstance(dim, Int):
            out[name] = int(min(max(round(float(v)), int(dim.low)), int(dim.high)))
        else:
            out[name] = dim.values[int(v)]
    return out


def _point_key(space: Space, point: Sequence[Any]) -> Key:
    out: list[Any] = []
    for (_, dim), v in zip(space.items(), point, strict=True):
        if isinstance(dim, Real):
            out.append(_canon_float(min(max(float(v), float(dim.low)), float(dim.high))))
        elif isinstance(dim, Int):
            out.append(int(min(max(round(float(v)), int(dim.low)), int(dim.high))))
        else:
            out.append(int(v))
    return tuple(out)


def _as_loss(value: Any) -> float:
    """A told loss as float, NaN for a diverged trial (None or non-finite)."""
    if value is None:
        return math.nan
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a loss must be a number or None, got {value!r}") from None
    return v if math.isfinite(v) else math.nan


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspecting the loaded libraries takes ~0.1 s: once


def _one_blas_thread():
    """Limits BLAS/OpenMP to one thread (a context manager)."""
    return _blas_controller().limit(limits=1)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------
class Searcher:
    """Base class: bookkeeping of seen/pending configurations and told losses.

    Subclasses implement :meth:`_propose`, which must return configurations whose
    keys are not :meth:`is_taken` (and distinct among themselves).

    Args:
        space: the search space.
        seed: an ``int``; all randomness derives from it.
        diverged: ``"penalty"`` or ``"exclude"`` (see the module docstring).
    """

    name = "searcher"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty"):
        if not isinstance(space, Space):
            raise TypeError(f"space must be a jaxtune Space, got {type(space).__name__}")
        if diverged not in ("penalty", "exclude"):
            raise ValueError(f"diverged must be 'penalty' or 'exclude', got {diverged!r}")
        self.space = space
        self.seed = _check_seed(seed)
        self.diverged = diverged
        self._rng = np.random.default_rng(self.seed)
        self._seen: set[Key] = set()
        self._pending: dict[Key, Config] = {}
        self._configs: list[Config] = []
        self._losses: list[float] = []
        self._version = 0  # incremented by every non-empty tell
        self.last_ask_s = 0.0

    # -- public API -------------------------------------------------------------------
    def ask(self, n: int) -> list[Config]:
        """Returns up to ``n`` new configurations (fewer only if the space is exhausted)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"ask(n): n must be a non-negative int, got {n!r}")
        t0 = time.perf_counter()
        out: list[Config] = []
        if n > 0:
            with _one_blas_thread():
                proposals = self._propose(int(n))
            for c in proposals:
                k = config_key(self.space, c)
                if k in self._seen or k in self._pending:  # pragma: no cover - a bug guard
                    raise RuntimeError(f"{type(self).__name__} proposed a repeated config {c}")
                self._pending[k] = c
                out.append(dict(c))
        self.last_ask_s = time.perf_counter() - t0
        return out

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None]) -> None:
        """Records the losses (to minimise; ``None``/NaN/inf = diverged) of ``configs``.

        Configurations that were never asked (a resumed history) are accepted.

        Raises:
            ValueError: lengths differ, a configuration is invalid for the space,
                or a loss is not a number/None.
        """
        if isinstance(configs, Mapping):
            raise ValueError("tell expects a sequence of configurations, got a single dict")
        configs = list(configs)
        losses = list(losses)
        if len(configs) != len(losses):
            raise ValueError(f"tell: {len(configs)} configurations but {len(losses)} losses")
        checked = []
        for i, c in enumerate(configs):
            try:
                checked.append(self.space.validate(c))
            except ValueError as e:
                raise ValueError(f"tell: configuration {i}: {e}") from None
        values = [_as_loss(v) for v in losses]
        for c, v in zip(checked, values, strict=True):
            k = config_key(self.space, c)
            self._pending.pop(k, None)
            self._seen.add(k)
            self._configs.append(c)
            self._losses.append(v)
        if checked:
            self._version += 1

    def is_taken(self, key: Key) -> bool:
        """Whether a canonical key was already told or is pending."""
        return key in self._seen or key in self._pending

    @property
    def n_told(self) -> int:
        return len(self._configs)

    @property
    def pending(self) -> list[Config]:
        """Configurations asked but not told yet (in ask order)."""
        return [dict(c) for c in self._pending.values()]

    @property
    def n_finite(self) -> int:
        """Number of told trials with a finite loss."""
        return int(np.isfinite(np.asarray(self._losses, np.float64)).sum())

    def observations(self) -> tuple[list[Config], np.ndarray]:
        """The told history after applying the ``diverged`` policy.

        Returns:
            ``(configs, losses)``: every loss finite; diverged trials carry the
            worst finite loss (``"penalty"``) or are dropped (``"exclude"``, or
            while no finite loss exists).
        """
        y = np.asarray(self._losses, np.float64)
        finite = np.isfinite(y)
        if self.diverged == "penalty" and finite.any():
            y = np.where(finite, y, y[finite].max())
            return list(self._configs), y
        return [c for c, f in zip(self._configs, finite, strict=True) if f], y[finite]

    # -- helpers for subclasses -------------------------------------------------------
    def _propose(self, n: int) -> list[Config]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _collect(self, stream: Iterator[Config], n: int, max_tries: int,
                 into: list[Config] | None = None,
                 keys: set[Key] | None = None) -> list[Config]:
        """Takes configs from ``stream`` that are neither taken nor already collected.

        Draws at most ``max_tries`` items and never one more than needed, so a
        deterministic stream continues where the previous call stopped.
        """
        out = [] if into is None else into
        keys = set() if keys is None else keys
        card = _cardinality(self.space)
        for _ in range(max_tries):
            if len(out) >= n or len(self._seen) + len(self._pending) + len(keys) >= card:
                break
            c = next(stream)
            k = config_key(self.space, c)
            if k in keys or self.is_taken(k):
                continue
            keys.add(k)
            out.append(c)
        return out

    def _fill_by_enumeration(self, out: list[Config], n: int, keys: set[Key]) -> list[Config]:
        """Tops up ``out`` from the remaining points of a finite space (random order)."""
        card = _cardinality(self.space)
        if len(out) >= n or not math.isfinite(card) or card > MAX_GRID_POINTS:
            return out
        axes = [list(range(int(d.low), int(d.high) + 1)) if isinstance(d, Int) else list(d.values)
                for _, d in self.space.items()]
        sizes = [len(a) for a in axes]
        names = self.space.names
        for flat in self._rng.permutation(int(card)):
            if len(out) >= n:
                break
            rem, idx = int(flat), []
            for s in reversed(sizes):
                rem, r = divmod(rem, s)
                idx.append(r)
            c = {nm: ax[i] for nm, ax, i in zip(names, axes, reversed(idx), strict=True)}
            k = config_key(self.space, c)
            if k in keys or self.is_taken(k):
                continue
            keys.add(k)
            out.append(c)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(seed={self.seed}, told={self.n_told}, "
                f"pending={len(self._pending)})")


# --------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------
def _grid_axis(name: str, dim: Any, resolution: int | None) -> list[Any]:
    if isinstance(dim, Choice):
        return list(dim.values)
    if isinstance(dim, Int):
        lo, hi = int(dim.low), int(dim.high)
        if hi - lo + 1 <= _MAX_INT_ENUMERATION:
            return list(range(lo, hi + 1))
        if resolution is None:
            raise ValueError(
                f"grid search cannot enumerate Int hyperparameter {name!r} with {hi - lo + 1} "
                f"values (more than {_MAX_INT_ENUMERATION}); pass resolution=N or use Choice"
            )
        if resolution == 1:
            pts = np.array([math.sqrt(lo * hi) if dim.log else (lo + hi) / 2])
        else:
            pts = np.geomspace(lo, hi, resolution) if dim.log else np.linspace(lo, hi, resolution)
        return sorted({int(min(max(round(float(p)), lo), hi)) for p in pts})
    if resolution is None:
        raise ValueError(
            f"grid search cannot enumerate Real hyperparameter {name!r}; "
            "pass resolution=N or use Choice"
        )
    lo, hi = float(dim.low), float(dim.high)
    if resolution == 1:
        pts = np.array([math.sqrt(lo * hi) if dim.log else (lo + hi) / 2])
    else:
        pts = np.geomspace(lo, hi, resolution) if dim.log else np.linspace(lo, hi, resolution)
    vals: list[float] = []
    for p in pts:
        v = float(min(max(float(p), lo), hi))
        if not vals or _canon_float(v) != _canon_float(vals[-1]):
            vals.append(v)
    return vals


class GridSearcher(Searcher):
    """Exhaustive search over the cartesian product of per-dimension grids.

    The order is ``itertools.product`` over the dimensions in space order (the
    last dimension varies fastest). Per dimension: a ``Choice`` contributes all
    its values; an ``Int`` all its integers when the range has at most 64,
    otherwise ``resolution`` distinct integers (log-spaced if ``log``); a
    ``Real`` ``resolution`` points including both bounds (log-spaced if ``log``).

    Args:
        space: the search space.
        resolution: points per ``Real`` (and per large ``Int``) axis.
        seed: unused by the grid itself (kept for a uniform signature).

    Raises:
        ValueError: a ``Real`` or large ``Int`` without ``resolution`` (naming
            it), a non-positive ``resolution``, or more than 1e6 grid points.
    """

    name = "grid"

    def __init__(self, space: Space, resolution: int | None = None, *, seed: int = 0,
                 diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        if resolution is not None and (isinstance(resolution, bool)
                                       or not isinstance(resolution, (int, np.integer))
                                       or resolution < 1):
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = None if resolution is None else int(resolution)
        self.axes = [_grid_axis(name, dim, self.resolution) for name, dim in space.items()]
        self.size = math.prod(len(a) for a in self.axes)
        if self.size > MAX_GRID_POINTS:
            shape = " x ".join(f"{n}={len(a)}" for n, a in zip(space.names, self.axes, strict=True))
            raise ValueError(
                f"grid has {self.size:,} points ({shape}), more than the limit of "
                f"{MAX_GRID_POINTS:,}; lower resolution, use Choice with fewer values, or use "
                "the random/quasirandom/bayes searchers"
            )
        self._iter: Iterator[tuple] = itertools.product(*self.axes)

    def _propose(self, n: int) -> list[Config]:
        out: list[Config] = []
        names = self.space.names
        for values in self._iter:
            c = dict(zip(names, values, strict=True))
            if not self.is_taken(config_key(self.space, c)):
                out.append(c)
                if len(out) >= n:
                    break
        return out


# --------------------------------------------------------------------------------------
# random and quasi-random
# --------------------------------------------------------------------------------------
class RandomSearcher(Searcher):
    """Independent uniform (log-uniform where ``log=True``) samples.

    Uses :meth:`Space.sample` with one ``numpy.random.Generator`` seeded once.
    """

    name = "random"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        self._stream = self._samples()

    def _samples(self) -> Iterator[Config]:
        while True:
            yield from self.space.sample(64, self._rng)

    def _propose(self, n: int) -> list[Config]:
        keys: set[Key] = set()
        out = self._collect(self._stream, n, 100 * n + 1000, keys=keys)
        return self._fill_by_enumeration(out, n, keys)


class _HaltonStream:
    """Scrambled Halton points mapped with :meth:`Space.from_unit`, never re-drawn."""

    def __init__(self, space: Space, seed: int):
        self.space = space
        self.engine = qmc.Halton(len(space), scramble=True, seed=seed)

    def __iter__(self) -> Iterator[Config]:
        while True:
            for u in self.engine.random(32):
                yield self.space.from_unit(u)


class QuasiRandomSearcher(Searcher):
    """A scrambled Halton sequence (``scipy.stats.qmc.Halton(d, scramble=True, seed)``).

    Points are mapped into the space with :meth:`Space.from_unit`; points that
    map to an already seen/pending configuration (discrete spaces) are skipped.
    Consumed points are not redrawn, so a searcher resumed with the same seed
    skips its own earlier proposals.
    """

    name = "quasirandom"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        self._halton = _HaltonStream(space, self.seed)
        self._halton_iter = iter(self._halton)

    def _propose(self, n: int) -> list[Config]:
        keys: set[Key] = set()
        out = self._collect(self._halton_iter, n, 100 * n + 1000, keys=keys)
        return self._fill_by_enumeration(out, n, keys)


# --------------------------------------------------------------------------------------
# Bayesian optimisation
# --------------------------------------------------------------------------------------
def _acquisition(name: str, mu: np.ndarray, std: np.ndarray, y_best: float, xi: float,
                 kappa: float) -> np.ndarray:
    """Acquisition scores, *higher is better*, for minimising the loss.

    EI: E[max(y_best - xi - f, 0)]; PI: P(f < y_best - xi); LCB: -(mu - kappa std).
    Where std is 0 the deterministic limits are used.
    """
    if name == "LCB":
        return -(mu - kappa * std)
    imp = y_best - xi - mu
    pos = std > 0
    z = np.zeros_like(mu)
    z[pos] = imp[pos] / std[pos]
    if name == "EI":
        out = np.maximum(imp, 0.0)
        out[pos] = imp[pos] * norm.cdf(z[pos]) + std[pos] * norm.pdf(z[pos])
        return out
    if name == "PI":
        out = (imp > 0).astype(np.float64)
        out[pos] = norm.cdf(z[pos])
        return out
    raise ValueError(f"unknown acquisition {name!r}")  # pragma: no cover


class _GPPosterior:
    """The posterior of a fitted scikit-optimize GP on fixed points ``Z``, with
    kriging-believer fantasies as rank-one variance updates.

    Internally everything is in the GP's *normalised* y units (``normalize_y``):
    ``y = scale * f_n + offset``. skopt's GP zeroes its ``WhiteKernel`` after
    fitting, so ``kernel_`` (cross-covariances and ``diag``) is the latent,
    noise-free kernel and :attr:`std` is the latent std, exactly as
    ``gp.predict(Z, return_std=True)``; ``L_`` (and ``alpha_``) include the noise.
    A fantasised observation at ``s`` is noisy, so its update divides by
    ``var(s) + noise`` with ``noise = gp.noise_ + gp.alpha``.

    With ``w_j(c) = cov_j(c, s_j) / sqrt(var_j(s_j) + noise)``:
    ``cov_j(c, s) = cov_0(c, s) - sum_{i<j} w_i(c) w_i(s)`` and
    ``var_{j+1}(c) = var_j(c) - w_j(c)^2``. The mean is unchanged (the fantasy
    equals the posterior mean).
    """

    def __init__(self, gp: Any, Z: np.ndarray, capacity: int):
        self.gp = gp
        self.kernel = gp.kernel_
        self.Z = np.asarray(Z, np.float64)
        self.scale = float(np.asarray(getattr(gp, "y_train_std_", gp._y_train_std)).ravel()[0])
        self.offset = float(np.asarray(getattr(gp, "y_train_mean_", gp._y_train_mean)).ravel()[0])
        Ks = self.kernel(self.Z, gp.X_train_)  # (n, N), no noise term between distinct points
        alpha = np.asarray(gp.alpha_).reshape(len(gp.X_train_), -1)[:, 0]
        self.mean = self.scale * (Ks @ alpha) + self.offset
        self.V = solve_triangular(gp.L_, Ks.T, lower=True, check_finite=False)  # (N, n)
        var = self.kernel.diag(self.Z) - np.einsum("ij,ij->j", self.V, self.V)
        self.var = np.maximum(var, 0.0)
        noise = getattr(gp, "noise_", None) or 0.0
        self.noise = float(noise) + float(np.mean(gp.alpha))
        self.W = np.zeros((max(int(capacity), 1), len(self.Z)))
        self.n_fantasies = 0

    @property
    def std(self) -> np.ndarray:
        """Latent posterior std in y units (after the fantasies so far)."""
        return self.scale * np.sqrt(self.var)

    def condition(self, s: int) -> None:
        """Adds the fantasy ``y(Z[s]) = mean[s]`` (kernel fixed): a rank-one update."""
        j = self.n_fantasies
        if j >= len(self.W):
            self.W = np.vstack([self.W, np.zeros_like(self.W)])
        cov = self.kernel(self.Z, self.Z[s:s + 1])[:, 0] - self.V.T @ self.V[:, s]
        if j:
            cov -= self.W[:j].T @ self.W[:j, s]
        w = cov / math.sqrt(max(self.var[s], 0.0) + self.noise)
        self.var = np.maximum(self.var - w * w, 0.0)
        self.W[j] = w
        self.n_fantasies = j + 1


class BayesSearcher(Searcher):
    """Batch Bayesian optimisation with a scikit-optimize surrogate.

    Until ``n_initial`` finite losses have been told, proposals are scrambled
    Halton points (as :class:`QuasiRandomSearcher`, same seed). Afterwards each
    ``ask(q)`` fits the surrogate **once** on all observations (a clone of
    ``skopt.Optimizer(...).base_estimator_``, on ``opt.space.transform``-ed
    points; skopt's own ask/tell loop, which refits per point, is not used),
    draws ``n_candidates`` random candidates from ``opt.space.rvs``, drops those
    whose configuration is seen, pending or duplicated, and picks ``q`` of them
    greedily without refitting:

    * ``surrogate="GP"``: kriging believer with the fitted kernel held fixed.
      Each pick is fantasised at its posterior mean, so the mean stays as is
      and the variance of every candidate gets an exact rank-one update (see
      :class:`_GPPosterior`). EI/PI use ``y_best = min(observed, fantasised
      means so far)``. Pending configurations (asked, not told) are fantasised
      first, so an asynchronous batch avoids them.
    * ``surrogate="RF"``/``"ET"`` (forests; ``predict(return_std=True)``): local
      penalisation. The acquisition over the candidates is rescaled to
      ``[0, 1]`` (plus 1e-6), and after each pick (and for every pending
      configuration) multiplied by ``1 - exp(-d^2 / (2 r^2))``, ``d`` the
      Euclidean distance to the pick in the transformed space (unit cube,
      one-hot choices) and ``r = penalty_radius * sqrt(transformed dims)``
      (``penalty_radius`` a fraction of the diameter, default 0.05).
    * ``acquisition="gp_hedge"``: per pick each of EI, PI and LCB nominates its
      best candidate and one is drawn with ``softmax(eta * gains)``. When new
      observations arrive, the refitted surrogate updates
      ``gains[k] -= mean(predicted mean at acquisition k's nominations of the
      previous batch)`` (skopt's rule, averaged over the batch).

    If fewer than ``q`` valid candidates exist, the batch is topped up with
    Halton points (then, in a finite space, the remaining configurations).

    Args:
        space: the search space (all dimensions are searched).
        seed: ``int``; seeds the Halton sequence, the candidates, the surrogate
            and the hedge.
        surrogate: ``"GP"``, ``"RF"`` or ``"ET"`` (``"GBRT"`` is refused).
        acquisition: ``"EI"``, ``"PI"``, ``"LCB"`` or ``"gp_hedge"``.
        n_initial: finite observations before the model is used; default
            ``max(8, 2 * len(space))``.
        n_candidates: random candidates scored per ask.
        xi: EI/PI improvement margin (loss units).
        kappa: LCB exploration weight.
        diverged: ``"penalty"`` or ``"exclude"``.
        penalty_radius: local-penalisation radius as a fraction of the diameter.
        eta: gp_hedge learning rate.
        gp_restarts: extra random restarts of the GP's kernel-hyperparameter
            optimisation (skopt's default is 2). Default 0: one L-BFGS run,
            about 0.7 s for 256 observations in 8 dimensions on one core,
            against about 2.5 s with skopt's 2 restarts.

    The fit and the selection run with BLAS limited to one thread: on these
    small matrices multi-threaded BLAS is slower, and with other work on the
    machine (a training population) oversubscription made a fit 8x slower.
    """

    name = "bayes"

    def __init__(self, space: Space, *, seed: int = 0, surrogate: str = "GP",
                 acquisition: str = "EI", n_initial: int | None = None,
                 n_candidates: int = 8192, xi: float = 0.01, kappa: float = 1.96,
                 diverged: str = "penalty", penalty_radius: float = 0.05, eta: float = 1.0,
                 gp_restarts: int = 0):
        super().__init__(space, seed=seed, diverged=diverged)
        if int(gp_restarts) < 0:
            raise ValueError(f"gp_restarts must be >= 0, got {gp_restarts}")
        self.gp_restarts = int(gp_restarts)
        surrogate = str(surrogate).upper()
        if surrogate == "GBRT":
            raise ValueError(_GBRT_MESSAGE)
        if surrogate not in _SURROGATES:
            raise ValueError(
                f"unknown surrogate {surrogate!r}; expected one of {list(_SURROGATES)}"
            )
        acq = "gp_hedge" if str(acquisition).lower() == "gp_hedge" else str(acquisition).upper()
        if acq not in _ACQUISITIONS:
            raise ValueError(
                f"unknown acquisition {acquisition!r}; expected one of {list(_ACQUISITIONS)}"
            )
        if n_initial is None:
            n_initial = max(8, 2 * len(space))
        if int(n_initial) < 1:
            raise ValueError(f"n_initial must be >= 1, got {n_initial}")
        if int(n_candidates) < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        if not penalty_radius > 0:
            raise ValueError(f"penalty_radius must be > 0, got {penalty_radius}")
        self.surrogate = surrogate
        self.acquisition = acq
        self.n_initial = int(n_initial)
        self.n_candidates = int(n_candidates)
        self.xi = float(xi)
        self.kappa = float(kappa)
        self.penalty_radius = float(penalty_radius)
        self.eta = float(eta)
        self._acqs = ("EI", "PI", "LCB") if acq == "gp_hedge" else (acq,)
        self.gains = np.zeros(len(self._acqs))
        self._hedge_props: list[list[np.ndarray]] | None = None
        self._hedge_version = -1

        from skopt import Optimizer
        from skopt.utils import normalize_dimensions

        # skopt is only the engine for the space (rvs/transform) and the surrogate;
        # its acquisition settings are irrelevant (we never call opt.ask/opt.tell).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._opt = Optimizer(
                normalize_dimensions(skopt_dimensions(space)), base_estimator=surrogate,
                n_initial_points=0, acq_func="EI", acq_optimizer="sampling",
                random_state=self.seed,
            )
        self._halton_iter = iter(_HaltonStream(space, self.seed))
        self._model: Any = None
        self._model_version = -1
        self.last_fit_s = 0.0
        self.last_select_s = 0.0

    # -- model ------------------------------------------------------------------------
    def _transform(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        pts = [config_to_point(self.space, c) for c in configs]
        return np.asarray(self._opt.space.transform(pts), np.float64)

    def fit(self) -> Any:
        """Fits (or returns the cached) surrogate on :meth:`observations`.

        Returns ``None`` while fewer than ``n_initial`` finite losses exist.
        """
        if self.n_finite < self.n_initial:
            return None
        if self._model is not None and self._model_version == self._version:
            return self._model
        from sklearn.base import clone

        t0 = time.perf_counter()
        configs, y = self.observations()
        est = clone(self._opt.base_estimator_)
        if "n_restarts_optimizer" in est.get_params():
            est.set_params(n_restarts_optimizer=self.gp_restarts)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(self._transform(configs), y)
        except (np.linalg.LinAlgError, ValueError) as e:  # pragma: no cover - defensive
            warnings.warn(f"BayesSearcher: surrogate fit failed ({e}); proposing "
                          "quasi-random points this round", RuntimeWarning, stacklevel=3)
            return None
        if self._hedge_props is not None and self._hedge_version != self._version:
            for k, props in enumerate(self._hedge_props):
                if props:
                    self.gains[k] -= float(np.mean(est.predict(np.vstack(props))))
            self._hedge_props = None
        self._model, self._model_version = est, self._version
        self.last_fit_s = time.perf_counter() - t0
        return est

    # -- proposals --------------------------------------------------------------------
    def _propose(self, n: int) -> list[Config]:
        keys: set[Key] = set()
        est = self.fit()
        out: list[Config] = []
        if est is not None:
            out = self._select(est, n, keys)
        if len(out) < n:
            self._collect(self._halton_iter, n, 100 * n + 1000, into=out, keys=keys)
            self._fill_by_enumeration(out, n, keys)
        return out

    def _candidates(self) -> tuple[np.ndarray, list[Any]]:
        rs = np.random.RandomState(int(self._rng.integers(2**31 - 1)))
        pts = self._opt.space.rvs(n_samples=self.n_candidates, random_state=rs)
        return np.asarray(self._opt.space.transform(pts), np.float64), pts

    def _best_free(self, score: np.ndarray, valid: np.ndarray, key_of: Callable[[int], Key],
                   local: set[Key]) -> int:
        """The best valid candidate whose configuration is new (checked lazily:
        only candidates that win are keyed; taken ones are invalidated)."""
        while True:
            i = int(np.argmax(np.where(valid, score, -np.inf)))
            k = key_of(i)
            if not (k in local or self.is_taken(k)):
                return i
            valid[i] = False
            if not valid.any():
                return i

    def _choose(self, scores: list[np.ndarray], valid: np.ndarray,
                nominated: list[list[np.ndarray]], X: np.ndarray,
                key_of: Callable[[int], Key], local: set[Key]) -> int:
        picks = [self._best_free(s, valid, key_of, local) for s in scores]
        for k, i in enumerate(picks):
            nominated[k].append(X[i])
        if len(picks) == 1:
            return picks[0]
        logits = self.eta * (self.gains - self.gains.max())
        probs = np.exp(logits) / np.exp(logits).sum()
        return picks[int(self._rng.choice(len(picks), p=probs))]

    def _select(self, est: Any, q: int, keys: set[Key]) -> list[Config]:
        t0 = time.perf_counter()
        Xc, pts = self._candidates()
        m = len(Xc)
        if m == 0:
            return []
        cache: dict[int, Key] = {}
        local: set[Key] = set()

        def key_of(i: int) -> Key:
            if i not in cache:
                cache[i] = _point_key(self.space, pts[i])
            return cache[i]

        pending = list(self._pending.values())
        Xp = self._transform(pending) if pending else np.zeros((0, Xc.shape[1]))
        Z = np.vstack([Xc, Xp])
        valid = np.zeros(len(Z), bool)
        valid[:m] = True
        _, y = self.observations()
        y_best = float(y.min())
        nominated: list[list[np.ndarray]] = [[] for _ in self._acqs]
        chosen: list[int] = []
        if self.surrogate == "GP":
            post = _GPPosterior(est, Z, capacity=q + len(Xp))
            mu = post.mean
            for p in range(m, len(Z)):  # fantasise the pending configurations first
                y_best = min(y_best, float(mu[p]))
                post.condition(p)
            while len(chosen) < q and valid.any():
                std = post.std
                scores = [_acquisition(a, mu, std, y_best, self.xi, self.kappa)
                          for a in self._acqs]
                i = self._choose(scores, valid, nominated, Z, key_of, local)
                if not valid[i]:
                    break
                chosen.append(i)
                local.add(key_of(i))
                valid[i] = False
                y_best = min(y_best, float(mu[i]))
                post.condition(i)
        else:
            mu, std = est.predict(Z, return_std=True)
            mu, std = np.asarray(mu, np.float64), np.asarray(std, np.float64)
            base = []
            for a in self._acqs:
                s = _acquisition(a, mu, std, y_best, self.xi, self.kappa)
                lo, hi = s[:m].min(), s[:m].max()
                base.append((s - lo) / (hi - lo + 1e-300) + 1e-6)
            radius = self.penalty_radius * math.sqrt(Z.shape[1])
            penalty = np.ones(len(Z))

            def penalise(i: int) -> None:
                d2 = np.sum((Z - Z[i]) ** 2, axis=1)
                penalty[:] *= -np.expm1(-d2 / (2.0 * radius**2))

            for p in range(m, len(Z)):
                penalise(p)
            while len(chosen) < q and valid.any():
                i = self._choose([b * penalty for b in base], valid, nominated, Z, key_of,
                                 local)
                if not valid[i]:
                    break
                chosen.append(i)
                local.add(key_of(i))
                valid[i] = False
                penalise(i)
        if self.acquisition == "gp_hedge":
            if self._hedge_props is not None and self._hedge_version == self._version:
                for k, props in enumerate(nominated):  # several asks before the next tell
                    self._hedge_props[k].extend(props)
            else:
                self._hedge_props = nominated
            self._hedge_version = self._version
        out = []
        for i in chosen:
            keys.add(key_of(i))
            out.append(point_to_config(self.space, pts[i]))
        self.last_select_s = time.perf_counter() - t0
        return out


# --------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., Searcher]] = {
    "grid": GridSearcher,
    "random": RandomSearcher,
    "quasirandom": QuasiRandomSearcher,
    "bayes": BayesSearcher,
}


def make_searcher(name: str, space: Space, *, seed: int = 0, **kw: Any) -> Searcher:
    """Builds a searcher by name: ``"grid"``, ``"random"``, ``"quasirandom"`` or ``"bayes"``.

    Extra keyword arguments go to the searcher's constructor (e.g.
    ``resolution=`` for the grid, ``surrogate=``/``acquisition=`` for bayes).

    Raises:
        ValueError: an unknown name (listing the known ones).
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown searcher {name!r}; expected one of {list(SEARCHERS)}")
    return _REGISTRY[key](space, seed=seed, **kw)
