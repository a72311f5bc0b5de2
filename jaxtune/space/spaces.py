"""The :class:`Space`: an ordered mapping of names to dimensions, and what it does with them.

Validation of whole configurations, sampling, stacking into arrays, buckets,
canonical keys, scikit-optimize points and sub-spaces. Each dimension converts
its own values (``dimensions.py``); the space only composes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.space.dimensions import Choice, Dimension, Int, Real

__all__ = ["Config", "Space"]

Config = dict[str, Any]


class Space:
    """An ordered mapping of hyperparameter names to dimensions.

    Args:
        **dims: name -> :class:`Real` | :class:`Int` | :class:`Choice`.

    Raises:
        ValueError: naming the hyperparameter, for an empty space, a duplicate
            or non-identifier name, or an invalid dimension.

    Example:
        >>> space = Space(lr=Real(1e-3, 1.0, log=True), width=Int(8, 64, static=True))
        >>> space.static_names, space.traced_names
        (('width',), ('lr',))
    """

    def __init__(self, dims: Mapping[str, Dimension] | None = None, /, **kwargs: Dimension):
        merged: dict[str, Dimension] = {}
        for source in (dims or {}), kwargs:
            for name, dim in source.items():
                if name in merged:
                    raise ValueError(f"hyperparameter {name!r} is defined twice")
                merged[name] = dim
        if not merged:
            raise ValueError("a Space needs at least one hyperparameter")
        for name, dim in merged.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"hyperparameter name {name!r} must be a Python identifier")
            if not isinstance(dim, (Real, Int, Choice)):
                raise ValueError(
                    f"hyperparameter {name!r}: expected Real, Int or Choice, "
                    f"got {type(dim).__name__}"
                )
            dim.validate(name)
        self._dims = merged

    # -- mapping protocol -------------------------------------------------------------
    def __getitem__(self, name: str) -> Dimension:
        return self._dims[name]

    def __contains__(self, name: object) -> bool:
        return name in self._dims

    def __iter__(self):
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def items(self):
        return self._dims.items()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._dims.items())
        return f"Space({inner})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.spec() == other.spec()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._dims)

    @property
    def static_names(self) -> tuple[str, ...]:
        return tuple(n for n, d in self._dims.items() if d.static)

    @property
    def traced_names(self) -> tuple[str, ...]:
        return tuple(n for n, d in self._dims.items() if not d.static)

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description (stored with a study)."""
        return {name: dim.spec() for name, dim in self._dims.items()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Mapping[str, Any]]) -> Space:
        """Inverse of :meth:`spec`."""
        dims: dict[str, Dimension] = {}
        for name, d in spec.items():
            kind = d["type"]
            if kind == "real":
                dims[name] = Real(d["low"], d["high"], log=d["log"], static=d["static"])
            elif kind == "int":
                dims[name] = Int(d["low"], d["high"], log=d["log"], static=d["static"])
            elif kind == "choice":
                dims[name] = Choice(d["values"], static=d["static"])
            else:
                raise ValueError(f"hyperparameter {name!r}: unknown dimension type {kind!r}")
        return cls(dims)

    # -- configurations ---------------------------------------------------------------
    def validate(self, config: Mapping[str, Any]) -> Config:
        """Checks one configuration and returns it with canonical Python types.

        Raises:
            ValueError: naming the hyperparameter that is missing, unknown or
                out of range.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"a configuration must be a dict, got {type(config).__name__}")
        unknown = [k for k in config if k not in self._dims]
        if unknown:
            raise ValueError(
                f"unknown hyperparameter {unknown[0]!r}; the space defines {list(self._dims)}"
            )
        out: Config = {}
        for name, dim in self._dims.items():
            if name not in config:
                raise ValueError(f"configuration is missing hyperparameter {name!r}")
            out[name] = dim.check(name, config[name])
        return out

    def validate_all(self, configs: Iterable[Mapping[str, Any]]) -> list[Config]:
        out = []
        for i, c in enumerate(configs):
            try:
                out.append(self.validate(c))
            except ValueError as e:
                raise ValueError(f"configuration {i}: {e}") from None
        if not out:
            raise ValueError("no configurations given")
        return out

    def from_unit(self, u: Sequence[float]) -> Config:
        """Maps a point of the unit cube ``[0, 1]^d`` (in :attr:`names` order)."""
        if len(u) != len(self._dims):
            raise ValueError(f"expected a point with {len(self._dims)} coordinates, got {len(u)}")
        return {name: dim.from_unit(x, name) for (name, dim), x in zip(self._dims.items(), u)}

    def to_unit(self, config: Mapping[str, Any]) -> np.ndarray:
        """Maps a configuration into the unit cube (Choice: centre of its cell)."""
        return np.array([dim.to_unit(config[n]) for n, dim in self._dims.items()], np.float64)

    def sample(self, n: int, seed: int | np.random.Generator | Any = 0) -> list[Config]:
        """Draws ``n`` configurations uniformly (log-uniformly where ``log=True``).

        Args:
            n: number of configurations.
            seed: an ``int``, a ``numpy.random.Generator`` or a JAX PRNG key.
        """
        rng = _as_generator(seed)
        return [self.from_unit(rng.random(len(self._dims))) for _ in range(int(n))]

    def static_key(self, config: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The bucket signature of a configuration: its static values, by name."""
        return tuple((n, config[n]) for n in self.static_names)

    def buckets(self, configs: Sequence[Mapping[str, Any]]) -> dict[tuple, list[int]]:
        """Groups configuration indices by their static values (insertion order)."""
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(configs):
            groups.setdefault(self.static_key(c), []).append(i)
        return groups

    def stack(self, configs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Stacks the traced values of ``configs`` into ``(len(configs),)`` arrays.

        Reals become ``float32``, ints ``int32``; a numeric :class:`Choice` its
        values and a non-numeric :class:`Choice` the ``int32`` index of the value.
        """
        return {name: np.asarray([self._dims[name].encode(c[name]) for c in configs],
                                 self._dims[name].dtype)
                for name in self.traced_names}

    # -- canonical keys and scikit-optimize points --------------------------------------
    def key(self, config: Mapping[str, Any]) -> tuple:
        """The canonical identity of a (validated) configuration.

        A tuple in space order: reals rounded to 12 significant digits, ints as
        ``int``, choices as the index of the value.

        Example:
            >>> Space(lr=Real(1e-3, 1.0), opt=Choice(["adam", "sgd"])).key(
            ...     {"lr": 0.1 + 1e-15, "opt": "sgd"})
            (0.1, 1)
        """
        return tuple(dim.key(config[name]) for name, dim in self._dims.items())

    def to_point(self, config: Mapping[str, Any]) -> list[Any]:
        """A configuration as a scikit-optimize point (choices as indices)."""
        return [dim.to_point(config[name]) for name, dim in self._dims.items()]

    def from_point(self, point: Sequence[Any]) -> Config:
        """Inverse of :meth:`to_point`: Python types, clipped to the bounds.

        Example:
            >>> space = Space(n=Int(2, 9, log=True), opt=Choice(["adam", "sgd"]))
            >>> space.from_point([12.3, 1])
            {'n': 9, 'opt': 'sgd'}
        """
        return {name: dim.from_point(x)
                for (name, dim), x in zip(self._dims.items(), point, strict=True)}

    def point_key(self, point: Sequence[Any]) -> tuple:
        """``key(from_point(point))``."""
        return tuple(dim.point_key(x) for dim, x in zip(self._dims.values(), point, strict=True))

    def skopt_dimensions(self) -> list[Any]:
        """The scikit-optimize dimensions, in :attr:`names` order.

        ``Real``/``Int`` map to ``skopt.space.Real``/``Integer`` (prior
        ``"log-uniform"`` where ``log=True``); a ``Choice`` maps to a
        ``Categorical`` over the *indices* of its values, so that the exact
        Python values round-trip through :meth:`to_point` / :meth:`from_point`.
        """
        return [dim.skopt_dimension(name) for name, dim in self._dims.items()]

    @property
    def cardinality(self) -> float:
        """Number of distinct configurations (``inf`` when a ``Real`` is present)."""
        return math.prod(float(dim.cardinality) for dim in self._dims.values())

    # -- sub-spaces -------------------------------------------------------------------
    def subspace(self, **dims: Any) -> Space:
        """The same space with some dimensions replaced by narrower ones.

        Args:
            **dims: name -> a narrower dimension: a ``Real``/``Int`` sub-interval
                (same ``log`` and ``static``), a ``Choice`` with a subset of
                the values (or, for a range, values inside it), or a plain
                value to pin the hyperparameter to.

        Raises:
            ValueError: naming the hyperparameter, for an unknown name or a
                dimension that does not lie inside the original.

        Example:
            >>> space = Space(lr=Real(1e-4, 1e-1, log=True),
            ...               width=Int(16, 512, log=True, static=True))
            >>> sub = space.subspace(lr=Real(1e-3, 1e-2, log=True), width=64)
            >>> sub["width"]
            Choice(values=(64,), static=True)
            >>> sub.contains({"lr": 0.005, "width": 64}), sub.contains({"lr": 0.05, "width": 64})
            (True, False)
        """
        unknown = [n for n in dims if n not in self._dims]
        if unknown:
            raise ValueError(
                f"unknown hyperparameter {unknown[0]!r}; the space defines {list(self._dims)}")
        return Space({name: dim.narrow(name, dims[name]) if name in dims else dim
                      for name, dim in self._dims.items()})

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` is a valid configuration of this space."""
        try:
            self.validate(config)
        except ValueError:
            return False
        return True


def _as_generator(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)):
        return np.random.default_rng(int(seed))
    try:  # a JAX key
        import jax

        data = np.asarray(jax.random.key_data(seed) if _is_typed_key(seed) else seed)
        return np.random.default_rng(data.astype(np.uint32).ravel().tolist())
    except Exception as e:  # pragma: no cover - defensive
        raise ValueError(
            f"seed must be an int, a numpy Generator or a JAX key, got {seed!r}") from e


def _is_typed_key(x: Any) -> bool:
    import jax

    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
