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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Choice", "Dimension", "Int", "Real", "Space"]

Config = dict[str, Any]


def _check_bounds(name: str, low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"hyperparameter {name!r}: bounds must be finite, got [{low}, {high}]")
    if low >= high:
        raise ValueError(f"hyperparameter {name!r}: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ValueError(f"hyperparameter {name!r}: log=True needs low > 0, got low={low}")


@dataclasses.dataclass(frozen=True)
class Real:
    """A real interval ``[low, high]``, uniform or log-uniform.

    Example:
        >>> round(Real(1e-4, 1e-1, log=True).from_unit(0.5, "lr"), 6)
        0.003162
    """

    low: float
    high: float
    log: bool = False
    static: bool = False

    def validate(self, name: str) -> None:
        _check_bounds(name, float(self.low), float(self.high), self.log)

    def from_unit(self, u: float, name: str = "") -> float:
        """Maps ``u`` in ``[0, 1]`` to a value (log-aware)."""
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return float(min(max(math.exp(lo + u * (hi - lo)), self.low), self.high))
        return float(self.low + u * (self.high - self.low))

    def to_unit(self, value: float) -> float:
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return (math.log(value) - lo) / (hi - lo)
        return (value - self.low) / (self.high - self.low)

    def check(self, name: str, value: Any) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"hyperparameter {name!r}: expected a real number, got {value!r}") from None
        if not (self.low <= v <= self.high):
            raise ValueError(
                f"hyperparameter {name!r}: {v} is outside [{self.low}, {self.high}]"
            )
        return v

    def spec(self) -> dict[str, Any]:
        return {"type": "real", "low": self.low, "high": self.high, "log": self.log,
                "static": self.static}


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer interval ``[low, high]`` (both inclusive), uniform or log-uniform.

    Example:
        >>> Int(16, 512, log=True).from_unit(1.0)
        512
    """

    low: int
    high: int
    log: bool = False
    static: bool = False

    def validate(self, name: str) -> None:
        if int(self.low) != self.low or int(self.high) != self.high:
            raise ValueError(f"hyperparameter {name!r}: Int bounds must be integers")
        _check_bounds(name, float(self.low), float(self.high), self.log)

    def from_unit(self, u: float, name: str = "") -> int:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            lo, hi = math.log(self.low - 0.5 if self.low > 0.5 else self.low), math.log(
                self.high + 0.5)
            v = math.exp(lo + u * (hi - lo))
        else:
            v = self.low - 0.5 + u * (self.high - self.low + 1)
        return int(min(max(round(v), self.low), self.high))

    def to_unit(self, value: int) -> float:
        if self.log:
            lo = math.log(self.low - 0.5 if self.low > 0.5 else self.low)
            hi = math.log(self.high + 0.5)
            return (math.log(value) - lo) / (hi - lo)
        return (value - self.low + 0.5) / (self.high - self.low + 1)

    def check(self, name: str, value: Any) -> int:
        try:
            integral = not isinstance(value, bool) and float(value).is_integer()
        except (TypeError, ValueError):
            integral = False
        if not integral:
            raise ValueError(f"hyperparameter {name!r}: expected an integer, got {value!r}")
        v = int(value)
        if not (self.low <= v <= self.high):
            raise ValueError(f"hyperparameter {name!r}: {v} is outside [{self.low}, {self.high}]")
        return v

    def spec(self) -> dict[str, Any]:
        return {"type": "int", "low": int(self.low), "high": int(self.high), "log": self.log,
                "static": self.static}


@dataclasses.dataclass(frozen=True)
class Choice:
    """A finite set of values (strings, numbers or booleans).

    A traced :class:`Choice` of strings (for example a schedule family) enters
    the compiled program as an ``int32`` index into :attr:`values`; a traced
    choice of numbers enters as the number itself.

    Example:
        >>> Choice(["cosine", "constant"]).from_unit(0.9)
        'constant'
    """

    values: Sequence[Hashable]
    static: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))

    def validate(self, name: str) -> None:
        if len(self.values) == 0:
            raise ValueError(f"hyperparameter {name!r}: Choice needs at least one value")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"hyperparameter {name!r}: Choice values must be distinct")

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                   for v in self.values)

    def from_unit(self, u: float, name: str = "") -> Hashable:
        i = min(int(float(u) * len(self.values)), len(self.values) - 1)
        return self.values[max(i, 0)]

    def to_unit(self, value: Hashable) -> float:
        return (self.values.index(value) + 0.5) / len(self.values)

    def check(self, name: str, value: Any) -> Hashable:
        for v in self.values:
            if v == value and isinstance(v, bool) == isinstance(value, (bool, np.bool_)):
                return v
        raise ValueError(f"hyperparameter {name!r}: {value!r} is not one of {list(self.values)}")

    def index(self, value: Hashable) -> int:
        return self.values.index(value)

    def spec(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values), "static": self.static}


Dimension = Real | Int | Choice


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
        out: dict[str, np.ndarray] = {}
        for name in self.traced_names:
            dim = self._dims[name]
            vals = [c[name] for c in configs]
            if isinstance(dim, Real):
                out[name] = np.asarray(vals, np.float32)
            elif isinstance(dim, Int):
                out[name] = np.asarray(vals, np.int32)
            elif dim.numeric:
                out[name] = np.asarray(vals, np.float32)
            else:
                out[name] = np.asarray([dim.index(v) for v in vals], np.int32)
        return out


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
