"""Several objectives: ParEGO, batch Bayesian optimisation of random scalarizations.

:class:`ParEGOSearcher` is told a vector of losses per configuration (one per
objective, each to minimise; ``None`` for a failed or infeasible trial). For each
proposal of a batch it draws a fresh weight vector ``w`` uniformly on the simplex,
normalises every objective to ``[0, 1]`` over the observed values, scalarizes with
the augmented Chebyshev function ``max_j w_j y_j + rho * sum_j w_j y_j`` (Knowles,
*ParEGO*, 2006), fits the surrogate of :class:`~jaxtune.search.BayesSearcher` to
it and picks the candidate of highest expected improvement, conditioned (kriging
believer) on the proposals already in the batch. A batch of ``q`` thus costs ``q``
surrogate fits and spreads over the front instead of crowding one weight.

Example:
    >>> from jaxtune.space import Space, Real
    >>> space = Space(x=Real(0.0, 1.0), y=Real(0.0, 1.0))
    >>> s = ParEGOSearcher(space, n_objectives=2, seed=0, n_initial=4, n_candidates=256)
    >>> first = s.ask(4)
    >>> s.tell(first, [[c["x"], 1 - c["x"] + c["y"]] for c in first])
    >>> len(s.ask(2))
    2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.objectives import chebyshev, normalise
from jaxtune.search.basic import Config, Key
from jaxtune.search.bayes import BayesSearcher
from jaxtune.space import Space

__all__ = ["ParEGOSearcher"]


class ParEGOSearcher(BayesSearcher):
    """Batch ParEGO on :class:`~jaxtune.search.BayesSearcher`'s surrogate.

    Args:
        space: the search space.
        n_objectives: the length of every told loss vector (>= 1).
        rho: the augmentation weight of the Chebyshev scalarization.
        seed, **kwargs: as :class:`~jaxtune.search.BayesSearcher` (``surrogate``,
            ``n_initial``, ``n_candidates`` ...).

    A failed trial (``None``, or a vector with a non-finite entry) follows the
    ``diverged`` policy on the scalarized loss: the worst finite scalarized loss of
    the current weights (``"penalty"``) or dropped (``"exclude"``).
    """

    name = "parego"

    def __init__(self, space: Space, *, n_objectives: int = 2, rho: float = 0.05,
                 seed: int = 0, **kwargs: Any):
        super().__init__(space, seed=seed, **kwargs)
        if isinstance(n_objectives, bool) or int(n_objectives) < 1:
            raise ValueError(f"n_objectives must be an int >= 1, got {n_objectives!r}")
        if not float(rho) >= 0:
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        self.n_objectives, self.rho = int(n_objectives), float(rho)
        self._vectors: list[np.ndarray] = []
        self.weights = np.full(self.n_objectives, 1.0 / self.n_objectives)

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[Any],
             fidelities: Sequence[float] | None = None) -> None:
        """Records loss vectors (``None``: failed). See :meth:`Searcher.tell`."""
        vectors = []
        for i, v in enumerate(list(losses)):
            if v is None:
                vectors.append(np.full(self.n_objectives, math.nan))
                continue
            try:
                row = np.asarray(v, np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"tell: loss {i} must be {self.n_objectives} numbers or None, "
                                 f"got {v!r}") from None
            if row.shape != (self.n_objectives,):
                raise ValueError(f"tell: loss {i} has {row.size} values, expected "
                                 f"{self.n_objectives} (one per objective)")
            vectors.append(row)
        placeholders = [0.0 if np.isfinite(r).all() else None for r in vectors]
        super().tell(configs, placeholders, fidelities)
        self._vectors.extend(vectors)

    def loss_vectors(self) -> tuple[list[Config], np.ndarray]:
        """Every told configuration and its loss vector (NaN rows: failed)."""
        return list(self._configs), np.asarray(self._vectors, np.float64).reshape(
            -1, self.n_objectives)

    def observations_with_fidelity(self) -> tuple[list[Config], np.ndarray, np.ndarray]:
        """The told history scalarized with the current :attr:`weights` (objectives
        normalised over the finite vectors), after the ``diverged`` policy."""
        Y = np.asarray(self._vectors, np.float64).reshape(-1, self.n_objectives)
        finite = np.isfinite(Y).all(axis=1)
        y = np.full(len(Y), math.nan)
        if finite.any():
            y[finite] = chebyshev(normalise(Y[finite]), self.weights, self.rho)
        fid = np.asarray(self._fidelities, np.float64)
        if self.diverged == "penalty" and finite.any():
            return list(self._configs), np.where(finite, y, y[finite].max()), fid
        return ([c for c, f in zip(self._configs, finite, strict=True) if f], y[finite],
                fid[finite])

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        space = self.space if space is None else space
        if self.n_finite < self.n_initial:
            return super()._propose(n, space)
        out: list[Config] = []
        keys: set[Key] = set()
        held: list[Key] = []
        try:
            for _ in range(n):
                self.weights = self._rng.dirichlet(np.ones(self.n_objectives))
                self._model_version = -1  # a new scalarization: refit
                est = self.fit()
                picks = self._select(est, 1, keys, space) if est is not None else []
                if not picks:
                    break
                k = self.space.key(picks[0])
                self._pending[k] = picks[0]  # fantasised by the next picks of the batch
                held.append(k)
                out.extend(picks)
        finally:
            for k in held:
                self._pending.pop(k, None)
        if len(out) < n:
            self._collect(self._halton, n, space, into=out, keys=keys)
            self._fill_by_enumeration(out, n, keys, space)
        return out
