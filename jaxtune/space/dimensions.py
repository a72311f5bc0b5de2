"""Dimensions of a search space: :class:`Real`, :class:`Int`, :class:`Choice`, and
their conditions.

Each dimension converts its own values (the way Optuna's distributions do):
validation, canonical key, unit interval, scikit-optimize coordinates and
dimension, Optuna distribution, grid axis, cardinality, array dtype and
narrowing. :class:`~jaxtune.space.Space` composes them (``spaces.py``).

A dimension may be *conditional*: ``when={"optimizer": ("sgd", "nesterov")}``
makes it active only in configurations whose ``optimizer`` is one of those
values (several parents: all must hold). A parent is a :class:`Choice` or an
:class:`Int` of the same space (for an ``Int``, any collection of its integers,
for example ``range(2, 9)`` for "``depth >= 2``"), and may itself be
conditional. The :class:`~jaxtune.space.Space` checks the conditions and
applies them; a dimension only carries its own, normalised to a tuple of
``(parent, values)`` pairs.

Example:
    >>> lr = Real(1e-4, 1e-1, log=True)
    >>> lr.grid_axis("lr", resolution=2)
    [0.0001, 0.1]
    >>> Real(0.8, 0.99, when={"optimizer": ("sgd", "nesterov")})
    Real(low=0.8, high=0.99, log=False, static=False, when={'optimizer': ('sgd', 'nesterov')})
    >>> Int(16, 256, when={"depth": range(2, 5)}).conditions
    {'depth': (2, 3, 4)}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = ["KEY_DIGITS", "MAX_INT_ENUMERATION", "Choice", "Dimension", "Int", "Real"]

#: A condition as a dimension keeps it: ``((parent, (value, ...)), ...)``.
Condition = tuple[tuple[str, tuple[Hashable, ...]], ...]



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


def _normalise_when(when: Any) -> Condition | None:
    """``when`` as a tuple of ``(parent, values)`` pairs (``None``: unconditional).

    A value may be one value (a string is one value) or a collection of values
    (a set is sorted by ``repr``, a ``range`` listed).
    """
    if when is None:
        return None
    if isinstance(when, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in when):
        when = dict(when)  # already normalised (dataclasses.replace, from a spec)
    if not isinstance(when, Mapping):
        raise ValueError(f"when= must be a dict from a parent hyperparameter to its values, "
                         f"got {when!r}")
    out = []
    for parent, values in when.items():
        if not isinstance(parent, str):
            raise ValueError(f"when=: a parent must be a hyperparameter name, got {parent!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            values = (values,)
        elif isinstance(values, (set, frozenset)):
            values = sorted(values, key=repr)
        values = tuple(values)
        if not values:
            raise ValueError(f"when=: the condition on {parent!r} lists no value")
        out.append((parent, values))
    return tuple(out) or None


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
    when: Condition | None
    categorical: ClassVar[bool] = False
    integral: ClassVar[bool] = False

    def __repr__(self) -> str:
        fields = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                  if f.name != "when"]
        if self.when is not None:
            fields.append(("when", self.conditions))
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields)})"

    @property
    def conditions(self) -> dict[str, tuple[Hashable, ...]]:
        """The condition as a dict, parent -> the values under which this dimension is
        active (empty: always active)."""
        return dict(self.when or ())

    def _spec_when(self) -> dict[str, Any]:
        """The ``when`` entry of :meth:`spec` (nothing for an unconditional dimension, so
        the specs of spaces without conditions are what they were)."""
        if self.when is None:
            return {}
        return {"when": {p: list(v) for p, v in self.when}}

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
            return dataclasses.replace(self._narrow_range(name, inner), when=self.when)
        values = []
        for v in inner.values:
            try:
                values.append(self.check(name, v))
            except ValueError as e:
                raise ValueError(f"{e} (the subspace's {inner!r} is not inside {self!r})") from None
        return Choice(values, static=self.static, when=self.when)

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
        return Choice(inside, static=self.static, when=self.when) if inside else None


@dataclasses.dataclass(frozen=True, repr=False)
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
    when: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "when", _normalise_when(self.when))

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
                "high": self._spec_bound(self.high), "log": self.log, "static": self.static,
                **self._spec_when()}

    def _spec_bound(self, v: Any) -> Any:
        return v


@dataclasses.dataclass(frozen=True, repr=False)
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


@dataclasses.dataclass(frozen=True, repr=False)
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

    def point_keys(self, xs: Any) -> np.ndarray:
        """:meth:`point_key` of an array of coordinates, at once."""
        return np.clip(np.round(np.asarray(xs, np.float64)), int(self.low), int(self.high))

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


@dataclasses.dataclass(frozen=True, repr=False)
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
    when: Any = None
    categorical: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "when", _normalise_when(self.when))

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

    def point_keys(self, xs: Any) -> np.ndarray:
        """:meth:`point_key` of an array of coordinates, at once."""
        return np.clip(np.round(np.asarray(xs, np.float64)), 0, len(self.values) - 1)

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
        return {"type": "choice", "values": list(self.values), "static": self.static,
                **self._spec_when()}


Dimension = Real | Int | Choice
