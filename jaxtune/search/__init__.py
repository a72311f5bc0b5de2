"""Searchers: propose configurations of a :class:`~jaxtune.space.Space` with one ask/tell API.

Every searcher implements::

    configs = searcher.ask(n)              # up to n NEW configurations (plain dicts)
    configs = searcher.ask(n, within=sub)  # ... all inside the subspace ``sub``
    searcher.tell(configs, losses)         # report their losses

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
  (*pending*). Configurations are compared by their canonical key
  (:meth:`Space.key`: the tuple of values in space order, reals rounded to 12
  significant digits, choices by index). ``ask(n)`` returns fewer than ``n``
  configurations only when the (finite) space, or subspace, is exhausted.
* **Sub-space asks.** ``ask(n, within=sub)``, ``sub`` a subspace of the
  searcher's space (:meth:`Space.subspace`: the same names, narrower
  dimensions), proposes only configurations inside ``sub``, for example to
  refill the slots of one compiled bucket. Told history outside ``sub`` still
  informs the searcher, and the no-repeat rule covers the whole space.
* **Conditional dimensions** (``when=``, :mod:`jaxtune.space`). Proposals hold
  active values only; grid, random and quasi-random designs apply the
  conditions (:meth:`Space.from_unit` drops inactive coordinates; the grid is a
  tree); the Bayesian searcher encodes an inactive dimension with one fixed
  value (see :class:`BayesSearcher`). Telling a value for an inactive
  dimension is refused.
* **Reproducible.** All randomness comes from the ``seed`` constructor argument:
  the same seed and the same sequence of calls give the same proposals.
* **Resumable.** Telling a stored history into a fresh searcher is supported:
  configurations that were never asked may be told.
* :attr:`Searcher.last_ask_s` is the wall time of the last :meth:`Searcher.ask`.

Searchers (also via :func:`make_searcher`; their names in :data:`SEARCHERS`):

``"grid"`` (:class:`GridSearcher`)
    The cartesian product, in a fixed order.
``"random"`` (:class:`RandomSearcher`)
    Uniform / log-uniform sampling.
``"quasirandom"`` (:class:`QuasiRandomSearcher`)
    A scrambled Halton sequence mapped through :meth:`Space.from_unit`.
``"parego"`` (:class:`ParEGOSearcher`)
    Several objectives: told a loss vector per configuration; each proposal of a
    batch maximises expected improvement of a fresh random augmented-Chebyshev
    scalarization (see :mod:`jaxtune.search.parego`).
``"es"`` (:class:`EvolutionSearcher`), ``"gradient"`` (:class:`GradientSearcher`)
    Refine given configurations (``starts=``) on their continuous hyperparameters:
    antithetic Gaussian perturbations and the smoothed gradient they estimate, or
    the hypergradient of the validation loss (:mod:`jaxtune.hypergrad`; needs
    ``experiment=``); Adam steps in unit coordinates (:mod:`jaxtune.search.refine`).
``"bayes+es"``, ``"bayes+gradient"`` (:class:`ChainSearcher`)
    Bayesian search for ``switch_after`` configurations, then ES or gradient
    refinement of the ``top`` best.
``"optuna:tpe"``, ``"optuna:cmaes"``, ``"optuna:nsga2"``, ``"optuna:random"``, ``"optuna:gp"``
    Optuna's samplers through its ask/tell (``"optuna"`` with ``sampler=`` takes any
    sampler object; extra ``[optuna]``; see :mod:`jaxtune.search.optuna_samplers`).
``"bayes"`` (:class:`BayesSearcher`)
    Batch Bayesian optimisation on a scikit-optimize surrogate (one of
    :data:`SURROGATES`: GP, RF or ET) with one of :data:`ACQUISITIONS`.
    The surrogate is fitted once per :meth:`~Searcher.ask` (the kernel from
    scratch); the ``q`` points of a batch are then chosen without refitting
    among candidates, uniform random ones and a quarter drawn around the best
    observations: for a
    GP with the *kriging believer* (fantasised value = posterior mean, kernel
    fixed, an exact rank-one update of the posterior variance per pick); for
    forests with *local penalisation* of the acquisition around each pick.

Modules: :mod:`jaxtune.search.basic` (the :class:`Searcher` base class, grid,
random, quasi-random), :mod:`jaxtune.search.bayes` (surrogate fit, acquisition
functions, kriging-believer posterior, batch selection). A new searcher
subclasses :class:`Searcher`, implements ``_propose(n, space=None)`` and is added
to the registry here.

Example:
    >>> from jaxtune.space import Space, Real, Choice
    >>> space = Space(lr=Real(1e-4, 1e-1, log=True), opt=Choice(["adam", "sgd"]))
    >>> s = make_searcher("random", space, seed=0)
    >>> batch = s.ask(3)
    >>> s.tell(batch, [0.5, None, 0.2])   # None: diverged
    >>> len(s.ask(2))
    2
    >>> [c["opt"] for c in s.ask(2, within=space.subspace(opt="sgd"))]
    ['sgd', 'sgd']
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxtune.search.basic import (
    MAX_GRID_POINTS,
    GridSearcher,
    QuasiRandomSearcher,
    RandomSearcher,
    Searcher,
)
from jaxtune.search.bayes import ACQUISITIONS, SURROGATES, BayesSearcher
from jaxtune.search.es import EvolutionSearcher
from jaxtune.search.gradient import GradientSearcher
from jaxtune.search.parego import ParEGOSearcher
from jaxtune.search.refine import ChainSearcher
from jaxtune.space import Space

__all__ = [
    "ACQUISITIONS",
    "MAX_GRID_POINTS",
    "SEARCHERS",
    "SURROGATES",
    "BayesSearcher",
    "ChainSearcher",
    "EvolutionSearcher",
    "GradientSearcher",
    "GridSearcher",
    "ParEGOSearcher",
    "QuasiRandomSearcher",
    "RandomSearcher",
    "Searcher",
    "config_key",
    "config_to_point",
    "make_searcher",
    "point_to_config",
    "skopt_dimensions",
]

_REGISTRY: dict[str, Callable[..., Searcher]] = {
    "grid": GridSearcher,
    "random": RandomSearcher,
    "quasirandom": QuasiRandomSearcher,
    "bayes": BayesSearcher,
    "parego": ParEGOSearcher,
    "es": EvolutionSearcher,
    "gradient": GradientSearcher,
    "bayes+es": functools.partial(ChainSearcher, first="bayes", then="es"),
    "bayes+gradient": functools.partial(ChainSearcher, first="bayes", then="gradient"),
}
#: Searchers that are handed the experiment (``make_searcher(..., experiment=)``).
_TAKE_EXPERIMENT = frozenset({"gradient", "bayes+es", "bayes+gradient"})



def _optuna(sampler: str) -> Callable[..., Searcher]:
    """``optuna:<sampler>``: Optuna's sampler behind ask/tell, imported when built."""

    def make(space: Space, *, seed: int = 0, **kw: Any) -> Searcher:
        from jaxtune.search.optuna_samplers import OptunaSearcher

        return OptunaSearcher(space, sampler=kw.pop("sampler", sampler), seed=seed, **kw)

    return make


