"""Evolution strategies: a smoothed gradient from antithetic perturbations.

:class:`EvolutionSearcher` (``make_searcher("es", ...)``) refines its tracks (see
:mod:`jaxtune.search.refine`) with antithetic Gaussian perturbations of their
continuous hyperparameters, spread across the population: every ask proposes
pairs ``z + sigma * e`` and ``z - sigma * e`` (``e`` standard normal, unit
coordinates), and once ``pairs`` pairs of a track are told, the estimate

    ``g = mean((L(z + sigma e) - L(z - sigma e)) / (2 sigma) * e)``

(the gradient of the loss smoothed by a Gaussian of width ``sigma``, Salimans et
al. 2017) moves the track by one Adam step. It needs only losses, so it works for
any hyperparameter (including those with no derivative: ``warmup``, ``dropout``)
and where the exact hypergradient explodes over long unrolls (Metz et al. 2019;
Vicol et al. 2021). A diverged member counts with the worst loss told. Pairs
asked before a track's last step are dropped when told.

Example:
    >>> from jaxtune.space import Real, Space
    >>> space = Space(x=Real(-2.0, 2.0), y=Real(-2.0, 2.0))
    >>> es = EvolutionSearcher(space, starts=[{"x": 1.5, "y": -1.0}], sigma=0.05,
    ...                        lr=0.05, pairs=4, seed=0)
    >>> for _ in range(30):
    ...     batch = es.ask(8)
    ...     es.tell(batch, [c["x"] ** 2 + c["y"] ** 2 for c in batch])
    >>> best = es.center(0)
    >>> abs(best["x"]) < 0.5 and abs(best["y"]) < 0.5
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.search.refine import Config, RefiningSearcher, Track
from jaxtune.space import Space

__all__ = ["EvolutionSearcher"]


class EvolutionSearcher(RefiningSearcher):
    """Antithetic evolution strategies on the continuous hyperparameters.

    Args:
        space, seed, diverged, starts, names, lr, n_starts: see
            :class:`~jaxtune.search.refine.RefiningSearcher`.
        sigma: the perturbations' standard deviation, in unit coordinates.
        pairs: antithetic pairs told per track before each step.
    """

    name = "es"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty",
                 starts: Sequence[Mapping[str, Any]] | None = None,
                 names: Sequence[str] | None = None, lr: float = 0.05, n_starts: int = 2,
                 sigma: float = 0.05, pairs: int = 4):
        super().__init__(space, seed=seed, diverged=diverged, starts=starts, names=names,
                         lr=lr, n_starts=n_starts)
        if not (isinstance(sigma, (int, float)) and 0 < sigma <= 0.5):
            raise ValueError(f"sigma must be in (0, 0.5] (unit coordinates), got {sigma!r}")
        if not (isinstance(pairs, int) and pairs >= 1):
            raise ValueError(f"pairs must be an int >= 1, got {pairs!r}")
        self.sigma, self.pairs = float(sigma), pairs
        # key -> (track, round, e, sign); finished pairs per track
        self._asked: dict[tuple, tuple[Track, int, np.ndarray, int]] = {}
        self._halves: dict[int, dict[int, float]] = {}
        self._done: dict[int, list[tuple[np.ndarray, float, float]]] = {}
        self._pair_ids = 0
        self.steps_taken = 0
        self.last_gradients: list[np.ndarray] = []

    def center(self, i: int) -> Config:
        """Track ``i``'s current configuration (the mean of its perturbations)."""
        return self._config(self.tracks[i], self.tracks[i].z)

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        tracks = self._tracks_in(space)
        out: list[Config] = []
        keys: set[tuple] = set()
        i, tries = 0, 0
        while len(out) < n and tries < 50 * n + 100:
            tries += 1
            track = tracks[i % len(tracks)]
            i += 1
            e = self._rng.standard_normal(len(self.names))
            pair = [self._config(track, track.z + s * self.sigma * e) for s in (1, -1)]
            pkeys = [self.space.key(c) for c in pair]
            if any(self.is_taken(k) or k in keys for k in pkeys) or pkeys[0] == pkeys[1]:
                continue
            if space is not None and not all(space.contains(c) for c in pair):
                continue
            self._pair_ids += 1
            pid = self._pair_ids
            for sign, c, k in zip((1, -1), pair, pkeys):
                if len(out) < n:
                    self._asked[k] = (track, track.round, e, sign * pid)
                    keys.add(k)
                    out.append(c)
        return out

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None],
             fidelities: Sequence[float] | None = None) -> None:
        for c, loss in self._record(configs, losses, fidelities):
            entry = self._asked.pop(self.space.key(c), None)
            if entry is None:
                continue
            track, rnd, e, signed = entry
            if rnd != track.round:
                continue  # asked before the track's last step
            value = self._penalised(loss)
            if value is None:
                continue
            halves = self._halves.setdefault(abs(signed), {})
            halves[1 if signed > 0 else -1] = value
            if len(halves) == 2:
                del self._halves[abs(signed)]
                done = self._done.setdefault(id(track), [])
                done.append((e, halves[1], halves[-1]))
                if len(done) >= self.pairs:
                    self._step(track, done)
                    self._done[id(track)] = []

    def _step(self, track: Track, done: list[tuple[np.ndarray, float, float]]) -> None:
        g = np.mean([(lp - lm) / (2 * self.sigma) * e for e, lp, lm in done], axis=0)
        if not np.all(np.isfinite(g)):
            return
        track.z = np.clip(track.z + track.adam.step(g), 0.0, 1.0)
        track.round += 1
        track.loss = math.inf
        self.steps_taken += 1
        self.last_gradients.append(g)
