"""The searcher base class and the simple searchers: grid, random, quasi-random.

:class:`Searcher` keeps the bookkeeping every searcher shares (told and
pending configurations, the diverged policy, the no-repeat rule, sub-space
asks); a searcher subclass only implements :meth:`Searcher._propose`. The
conventions are those of :mod:`jaxtune.search`.

Example:
    >>> from jaxtune.space import Choice, Int, Space
    >>> space = Space(opt=Choice(["adam", "sgd"]), depth=Int(1, 3))
    >>> grid = GridSearcher(space)
    >>> grid.ask(2)
    [{'opt': 'adam', 'depth': 1}, {'opt': 'adam', 'depth': 2}]
    >>> grid.ask(2, within=space.subspace(opt="sgd"))
    [{'opt': 'sgd', 'depth': 1}, {'opt': 'sgd', 'depth': 2}]
    >>> qr = QuasiRandomSearcher(space, seed=0)
    >>> batch = qr.ask(3)
    >>> qr.tell(batch, [0.5, None, 0.2])     # None: diverged
    >>> len(qr.ask(10))                        # 6 configurations in all
    3
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from jaxtune.space import Space

__all__ = [
    "MAX_GRID_POINTS",
    "GridSearcher",
    "QuasiRandomSearcher",
    "RandomSearcher",
    "Searcher",
]

Config = dict[str, Any]
Key = tuple

#: The most points a grid (or an exhaustive top-up of a finite space) enumerates.
MAX_GRID_POINTS = 1_000_000


def _as_loss(value: Any) -> float:
    """A told loss as float, NaN for a diverged trial (None or non-finite)."""
    if value is None:
        return math.nan
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a loss must be a number or None, got {value!r}") from None
    return v if math.isfinite(v) else math.nan


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspecting the loaded libraries takes ~0.1 s: once


def _one_blas_thread():
    """Limits BLAS/OpenMP to one thread (a context manager)."""
    return _blas_controller().limit(limits=1)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return int(seed)


def _check_count(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    return int(n)


class Searcher:
    """Base class: bookkeeping of seen/pending configurations and told losses.

    Subclasses implement :meth:`_propose`, which must return configurations of
    the space it is given (``None``: :attr:`space`; else a subspace) whose keys
    are not :meth:`is_taken` (and distinct among themselves).

    Args:
        space: the search space.
        seed: an ``int``; all randomness derives from it.
        diverged: ``"penalty"`` or ``"exclude"`` (see :mod:`jaxtune.search`).
    """

    name = "searcher"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty"):
        if not isinstance(space, Space):
            raise TypeError(f"space must be a jaxtune Space, got {type(space).__name__}")
        if diverged not in ("penalty", "exclude"):
            raise ValueError(f"diverged must be 'penalty' or 'exclude', got {diverged!r}")
        self.space = space
        self.seed = _check_seed(seed)
        self.diverged = diverged
        self._rng = np.random.default_rng(self.seed)
        self._seen: dict[Key, Config] = {}
        self._pending: dict[Key, Config] = {}
        self._configs: list[Config] = []
        self._losses: list[float] = []
        self._fidelities: list[float] = []  # fraction of the full budget behind each loss
        self._version = 0  # incremented by every non-empty tell
        self.last_ask_s = 0.0

    # -- public API -------------------------------------------------------------------
    def ask(self, n: int, within: Space | None = None) -> list[Config]:
        """Returns up to ``n`` new configurations (fewer only if the space is exhausted).

        Args:
            n: number of configurations wanted.
            within: a subspace of :attr:`space` (the same names, every
                dimension inside the original, see :meth:`Space.subspace`);
                every proposal lies in it. ``None``: the whole space.

        Raises:
            ValueError: a negative ``n``, or ``within`` not a subspace.
        """
        n = _check_count("ask(n): n", n)
        t0 = time.perf_counter()
        space = self._subspace(within)
        out: list[Config] = []
        if n > 0:
            with _one_blas_thread():
                proposals = self._propose(n) if space is self.space else self._propose(n, space)
            for c in proposals:
                k = self.space.key(c)
                if self.is_taken(k) or not space.contains(c):  # pragma: no cover - a bug guard
                    raise RuntimeError(f"{type(self).__name__} proposed a repeated config or "
                                       f"one outside the subspace: {c}")
                self._pending[k] = c
                out.append(dict(c))
        self.last_ask_s = time.perf_counter() - t0
        return out

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float | None],
             fidelities: Sequence[float] | None = None) -> None:
        """Records the losses (to minimise; ``None``/NaN/inf = diverged) of ``configs``.

        Configurations that were never asked (a resumed history) are accepted.

        Args:
            configs: the configurations.
            losses: their losses.
            fidelities: for each loss, the fraction of the full training budget it
                was measured at, in ``(0, 1]`` (a trial pruned after 250 of 1500
                steps: ``1/6``); default 1 (the full budget). Searchers that model
                fidelity (:class:`~jaxtune.search.BayesSearcher`) use it as an
                input of their surrogate; the others ignore it.

        Raises:
            ValueError: lengths differ, a configuration is invalid for the space,
                a loss is not a number/None, or a fidelity is outside ``(0, 1]``.
        """
        if isinstance(configs, Mapping):
            raise ValueError("tell expects a sequence of configurations, got a single dict")
        configs = list(configs)
        losses = list(losses)
        if len(configs) != len(losses):
            raise ValueError(f"tell: {len(configs)} configurations but {len(losses)} losses")
        checked = []
        for i, c in enumerate(configs):
            try:
                checked.append(self.space.validate(c))
            except ValueError as e:
                raise ValueError(f"tell: configuration {i}: {e}") from None
        values = [_as_loss(v) for v in losses]
        fids = [1.0] * len(values) if fidelities is None else [float(f) for f in fidelities]
        if len(fids) != len(values):
            raise ValueError(f"tell: {len(values)} losses but {len(fids)} fidelities")
        if not all(0.0 < f <= 1.0 for f in fids):
            raise ValueError(f"tell: fidelities must be in (0, 1], got {fids}")
        for c, v, f in zip(checked, values, fids, strict=True):
            k = self.space.key(c)
            self._pending.pop(k, None)
            self._seen[k] = c
            self._configs.append(c)
            self._losses.append(v)
            self._fidelities.append(f)
        if checked:
            self._version += 1

    def add_pending(self, configs: Sequence[Mapping[str, Any]]) -> None:
        """Marks configurations as being evaluated (pending) without asking for them:
        what a resumed study does with the trials it trains again, so that they are
        never proposed twice (and Bayesian search fantasises them)."""
        for i, c in enumerate(configs):
            try:
                checked = self.space.validate(c)
            except ValueError as e:
                raise ValueError(f"add_pending: configuration {i}: {e}") from None
            k = self.space.key(checked)
            if k not in self._seen:
                self._pending[k] = checked

    def is_taken(self, key: Key) -> bool:
        """Whether a canonical key (:meth:`Space.key`) was already told or is pending."""
        return key in self._seen or key in self._pending

    @property
    def n_told(self) -> int:
        return len(self._configs)

    @property
    def pending(self) -> list[Config]:
        """Configurations asked but not told yet (in ask order)."""
        return [dict(c) for c in self._pending.values()]

    @property
    def n_finite(self) -> int:
        """Number of told trials with a finite loss."""
        return int(np.isfinite(np.asarray(self._losses, np.float64)).sum())

    def observations(self) -> tuple[list[Config], np.ndarray]:
        """The told history after applying the ``diverged`` policy.

        Returns:
            ``(configs, losses)``: every loss finite; diverged trials carry the
            worst finite loss (``"penalty"``) or are dropped (``"exclude"``, or
            while no finite loss exists).
        """
        configs, y, _ = self.observations_with_fidelity()
        return configs, y

    def observations_with_fidelity(self) -> tuple[list[Config], np.ndarray, np.ndarray]:
        """:meth:`observations` and, aligned with them, each loss's fidelity."""
        y = np.asarray(self._losses, np.float64)
        fid = np.asarray(self._fidelities, np.float64)
        finite = np.isfinite(y)
        if self.diverged == "penalty" and finite.any():
            y = np.where(finite, y, y[finite].max())
            return list(self._configs), y, fid
        return ([c for c, f in zip(self._configs, finite, strict=True) if f], y[finite],
                fid[finite])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(seed={self.seed}, told={self.n_told}, "
                f"pending={len(self._pending)})")

    # -- helpers for subclasses -------------------------------------------------------
    def _propose(self, n: int, space: Space | None = None) -> list[Config]:  # pragma: no cover
        """Up to ``n`` new configurations of ``space``: a subspace, or ``None`` for
        :attr:`space`. A subclass whose ``_propose(n)`` takes no ``space`` supports
        whole-space asks only."""
        raise NotImplementedError

    def _subspace(self, within: Space | None) -> Space:
        """``within`` checked against :attr:`space` and rebuilt in its order."""
        if within is None or within is self.space:
            return self.space
        if not isinstance(within, Space):
            raise ValueError(f"within must be a jaxtune Space, got {type(within).__name__}")
        if len(inspect.signature(self._propose).parameters) < 2:
            raise TypeError(f"{type(self).__name__} does not support ask(n, within=...)")
        if set(within.names) != set(self.space.names):
            raise ValueError(f"within must have the searcher's hyperparameters "
                             f"{list(self.space.names)}, got {list(within.names)}")
        return self.space.subspace(**dict(within.items()))

    def _n_taken(self, space: Space) -> int:
        """How many told or pending configurations lie in ``space``."""
        if space is self.space:
            return len(self._seen) + len(self._pending)
        taken = itertools.chain(self._seen.values(), self._pending.values())
        return sum(space.contains(c) for c in taken)

    def _unit_stream(self) -> Iterator[np.ndarray]:
        """Uniform points of the unit cube from the searcher's generator (an iterator
        that pickles with the searcher, as checkpoints need)."""
        return _UnitStream(self._rng, len(self.space))

    def _add_new(self, candidates: Iterator[Config], n: int, out: list[Config],
                 keys: set[Key], room: float = math.inf) -> list[Config]:
        """Appends to ``out`` the configurations of ``candidates`` that are neither taken
        nor in ``keys``, until ``out`` holds ``n``, ``keys`` holds ``room`` or the
        candidates run out. Never draws a candidate more than needed."""
        while len(out) < n and len(keys) < room:
            c = next(candidates, None)
            if c is None:
                break
            k = self.space.key(c)
            if k in keys or self.is_taken(k):
                continue
            keys.add(k)
            out.append(c)
        return out

    def _collect(self, units: Iterator[np.ndarray], n: int, space: Space,
                 into: list[Config] | None = None,
                 keys: set[Key] | None = None) -> list[Config]:
        """Maps points of ``units`` with ``space.from_unit`` and keeps the new ones.

        Draws at most ``100 n + 1000`` points and never one more than needed,
        so a deterministic stream continues where the previous call stopped.
        """
        card = space.cardinality
        room = card - self._n_taken(space) if math.isfinite(card) else math.inf
        draws = (space.from_unit(next(units)) for _ in range(100 * n + 1000))
        return self._add_new(draws, n, [] if into is None else into,
                             set() if keys is None else keys, room)

    def _fill_by_enumeration(self, out: list[Config], n: int, keys: set[Key],
                             space: Space) -> list[Config]:
        """Tops up ``out`` from the remaining points of a finite ``space`` (random order)."""
        card = space.cardinality
        if len(out) >= n or not math.isfinite(card) or card > MAX_GRID_POINTS:
            return out
        axes = [dim.all_values() for _, dim in space.items()]
        sizes = [len(a) for a in axes]
        size = math.prod(sizes)  # with conditions, more points than configurations
        if size > MAX_GRID_POINTS:
            return out

        def config(flat: int) -> Config:
            idx = []
            for s in reversed(sizes):
                flat, r = divmod(flat, s)
                idx.append(r)
            return space.prune({nm: ax[i] for nm, ax, i in zip(space.names, axes, reversed(idx),
                                                               strict=True)})

        order = (config(int(flat)) for flat in self._rng.permutation(size))
        return self._add_new(order, n, out, keys)

    def _sample(self, units: Iterator[np.ndarray], n: int, space: Space) -> list[Config]:
        """:meth:`_collect` from ``units``, then the rest of a finite space."""
        keys: set[Key] = set()
        out = self._collect(units, n, space, keys=keys)
        return self._fill_by_enumeration(out, n, keys, space)


