"""Trial schedulers: stop, continue or re-seed running trials at chunk boundaries.

(Not to be confused with :mod:`jaxtune.schedules`, the learning-rate schedules.)

A study calls its scheduler after every chunk of every running population with a
:class:`TrialView` of each trial in that population: its steps and its history of
``(steps, value)`` evaluations, where ``value`` is the study objective oriented so
that **lower is better** (a maximized accuracy is negated). The scheduler answers
with :class:`Decisions`: trials to stop (their slots are refilled at once with new
configurations from the searcher) and, for population-based training, trials to
re-seed from better ones.

A scheduler's decision about a trial that has already spent its step budget (its
last chunk reached it) is ignored: such a trial ends ``complete`` (or
``diverged``), never ``pruned``. Every pruned trial is stored with the steps it
reached and, for ASHA and Hyperband, its rung (:meth:`TrialScheduler.rung`).

Every scheduler is a pure function of what it has observed plus its own
settings: :meth:`TrialScheduler.observe` folds a trial's history into the
scheduler's records (idempotently: observing the same history twice changes
nothing), and :meth:`TrialScheduler.decide` reads the records. A resumed study
rebuilds the records by observing the stored histories, so it takes the same
decisions on the same evidence.

Schedulers (also via :func:`make_trial_scheduler`):

``fifo``
    Every trial runs its whole budget.
``median``
    Median stopping rule (Golovin et al. 2017; Optuna's ``MedianPruner``): after
    ``grace`` steps, a trial whose best value so far is worse than the median of
    the other trials' values at the same step is stopped, once at least
    ``min_trials`` others have reported there.
``asha``
    Asynchronous successive halving (Li et al. 2018, the stopping variant): rungs
    at ``min_steps * eta**k`` steps; a trial reaching a rung continues only if its
    value is among the best ``floor(n / eta)`` of the ``n`` values recorded at that
    rung so far (itself included; ties go to the lower trial id), as in the paper's
    promotion rule, and at least the best one (while ``n < eta``, a trial continues
    only if it is the best so far: Optuna's ``SuccessiveHalvingPruner`` does the same).
``hyperband``
    Asynchronous Hyperband: ASHA brackets with minimum resources ``min_steps *
    eta**b``, ``b = 0 .. b_max``; each trial is assigned to a bracket by a hash
    of (seed, trial id), with Hyperband's weights (more trials to the aggressive
    brackets). Each bracket keeps its own rung records.
``pbt``
    Population-based training (Jaderberg et al. 2017): every ``interval`` steps,
    each trial in the bottom ``quantile`` of its population copies the state of
    one drawn from the top ``quantile`` (exploit) and perturbs its traced
    hyperparameters (explore: multiply by a factor drawn from ``factors``,
    clipped to the bucket's bounds, or resample with probability
    ``resample_probability``). Trials are not stopped; freed slots are not
    refilled.

Example:
    >>> asha = make_trial_scheduler("asha", min_steps=10, eta=2, max_steps=80)
    >>> asha.rungs
    (10, 20, 40)
    >>> state = asha.init()
    >>> views = [TrialView(t, {}, 10, ((10, v),)) for t, v in enumerate([0.5, 0.3, 0.4])]
    >>> for v in views:
    ...     state = asha.observe(state, v)
    >>> sorted(asha.decide(state, views).stop)   # the best floor(3/2)=1 of 3 continues
    [0, 2]
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.space import Space

__all__ = [
    "ASHA", "FIFO", "PBT", "SCHEDULERS", "Decisions", "Hyperband", "MedianStopping",
    "TrialScheduler", "TrialView", "make_trial_scheduler", "study_scheduler",
]

Records = dict[Any, dict[int, float]]


@dataclasses.dataclass(frozen=True)
class TrialView:
    """One running trial at a chunk boundary, as a scheduler sees it.

    Attributes:
        trial: the trial id.
        config: its current configuration.
        steps: optimizer steps it has done.
        history: ``(steps, value)`` of each evaluation so far (lower is better;
            NaN where it diverged).
    """

    trial: int
    config: Mapping[str, Any]
    steps: int
    history: tuple[tuple[int, float], ...]


@dataclasses.dataclass
class Decisions:
    """What a scheduler decided: trials to stop, and trials to re-seed
    (``exploit[dst] = (src, new config)``: ``dst`` takes ``src``'s state)."""

    stop: set[int] = dataclasses.field(default_factory=set)
    exploit: dict[int, tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=dict)


class TrialScheduler:
    """The protocol (and the FIFO behaviour: nothing stops).

    Attributes:
        name: registry name.
        refills: whether a study refills the slot of a trial that ended with a
            new configuration (every scheduler but PBT).
    """

    name = "fifo"
    refills = True

    def init(self) -> Records:
        """Empty records."""
        return {}

    def observe(self, records: Records, view: TrialView) -> Records:
        """Folds ``view``'s history into the records (idempotent)."""
        return records

    def decide(self, records: Records, views: Sequence[TrialView], space: Space | None = None
               ) -> Decisions:
        """Decisions for the trials of one population after a chunk."""
        return Decisions()

    def rung(self, trial: int, steps: int) -> int | None:
        """The rung a trial stopped at ``steps`` reached (``None``: no rungs)."""
        return None

    def rebuild(self, views: Sequence[TrialView]) -> Records:
        """The records after observing every view (how a resumed study restores them)."""
        records = self.init()
        for v in views:
            records = self.observe(records, v)
        return records

    def spec(self) -> dict[str, Any]:
        """Settings (stored with a study)."""
        return {"name": self.name, **{k: v for k, v in vars(self).items()
                                      if not k.startswith("_")}}


FIFO = TrialScheduler


def _value_at(history: Sequence[tuple[int, float]], steps: int) -> float | None:
    """The value of the first evaluation at or after ``steps`` (``None``: not reached)."""
    return next((v for s, v in history if s >= steps), None)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


class MedianStopping(TrialScheduler):
    """The median stopping rule (see the module docstring).

    Args:
        grace: steps before any trial may be stopped.
        min_trials: other trials that must have reported at a step first.
    """

    name = "median"

    def __init__(self, grace: int = 0, min_trials: int = 4):
        if int(grace) < 0 or int(min_trials) < 1:
            raise ValueError(f"median: grace must be >= 0 and min_trials >= 1, got {grace}, "
                             f"{min_trials}")
        self.grace, self.min_trials = int(grace), int(min_trials)

    def observe(self, records: Records, view: TrialView) -> Records:
        for steps, value in view.history:
            records.setdefault(steps, {})[view.trial] = value
        return records

    def decide(self, records: Records, views: Sequence[TrialView], space: Space | None = None
               ) -> Decisions:
        out = Decisions()
        for v in views:
            if not v.history or v.steps < self.grace:
                continue
            steps, _ = v.history[-1]
            others = [x for t, x in records.get(steps, {}).items() if t != v.trial and _finite(x)]
            best = min((x for _, x in v.history if _finite(x)), default=math.inf)
            if len(others) >= self.min_trials and best > float(np.median(others)):
                out.stop.add(v.trial)
        return out


class ASHA(TrialScheduler):
    """Asynchronous successive halving (see the module docstring).

    Args:
        min_steps: the first rung, in steps (a multiple of ``eval_every`` is best:
            values are read at the first evaluation at or after a rung).
        eta: the reduction factor.
        max_steps: the trials' step budget; no rung at or beyond it.
    """

    name = "asha"

    def __init__(self, min_steps: int, eta: float = 3.0, max_steps: int | None = None):
        if int(min_steps) < 1 or not float(eta) > 1:
            raise ValueError(f"asha: min_steps must be >= 1 and eta > 1, got {min_steps}, {eta}")
        self.min_steps, self.eta = int(min_steps), float(eta)
        self.max_steps = None if max_steps is None else int(max_steps)

    @property
    def rungs(self) -> tuple[int, ...]:
        limit = self.max_steps if self.max_steps is not None else self.min_steps * 10**6
        out, r = [], float(self.min_steps)
        while round(r) < limit:
            out.append(int(round(r)))
            r *= self.eta
        return tuple(out)

    def observe(self, records: Records, view: TrialView) -> Records:
        for k, rung in enumerate(self.rungs):
            value = _value_at(view.history, rung)
            if value is None:
                break
            records.setdefault(k, {})[view.trial] = value
        return records

    def keeps(self, records: Records, rung: int, trial: int) -> bool:
        """Whether ``trial`` is among the best ``max(floor(n / eta), 1)`` recorded at
        ``rung``."""
        rows = records.get(rung, {})
        mine = rows[trial]
        if not _finite(mine):
            return False
        ahead = sum(1 for t, x in rows.items()
                    if _finite(x) and (x < mine or (x == mine and t < trial)))
        return ahead < max(math.floor(len(rows) / self.eta), 1)

    def rung(self, trial: int, steps: int) -> int | None:
        """The highest rung at or below ``steps`` (``None``: below the first)."""
        k = sum(1 for r in self.rungs if r <= steps) - 1
        return k if k >= 0 else None

    def decide(self, records: Records, views: Sequence[TrialView], space: Space | None = None
               ) -> Decisions:
        out = Decisions()
        for v in views:
            crossed = self._crossed(v)
            if crossed is not None and not self.keeps(records, crossed, v.trial):
                out.stop.add(v.trial)
        return out

    def _crossed(self, view: TrialView) -> int | None:
        """The rung ``view``'s latest evaluation reached first (``None``: no new rung)."""
        if not view.history:
            return None
        last = view.history[-1][0]
        before = view.history[-2][0] if len(view.history) > 1 else -1
        hits = [k for k, r in enumerate(self.rungs) if before < r <= last]
        return hits[-1] if hits else None


class Hyperband(TrialScheduler):
    """Asynchronous Hyperband: ASHA brackets (see the module docstring).

    Args:
        min_steps, eta, max_steps: as :class:`ASHA` (for the most aggressive bracket).
        seed: seeds the bracket assignment.
    """

    name = "hyperband"

    def __init__(self, min_steps: int, eta: float = 3.0, max_steps: int | None = None,
                 seed: int = 0):
        base = ASHA(min_steps, eta, max_steps)
        self.min_steps, self.eta, self.max_steps, self.seed = (
            base.min_steps, base.eta, base.max_steps, int(seed))
        self._brackets = [ASHA(round(min_steps * eta**b), eta, max_steps)
                          for b in range(len(base.rungs) + 1)]
        s_max = len(self._brackets) - 1
        # Hyperband's trials per bracket: ceil((s_max + 1) / (s + 1) * eta**s), s halvings
        weights = np.asarray([math.ceil((s_max + 1) / (s + 1) * eta**s)
                              for s in range(s_max, -1, -1)], float)
        self._cumulative = np.cumsum(weights / weights.sum())

    def bracket(self, trial: int) -> int:
        """The bracket of ``trial`` (0: the most aggressive)."""
        digest = hashlib.sha256(f"{self.seed}:{int(trial)}".encode()).digest()
        u = int.from_bytes(digest[:8], "little") / 2**64
        return int(np.searchsorted(self._cumulative, u, side="right"))

    def observe(self, records: Records, view: TrialView) -> Records:
        b = self.bracket(view.trial)
        records[b] = self._brackets[b].observe(records.get(b, {}), view)
        return records

    def rung(self, trial: int, steps: int) -> int | None:
        """The rung of ``trial``'s bracket at or below ``steps``."""
        return self._brackets[self.bracket(trial)].rung(trial, steps)

    def decide(self, records: Records, views: Sequence[TrialView], space: Space | None = None
               ) -> Decisions:
        out = Decisions()
        for v in views:
            b = self.bracket(v.trial)
            out.stop |= self._brackets[b].decide(records.get(b, {}), [v]).stop
        return out


class PBT(TrialScheduler):
    """Population-based training (see the module docstring).

    Args:
        interval: steps between exploit/explore rounds (a multiple of ``eval_every``).
        max_steps: the trials' step budget: no round at or after it (nothing would
            train on).
        quantile: the fraction at the bottom that copies, and at the top that is copied.
        factors: perturbation factors for numeric hyperparameters.
        resample_probability: chance of drawing a hyperparameter afresh instead.
        mutable: hyperparameters to perturb (default: every traced hyperparameter of
            the space but ``steps`` and ``epochs``).
        seed: seeds the draws.
    """

    name = "pbt"
    refills = False

    def __init__(self, interval: int, max_steps: int | None = None, quantile: float = 0.25,
                 factors: Sequence[float] = (0.8, 1.2), resample_probability: float = 0.25,
                 mutable: Sequence[str] | None = None, seed: int = 0):
        if int(interval) < 1 or not 0 < float(quantile) <= 0.5:
            raise ValueError(f"pbt: interval must be >= 1 and 0 < quantile <= 0.5, got "
                             f"{interval}, {quantile}")
        self.interval, self.quantile = int(interval), float(quantile)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.factors = tuple(float(f) for f in factors)
        self.resample_probability = float(resample_probability)
        self.mutable = None if mutable is None else tuple(mutable)
        self.seed = int(seed)

    def decide(self, records: Records, views: Sequence[TrialView], space: Space | None = None
               ) -> Decisions:
        out = Decisions()
        ready = [v for v in views if v.history and v.steps > 0 and v.steps % self.interval == 0
                 and (self.max_steps is None or v.steps < self.max_steps)
                 and _finite(v.history[-1][1])]
        if len(ready) < 2 or space is None:
            return out
        ranked = sorted(ready, key=lambda v: (v.history[-1][1], v.trial))
        k = max(1, math.floor(self.quantile * len(ranked)))
        top, bottom = ranked[:k], ranked[-k:]
        rng = np.random.default_rng([self.seed, ready[0].steps, *sorted(v.trial for v in ready)])
        for v in bottom:
            src = top[int(rng.integers(len(top)))]
            out.exploit[v.trial] = (src.trial, self.explore(src.config, space, rng))
        return out

    def explore(self, config: Mapping[str, Any], space: Space, rng: np.random.Generator
                ) -> dict[str, Any]:
        """A perturbed copy of ``config`` inside ``space`` (the bucket's region).

        Only the active values are perturbed; where a perturbed parent changes which
        hyperparameters are active, the ones it deactivates are dropped and the ones
        it activates are drawn uniformly (:meth:`Space.complete`).
        """
        names = self.mutable or [n for n in space.traced_names if n not in ("steps", "epochs")]
        out = dict(config)
        for name in names:
            if name not in config:  # inactive in this configuration
                continue
            dim = space[name]
            if rng.random() < self.resample_probability or dim.categorical:
                if dim.categorical and rng.random() >= self.resample_probability:
                    continue
                out[name] = dim.from_unit(rng.random())
            else:
                value = float(config[name]) * self.factors[int(rng.integers(len(self.factors)))]
                value = min(max(value, dim.low), dim.high)
                out[name] = int(round(value)) if dim.integral else value
        return space.validate(space.complete(out, rng) if space.conditional else out)


SCHEDULERS: dict[str, Callable[..., TrialScheduler]] = {
    "fifo": FIFO, "median": MedianStopping, "asha": ASHA, "hyperband": Hyperband, "pbt": PBT,
}


def make_trial_scheduler(name: str, **kwargs: Any) -> TrialScheduler:
    """A trial scheduler by name (``fifo``, ``median``, ``asha``, ``hyperband``, ``pbt``).

    Raises:
        ValueError: an unknown name (listing the known ones) or invalid settings.
    """
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown trial scheduler {name!r}; expected one of {list(SCHEDULERS)}")
    try:
        return SCHEDULERS[key](**kwargs)
    except TypeError as e:
        raise ValueError(f"trial scheduler {key!r}: {e}") from None


def study_scheduler(scheduler: str | TrialScheduler | None,
                    options: Mapping[str, Any] | None, *, steps: int, eval_every: int,
                    seed: int) -> TrialScheduler:
    """A study's trial scheduler: ``scheduler`` itself, or the one it names (default
    ``fifo``) with ``options``, whose ``min_steps`` (ASHA, Hyperband) default to
    ``eval_every``, ``max_steps`` (ASHA, Hyperband, PBT) to ``steps``, ``interval``
    (PBT) to ``eval_every`` and ``seed`` (Hyperband, PBT) to ``seed``.

    Example:
        >>> study_scheduler("asha", None, steps=100, eval_every=10, seed=0).name
        'asha'
    """
    if isinstance(scheduler, TrialScheduler):
        return scheduler
    options = dict(options or {})
    name = "fifo" if scheduler is None else str(scheduler)
    if name in ("asha", "hyperband"):
        options.setdefault("min_steps", eval_every)
    if name in ("asha", "hyperband", "pbt"):
        options.setdefault("max_steps", steps)
    if name == "pbt":
        options.setdefault("interval", eval_every)
    if name in ("hyperband", "pbt"):
        options.setdefault("seed", seed)
    return make_trial_scheduler(name, **options)
