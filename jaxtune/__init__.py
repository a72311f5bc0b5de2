"""jaxtune: functional hyperparameter tuning in JAX.

A whole training run is a pure function of its hyperparameters; jaxtune
``vmap``s it over a population of configurations, ``jit``-compiles it once per
bucket of static values, and lets a Bayesian loop choose the next batch.

Example:
    >>> import jaxtune as jt
    >>> space = jt.Space(lr=jt.Real(1e-4, 1e-1, log=True))
    >>> len(space.sample(3, seed=0))
    3
"""

from jaxtune import (
    compilation_cache,
    data,
    loggers,
    models,
    objectives,
    optimizers,
    probes,
    schedules,
    search,
    zoo,
)
from jaxtune._version import __version__
from jaxtune.experiment import DEFAULTS, Experiment
from jaxtune.objectives import Constraint
from jaxtune.population import Actions, ChunkReport, PopulationResult, train_population
from jaxtune.probe_settings import Probes
from jaxtune.programs import Programs, estimate_member_bytes
from jaxtune.space import Choice, Int, Real, Space
from jaxtune.store import Store, StoreError
from jaxtune.study import Study, StudyResult
from jaxtune.train import MemberState, make_train

compilation_cache.enable_default()

__all__ = [
    "DEFAULTS",
    "Actions",
    "Choice",
    "ChunkReport",
    "Constraint",
    "Experiment",
    "Int",
    "MemberState",
    "PopulationResult",
    "Probes",
    "Programs",
    "Real",
    "Space",
    "Store",
    "StoreError",
    "Study",
    "StudyResult",
    "__version__",
    "compilation_cache",
    "data",
    "estimate_member_bytes",
    "loggers",
    "make_train",
    "models",
    "objectives",
    "optimizers",
    "probes",
    "schedules",
    "search",
    "train_population",
    "zoo",
]