# --------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------
class GridSearcher(Searcher):
    """Exhaustive search over the cartesian product of per-dimension grids.

    The order is ``itertools.product`` over the dimensions in space order (the
    last dimension varies fastest). Per dimension: a ``Choice`` contributes all
    its values; an ``Int`` all its integers when the range has at most 64,
    otherwise ``resolution`` distinct integers (log-spaced if ``log``); a
    ``Real`` ``resolution`` points including both bounds (log-spaced if ``log``).
    ``ask(n, within=sub)`` gives the first grid points inside ``sub`` that are
    not taken, in the same order. With conditional dimensions the grid is a
    tree walked in :attr:`Space.condition_order` (parents first, then space
    order): a dimension's axis is enumerated only where it is active, so every
    configuration appears once and :attr:`size` counts configurations.

    Args:
        space: the search space.
        resolution: points per ``Real`` (and per large ``Int``) axis.
        seed: unused by the grid itself (kept for a uniform signature).

    Raises:
        ValueError: a ``Real`` or large ``Int`` without ``resolution`` (naming
            it), a non-positive ``resolution``, or more than 1e6 grid points.
    """

    name = "grid"

    def __init__(self, space: Space, resolution: int | None = None, *, seed: int = 0,
                 diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        if resolution is not None and (isinstance(resolution, bool)
                                       or not isinstance(resolution, (int, np.integer))
                                       or resolution < 1):
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.resolution = None if resolution is None else int(resolution)
        self.axes = [dim.grid_axis(name, self.resolution) for name, dim in space.items()]
        self.size = (_tree_size(space, self.axes) if space.conditional
                     else math.prod(len(a) for a in self.axes))
        if self.size > MAX_GRID_POINTS:
            shape = " x ".join(f"{n}={len(a)}" for n, a in zip(space.names, self.axes, strict=True))
            raise ValueError(
                f"grid has {self.size:,} points ({shape}), more than the limit of "
                f"{MAX_GRID_POINTS:,}; lower resolution, use Choice with fewer values, or use "
                "the random/quasirandom/bayes searchers"
            )
        self._iter: Iterator[Config] = _GridIterator(space, self.axes)

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        if space is None:
            points = self._iter  # consumed: the next ask continues from here
        else:
            dims = [dim for _, dim in space.items()]
            points = _grid_points(self.space, [[v for v in axis if dim.contains(v)]
                                               for axis, dim in zip(self.axes, dims, strict=True)])
        out: list[Config] = []
        for c in points:
            if not self.is_taken(self.space.key(c)):
                out.append(c)
                if len(out) >= n:
                    break
        return out


def _grid_points(space: Space, axes: Sequence[Sequence[Any]]) -> Iterator[Config]:
    """The grid's configurations: ``itertools.product`` of the axes in space order (the
    last dimension fastest); with conditions, a tree in the conditions' order (parents
    first), where an inactive dimension is skipped, so no configuration repeats."""
    if not space.conditional:
        for values in itertools.product(*axes):
            yield dict(zip(space.names, values, strict=True))
        return
    by_name = dict(zip(space.names, axes, strict=True))
    order = space.condition_order

    def walk(i: int, values: Config) -> Iterator[Config]:
        if i == len(order):
            yield {n: values[n] for n in space.names if n in values}
            return
        name = order[i]
        if not space.is_active(name, values):
            yield from walk(i + 1, values)
            return
        for v in by_name[name]:
            yield from walk(i + 1, {**values, name: v})

    yield from walk(0, {})


class _GridIterator:
    """:func:`_grid_points` as an iterator that pickles: its position is a count, and a
    copy restored from a pickle skips the points already taken."""

    def __init__(self, space: Space, axes: Sequence[Sequence[Any]]):
        self.space, self.axes, self.done = space, axes, 0
        self._points: Iterator[Config] | None = None

    def __iter__(self) -> _GridIterator:
        return self

    def __next__(self) -> Config:
        if self._points is None:
            self._points = itertools.islice(_grid_points(self.space, self.axes), self.done, None)
        c = next(self._points)
        self.done += 1
        return c

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_points": None}


def _tree_size(space: Space, axes: Sequence[Sequence[Any]]) -> int:
    """How many configurations :func:`_grid_points` yields (branching only on parents)."""
    by_name = dict(zip(space.names, axes, strict=True))
    order = space.condition_order
    parents = space.parents

    def count(i: int, values: Config) -> int:
        if i == len(order):
            return 1
        name = order[i]
        if not space.is_active(name, values):
            return count(i + 1, values)
        if name not in parents:
            return len(by_name[name]) * count(i + 1, values)
        return sum(count(i + 1, {**values, name: v}) for v in by_name[name])

    return count(0, {})


# --------------------------------------------------------------------------------------
# random and quasi-random
# --------------------------------------------------------------------------------------
class RandomSearcher(Searcher):
    """Independent uniform (log-uniform where ``log=True``) samples.

    Each configuration is :meth:`Space.from_unit` of a uniform point drawn from
    one ``numpy.random.Generator`` seeded once (as :meth:`Space.sample`); with
    ``ask(n, within=sub)`` the point is mapped with ``sub.from_unit``, which
    samples the subspace uniformly. In a finite space, once random draws stop
    finding new configurations, the remaining ones are enumerated.
    """

    name = "random"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        self._units = self._unit_stream()

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        return self._sample(self._units, n, self.space if space is None else space)


def _primes(n: int) -> list[int]:
    """The first ``n`` primes."""
    out: list[int] = []
    k = 2
    while len(out) < n:
        if all(k % p for p in out if p * p <= k):
            out.append(k)
        k += 1
    return out


class _UnitStream:
    """Uniform points of the unit cube from a numpy generator, as an iterator that
    pickles (a generator function's iterator does not)."""

    def __init__(self, rng: np.random.Generator, dims: int):
        self.rng, self.dims = rng, int(dims)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return self.rng.random(self.dims)


class _HaltonStream:
    """Scrambled Halton points of the unit cube, drawn in blocks, never re-drawn.

    Dimension ``j`` is the radical inverse of the point's index in the ``j``-th
    prime base ``b``, each digit position with its own random permutation of the
    digits ``0..b-1`` drawn from ``seed`` (random digit scrambling, as
    ``scipy.stats.qmc.Halton(scramble=True)`` does; written here in numpy since
    importing ``scipy.stats`` takes about a second at a study's start). Digits are
    taken to float64 precision. A scramble is a bijection on each digit, so the
    first ``b**k`` points still put exactly one point in each interval
    ``[i / b**k, (i + 1) / b**k)`` of every dimension.

    Example:
        >>> pts = _HaltonStream(2, seed=0).block(4)
        >>> sorted((pts[:, 0] * 4).astype(int).tolist())  # one point per quarter
        [0, 1, 2, 3]
    """

    def __init__(self, dims: int, seed: int):
        rng = np.random.default_rng(seed)
        self.bases = _primes(dims)
        # digits of a float64 mantissa in each base, each position its own permutation
        self.perms = [np.stack([rng.permutation(b) for _ in range(math.ceil(53 / math.log2(b)))])
                      for b in self.bases]
        self.index = 0

    def block(self, n: int) -> np.ndarray:
        """The next ``n`` points, shape ``(n, dims)``."""
        idx = np.arange(self.index, self.index + n, dtype=np.int64)
        self.index += n
        out = np.zeros((n, len(self.bases)))
        for j, (base, perms) in enumerate(zip(self.bases, self.perms)):
            rest, scale = idx.copy(), 1.0 / base
            for perm in perms:
                out[:, j] += perm[rest % base] * scale
                rest //= base
                scale /= base
        return np.minimum(out, np.nextafter(1.0, 0.0))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        """The next point, drawn in blocks of 32 (the stream pickles: checkpoints)."""
        if not getattr(self, "_buffer", None):
            self._buffer = list(self.block(32))
        return self._buffer.pop(0)


class QuasiRandomSearcher(Searcher):
    """A scrambled Halton sequence (random digit permutations drawn from ``seed``).

    Points are mapped into the space with :meth:`Space.from_unit` (with
    ``ask(n, within=sub)``: ``sub.from_unit``); points that map to an already
    seen/pending configuration (discrete spaces) are skipped. Consumed points
    are not redrawn, so a searcher resumed with the same seed skips its own
    earlier proposals.
    """

    name = "quasirandom"

    def __init__(self, space: Space, *, seed: int = 0, diverged: str = "penalty"):
        super().__init__(space, seed=seed, diverged=diverged)
        self._halton = iter(_HaltonStream(len(space), self.seed))

    def _propose(self, n: int, space: Space | None = None) -> list[Config]:
        return self._sample(self._halton, n, self.space if space is None else space)
