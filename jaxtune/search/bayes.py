"""Batch Bayesian optimisation on a scikit-optimize surrogate.

The pieces, each replaceable on its own:

* **surrogate fit**: :meth:`BayesSearcher.fit`, once per batch, a clone of
  skopt's GP (or RF/ET) on ``opt.space.transform``-ed points;
* **acquisition functions**: :func:`_acquisition` (EI, PI, LCB, higher is
  better, for a loss to minimise);
* **kriging-believer posterior**: :class:`_GPPosterior`, the GP posterior on a
  fixed candidate set with rank-one variance updates per fantasised pick;
* **batch selection**: :class:`_KrigingBeliever` (GP) and
  :class:`_LocalPenalty` (forests) score the candidates and are conditioned
  on each pick; :meth:`BayesSearcher._select` runs the greedy loop, with the
  gp_hedge choice between acquisitions.

Example:
    >>> from jaxtune.space import Space, Real, Choice
    >>> space = Space(lr=Real(1e-4, 1e-1, log=True), opt=Choice(["adam", "sgd"]))
    >>> s = BayesSearcher(space, seed=0, n_initial=4, n_candidates=256)
    >>> first = s.ask(4)                      # quasi-random until n_initial losses
    >>> s.tell(first, [abs(c["lr"] - 0.01) + (c["opt"] == "sgd") for c in first])
    >>> batch = s.ask(3)                      # one GP fit, three kriging-believer picks
    >>> len(batch), s.last_fit_s > 0
    (3, True)
    >>> sgd = s.ask(2, within=space.subspace(opt="sgd"))
    >>> [c["opt"] for c in sgd]
    ['sgd', 'sgd']
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.search.basic import Config, Key, Searcher, _HaltonStream
from jaxtune.space import Space

__all__ = ["ACQUISITIONS", "INACTIVE_NUMERIC", "SURROGATES", "BayesSearcher"]

#: The encoded value of an inactive numeric dimension (the middle of the ``[0, 1]`` of
#: the active values; see :class:`BayesSearcher`).
INACTIVE_NUMERIC = 0.5

#: Surrogates of :class:`BayesSearcher` (scikit-optimize's names).
SURROGATES = ("GP", "RF", "ET")
#: Acquisition functions of :class:`BayesSearcher`.
ACQUISITIONS = ("EI", "PI", "LCB", "gp_hedge")

_SQRT_2PI = math.sqrt(2.0 * math.pi)

_GBRT_MESSAGE = (
    "surrogate 'GBRT' is not supported: scikit-optimize's GradientBoostingQuantileRegressor "
    "fails with current scikit-learn ('... has to be a regressor'); use surrogate='GP', "
    "'RF' or 'ET'"
)


# --------------------------------------------------------------------------------------
# acquisition functions
# --------------------------------------------------------------------------------------
def _acquisition(name: str, mu: np.ndarray, std: np.ndarray, y_best: float, xi: float,
                 kappa: float) -> np.ndarray:
    """Acquisition scores, *higher is better*, for minimising the loss.

    EI: E[max(y_best - xi - f, 0)]; PI: P(f < y_best - xi); LCB: -(mu - kappa std).
    Where std is 0 the deterministic limits are used. (``ndtr`` and the explicit
    density are ``scipy.stats.norm.cdf``/``pdf`` without their per-call overhead.)
    """
    if name == "LCB":
        return -(mu - kappa * std)
    from scipy.special import ndtr  # imported on first use (see BayesSearcher._opt)

    imp = y_best - xi - mu
    pos = std > 0
    z = np.zeros_like(mu)
    z[pos] = imp[pos] / std[pos]
    if name == "EI":
        out = np.maximum(imp, 0.0)
        zp = z[pos]
        out[pos] = imp[pos] * ndtr(zp) + std[pos] * np.exp(-0.5 * zp * zp) / _SQRT_2PI
        return out
    if name == "PI":
        out = (imp > 0).astype(np.float64)
        out[pos] = ndtr(z[pos])
        return out
    raise ValueError(f"unknown acquisition {name!r}")  # pragma: no cover


# --------------------------------------------------------------------------------------
# surrogate fit
# --------------------------------------------------------------------------------------
def _warm_kernel(gp: Any) -> Any:
    """The kernel of a fitted skopt GP as the starting point of the next fit.

    skopt fits ``k1 + WhiteKernel`` and then zeroes the white noise in
    ``kernel_`` (keeping it as ``noise_``); this puts the fitted noise back, so
    L-BFGS starts at the previous optimum (``kernel_.theta``) with the
    original bounds. ``None`` when the kernel has another structure.
    """
    from skopt.learning.gaussian_process.kernels import Sum, WhiteKernel

    kernel, noise = getattr(gp, "kernel_", None), getattr(gp, "noise_", None)
    if not (isinstance(kernel, Sum) and isinstance(kernel.k2, WhiteKernel) and noise):
        return None
    white = WhiteKernel()
    lo, hi = white.noise_level_bounds
    return Sum(kernel.k1, WhiteKernel(noise_level=float(np.clip(noise, lo, hi))))


# --------------------------------------------------------------------------------------
# kriging-believer posterior
# --------------------------------------------------------------------------------------
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
        from scipy.linalg import solve_triangular

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


# --------------------------------------------------------------------------------------
# batch selection
# --------------------------------------------------------------------------------------
AcquisitionFn = Callable[[str, np.ndarray, np.ndarray, float], np.ndarray]


class _KrigingBeliever:
    """GP batch scores: each pick is fantasised at its posterior mean, kernel fixed.

    The mean stays as is, every candidate's variance gets an exact rank-one
    update (:class:`_GPPosterior`) and ``y_best`` becomes ``min(observed,
    fantasised means so far)``.
    """

    def __init__(self, gp: Any, Z: np.ndarray, capacity: int, y_best: float,
                 acqs: Sequence[str], acquisition: AcquisitionFn):
        self.post = _GPPosterior(gp, Z, capacity=capacity)
        self.y_best, self.acqs, self.acquisition = y_best, tuple(acqs), acquisition

    def scores(self) -> list[np.ndarray]:
        std = self.post.std
        return [self.acquisition(a, self.post.mean, std, self.y_best) for a in self.acqs]

    def condition(self, i: int) -> None:
        self.y_best = min(self.y_best, float(self.post.mean[i]))
        self.post.condition(i)


class _LocalPenalty:
    """Forest batch scores: acquisitions rescaled to ``[0, 1]`` (plus 1e-6) over the
    first ``m`` points (the candidates), multiplied after each pick by
    ``1 - exp(-d^2 / (2 r^2))`` (``d`` the distance to the pick)."""

    def __init__(self, est: Any, Z: np.ndarray, m: int, y_best: float, acqs: Sequence[str],
                 acquisition: AcquisitionFn, radius: float):
        mu, std = est.predict(Z, return_std=True)
        mu, std = np.asarray(mu, np.float64), np.asarray(std, np.float64)
        self.base = []
        for a in acqs:
            s = acquisition(a, mu, std, y_best)
            lo, hi = s[:m].min(), s[:m].max()
            self.base.append((s - lo) / (hi - lo + 1e-300) + 1e-6)
        self.Z, self.radius = Z, radius
        self.penalty = np.ones(len(Z))

    def scores(self) -> list[np.ndarray]:
        return [b * self.penalty for b in self.base]

    def condition(self, i: int) -> None:
        d2 = np.sum((self.Z - self.Z[i]) ** 2, axis=1)
        self.penalty *= -np.expm1(-d2 / (2.0 * self.radius**2))


# --------------------------------------------------------------------------------------
# candidate points
# --------------------------------------------------------------------------------------
#: Observed configurations that local candidates are drawn around (the best first).
_LOCAL_CENTRES = 4
#: Standard deviations of the local steps, in the unit cube.
_LOCAL_SCALES = (0.01, 0.05, 0.15)


class _Rows(Sequence):
    """Rows of column-wise samples, built only when one is read."""

    def __init__(self, cols: Sequence[Any]):
        self.cols = cols

    def __len__(self) -> int:
        return len(self.cols[0]) if self.cols else 0

    def __getitem__(self, i: int) -> list[Any]:  # type: ignore[override]
        return [c[i] for c in self.cols]


class _Chain(Sequence):
    """Two sequences read as one."""

    def __init__(self, a: Sequence[Any], b: Sequence[Any]):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]


# --------------------------------------------------------------------------------------
# the searcher
# --------------------------------------------------------------------------------------
class BayesSearcher(Searcher):
    """Batch Bayesian optimisation with a scikit-optimize surrogate.

    Until ``n_initial`` finite losses have been told, proposals are scrambled
    Halton points (as :class:`~jaxtune.search.QuasiRandomSearcher`, same seed).
    Afterwards each ``ask(q)`` fits the surrogate **once** on all observations
    (a clone of ``skopt.Optimizer(...).base_estimator_``, on
    ``opt.space.transform``-ed points; skopt's own ask/tell loop, which refits
    per point, is not used), draws ``n_candidates`` candidates, drops those
    whose configuration is seen, pending or duplicated, and picks ``q`` of
    them greedily without refitting. The candidates are ``local_candidates``
    (a fraction) perturbations of the best observed configurations (the 4
    lowest losses, the best drawing half of them; Gaussian steps of standard
    deviation 0.01, 0.05 or 0.15 in the space's unit cube, so each dimension
    maps them through its own log scale, integers or choices) and uniform
    random draws (``opt.space.rvs``) for the rest:

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

    With ``ask(q, within=sub)`` the candidates (and any Halton top-up) are
    drawn from the subspace ``sub``; the surrogate is the same.

    If fewer than ``q`` valid candidates exist, the batch is topped up with
    Halton points (then, in a finite space, the remaining configurations).

    **Conditional dimensions** (``when=``, see :mod:`jaxtune.space`). The
    surrogate's inputs are the encoded points (``opt.space.transform``: each
    numeric dimension scaled to ``[0, 1]``, log-scaled where ``log=True``; a
    choice one-hot, or one 0/1 column for two values). Where a dimension is
    inactive its columns hold one fixed value: :data:`INACTIVE_NUMERIC` (0.5,
    the middle of the encoded range) for a numeric dimension, the all-zero code
    for a one-hot choice (0.5 for a two-valued one), equally far from every
    value a choice can take. Every inactive point has the same value there, so
    the surrogate cannot fit a trend along a dimension that did not act, and
    the candidates are encoded the same way, so an inactive value is never
    scored as if it mattered; the parent's own column tells the branches
    apart. (A random value would look like a measured effect.) The value lies
    inside the range on purpose: a value outside it (-1, as SMAC imputes for
    its random forests) sets each inactive point a whole range away from the
    active ones, and a stationary kernel's length scale for that dimension then
    has to span the gap; on ``experiments/bench_conditional.py`` it took 73
    evaluations to the optimum (median of 10 seeds) against 53 with 0.5.
    Proposals hold the active values only (:meth:`Space.from_point` prunes),
    and candidates that differ only in inactive coordinates are one
    configuration.

    Args:
        space: the search space (all dimensions are searched).
        seed: ``int``; seeds the Halton sequence, the candidates, the surrogate
            and the hedge.
        surrogate: ``"GP"``, ``"RF"`` or ``"ET"`` (``"GBRT"`` is refused).
        acquisition: ``"EI"``, ``"PI"``, ``"LCB"`` or ``"gp_hedge"``.
        n_initial: finite observations before the model is used; default
            ``max(8, 2 * len(space))``.
        n_candidates: candidates scored per ask.
        xi: EI/PI improvement margin (loss units).
        kappa: LCB exploration weight.
        diverged: ``"penalty"`` or ``"exclude"``.
        penalty_radius: local-penalisation radius as a fraction of the diameter.
        eta: gp_hedge learning rate.
        gp_restarts: extra random restarts of the GP's kernel-hyperparameter
            optimisation (skopt's default is 2). Default 0: one L-BFGS run,
            about 0.7 s from scratch for 256 observations in 8 dimensions on
            one core, against about 4 s with skopt's 2 restarts.
        warm_start: start each GP fit's L-BFGS at the previous fit's kernel
            hyperparameters (``kernel_.theta``, noise included) instead of
            skopt's initial kernel. Off by default: it halves a fit (36 -> 17
            likelihood evaluations after 64 new observations on 192) but keeps
            the kernel near the first fits' optimum, and searches worse: on
            Hartmann-6, 8 batches of 8, 5 seeds, the median best value was
            -2.21 warm-started against -3.08 from scratch (random search:
            -2.02). On the searcher suite (``jaxtune bench searchers``, 12
            functions, 10 seeds, q=8) the from-scratch default ended lower on
            11 of 12 (Hartmann-6: median regret 0.0022 against 0.068). The
            first fit, and a fresh searcher told a stored history, start from
            scratch. Random restarts, if any, are drawn as usual.
        local_candidates: the fraction of ``n_candidates`` drawn around the
            best observed configurations (inside the asked subspace); 0 for
            uniform random candidates only. Random candidates alone are a weak
            optimiser of the acquisition in 4-8 dimensions: on the searcher
            suite at q=8 (3 seeds) the default 0.25 lowered the median final
            regret on each of its 12 functions; with it the default ends below
            Optuna's TPE on 10 of 12 at q=8 and at q=32 (10 seeds).

    The fit and the selection run with BLAS limited to one thread: on these
    small matrices multi-threaded BLAS is slower, and with other work on the
    machine (a training population) oversubscription made a fit 8x slower.
    """

    name = "bayes"

    def __init__(self, space: Space, *, seed: int = 0, surrogate: str = "GP",
                 acquisition: str = "EI", n_initial: int | None = None,
                 n_candidates: int = 8192, xi: float = 0.01, kappa: float = 1.96,
                 diverged: str = "penalty", penalty_radius: float = 0.05, eta: float = 1.0,
                 gp_restarts: int = 0, warm_start: bool = False,
                 local_candidates: float = 0.25):
        super().__init__(space, seed=seed, diverged=diverged)
        if int(gp_restarts) < 0:
            raise ValueError(f"gp_restarts must be >= 0, got {gp_restarts}")
        self.gp_restarts = int(gp_restarts)
        self.warm_start = bool(warm_start)
        if not 0.0 <= float(local_candidates) <= 1.0:
            raise ValueError(f"local_candidates must be in [0, 1], got {local_candidates}")
        self.local_candidates = float(local_candidates)
        surrogate = str(surrogate).upper()
        if surrogate == "GBRT":
            raise ValueError(_GBRT_MESSAGE)
        if surrogate not in SURROGATES:
            raise ValueError(
                f"unknown surrogate {surrogate!r}; expected one of {list(SURROGATES)}"
            )
        acq = "gp_hedge" if str(acquisition).lower() == "gp_hedge" else str(acquisition).upper()
        if acq not in ACQUISITIONS:
            raise ValueError(
                f"unknown acquisition {acquisition!r}; expected one of {list(ACQUISITIONS)}"
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

        self._halton = iter(_HaltonStream(len(space), self.seed))
        self._model: Any = None
        self._model_version = -1
        self._fidelity_input = False  # whether the model has a fidelity input
        self.last_fit_s = 0.0
        self.last_fit_warm = False  # whether the last fit started from the previous kernel
        self.last_select_s = 0.0

    @functools.cached_property
    def _opt(self) -> Any:
        """skopt's ``Optimizer``: only the engine for the space (rvs/transform) and the
        surrogate; its acquisition settings are irrelevant (``opt.ask``/``opt.tell``
        are never called). Built on first use: importing skopt (scikit-learn and
        scipy.stats) takes about a second, which the quasi-random initial design
        does not need, so a study starts training without it."""
        from skopt import Optimizer
        from skopt.utils import normalize_dimensions

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Optimizer(
                normalize_dimensions(self.space.skopt_dimensions()),
                base_estimator=self.surrogate, n_initial_points=0, acq_func="EI",
                acq_optimizer="sampling", random_state=self.seed,
            )

    @functools.cached_property
    def _fidelity_estimator(self) -> Any:
        """The surrogate over the space plus one input, the fidelity in ``[0, 1]``."""
        from skopt.space import Real as SkReal
        from skopt.utils import cook_estimator, normalize_dimensions

        dims = normalize_dimensions([*self.space.skopt_dimensions(), SkReal(0.0, 1.0)])
        return cook_estimator(self.surrogate, space=dims, random_state=self.seed)

    # -- model ------------------------------------------------------------------------
    def _transform(self, configs: Sequence[Mapping[str, Any]],
                   fidelity: np.ndarray | None = None) -> np.ndarray:
        """Points of the surrogate: the space's transform (inactive dimensions imputed,
        :meth:`_impute`), and, when the model has a fidelity input, ``fidelity``
        (default 1, the full budget) as the last column."""
        pts = [self.space.to_point(c) for c in configs]
        X = np.asarray(self._opt.space.transform(pts), np.float64)
        if self.space.conditional:
            X = self._impute(X, self.space.active_mask(configs))
        return self._at_fidelity(X, fidelity)

    @functools.cached_property
    def _inactive_codes(self) -> list[tuple[slice, float]]:
        """Per dimension: its columns in the transformed space and the value they hold
        where it is inactive (see the class docstring)."""
        out, start = [], 0
        for (_, dim), sk in zip(self.space.items(), self._opt.space.dimensions, strict=True):
            width = int(sk.transformed_size)
            code = (0.0 if width > 1 else 0.5) if dim.categorical else INACTIVE_NUMERIC
            out.append((slice(start, start + width), code))
            start += width
        return out

    def _impute(self, X: np.ndarray, active: np.ndarray) -> np.ndarray:
        """``X`` with the columns of each point's inactive dimensions set to their code."""
        for j, (cols, code) in enumerate(self._inactive_codes):
            rows = ~active[:, j]
            if rows.any():
                X[rows, cols] = code
        return X

    def _at_fidelity(self, X: np.ndarray, fidelity: np.ndarray | None = None) -> np.ndarray:
        if not self._fidelity_input:
            return X
        f = np.ones(len(X)) if fidelity is None else np.asarray(fidelity, np.float64)
        return np.column_stack([X, f])

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
        configs, y, fid = self.observations_with_fidelity()
        # Losses measured on part of the budget (pruned trials) make the fidelity an
        # input of the surrogate; proposals are scored at the full budget.
        was, self._fidelity_input = self._fidelity_input, bool((fid < 1.0).any())
        est = clone(self._fidelity_estimator if self._fidelity_input
                    else self._opt.base_estimator_)
        if "n_restarts_optimizer" in est.get_params():
            est.set_params(n_restarts_optimizer=self.gp_restarts)
        warm = (_warm_kernel(self._model) if self.warm_start and self._model is not None
                and was == self._fidelity_input else None)
        if warm is not None:
            est.set_params(kernel=warm)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(self._transform(configs, fid), y)
        except (np.linalg.LinAlgError, ValueError) as e:  # pragma: no cover - defensive
            warnings.warn(f"BayesSearcher: surrogate fit failed ({e}); proposing "
                          "quasi-random points this round", RuntimeWarning, stacklevel=3)
            return None
        if self._hedge_props is not None and self._hedge_version != self._version:
            for k, props in enumerate(self._hedge_props):
                if props:
                    P = np.vstack(props)[:, : self._opt.space.transformed_n_dims]  # no fidelity
                    self.gains[k] -= float(np.mean(est.predict(self._at_fidelity(P))))
            self._hedge_props = None
        self._model, self._model_version = est, self._version
        self.last_fit_s = time.perf_counter() - t0
        self.last_fit_warm = warm is not None
        return est

    def predict(self, configs: Sequence[Mapping[str, Any]],
                return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The surrogate's predicted loss (and std) at ``configs``, after :meth:`fit`
        (at the full budget, when the surrogate has a fidelity input).

        Raises:
            ValueError: while there is no model (fewer than ``n_initial`` finite
                losses), or for an invalid configuration.
        """
        est = self.fit()
        if est is None:
            raise ValueError(f"no surrogate yet: {self.n_finite} finite losses told, "
                             f"n_initial={self.n_initial}")
        X = self._transform(self.space.validate_all(configs))
        if return_std:
            mu, std = est.predict(X, return_std=True)
            return np.asarray(mu, np.float64), np.asarray(std, np.float64)
        return np.asarray(est.predict(X), np.float64)

    # -- proposals --------------------------------------------------------------------
    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        space = self.space if space is None else space
        keys: set[Key] = set()
        est = self.fit()
        out: list[Config] = []
        if est is not None:
            out = self._select(est, n, keys, space)
        if len(out) < n:
            self._collect(self._halton, n, space, into=out, keys=keys)
            self._fill_by_enumeration(out, n, keys, space)
        return out

    def _candidates(self, space: Space) -> tuple[np.ndarray, Sequence[Any]]:
        """``n_candidates`` points of ``space``: transformed, and as points of
        :attr:`space` (a subspace's points are mapped through their values).

        A fraction ``local_candidates`` are perturbations of the best observed
        configurations inside ``space`` (:meth:`_local_configs`); the rest are
        uniform random draws (``opt.space.rvs``, drawn and transformed column by
        column: the same points without skopt's per-point Python loops).
        """
        rs = np.random.RandomState(int(self._rng.integers(2**31 - 1)))
        local = self._local_configs(space, rs)
        n = self.n_candidates - len(local)
        if n == 0:
            Xr, pts = np.zeros((0, self._opt.space.transformed_n_dims)), []
        elif space is self.space:
            dims = self._opt.space.dimensions
            cols = [d.rvs(n_samples=n, random_state=rs) for d in dims]
            Xr = np.hstack([np.asarray(d.transform(c), np.float64).reshape(n, -1)
                            for d, c in zip(dims, cols)])
            pts: Sequence[Any] = _Rows(cols)
        else:
            from skopt.space import Space as SkSpace

            sub = SkSpace(space.skopt_dimensions()).rvs(n_samples=n, random_state=rs)
            pts = [self.space.to_point(space.from_point(p)) for p in sub]
            Xr = np.asarray(self._opt.space.transform(pts), np.float64)
        if self.space.conditional and len(pts):
            columns = cols if space is self.space else list(zip(*pts, strict=True))
            Xr = self._impute(Xr, self.space.point_mask(columns))
        if not local:
            return Xr, pts
        lpts = [self.space.to_point(c) for c in local]
        Xl = np.asarray(self._opt.space.transform(lpts), np.float64)
        if self.space.conditional:
            Xl = self._impute(Xl, self.space.active_mask(local))
        return np.vstack([Xr, Xl]), _Chain(pts, lpts)

    def _local_configs(self, space: Space, rs: np.random.RandomState) -> list[Config]:
        """``local_candidates * n_candidates`` configurations near the best observed
        ones: the ``_LOCAL_CENTRES`` lowest finite losses inside ``space``, each moved
        in ``space``'s unit cube (:meth:`Space.to_unit` / :meth:`Space.from_unit`,
        so log scales, integers and choices are each dimension's own) by Gaussian
        steps of standard deviation drawn from ``_LOCAL_SCALES``, clipped to the cube.
        """
        m = int(round(self.local_candidates * self.n_candidates))
        if m == 0 or self._model is None:
            return []
        configs, y = self.observations()
        order = np.argsort(y, kind="stable")
        centres = []
        for i in order:
            if space is self.space or space.contains(configs[i]):
                centres.append(space.to_unit(configs[i]))
                if len(centres) == _LOCAL_CENTRES:
                    break
        if not centres:
            return []
        # the best centre gets half the points, the others share the rest
        weights = np.array([float(len(centres))] + [1.0] * (len(centres) - 1))
        which = rs.choice(len(centres), size=m, p=weights / weights.sum())
        scale = rs.choice(np.asarray(_LOCAL_SCALES), size=(m, 1))
        U = np.clip(np.asarray(centres)[which] + scale * rs.standard_normal((m, len(space))),
                    0.0, 1.0)
        return [space.from_unit(u) for u in U]

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

    def _acquisition(self, name: str, mu: np.ndarray, std: np.ndarray,
                     y_best: float) -> np.ndarray:
        return _acquisition(name, mu, std, y_best, self.xi, self.kappa)

    def _incumbent(self, est: Any) -> float:
        """The loss to improve on: the best observed, or, when some losses come from
        part of the budget, the best the surrogate predicts at the full budget for
        an observed configuration (a pruned trial's loss is not a full-budget one)."""
        configs, y = self.observations()
        if not self._fidelity_input:
            return float(y.min())
        return float(np.min(est.predict(self._transform(configs))))

    def _select(self, est: Any, q: int, keys: set[Key], space: Space) -> list[Config]:
        t0 = time.perf_counter()
        Xc, pts = self._candidates(space)
        m = len(Xc)
        if m == 0:
            return []
        cache: dict[int, Key] = {}
        local: set[Key] = set()

        def key_of(i: int) -> Key:
            if i not in cache:
                cache[i] = self.space.point_key(pts[i])
            return cache[i]

        Xc = self._at_fidelity(Xc)
        pending = list(self._pending.values())
        Xp = self._transform(pending) if pending else np.zeros((0, Xc.shape[1]))
        Z = np.vstack([Xc, Xp])
        valid = np.zeros(len(Z), bool)
        valid[:m] = True
        y_best = self._incumbent(est)
        if self.surrogate == "GP":
            picker: _KrigingBeliever | _LocalPenalty = _KrigingBeliever(
                est, Z, q + len(Xp), y_best, self._acqs, self._acquisition)
        else:
            picker = _LocalPenalty(est, Z, m, y_best, self._acqs, self._acquisition,
                                   self.penalty_radius * math.sqrt(Z.shape[1]))
        for p in range(m, len(Z)):  # condition on the pending configurations first
            picker.condition(p)
        nominated: list[list[np.ndarray]] = [[] for _ in self._acqs]
        chosen: list[int] = []
        while len(chosen) < q and valid.any():
            i = self._choose(picker.scores(), valid, nominated, Z, key_of, local)
            if not valid[i]:
                break
            chosen.append(i)
            local.add(key_of(i))
            valid[i] = False
            picker.condition(i)
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
            out.append(self.space.from_point(pts[i]))
        self.last_select_s = time.perf_counter() - t0
        return out
