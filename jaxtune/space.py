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

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = ["KEY_DIGITS", "MAX_INT_ENUMERATION", "Choice", "Dimension", "Int", "Real", "Space"]

Config = dict[str, Any]


#: An ``Int`` range with at most this many values is enumerated whole by a grid.
MAX_INT_ENUMERATION = 64

#: Significant digits of a real value in a canonical key.
KEY_DIGITS = 12


def _check_bounds(name: str, low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"hyperparameter {name!r}: bounds must be finite, got [{low}, {high}]")
    if low >= high:
        raise ValueError(f"hyperparameter {name!r}: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ValueError(f"hyperparameter {name!r}: log=True needs low > 0, got low={low}")


class _Dimension:
    """What every dimension provides on top of its per-type primitives.

    Each dimension converts its own values (the way Optuna's distributions do):
    ``check`` (validation), ``key`` (canonical identity), ``to_point`` /
    ``from_point`` (scikit-optimize coordinates), ``to_unit`` / ``from_unit``
    (the unit interval), ``skopt_dimension``, ``grid_axis``, ``cardinality``,
    ``all_values``, ``extremes``, ``dtype`` / ``encode`` (stacking) and
    ``narrow`` (sub-dimensions). Nothing outside this module asks which kind a
    dimension is; what a plot or a report needs to know is :attr:`categorical`
    (unordered values, drawn as labels) and :attr:`integral` (integer values).
    """

    static: bool
    categorical: ClassVar[bool] = False
    integral: ClassVar[bool] = False

    def check(self, name: str, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def key(self, value: Any) -> Hashable:  # pragma: no cover - abstract
        raise NotImplementedError

    def from_point(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def point_key(self, x: Any) -> Hashable:
        """The canonical key of the value at scikit-optimize coordinate ``x``."""
        return self.key(self.from_point(x))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a valid value of this dimension."""
        try:
            self.check("", value)
        except ValueError:
            return False
        return True

    def narrow(self, name: str, inner: Any) -> Dimension:
        """``inner`` checked to lie inside this dimension, with this dimension's values.

        Args:
            name: the hyperparameter (for error messages).
            inner: a dimension of the same kind inside this one (a ``Real`` or
                ``Int`` sub-interval with the same ``log``; a ``Choice`` with a
                subset of the values), a ``Choice`` of values of this
                dimension, or a plain value (pinned: a one-value ``Choice``).
                ``static`` must be the same.

        Raises:
            ValueError: naming the hyperparameter, when ``inner`` does not lie
                inside this dimension.

        Example:
            >>> Int(1, 8).narrow("depth", 4)
            Choice(values=(4,), static=False)
        """
        if not isinstance(inner, (Real, Int, Choice)):
            inner = Choice([inner], static=self.static)
        if inner.static != self.static:
            raise ValueError(f"hyperparameter {name!r}: a subspace keeps static={self.static}, "
                             f"got {inner!r}")
        if not isinstance(inner, Choice):
            return self._narrow_range(name, inner)
        values = []
        for v in inner.values:
            try:
                values.append(self.check(name, v))
            except ValueError as e:
                raise ValueError(f"{e} (the subspace's {inner!r} is not inside {self!r})") from None
        return Choice(values, static=self.static)

    def _narrow_range(self, name: str, inner: Real | Int) -> Dimension:
        raise ValueError(f"hyperparameter {name!r}: a subspace of {self!r} must be a Choice of "
                         f"its values, got {inner!r}")

    def between(self, low: float, high: float) -> Any:
        """The part of this dimension inside ``[low, high]``, as :meth:`narrow` takes it
        (a narrower range, a ``Choice`` of the values inside, or the one value), or
        ``None`` if nothing is inside.

        Example:
            >>> Int(16, 256, log=True).between(65, 1000)
            Int(low=65, high=256, log=True, static=False)
            >>> Choice([8, 32, 128]).between(9, 128)
            Choice(values=(32, 128), static=False)
        """
        inside = [v for v in self.all_values() if low <= v <= high]
        return Choice(inside, static=self.static) if inside else None


@dataclasses.dataclass(frozen=True)
class _Range(_Dimension):
    """What ``Real`` and ``Int`` share: bounds, flags, grid axes, sub-intervals.

    Attributes:
        low, high: the bounds (inclusive; integers for an ``Int``).
        log: log-uniform (``low > 0``) rather than uniform.
        static: whether the hyperparameter changes the compiled program.
    """

    low: float
    high: float
    log: bool = False
    static: bool = False

    def to_point(self, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def between(self, low: float, high: float) -> Any:
        """See :meth:`_Dimension.between`."""
        lo, hi = max(self.low, low), min(self.high, high)
        if self.integral:
            lo, hi = math.ceil(lo), math.floor(hi)
        if lo > hi:
            return None
        if lo == hi:
            return type(self.low)(lo) if self.integral else float(lo)
        return dataclasses.replace(self, low=lo, high=hi)

    def encode(self, value: Any) -> Any:
        """The value as it enters a stacked array (see :attr:`dtype`)."""
        return self.to_point(value)

    def extremes(self) -> list[Any]:
        """``[low, high]``."""
        return [self.low, self.high]

    def _grid_what(self, name: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid_axis(self, name: str, resolution: int | None = None) -> list[Any]:
        """The values a grid search takes along this dimension.

        An ``Int`` range of at most :data:`MAX_INT_ENUMERATION` values gives
        all its integers; otherwise ``resolution`` points including both bounds
        (log-spaced if ``log``; one point: the (geometric) middle), duplicates
        after rounding dropped.

        Raises:
            ValueError: naming the hyperparameter, when ``resolution`` is needed
                and ``None``.
        """
        if self.cardinality <= MAX_INT_ENUMERATION:
            return self.all_values()
        if resolution is None:
            raise ValueError(f"grid search cannot enumerate {self._grid_what(name)}; "
                             "pass resolution=N or use Choice")
        lo, hi = float(self.low), float(self.high)
        if resolution == 1:
            points = [math.sqrt(lo * hi) if self.log else (lo + hi) / 2]
        else:
            points = np.geomspace(lo, hi, resolution) if self.log else np.linspace(
                lo, hi, resolution)
        axis: list[Any] = []
        for p in points:
            v = self.from_point(p)
            if not axis or self.key(v) != self.key(axis[-1]):
                axis.append(v)
        return axis

    @property
    def dtype(self) -> np.dtype:
        """The dtype of a stacked array of values."""
        return np.dtype(self._dtype)

    def skopt_dimension(self, name: str) -> Any:
        """The scikit-optimize dimension (prior ``"log-uniform"`` where ``log=True``)."""
        import skopt.space

        return getattr(skopt.space, self._skopt)(
            self.to_point(self.low), self.to_point(self.high),
            prior="log-uniform" if self.log else "uniform", name=name)

    def optuna_distribution(self) -> Any:
        """The equivalent ``optuna.distributions`` distribution (same bounds and ``log``)."""
        import optuna.distributions

        return getattr(optuna.distributions, self._optuna)(
            self.to_point(self.low), self.to_point(self.high), log=self.log)

    def _narrow_range(self, name: str, inner: Real | Int) -> Dimension:
        kind = type(self).__name__
        if type(inner) is not type(self) or inner.log != self.log:
            raise ValueError(f"hyperparameter {name!r}: a subspace of {self!r} must be an "
                             f"interval of the same kind ({kind}, log={self.log}) or a Choice of "
                             f"its values, got {inner!r}")
        if not (self.low <= inner.low and inner.high <= self.high):
            raise ValueError(f"hyperparameter {name!r}: the subspace's [{inner.low}, "
                             f"{inner.high}] is not inside [{self.low}, {self.high}]")
        return inner

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__.lower(), "low": self._spec_bound(self.low),
                "high": self._spec_bound(self.high), "log": self.log, "static": self.static}

    def _spec_bound(self, v: Any) -> Any:
        return v


@dataclasses.dataclass(frozen=True)
class Real(_Range):
    """A real interval ``[low, high]``, uniform or log-uniform.

    Example:
        >>> lr = Real(1e-4, 1e-1, log=True)
        >>> round(lr.from_unit(0.5), 6)
        0.003162
        >>> lr.key(0.1 + 1e-15), lr.from_point(3.0), lr.cardinality
        (0.1, 0.1, inf)
        >>> lr.grid_axis("lr", resolution=4)
        [0.0001, 0.001, 0.01, 0.1]
    """

    _dtype = np.float32
    _skopt = "Real"
    _optuna = "FloatDistribution"

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

    def key(self, value: Any) -> float:
        """The value rounded to :data:`KEY_DIGITS` significant digits."""
        return float(f"{float(value):.{KEY_DIGITS}g}")

    def to_point(self, value: Any) -> float:
        return float(value)

    def from_point(self, x: Any) -> float:
        """A coordinate as a value: a ``float`` clipped to the bounds."""
        return float(min(max(float(x), float(self.low)), float(self.high)))

    @property
    def cardinality(self) -> float:
        return math.inf

    def all_values(self) -> list[Any]:
        raise ValueError(f"a Real dimension has no finite list of values: {self!r}")

    def _grid_what(self, name: str) -> str:
        return f"Real hyperparameter {name!r}"


@dataclasses.dataclass(frozen=True)
class Int(_Range):
    """An integer interval ``[low, high]`` (both inclusive), uniform or log-uniform.

    Example:
        >>> width = Int(16, 512, log=True)
        >>> width.from_unit(1.0), width.from_point(20.6), width.cardinality
        (512, 21, 497)
    """

    integral: ClassVar[bool] = True
    _dtype = np.int32
    _skopt = "Integer"
    _optuna = "IntDistribution"

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

    def key(self, value: Any) -> int:
        return int(value)

    def to_point(self, value: Any) -> int:
        return int(value)

    def from_point(self, x: Any) -> int:
        """A coordinate as a value: rounded to an ``int`` clipped to the bounds."""
        return int(min(max(round(float(x)), int(self.low)), int(self.high)))

    @property
    def cardinality(self) -> int:
        return int(self.high) - int(self.low) + 1

    def all_values(self) -> list[int]:
        return list(range(int(self.low), int(self.high) + 1))

    def _grid_what(self, name: str) -> str:
        return (f"Int hyperparameter {name!r} with {self.cardinality} values (more than "
                f"{MAX_INT_ENUMERATION})")

    def _spec_bound(self, v: Any) -> int:
        return int(v)


@dataclasses.dataclass(frozen=True)
class Choice(_Dimension):
    """A finite set of values (strings, numbers or booleans).

    A traced :class:`Choice` of strings (for example a schedule family) enters
    the compiled program as an ``int32`` index into :attr:`values`; a traced
    choice of numbers enters as the number itself. Its scikit-optimize
    coordinate is the index of the value, so that exact Python values
    round-trip.

    Example:
        >>> sched = Choice(["cosine", "constant"])
        >>> sched.from_unit(0.9), sched.key("constant"), sched.from_point(0)
        ('constant', 1, 'cosine')
        >>> sched.dtype, Choice([0.0, 0.5]).dtype
        (dtype('int32'), dtype('float32'))
    """

    values: Sequence[Hashable]
    static: bool = False
    categorical: ClassVar[bool] = True

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

    def key(self, value: Hashable) -> int:
        """The index of the value."""
        return self.values.index(value)

    def to_point(self, value: Hashable) -> int:
        return self.values.index(value)

    def from_point(self, x: Any) -> Hashable:
        """An index coordinate (clipped to the valid indices) as the value."""
        return self.values[min(max(round(float(x)), 0), len(self.values) - 1)]

    @property
    def cardinality(self) -> int:
        return len(self.values)

    def all_values(self) -> list[Hashable]:
        return list(self.values)

    def extremes(self) -> list[Hashable]:
        """All the values."""
        return list(self.values)

    def grid_axis(self, name: str, resolution: int | None = None) -> list[Hashable]:
        """All the values (``resolution`` is ignored)."""
        return list(self.values)

    def skopt_dimension(self, name: str) -> Any:
        """A ``skopt.space.Categorical`` over the *indices* of the values."""
        from skopt.space import Categorical

        return Categorical(list(range(len(self.values))), name=name)

    def optuna_distribution(self) -> Any:
        """The equivalent ``optuna.distributions.CategoricalDistribution``."""
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.values))

    @property
    def dtype(self) -> np.dtype:
        """``float32`` for numbers (the value), ``int32`` otherwise (the index)."""
        return np.dtype(np.float32 if self.numeric else np.int32)

    def encode(self, value: Hashable) -> Any:
        """The value as it enters a stacked array: a number, or its index."""
        return value if self.numeric else self.values.index(value)

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