_REGISTRY.update({"optuna": _optuna("tpe"), **{
    f"optuna:{s}": _optuna(s) for s in ("tpe", "cmaes", "nsga2", "gp", "random")}})

#: The searcher names :func:`make_searcher` (and ``jaxtune run --searcher``) accept.
SEARCHERS = tuple(_REGISTRY)


def make_searcher(name: str, space: Space, *, seed: int = 0, experiment: Any = None,
                  **kw: Any) -> Searcher:
    """Builds a searcher by name: ``"grid"``, ``"random"``, ``"quasirandom"``, ``"bayes"``,
    ``"parego"``, ``"es"``, ``"gradient"``, ``"bayes+es"`` or ``"bayes+gradient"``.

    Extra keyword arguments go to the searcher's constructor (e.g.
    ``resolution=`` for the grid, ``surrogate=``/``acquisition=`` for bayes,
    ``starts=`` for es and gradient, ``switch_after=`` for a chain).
    ``experiment`` reaches the searchers that differentiate training runs
    (``gradient``, and the chains); the others ignore it.

    Raises:
        ValueError: an unknown name (listing the known ones).

    Example:
        >>> from jaxtune.space import Space, Real
        >>> make_searcher("bayes", Space(x=Real(0.0, 1.0)), surrogate="ET").surrogate
        'ET'
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown searcher {name!r}; expected one of {list(SEARCHERS)}")
    if key in _TAKE_EXPERIMENT and experiment is not None:
        kw["experiment"] = experiment
    return _REGISTRY[key](space, seed=seed, **kw)


# -- thin functions over the space's conversions (kept for existing callers) ------------
def config_key(space: Space, config: Mapping[str, Any]) -> tuple:
    """``space.key(config)``: the canonical identity of a configuration."""
    return space.key(config)


def config_to_point(space: Space, config: Mapping[str, Any]) -> list[Any]:
    """``space.to_point(config)``: a scikit-optimize point (choices as indices)."""
    return space.to_point(config)


def point_to_config(space: Space, point: Sequence[Any]) -> dict[str, Any]:
    """``space.from_point(point)``: Python types, clipped to the bounds."""
    return space.from_point(point)


def skopt_dimensions(space: Space) -> list[Any]:
    """``space.skopt_dimensions()``: the scikit-optimize dimensions, in space order."""
    return space.skopt_dimensions()
