"""Hypergradient descent: Adam steps on the derivative of the validation loss.

:class:`GradientSearcher` (``make_searcher("gradient", space, experiment=...)``)
refines its tracks (see :mod:`jaxtune.search.refine`) with the hypergradient of
the final validation loss (:func:`jaxtune.hypergrad.hypergradient`, all tracks of
a bucket in one population program). When asked, a track whose last proposals
were told gets its hypergradient at its current point and one Adam step; the
proposals are that step scaled by ``1, 0.5, 2, 0.25, 4, ...`` (a line search that
fills the slots the study offers). When all of a track's proposals are told, the
track moves to the best of them if it beats the track's own loss. A track whose
hypergradient is not finite (a run that diverged, adam's ``sqrt(nu)`` at exactly
zero) proposes Gaussian perturbations instead.

The hypergradient is that of the final validation *loss*, whatever the study's
objective (an accuracy has no derivative); the line search's proposals are
judged by the losses the study tells.

The hypergradient is computed here, outside the study's populations: its cost
(measured in ``README.md``: a few training runs' worth per track and step) is
not counted in the study's member-step budget; :attr:`GradientSearcher.runs`
counts the member runs it differentiated.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(data=jt.data.teacher_student(n_train=64, n_test=16, dim=3),
    ...                     model=jt.models.MLP(width=8, num_outputs=1),
    ...                     space=jt.Space(lr=jt.Real(1e-3, 1.0, log=True)),
    ...                     steps=10, eval_every=10,
    ...                     defaults={"batch_size": 16, "optimizer": "momentum"})
    >>> s = GradientSearcher(exp.space, experiment=exp, starts=[{"lr": 0.01}], mode="forward")
    >>> batch = s.ask(3)
    >>> len(batch), s.runs, batch[0]["lr"] != 0.01
    (3, 1, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.search.refine import Config, RefiningSearcher, Track
from jaxtune.space import Space

__all__ = ["GradientSearcher"]

#: How a track's step is scaled for its successive proposals in one round.
STEP_SCALES = (1.0, 0.5, 2.0, 0.25, 4.0, 0.125, 8.0)


class GradientSearcher(RefiningSearcher):
    """Adam on the hypergradient of the validation loss.

    Args:
        space, seed, diverged, starts, lr, n_starts: see
            :class:`~jaxtune.search.refine.RefiningSearcher`.
        experiment: the :class:`~jaxtune.Experiment` whose runs are differentiated.
        names: the hyperparameters to move (default: every differentiable one of
            the space, :func:`jaxtune.hypergrad.differentiable_names`).
        mode: ``"forward"`` or ``"reverse"`` (see :mod:`jaxtune.hypergrad`).
        truncate: differentiate only the last ``truncate`` steps.
    """

    name = "gradient"

    def __init__(self, space: Space, *, experiment: Any = None, seed: int = 0,
                 diverged: str = "penalty", starts: Sequence[Mapping[str, Any]] | None = None,
                 names: Sequence[str] | None = None, lr: float = 0.05, n_starts: int = 2,
                 mode: str = "reverse", truncate: int | None = None):
        from jaxtune import hypergrad

        if experiment is not None:  # without one, built but refused at the first ask
            if experiment.space != space:
                raise ValueError("the gradient searcher's space must be the experiment's space")
            names = hypergrad.differentiable_names(experiment, names)
            hypergrad._check_options(experiment, mode, truncate)
        super().__init__(space, seed=seed, diverged=diverged, starts=starts, names=names,
                         lr=lr, n_starts=n_starts)
        self.experiment, self.mode, self.truncate = experiment, mode, truncate
        self._hg = hypergrad
        # per track: the step of its round, the scales proposed, the losses told
        self._move: dict[int, np.ndarray | None] = {}
        self._proposed: dict[int, list[tuple[tuple, np.ndarray]]] = {}
        self._told: dict[int, dict[tuple, float]] = {}
        self._owner: dict[tuple, Track] = {}
        self.runs = 0
        self.last_gradients: list[np.ndarray] = []

    def _unit_gradients(self, tracks: list[Track]) -> None:
        """Hypergradients at the tracks' points, in unit coordinates, then one Adam
        step each (per bucket, one population program)."""
        configs = [self._config(t, t.z) for t in tracks]
        statics: dict[Any, list[int]] = {}
        for i, c in enumerate(configs):
            key = tuple(sorted(self.experiment.static_config(c).items()))
            statics.setdefault(key, []).append(i)
        # d u / d z: the width of each dimension in unconstrained coordinates
        width = np.array([(math.log(self.space[n].high) - math.log(self.space[n].low))
                          if self.space[n].log else (self.space[n].high - self.space[n].low)
                          for n in self.names])
        for rows in statics.values():
            got = self._hg.hypergradient(
                self.experiment, [configs[i] for i in rows], names=self.names, mode=self.mode,
                truncate=self.truncate, seed=self.seed)
            self.runs += len(rows)
            for i, g in zip(rows, got.grad):
                track = tracks[i]
                g = np.asarray(g, np.float64) * width
                self.last_gradients.append(g)
                self._move[id(track)] = track.adam.step(g) if np.all(np.isfinite(g)) else None

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        if self.experiment is None:
            raise ValueError("the gradient searcher differentiates training runs: pass "
                             "experiment= (a Study passes its own)")
        tracks = self._tracks_in(space)
        fresh = [t for t in tracks if id(t) not in self._proposed]
        if fresh:
            self._unit_gradients(fresh)
            for t in fresh:
                self._proposed[id(t)] = []
                self._told[id(t)] = {}
        out: list[Config] = []
        keys: set[tuple] = set()
        i, tries = 0, 0
        while len(out) < n and tries < 20 * n + 50:
            tries += 1
            track = tracks[i % len(tracks)]
            i += 1
            done = len(self._proposed[id(track)])
            move = self._move.get(id(track))
            if move is not None and done < len(STEP_SCALES):
                z = track.z + STEP_SCALES[done] * move
            else:  # no finite hypergradient, or the line search is spent: perturb
                z = track.z + 0.05 * self._rng.standard_normal(len(self.names))
            c = self._config(track, z)
            k = self.space.key(c)
            if self.is_taken(k) or k in keys or (space is not None and not space.contains(c)):
                if move is not None and done < len(STEP_SCALES):
                    self._proposed[id(track)].append((k, z))  # skip this scale
                continue
            keys.add(k)
            self._owner[k] = track
            self._proposed[id(track)].append((k, np.clip(z, 0.0, 1.0)))
            out.append(c)
        return out

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None],
             fidelities: Sequence[float] | None = None) -> None:
        for c, loss in self._record(configs, losses, fidelities):
            k = self.space.key(c)
            track = self._owner.pop(k, None)
            if track is None:
                continue
            value = self._penalised(loss)
            self._told[id(track)][k] = math.inf if value is None else value
            asked = {key for key, _ in self._proposed[id(track)]
                     if key in self._owner or key in self._told[id(track)]}
            if asked <= set(self._told[id(track)]):
                self._finish(track)

    def _finish(self, track: Track) -> None:
        """All of a track's proposals are told: move to the best if it is better."""
        told = self._told[id(track)]
        points = dict(self._proposed[id(track)])
        best = min(told, key=told.get)
        if told[best] < track.loss:
            track.z, track.loss = points[best], told[best]
        track.round += 1
        del self._proposed[id(track)], self._told[id(track)]
        self._move.pop(id(track), None)
