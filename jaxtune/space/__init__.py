"""Search spaces: typed hyperparameter dimensions, validation, sampling, stacking.

A :class:`Space` maps names to dimensions (:class:`Real`, :class:`Int`,
:class:`Choice`). A *configuration* is a plain ``dict`` from name to value.
Dimensions marked ``static=True`` change shapes or program structure (width,
optimizer family); configurations are grouped into *buckets* by their static
values and each bucket is compiled once. Every other dimension is *traced*: it
enters the compiled program as a ``(population,)`` array.

Example:
    >>> import jaxtune as jt
    >>> space = jt.Space(lr=jt.Real(1e-4, 1e-1, log=True),
    ...                  optimizer=jt.Choice(["adamw", "sgd"], static=True))
    >>> configs = space.sample(4, seed=0)
    >>> sorted(configs[0])
    ['lr', 'optimizer']
    >>> arrays = space.stack(configs)     # traced values only
    >>> arrays["lr"].shape
    (4,)

Each dimension owns its conversions (canonical key, scikit-optimize dimension
and coordinates, grid axis, cardinality, array dtype, narrowing); searchers and
the engine call them and never ask which kind a dimension is. A *subspace*
narrows some dimensions, for example to the static values of one compiled
bucket:

    >>> bucket = space.subspace(optimizer="sgd")
    >>> all(c["optimizer"] == "sgd" for c in bucket.sample(4, seed=0))
    True
    >>> space.key({"lr": 0.01, "optimizer": "sgd"})
    (0.01, 1)
"""

from jaxtune.space.dimensions import KEY_DIGITS, MAX_INT_ENUMERATION, Choice, Dimension, Int, Real
from jaxtune.space.spaces import Config as Config  # importable as before
from jaxtune.space.spaces import Space

__all__ = ["KEY_DIGITS", "MAX_INT_ENUMERATION", "Choice", "Dimension", "Int", "Real", "Space"]
