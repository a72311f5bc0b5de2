"""What the refining searchers share: tracks in unit coordinates, Adam, chaining.

A *refining* searcher (:class:`~jaxtune.search.es.EvolutionSearcher`,
:class:`~jaxtune.search.gradient.GradientSearcher`) does not explore the space: it
starts from given configurations (its *tracks*: the best trials of an earlier
search, or of an earlier study in the same store, :func:`best_configs`) and moves
each one downhill on its continuous hyperparameters. It works in the unit
coordinates of those dimensions (:meth:`Real.to_unit <jaxtune.space.Real.to_unit>`:
log-scaled for log dimensions, so an affine map of the unconstrained coordinates of
:mod:`jaxtune.hypergrad`), takes Adam steps there and clips to the bounds; every
other hyperparameter (integers, choices, static ones) keeps the track's value.

:class:`ChainSearcher` runs one searcher, then another from the best
configurations the first found: ``make_searcher("bayes+es", space)`` is Bayesian
search for ``switch_after`` trials, then evolution strategies from its ``top``
best.

Example:
    >>> from jaxtune.search import make_searcher
    >>> from jaxtune.space import Real, Space
    >>> space = Space(x=Real(-2.0, 2.0), y=Real(-2.0, 2.0))
    >>> chain = make_searcher("bayes+es", space, seed=0, switch_after=6, top=1)
    >>> for _ in range(6):
    ...     batch = chain.ask(4)
    ...     chain.tell(batch, [c["x"] ** 2 + c["y"] ** 2 for c in batch])
    >>> chain.phase
    'es'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.search.basic import Searcher
from jaxtune.space import Space

__all__ = ["Adam", "ChainSearcher", "RefiningSearcher", "best_configs"]

Config = dict[str, Any]


def best_configs(store: str, name: str | None = None, top: int = 4) -> list[Config]:
    """The configurations of the ``top`` best complete trials of a stored study (the
    study's own ranking), to start a refining searcher from.

    Raises:
        ValueError: the study has no complete trial.
    """
    from jaxtune.results import StudyResult  # the store is read only here

    ranked = StudyResult.load(store, name).ranked()
    if not ranked:
        raise ValueError(f"study {name!r} in {store} has no complete trial to start from")
    return [dict(t.config) for t in ranked[:int(top)]]


def _continuous(dim: Any) -> bool:
    """Whether a dimension is a real interval (the dimension says; no type ladder)."""
    return not (dim.integral or dim.categorical)


@dataclasses.dataclass
class Adam:
    """Adam (Kingma & Ba) on a vector, with its state: ``step(g)`` returns the move.

    Example:
        >>> opt = Adam(np.zeros(2), lr=0.1)
        >>> opt.step(np.array([1.0, -4.0])).round(6).tolist()
        [-0.1, 0.1]
    """

    m: np.ndarray
    lr: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    v: np.ndarray | None = None
    t: int = 0

    def step(self, g: np.ndarray) -> np.ndarray:
        if self.v is None:
            self.v = np.zeros_like(self.m)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return -self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


@dataclasses.dataclass
class Track:
    """One configuration being refined: its discrete values, its unit coordinates,
    the optimizer moving them and the loss told at ``z`` (``inf``: not known)."""

    base: Config
    z: np.ndarray
    adam: Adam
    loss: float = math.inf
    round: int = 0


class RefiningSearcher(Searcher):
    """Base class of the refining searchers (see the module docstring).

    Args:
        space: the search space.
        seed: all randomness derives from it.
        diverged: ``"penalty"`` or ``"exclude"`` (see :mod:`jaxtune.search`).
        starts: the configurations to refine (default: ``n_starts`` quasi-random
            ones, drawn from the seed).
        names: the continuous hyperparameters to move (default: every traced
            ``Real`` of the space).
        lr: Adam's step size, in unit coordinates (the whole range is 1).
        n_starts: how many tracks without ``starts``.
    """

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty",
                 starts: Sequence[Mapping[str, Any]] | None = None,
                 names: Sequence[str] | None = None, lr: float = 0.05, n_starts: int = 2):
        super().__init__(space, seed=seed, diverged=diverged)
        if names is None:
            names = [n for n in space.names if _continuous(space[n]) and not space[n].static]
        names = tuple(names)
        for n in names:
            if n not in space or not _continuous(space[n]) or space[n].static:
                raise ValueError(f"{type(self).__name__}: {n!r} is not a traced Real "
                                 f"hyperparameter of the space; only those can be refined")
        if not names:
            raise ValueError(f"{type(self).__name__}: the space has no traced Real "
                             "hyperparameter to refine")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.names, self.lr = names, float(lr)
        if starts is None:
            starts = [space.from_unit(self._rng.random(len(space))) for _ in range(int(n_starts))]
        starts = [space.validate(c) for c in starts]
        if not starts:
            raise ValueError(f"{type(self).__name__}: starts is empty")
        self.tracks = [self._new_track(c) for c in starts]

    # -- coordinates ------------------------------------------------------------------
    def _new_track(self, config: Mapping[str, Any]) -> Track:
        z = np.array([self.space[n].to_unit(config[n]) for n in self.names])
        return Track(base=dict(config), z=np.clip(z, 0.0, 1.0),
                     adam=Adam(np.zeros(len(self.names)), lr=self.lr))

    def _config(self, track: Track, z: np.ndarray) -> Config:
        out = dict(track.base)
        for n, zi in zip(self.names, np.clip(z, 0.0, 1.0)):
            out[n] = self.space[n].from_unit(float(zi))
        return self.space.validate(out)

    def _tracks_in(self, space: Space | None) -> list[Track]:
        """The tracks whose discrete values lie in ``space``; a new one (a random
        point of ``space``) when none does."""
        if space is None:
            return self.tracks
        inside = [t for t in self.tracks if space.contains(self._config(t, t.z))]
        if not inside:
            track = self._new_track(space.from_unit(self._rng.random(len(space))))
            self.tracks.append(track)
            inside = [track]
        return inside

    def _record(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None],
                fidelities: Sequence[float] | None) -> list[tuple[Config, Any]]:
        """Tells the base searcher; the ``(config, loss)`` pairs it recorded now."""
        configs = list(configs)
        super().tell(configs, losses, fidelities)
        start = len(self._configs) - len(configs)
        return list(zip(self._configs[start:], self._losses[start:]))

    def _penalised(self, loss: float) -> float | None:
        """A told loss for an update: NaN becomes the worst finite loss told (or
        ``None`` when no finite loss exists, or the policy is ``"exclude"``)."""
        if math.isfinite(loss):
            return loss
        finite = [v for v in self._losses if math.isfinite(v)]
        return max(finite) if finite and self.diverged == "penalty" else None


class ChainSearcher(Searcher):
    """One searcher, then a refining searcher started from its best configurations.

    Args:
        space: the search space.
        seed: all randomness derives from it.
        diverged: ``"penalty"`` or ``"exclude"``.
        first: the first searcher's name (see :func:`~jaxtune.search.make_searcher`).
        then: the refining searcher's name (``"es"`` or ``"gradient"``).
        switch_after: how many configurations the first searcher proposes.
        top: how many of the best told configurations the refiner starts from.
        first_options, then_options: keyword arguments of the two searchers.
        experiment: handed to a refiner that needs it (``"gradient"``).
    """

    name = "chain"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty",
                 first: str = "bayes", then: str = "es", switch_after: int = 32, top: int = 2,
                 first_options: Mapping[str, Any] | None = None,
                 then_options: Mapping[str, Any] | None = None, experiment: Any = None):
        from jaxtune.search import make_searcher

        super().__init__(space, seed=seed, diverged=diverged)
        if not (isinstance(switch_after, int) and switch_after >= 1):
            raise ValueError(f"switch_after must be an int >= 1, got {switch_after!r}")
        if not (isinstance(top, int) and top >= 1):
            raise ValueError(f"top must be an int >= 1, got {top!r}")
        self.switch_after, self.top, self.then = switch_after, top, then
        self._then_options = dict(then_options or {})
        if experiment is not None:
            self._then_options.setdefault("experiment", experiment)
        self._make: Callable[..., Searcher] = make_searcher
        self.first = make_searcher(first, space, seed=seed, diverged=diverged,
                                   **dict(first_options or {}))
        self.refiner: Searcher | None = None
        self._asked_first = 0

    @property
    def phase(self) -> str:
        """``"first"`` or the refiner's name once it has started."""
        return "first" if self.refiner is None else self.then

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        # a resumed study re-tells its history: told trials count as the first's
        self._asked_first = max(self._asked_first, self.n_told)
        if self.refiner is None and (self._asked_first >= self.switch_after
                                     and self.n_finite > 0):
            configs, losses = self.observations()
            order = np.argsort(losses, kind="stable")[:self.top]
            self.refiner = self._make(self.then, self.space, seed=self.seed,
                                      diverged=self.diverged,
                                      starts=[configs[i] for i in order], **self._then_options)
            self.refiner.tell(list(self._configs), list(self._losses))
            self.refiner.add_pending(self.pending)
            for track, i in zip(self.refiner.tracks, order):
                track.loss = float(losses[i])
        if self.refiner is None:
            want = n if self._asked_first >= self.switch_after else min(
                n, self.switch_after - self._asked_first)
            out = self.first.ask(want, within=space)
            self._asked_first += len(out)
            return out
        return self.refiner.ask(n, within=space)

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None],
             fidelities: Sequence[float] | None = None) -> None:
        super().tell(configs, losses, fidelities)
        self.first.tell(configs, losses, fidelities)
        if self.refiner is not None:
            self.refiner.tell(configs, losses, fidelities)
