"""The :class:`Space`: an ordered mapping of names to dimensions, and what it does with them.

Validation of whole configurations, sampling, stacking into arrays, buckets,
canonical keys, scikit-optimize points and sub-spaces. Each dimension converts
its own values (``dimensions.py``); the space only composes them.

**Conditions.** A dimension declared with ``when=`` is *active* only where its
condition holds (see :mod:`jaxtune.space.dimensions`). A configuration holds its
active values only: an inactive hyperparameter is absent (``None`` is accepted
for it on input and dropped). The space checks the conditions when it is built
(the parent exists, is a ``Choice`` or an ``Int`` and has the values named; no
cycle; a static dimension depends on static ones only, so a bucket knows its
active set) and applies them everywhere: a unit-cube point or a scikit-optimize
point maps to the active values only (its inactive coordinates are unused),
keys hold ``None`` for inactive dimensions, :meth:`Space.stack` needs a fill
value for inactive traced entries (the engine gives the hyperparameter's
default), and the cardinality counts distinct active configurations.

Example:
    >>> from jaxtune.space import Choice, Real, Space
    >>> space = Space(optimizer=Choice(["adamw", "sgd", "nesterov"]),
    ...               momentum=Real(0.8, 0.99, when={"optimizer": ("sgd", "nesterov")}))
    >>> space.validate({"optimizer": "adamw", "momentum": None})
    {'optimizer': 'adamw'}
    >>> space.from_unit([0.9, 0.5])
    {'optimizer': 'nesterov', 'momentum': 0.895}
    >>> space.key({"optimizer": "adamw"})
    (0, None)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtune.space.dimensions import Choice, Dimension, Int, Real

__all__ = ["INACTIVE_UNIT", "Config", "Space"]

Config = dict[str, Any]

#: The unit-cube coordinate :meth:`Space.to_unit` gives an inactive dimension.
INACTIVE_UNIT = 0.5

#: Parent assignments :attr:`Space.cardinality` enumerates to count a conditional space.
_MAX_COUNT = 1_000_000


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
        self._set(merged, strict=True)

    def _set(self, dims: dict[str, Dimension], strict: bool) -> None:
        self._dims = dims
        self._order, self._allowed = _conditions(dims, strict)
        self.conditional = any(self._allowed.values())

    @classmethod
    def _narrowed(cls, dims: dict[str, Dimension]) -> Space:
        """A sub-space: conditions may name parent values the narrowed parent lost."""
        for name, dim in dims.items():
            dim.validate(name)
        out = cls.__new__(cls)
        out._set(dims, strict=False)
        return out

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

    # -- conditions -------------------------------------------------------------------
    @property
    def condition_order(self) -> tuple[str, ...]:
        """The names with every condition's parents before it (otherwise space order)."""
        return self._order

    @property
    def parents(self) -> frozenset[str]:
        """The names some condition depends on."""
        return frozenset(p for pairs in self._allowed.values() for p, _ in pairs)

    def active_names(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The hyperparameters active under ``values`` (in space order).

        A dimension is active when every parent of its condition is active, present
        in ``values`` (not ``None``) and has one of the condition's values; an
        unconditional dimension is always active. ``values`` may hold values of
        inactive dimensions too (they are ignored).

        Example:
            >>> space = Space(depth=Int(1, 3), width2=Int(8, 64, when={"depth": range(2, 4)}))
            >>> space.active_names({"depth": 1}), space.active_names({"depth": 3})
            (('depth',), ('depth', 'width2'))
        """
        if not self.conditional:
            return self.names
        active: set[str] = set()
        for name in self._order:
            if all(p in active and values.get(p) is not None
                   and self._dims[p].contains(values[p])
                   and self._dims[p].key(values[p]) in keys
                   for p, keys in self._allowed[name]):
                active.add(name)
        return tuple(n for n in self._dims if n in active)

    def is_active(self, name: str, values: Mapping[str, Any]) -> bool:
        """Whether ``name`` is active under ``values`` (see :meth:`active_names`)."""
        return not self._allowed[name] or name in self.active_names(values)

    def prune(self, values: Mapping[str, Any]) -> Config:
        """``values`` without the hyperparameters they make inactive (nothing is checked).

        Example:
            >>> space = Space(opt=Choice(["adam", "sgd"]),
            ...               momentum=Real(0.0, 0.99, when={"opt": "sgd"}))
            >>> space.prune({"opt": "adam", "momentum": 0.9})
            {'opt': 'adam'}
        """
        return {n: values[n] for n in self.active_names(values) if n in values}

    def complete(self, values: Mapping[str, Any], seed: int | np.random.Generator = 0) -> Config:
        """``values`` made consistent with the conditions: values that became inactive
        dropped, hyperparameters that became active but are missing drawn uniformly
        (as :meth:`sample`). What a perturbation that changes a parent needs.

        Example:
            >>> space = Space(opt=Choice(["adam", "sgd"]),
            ...               momentum=Real(0.5, 0.99, when={"opt": "sgd"}))
            >>> sorted(space.complete({"opt": "sgd"}, seed=0))
            ['momentum', 'opt']
        """
        rng = _as_generator(seed)
        out = dict(values)
        for name in self._order:
            if out.get(name) is None and self.is_active(name, out):
                out[name] = self._dims[name].from_unit(rng.random(), name)
        return self.prune(out)

    def condition_text(self, name: str) -> str:
        """The condition of ``name`` as text (``""`` when unconditional).

        Example:
            >>> Space(opt=Choice(["adam", "sgd"]),
            ...       momentum=Real(0.0, 0.99, when={"opt": "sgd"})).condition_text("momentum")
            "opt in ('sgd',)"
        """
        return " and ".join(f"{p} in {v!r}" for p, v in self._dims[name].conditions.items())

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
            kind, when = d["type"], d.get("when")
            if kind == "real":
                dims[name] = Real(d["low"], d["high"], log=d["log"], static=d["static"], when=when)
            elif kind == "int":
                dims[name] = Int(d["low"], d["high"], log=d["log"], static=d["static"], when=when)
            elif kind == "choice":
                dims[name] = Choice(d["values"], static=d["static"], when=when)
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
        if not self.conditional:
            out: Config = {}
            for name, dim in self._dims.items():
                if name not in config:
                    raise ValueError(f"configuration is missing hyperparameter {name!r}")
                out[name] = dim.check(name, config[name])
            return out
        out = {}
        for name in self._order:  # parents before the dimensions they condition
            if not all(p in out and self._dims[p].key(out[p]) in keys  # out: active values
                       for p, keys in self._allowed[name]):
                if config.get(name) is not None:
                    raise ValueError(
                        f"hyperparameter {name!r} is inactive in this configuration (its "
                        f"condition {self.condition_text(name)} does not hold): leave it out "
                        f"or set it to None, got {config[name]!r}")
                continue
            if name not in config:
                raise ValueError(f"configuration is missing hyperparameter {name!r}")
            out[name] = self._dims[name].check(name, config[name])
        return {n: out[n] for n in self._dims if n in out}

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
        values = {name: dim.from_unit(x, name) for (name, dim), x in zip(self._dims.items(), u)}
        return self.prune(values) if self.conditional else values

    def to_unit(self, config: Mapping[str, Any]) -> np.ndarray:
        """Maps a configuration into the unit cube (Choice: centre of its cell; an
        inactive dimension: :data:`INACTIVE_UNIT`)."""
        return np.array([dim.to_unit(config[n]) if n in config or dim.when is None
                         else INACTIVE_UNIT for n, dim in self._dims.items()], np.float64)

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
        return tuple((n, config.get(n)) for n in self.static_names)

    def buckets(self, configs: Sequence[Mapping[str, Any]]) -> dict[tuple, list[int]]:
        """Groups configuration indices by their static values (insertion order)."""
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(configs):
            groups.setdefault(self.static_key(c), []).append(i)
        return groups

    def stack(self, configs: Sequence[Mapping[str, Any]],
              fill: Sequence[Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
        """Stacks the traced values of ``configs`` into ``(len(configs),)`` arrays.

        Reals become ``float32``, ints ``int32``; a numeric :class:`Choice` its
        values and a non-numeric :class:`Choice` the ``int32`` index of the value.

        Args:
            configs: validated configurations.
            fill: for each configuration, the values its *inactive* traced
                hyperparameters take in the arrays (the engine passes each one's
                default: the value the program uses when the space does not
                search it). A value outside the dimension is used as it is
                (``None``: NaN); a non-numeric ``Choice`` needs one of its values.

        Raises:
            ValueError: an inactive traced hyperparameter without a fill value.

        Example:
            >>> space = Space(opt=Choice(["adam", "sgd"]),
            ...               momentum=Real(0.5, 0.99, when={"opt": "sgd"}))
            >>> space.stack([{"opt": "sgd", "momentum": 0.75}, {"opt": "adam"}],
            ...             fill=[{}, {"momentum": 0.0}])["momentum"].tolist()
            [0.75, 0.0]
        """
        out = {}
        for name in self.traced_names:
            dim = self._dims[name]
            col = []
            for i, c in enumerate(configs):
                if name in c:
                    col.append(dim.encode(c[name]))
                elif fill is None or name not in fill[i]:
                    raise ValueError(f"hyperparameter {name!r} is inactive in configuration {i}; "
                                     "Space.stack needs its fill value")
                else:
                    col.append(_encode_fill(name, dim, fill[i][name]))
            out[name] = np.asarray(col, dim.dtype)
        return out

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
        return tuple(dim.key(config[name]) if name in config or dim.when is None else None
                     for name, dim in self._dims.items())

    def to_point(self, config: Mapping[str, Any]) -> list[Any]:
        """A configuration as a scikit-optimize point (choices as indices).

        An inactive dimension gets a placeholder coordinate (its first value,
        :meth:`placeholder`) that means nothing: a searcher that models points
        must mask it (see :meth:`active_mask`; the Bayesian searcher imputes a
        fixed value in its encoded space).
        """
        return [dim.to_point(config[name]) if name in config or dim.when is None
                else self.placeholder(name) for name, dim in self._dims.items()]

    def placeholder(self, name: str) -> Any:
        """The scikit-optimize coordinate :meth:`to_point` gives ``name`` when inactive."""
        dim = self._dims[name]
        return dim.to_point(dim.extremes()[0])

    def active_mask(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(len(configs), len(self))`` booleans: which hyperparameters each
        (validated) configuration holds, in :attr:`names` order."""
        return np.asarray([[n in c for n in self._dims] for c in configs], bool).reshape(
            len(configs), len(self._dims))

    def point_mask(self, columns: Sequence[Any]) -> np.ndarray:
        """``(n, len(self))`` booleans: which hyperparameters are active at ``n``
        scikit-optimize points given as one column of coordinates per dimension
        (:meth:`from_point` of each point, computed column-wise).

        Example:
            >>> space = Space(opt=Choice(["adam", "sgd"]),
            ...               momentum=Real(0.5, 0.99, when={"opt": "sgd"}))
            >>> space.point_mask([[0, 1], [0.7, 0.7]]).tolist()
            [[True, False], [True, True]]
        """
        n = len(columns[0]) if len(columns) else 0
        active: dict[str, np.ndarray] = {}
        for name in self._order:
            ok = np.ones(n, bool)
            for parent, keys in self._allowed[name]:
                pdim = self._dims[parent]
                col = columns[self.names.index(parent)]
                ok &= active[parent] & np.isin(pdim.point_keys(col), list(keys))
            active[name] = ok
        return np.stack([active[n] for n in self._dims], axis=1).reshape(n, len(self._dims))

    def from_point(self, point: Sequence[Any]) -> Config:
        """Inverse of :meth:`to_point`: Python types, clipped to the bounds.

        Example:
            >>> space = Space(n=Int(2, 9, log=True), opt=Choice(["adam", "sgd"]))
            >>> space.from_point([12.3, 1])
            {'n': 9, 'opt': 'sgd'}
        """
        values = {name: dim.from_point(x)
                  for (name, dim), x in zip(self._dims.items(), point, strict=True)}
        return self.prune(values) if self.conditional else values

    def point_key(self, point: Sequence[Any]) -> tuple:
        """``key(from_point(point))``."""
        if self.conditional:
            return self.key(self.from_point(point))
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
        """Number of distinct configurations (``inf`` when a ``Real`` can be active).

        With conditions, configurations that differ only in inactive values are one:
        the count goes over the assignments of the parents (up to a million of them;
        beyond, the count without conditions, an upper bound).

        Example:
            >>> Space(opt=Choice(["adam", "sgd"]),
            ...       nesterov=Choice([False, True], when={"opt": "sgd"})).cardinality
            3.0
        """
        flat = math.prod(float(dim.cardinality) for dim in self._dims.values())
        if not self.conditional or flat == 0:
            return flat
        parents = [n for n in self._dims if n in self.parents]
        pdims = [self._dims[p] for p in parents]
        if math.prod(float(d.cardinality) for d in pdims) > _MAX_COUNT:
            return flat
        others = [n for n in self._dims if n not in parents]
        total = 0.0
        seen: set[tuple] = set()
        for values in itertools.product(*(d.all_values() for d in pdims)):
            assignment = dict(zip(parents, values, strict=True))
            active = self.active_names(assignment)
            key = tuple((p, assignment[p]) for p in parents if p in active)
            if key in seen:  # parents inactive here: the same configurations again
                continue
            seen.add(key)
            total += math.prod(float(self._dims[n].cardinality) for n in others if n in active)
        return total

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
        return Space._narrowed({name: dim.narrow(name, dims[name]) if name in dims else dim
                                for name, dim in self._dims.items()})

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` is a valid configuration of this space."""
        try:
            self.validate(config)
        except ValueError:
            return False
        return True


def _conditions(dims: Mapping[str, Dimension], strict: bool
                ) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, frozenset], ...]]]:
    """The names in an order where parents come first, and each dimension's condition
    as ``(parent, keys of the allowed values)`` pairs.

    Raises:
        ValueError: naming the hyperparameter, for a condition on a missing, real
            or (for a static dimension) traced parent, on a value the parent does
            not have (``strict``: a sub-space may have narrowed it away), or a cycle.
    """
    allowed: dict[str, tuple[tuple[str, frozenset], ...]] = {}
    for name, dim in dims.items():
        pairs = []
        for parent, values in dim.when or ():
            if parent == name:
                raise ValueError(f"hyperparameter {name!r}: its condition names itself")
            if parent not in dims:
                raise ValueError(f"hyperparameter {name!r}: its condition names {parent!r}, "
                                 f"which the space does not define (it defines {list(dims)})")
            pdim = dims[parent]
            if not (pdim.categorical or pdim.integral):
                raise ValueError(f"hyperparameter {name!r}: its condition is on {parent!r}, a "
                                 f"{type(pdim).__name__}; a parent must be a Choice or an Int")
            if dim.static and not pdim.static:
                raise ValueError(f"hyperparameter {name!r} is static, so its condition may name "
                                 f"static hyperparameters only; {parent!r} is traced")
            keys = set()
            for v in values:
                if pdim.contains(v):
                    keys.add(pdim.key(pdim.check(parent, v)))
                elif strict:
                    raise ValueError(f"hyperparameter {name!r}: its condition names {v!r}, "
                                     f"which is not a value of {parent!r} ({pdim!r})")
            pairs.append((parent, frozenset(keys)))
        allowed[name] = tuple(pairs)
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed

    def place(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name):], name]
            raise ValueError(f"the conditions form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for parent, _ in allowed[name]:
            place(parent, [*path, name])
        state[name] = 2
        order.append(name)

    for name in dims:
        place(name, [])
    return tuple(order), allowed


def _encode_fill(name: str, dim: Dimension, value: Any) -> Any:
    """An inactive entry of a stacked array: the dimension's encoding of ``value`` when
    it is one of its values, else ``value`` itself (``None``: NaN)."""
    if value is not None and dim.contains(value):
        return dim.encode(dim.check(name, value))
    if dim.categorical and not dim.numeric:
        raise ValueError(f"hyperparameter {name!r}: its fill value {value!r} for inactive "
                         f"members is not one of its values {list(dim.values)}")
    return math.nan if value is None else value


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
