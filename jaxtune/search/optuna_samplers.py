"""Optuna's samplers as jaxtune searchers, through Optuna's ask/tell interface.

``searcher="optuna:tpe"`` (also ``"optuna:cmaes"``, ``"optuna:nsga2"``,
``"optuna:gp"``, or ``searcher="optuna"`` with ``searcher_options={"sampler":
any_optuna_sampler}``) lets a sampler a user trusts fill a vmapped population:
each configuration is one ``study.ask()`` of an in-memory Optuna study whose
distributions are the dimensions' own ``optuna_distribution()``; its loss is
``study.tell``-ed when the trial ends. The jaxtune conventions hold
(:mod:`jaxtune.search`):

* **Batches.** ``ask(n)`` is ``n`` successive ``study.ask()``: the earlier ones
  stay ``RUNNING`` in Optuna, which its samplers know how to handle (``tpe``:
  ``constant_liar=True``).
* **No repeats.** A proposal already told or pending (discrete spaces) is told
  ``FAIL`` to Optuna (which ignores failed trials) and asked again; after
  ``10 n + 20`` such attempts the rest of the batch is drawn uniformly at random
  (and told to Optuna as trials added with their values when they end).
* **Sub-space asks.** Dimensions the subspace pins to one value (a bucket's
  static values) are fixed through ``optuna.samplers.PartialFixedSampler``;
  proposals outside a narrowed range are rejected like repeats. Optuna always
  sees the full space's distributions, so its model spans every bucket.
* **Diverged trials.** ``diverged="penalty"``: told the worst finite loss seen
  so far (at the time of telling: Optuna's values cannot be revised later; a
  failure before any finite loss is told ``FAIL``); ``"exclude"``: ``FAIL``.
* **Pruned trials** (a fidelity below 1, which :class:`~jaxtune.study.Study`
  passes to this searcher whatever its ``pruned=``): told as Optuna expects of a
  trial its pruner stopped, its loss reported as the intermediate value at the
  fraction of the budget it trained, state ``PRUNED`` (TPE ranks pruned trials
  by how far they got, then by that value).
* **Conditional spaces** (``when=``): define-by-run, each hyperparameter
  suggested only when its parents make it active, as Optuna expects.
* **Resume.** Configurations never asked (a stored history re-told) are added
  with ``study.add_trial``.

Samplers (needs the ``[optuna]`` extra): ``tpe`` (``TPESampler(multivariate=True,
constant_liar=True)``), ``cmaes`` (``CmaEsSampler``, needs ``cmaes``), ``nsga2``
(``NSGAIISampler``), ``gp`` (``GPSampler``, needs ``torch``, not in the extra:
install it yourself), ``random`` (``RandomSampler``), each seeded with ``seed``.

Example:
    >>> from jaxtune.space import Choice, Real, Space
    >>> space = Space(lr=Real(1e-4, 1e-1, log=True), opt=Choice(["adam", "sgd"], static=True))
    >>> s = OptunaSearcher(space, sampler="tpe", seed=0)
    >>> batch = s.ask(4)
    >>> s.tell(batch, [0.5, None, 0.2, 0.3])            # None: diverged
    >>> [c["opt"] for c in s.ask(2, within=space.subspace(opt="sgd"))]
    ['sgd', 'sgd']
    >>> [t.state.name for t in s.study.trials][:4]
    ['COMPLETE', 'COMPLETE', 'COMPLETE', 'COMPLETE']
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jaxtune._extras import require
from jaxtune.search.basic import Config, Searcher, _as_loss
from jaxtune.space import Space

__all__ = ["SAMPLERS", "OptunaSearcher", "make_sampler"]

#: Sampler names of ``searcher="optuna:<name>"``.
SAMPLERS = ("tpe", "cmaes", "nsga2", "gp", "random")

#: Steps of the fraction of a budget a pruned trial trained (its report's step).
_STEPS = 1_000_000


def make_sampler(name: str, seed: int) -> Any:
    """An Optuna sampler by name (see the module docstring), seeded.

    Raises:
        ValueError: an unknown name.
        ImportError: optuna, or the sampler's own dependency, is missing (one line).
    """
    optuna = require("optuna", "optuna", f"searcher optuna:{name}")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "cmaes":
        require("cmaes", "optuna", "searcher optuna:cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ImportError("searcher optuna:gp needs torch (Optuna's GPSampler): "
                              "pip install torch") from None
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown Optuna sampler {name!r}; expected one of {list(SAMPLERS)} "
                     "or a sampler object")


class OptunaSearcher(Searcher):
    """An Optuna sampler behind jaxtune's ask/tell (see the module docstring).

    Args:
        space: the search space.
        sampler: a name in :data:`SAMPLERS` or an ``optuna.samplers.BaseSampler``.
        seed: seeds a named sampler and the random top-up.
        diverged: ``"penalty"`` or ``"exclude"``.

    Attributes:
        study: the in-memory ``optuna.Study`` (minimizing the told losses).
    """

    name = "optuna"
    #: :class:`~jaxtune.study.Study` tells this searcher each trial's fidelity.
    wants_fidelities = True

    def __init__(self, space: Space, sampler: Any = "tpe", *, seed: int = 0,
                 diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        optuna = self._optuna = require("optuna", "optuna", "an Optuna searcher")
        self.sampler = make_sampler(str(sampler).lower(), self.seed) \
            if isinstance(sampler, str) else sampler
        if not isinstance(self.sampler, optuna.samplers.BaseSampler):
            raise ValueError(f"sampler must be a name in {list(SAMPLERS)} or an Optuna sampler, "
                             f"got {sampler!r}")
        with self._quiet():
            self.study = optuna.create_study(sampler=self.sampler, direction="minimize")
        self._dists = {name: dim.optuna_distribution() for name, dim in space.items()}
        self._open: dict[tuple, Any] = {}  # pending key -> its optuna.Trial
        self._units = self._unit_stream()

    def __repr__(self) -> str:
        return f"OptunaSearcher({type(self.sampler).__name__}, told={self.n_told})"

    # -- asking -------------------------------------------------------------------------
    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        with self._quiet():
            return self._ask(n, self.space if space is None else space)

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Optuna's INFO line per trial and experimental warnings, silenced meanwhile."""
        level = self._optuna.logging.get_verbosity()
        self._optuna.logging.set_verbosity(max(level, self._optuna.logging.WARNING))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", self._optuna.exceptions.ExperimentalWarning)
                yield
        finally:
            self._optuna.logging.set_verbosity(level)

    def _ask(self, n: int, space: Space) -> list[Config]:
        fixed = {name: dim.all_values()[0] for name, dim in space.items()
                 if dim.cardinality == 1 and self.space[name].cardinality != 1}
        sampler = self._optuna.samplers.PartialFixedSampler(fixed, self.sampler) \
            if fixed else self.sampler
        self.study.sampler = sampler
        out: list[Config] = []
        keys: set[tuple] = set()
        try:
            attempts = 10 * n + 20
            while len(out) < n and attempts > 0:
                attempts -= 1
                trial = self.study.ask(None if self.space.conditional else self._dists)
                config = self.space.validate(self._suggest(trial) if self.space.conditional
                                             else trial.params)
                key = self.space.key(config)
                if key in keys or self.is_taken(key) or not space.contains(config):
                    self.study.tell(trial.number, state=self._optuna.trial.TrialState.FAIL)
                    continue
                keys.add(key)
                self._open[key] = trial
                out.append(config)
        finally:
            self.study.sampler = self.sampler
        if len(out) < n:  # the sampler keeps repeating itself: top up at random
            more = self._sample(self._units, n - len(out), space)
            out += [c for c in more if self.space.key(c) not in keys]
        return out

    def _suggest(self, trial: Any) -> Config:
        """Define-by-run for a conditional space: a hyperparameter is suggested only
        once its parents make it active, so Optuna models active values only."""
        values: Config = {}
        for name in self.space.condition_order:
            if self.space.is_active(name, values):
                values[name] = trial._suggest(name, self._dists[name])
        return values

    # -- telling ------------------------------------------------------------------------
    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None],
             fidelities: Sequence[float] | None = None) -> None:
        """Records the losses (see :meth:`Searcher.tell`) and tells them to Optuna."""
        configs, losses = list(configs), list(losses)
        super().tell(configs, losses, fidelities)
        with self._quiet():
            self._tell_optuna(configs, losses, fidelities)

    def _tell_optuna(self, configs: list[Any], losses: list[Any],
                     fidelities: Sequence[float] | None) -> None:
        fids = [1.0] * len(losses) if fidelities is None else [float(f) for f in fidelities]
        TrialState = self._optuna.trial.TrialState
        for config, loss, fid in zip(configs, losses, fids, strict=True):
            config = self.space.validate(config)
            value = _as_loss(loss)
            if math.isnan(value):
                finite = [v for v in self._losses if math.isfinite(v)]
                value = max(finite) if finite and self.diverged == "penalty" else math.nan
            trial = self._open.pop(self.space.key(config), None)
            if math.isnan(value):
                state, values, report = TrialState.FAIL, None, {}
            elif fid < 1.0:
                state, values, report = TrialState.PRUNED, None, {_step(fid): value}
            else:
                state, values, report = TrialState.COMPLETE, value, {}
            if trial is None:  # never asked here (a resumed history, a random top-up)
                self.study.add_trial(self._optuna.trial.create_trial(
                    params=dict(config), distributions={n: self._dists[n] for n in config},
                    state=state,
                    value=None if state == TrialState.FAIL else value,
                    intermediate_values=report))
                continue
            for step, v in report.items():
                trial.report(v, step)
            self.study.tell(trial, values, state=state)


def _step(fidelity: float) -> int:
    """The step of a pruned trial's report: the fraction of its budget, in millionths."""
    return max(1, min(_STEPS, round(fidelity * _STEPS)))
