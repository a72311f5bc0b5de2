"""Trace-safe learning-rate schedules.

optax's schedule builders validate their step-count arguments in Python
(``if transition_steps <= 0``), so warmup and decay lengths, peaks or
boundaries cannot be traced arrays. The schedules here are built from
``jnp``/``lax`` operations only: *every* numeric argument may be a traced
:class:`jax.Array` (for example one value per population member inside
``jax.jit(jax.vmap(...))``), and :func:`schedule_value` even lets the schedule
*family* be traced (an ``int32`` index dispatched with :func:`jax.lax.switch`).

Conventions shared by every function:

* ``step`` comes first and may be a scalar or an array of any shape (for example
  ``jnp.arange(T)`` to evaluate a whole curve); the other scalar arguments
  broadcast against it with numpy rules. Results are ``float32`` arrays (``float64``
  when an argument is ``float64``, which needs ``jax_enable_x64``).
* Lengths (``decay_steps``, ``warmup_steps``, ``cycle_steps``, ...) are step
  counts. Before dividing, each length is clamped to at least one step
  (``jnp.maximum(n, 1)``), so a zero (or negative) length gives finite values,
  never NaN: a zero-length decay is a one-step decay (``init`` at step 0, the
  final value from step 1 on). For integer steps this is exactly the limit of
  the unclamped formula.
* Steps are converted to ``float32``, which represents every integer step
  exactly up to 2**24.

Example:
    >>> import jax, jax.numpy as jnp
    >>> args = ScheduleArgs(peak=jnp.array([1e-3, 3e-3]), end=jnp.array([0.0, 1e-4]),
    ...                     warmup_steps=jnp.array([10, 0]), total_steps=jnp.array([100, 50]),
    ...                     decay_rate=jnp.array([0.1, 0.5]),
    ...                     boundaries=jnp.array([[40, 80], [20, 30]]),
    ...                     step_factor=jnp.array([0.1, 0.5]), cycle_steps=jnp.array([20, 10]))
    >>> family = jnp.array([family_index("cosine"), family_index("step")])
    >>> curve = jax.jit(jax.vmap(lambda f, a: schedule_value(f, jnp.arange(120), a)))
    >>> curve(family, args).shape
    (2, 120)

To drive an optax optimizer, close over the (possibly traced) arguments:
``optax.adam(lambda count: schedule_value(family, count, args))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

__all__ = [
    "SCHEDULES",
    "ScheduleArgs",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "family_index",
    "inverse_sqrt",
    "knots",
    "linear_decay",
    "one_cycle",
    "piecewise_constant",
    "schedule_value",
    "triangular",
    "with_warmup",
]

SCHEDULES: tuple[str, ...] = (
    "constant",
    "linear",
    "cosine",
    "exponential",
    "step",
    "one_cycle",
    "cyclic",
    "inverse_sqrt",
    "knots",
)
"""Names of the schedule families understood by :func:`schedule_value`, in index order."""


# --------------------------------------------------------------------------- helpers


def _f32(x: ArrayLike) -> jax.Array:
    """``x`` as ``float32``; a ``float64`` array (with ``jax_enable_x64``) stays ``float64``,
    so a hypergradient checked in double precision is not rounded here."""
    x = jnp.asarray(x)
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


def _length(n: ArrayLike) -> jax.Array:
    """A length clamped to at least one step, safe to divide by."""
    return jnp.maximum(_f32(n), 1.0)


def _progress(step: ArrayLike, n: ArrayLike) -> jax.Array:
    """Fraction ``clip(step / n, 0, 1)`` of a phase of length ``n`` (clamped to >= 1)."""
    return jnp.clip(_f32(step) / _length(n), 0.0, 1.0)


def _cos_anneal(start: jax.Array, stop: jax.Array, frac: jax.Array) -> jax.Array:
    """Half-cosine interpolation from ``start`` (frac 0) to ``stop`` (frac 1)."""
    return stop + (start - stop) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


# --------------------------------------------------------------------------- primitives


def constant(step: ArrayLike, value: ArrayLike) -> jax.Array:
    """A constant schedule.

    Args:
        step: Step count(s); only its shape is used.
        value: The constant value.

    Returns:
        ``value`` broadcast to the shape of ``step`` (``float32``).

    Example:
        >>> constant(jnp.arange(3), 0.5).tolist()
        [0.5, 0.5, 0.5]
    """
    step, value = _f32(step), _f32(value)
    return jnp.broadcast_to(value, jnp.broadcast_shapes(step.shape, value.shape))


def linear_decay(
    step: ArrayLike, init: ArrayLike, end: ArrayLike, decay_steps: ArrayLike
) -> jax.Array:
    """Linear interpolation from ``init`` to ``end`` over ``decay_steps``, then ``end``.

    ``init + (end - init) * clip(step / decay_steps, 0, 1)``.

    Args:
        step: Step count(s).
        init: Value at step 0.
        end: Value from ``decay_steps`` on.
        decay_steps: Length of the decay (clamped to at least 1).

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> linear_decay(jnp.array([0, 5, 10, 20]), 1.0, 0.0, 10).tolist()
        [1.0, 0.5, 0.0, 0.0]
    """
    init, end = _f32(init), _f32(end)
    return init + (end - init) * _progress(step, decay_steps)


def cosine_decay(
    step: ArrayLike, init: ArrayLike, end: ArrayLike, decay_steps: ArrayLike
) -> jax.Array:
    """Half-cosine decay from ``init`` to ``end`` over ``decay_steps``, then ``end``.

    ``end + (init - end) * 0.5 * (1 + cos(pi * clip(step / decay_steps, 0, 1)))``.

    Args:
        step: Step count(s).
        init: Value at step 0.
        end: Value from ``decay_steps`` on.
        decay_steps: Length of the decay (clamped to at least 1).

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> v = cosine_decay(jnp.array([0, 50, 100, 150]), 1.0, 0.0, 100)
        >>> [round(x, 4) for x in v.tolist()]
        [1.0, 0.5, 0.0, 0.0]
    """
    return _cos_anneal(_f32(init), _f32(end), _progress(step, decay_steps))


def exponential_decay(
    step: ArrayLike, init: ArrayLike, rate: ArrayLike, decay_steps: ArrayLike
) -> jax.Array:
    """Exponential decay reaching ``init * rate`` at ``decay_steps``, then constant.

    ``init * rate ** clip(step / decay_steps, 0, 1)``. ``rate`` should be positive.

    Args:
        step: Step count(s).
        init: Value at step 0.
        rate: Total decay factor applied over ``decay_steps``.
        decay_steps: Length of the decay (clamped to at least 1).

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> v = exponential_decay(jnp.array([0, 5, 10, 99]), 1.0, 0.01, 10)
        >>> [round(x, 4) for x in v.tolist()]
        [1.0, 0.1, 0.01, 0.01]
    """
    return _f32(init) * jnp.power(_f32(rate), _progress(step, decay_steps))


def piecewise_constant(
    step: ArrayLike, init: ArrayLike, boundaries: ArrayLike, scales: ArrayLike
) -> jax.Array:
    """Piecewise-constant schedule: ``init`` times every scale whose boundary was reached.

    ``init * prod(scales[i] for i with step >= boundaries[i])``. Boundaries need
    not be sorted; an empty ``boundaries`` gives the constant ``init``.

    Args:
        step: Step count(s).
        init: Value before the first boundary.
        boundaries: 1-D array of ``K`` boundary steps (extra leading axes, if any,
            broadcast against ``step``).
        scales: 1-D array of ``K`` multiplicative factors, one per boundary (a
            scalar is broadcast to all boundaries).

    Returns:
        The schedule value(s), ``float32``.

    Raises:
        ValueError: If ``boundaries`` is not at least 1-D or the lengths differ.

    Example:
        >>> v = piecewise_constant(jnp.array([0, 10, 25, 99]), 1.0, [10, 20], [0.5, 0.1])
        >>> [round(x, 4) for x in v.tolist()]
        [1.0, 0.5, 0.05, 0.05]
    """
    step, bounds, scales = _f32(step), _f32(boundaries), _f32(scales)
    if bounds.ndim < 1:
        raise ValueError(f"boundaries must be a 1-D array of K steps, got shape {bounds.shape}")
    if scales.ndim > 0 and scales.shape[-1] != bounds.shape[-1]:
        raise ValueError(
            f"scales must have one entry per boundary: got {scales.shape[-1]} scales "
            f"for {bounds.shape[-1]} boundaries"
        )
    reached = step[..., None] >= bounds
    factor = jnp.prod(jnp.where(reached, scales, 1.0), axis=-1)
    return _f32(init) * factor


def one_cycle(
    step: ArrayLike,
    peak: ArrayLike,
    total_steps: ArrayLike,
    pct_start: ArrayLike = 0.3,
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
) -> jax.Array:
    """One-cycle schedule (PyTorch ``OneCycleLR`` with cosine annealing).

    Rises from ``peak / div_factor`` to ``peak`` over the first
    ``pct_start * total_steps`` steps (half cosine), then falls to
    ``peak / (div_factor * final_div_factor)`` at ``total_steps`` (half cosine)
    and stays there. Unlike PyTorch, whose phases end at ``pct_start * total - 1``
    and ``total - 1`` (its last step index), the phases here end exactly at
    ``pct_start * total_steps`` and ``total_steps``.

    Args:
        step: Step count(s).
        peak: Maximum value, reached at ``pct_start * total_steps``.
        total_steps: Length of the whole cycle.
        pct_start: Fraction of the cycle spent rising.
        div_factor: ``peak / div_factor`` is the starting value.
        final_div_factor: The final value is the starting value divided by this.

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> v = one_cycle(jnp.array([0, 30, 100, 200]), 1.0, 100)
        >>> [round(x, 6) for x in v.tolist()]
        [0.04, 1.0, 4e-06, 4e-06]
    """
    step, peak, total = _f32(step), _f32(peak), _f32(total_steps)
    initial = peak / _f32(div_factor)
    final = initial / _f32(final_div_factor)
    rise_steps = _f32(pct_start) * total
    rising = _cos_anneal(initial, peak, _progress(step, rise_steps))
    falling = _cos_anneal(peak, final, _progress(step - rise_steps, total - rise_steps))
    return jnp.where(step < rise_steps, rising, falling)


def triangular(
    step: ArrayLike, low: ArrayLike, high: ArrayLike, cycle_steps: ArrayLike
) -> jax.Array:
    """Periodic triangular wave: ``low`` at multiples of ``cycle_steps``, ``high`` halfway.

    Args:
        step: Step count(s).
        low: Value at the start (and end) of every cycle.
        high: Value at the middle of every cycle.
        cycle_steps: Period of the wave (clamped to at least 1).

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> triangular(jnp.array([0, 5, 10, 15, 20]), 0.0, 1.0, 20).tolist()
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    period = _length(cycle_steps)
    phase = jnp.mod(_f32(step), period) / period
    low, high = _f32(low), _f32(high)
    return low + (high - low) * (1.0 - jnp.abs(2.0 * phase - 1.0))


def inverse_sqrt(step: ArrayLike, peak: ArrayLike, timescale: ArrayLike) -> jax.Array:
    """Inverse-square-root decay: ``peak * sqrt(timescale / max(step, timescale))``.

    Constant ``peak`` until ``timescale``, then proportional to ``1 / sqrt(step)``.

    Args:
        step: Step count(s).
        peak: Value up to ``timescale``.
        timescale: Step at which the decay starts (clamped to at least 1).

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> inverse_sqrt(jnp.array([0, 100, 400]), 1.0, 100).tolist()
        [1.0, 1.0, 0.5]
    """
    scale = _length(timescale)
    return _f32(peak) * jnp.sqrt(scale / jnp.maximum(_f32(step), scale))


def knots(step: ArrayLike, values: ArrayLike, total_steps: ArrayLike) -> jax.Array:
    """Piecewise-linear schedule through ``K`` knots spread evenly over ``total_steps``.

    Knot ``i`` sits at step ``i * total_steps / (K - 1)``; between knots the value is
    linear, after the last one it stays at ``values[-1]``. Every knot value may be
    traced, so a learning-rate *curve* is a vector hyperparameter (its
    hypergradient has one entry per knot, see :mod:`jaxtune.hypergrad`).

    Args:
        step: Step count(s).
        values: ``(K,)`` knot values, ``K >= 2`` (extra leading axes broadcast
            against ``step``).
        total_steps: The step of the last knot (clamped to at least 1).

    Returns:
        The schedule value(s), ``float32``.

    Raises:
        ValueError: If ``values`` holds fewer than two knots.

    Example:
        >>> knots(jnp.array([0, 5, 10, 15, 30]), [1.0, 0.0, 0.5], 20).tolist()
        [1.0, 0.5, 0.0, 0.25, 0.5]
    """
    values = _f32(values)
    if values.ndim < 1 or values.shape[-1] < 2:
        raise ValueError(f"knots needs at least two knot values, got shape {values.shape}")
    k = values.shape[-1]
    pos = _progress(step, total_steps) * (k - 1)
    shape = jnp.broadcast_shapes(pos.shape, values.shape[:-1])
    pos = jnp.broadcast_to(pos, shape)
    values = jnp.broadcast_to(values, (*shape, k))
    left = jnp.clip(jnp.floor(pos), 0, k - 2)
    i = left.astype(jnp.int32)[..., None]
    lo = jnp.take_along_axis(values, i, axis=-1)[..., 0]
    hi = jnp.take_along_axis(values, i + 1, axis=-1)[..., 0]
    return lo + (hi - lo) * (pos - left)


def with_warmup(
    step: ArrayLike, warmup_steps: ArrayLike, fn: Callable[[jax.Array], jax.Array]
) -> jax.Array:
    """Prepends a linear warmup from 0 to ``fn(0)`` to the schedule ``fn``.

    For ``step < warmup_steps`` the value is ``fn(0) * step / warmup_steps``; from
    ``warmup_steps`` on it is ``fn(step - warmup_steps)``. With ``warmup_steps == 0``
    this is just ``fn(step)``. Both branches are evaluated (``jnp.where``), so
    ``fn`` must accept negative steps; every primitive here does.

    Args:
        step: Step count(s).
        warmup_steps: Length of the warmup (may be 0).
        fn: Schedule taking a ``float32`` step array.

    Returns:
        The schedule value(s), ``float32``.

    Example:
        >>> f = lambda t: linear_decay(t, 1.0, 0.0, 10)
        >>> with_warmup(jnp.array([0, 5, 10, 15, 20]), 10, f).tolist()
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    step, warmup = _f32(step), _f32(warmup_steps)
    start_value = _f32(fn(jnp.zeros((), jnp.float32)))
    ramp = start_value * jnp.clip(step / _length(warmup), 0.0, 1.0)
    return jnp.where(step < warmup, ramp, _f32(fn(step - warmup)))


# --------------------------------------------------------------------------- families


class ScheduleArgs(NamedTuple):
    """Arguments of every schedule family; each field may be a traced array.

    A schedule is a linear warmup of ``warmup_steps`` (see :func:`with_warmup`)
    followed by the family's shape, evaluated at ``t = step - warmup_steps`` with a
    decay phase of length ``D = total_steps - warmup_steps``:

    =============== ===========================================================
    family          after warmup
    =============== ===========================================================
    ``constant``    ``peak``
    ``linear``      ``linear_decay(t, peak, end, D)``
    ``cosine``      ``cosine_decay(t, peak, end, D)``
    ``exponential`` ``exponential_decay(t, peak, decay_rate, D)``
    ``step``        ``piecewise_constant(t, peak, boundaries, step_factor)``;
                    boundaries count steps from the end of warmup
    ``one_cycle``   ``one_cycle(t, peak, D)`` (default pct/div factors)
    ``cyclic``      ``triangular(t, end, peak, cycle_steps)`` (the warmup ramps
                    to ``end``, the cycle's low point)
    ``inverse_sqrt`` the usual transformer rule on the *raw* step:
                    ``peak * sqrt(w / max(step, w))`` with ``w = max(warmup_steps, 1)``
    ``knots``       ``peak * knots(t, knots, D)``: piecewise linear through ``K``
                    multipliers spread evenly over the decay phase
    =============== ===========================================================

    Fields a family does not use are ignored (but must still be arrays of a
    consistent shape).

    Attributes:
        peak: Value reached at the end of warmup.
        end: Final value (``linear``, ``cosine``) or low point (``cyclic``).
        warmup_steps: Length of the linear warmup from 0 (may be 0).
        total_steps: Step at which the decay ends (warmup included).
        decay_rate: Total factor of the ``exponential`` decay over ``D`` steps.
        boundaries: 1-D array of ``K`` boundaries of the ``step`` family.
        step_factor: Factor applied at each boundary (one value, shared by all
            ``K`` boundaries).
        cycle_steps: Period of the ``cyclic`` family.
        knots: ``(K,)`` multipliers of ``peak`` at ``K`` evenly spaced steps of the
            decay phase, linear in between (the ``knots`` family; ``K >= 2``);
            ``None``: ``(1, 1)``, a constant.

    Example:
        >>> args = ScheduleArgs(peak=1.0, end=0.0, warmup_steps=10, total_steps=110,
        ...                     decay_rate=0.1, boundaries=jnp.array([50.0]),
        ...                     step_factor=0.1, cycle_steps=20)
        >>> schedule_value(family_index("linear"), jnp.array([5, 10, 60, 200]), args).tolist()
        [0.5, 1.0, 0.5, 0.0]
    """

    peak: ArrayLike
    end: ArrayLike
    warmup_steps: ArrayLike
    total_steps: ArrayLike
    decay_rate: ArrayLike
    boundaries: ArrayLike
    step_factor: ArrayLike
    cycle_steps: ArrayLike
    knots: ArrayLike | None = None


def _decay_steps(a: ScheduleArgs) -> jax.Array:
    return a.total_steps - a.warmup_steps


def _fam_constant(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    return with_warmup(step, a.warmup_steps, lambda t: constant(t, a.peak))


def _fam_linear(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    decay = _decay_steps(a)
    return with_warmup(step, a.warmup_steps, lambda t: linear_decay(t, a.peak, a.end, decay))


def _fam_cosine(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    decay = _decay_steps(a)
    return with_warmup(step, a.warmup_steps, lambda t: cosine_decay(t, a.peak, a.end, decay))


def _fam_exponential(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    decay = _decay_steps(a)
    return with_warmup(
        step, a.warmup_steps, lambda t: exponential_decay(t, a.peak, a.decay_rate, decay)
    )


def _fam_step(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    bounds = _f32(a.boundaries)
    scales = jnp.broadcast_to(jnp.expand_dims(_f32(a.step_factor), -1), bounds.shape)
    return with_warmup(
        step, a.warmup_steps, lambda t: piecewise_constant(t, a.peak, bounds, scales)
    )


def _fam_one_cycle(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    decay = _decay_steps(a)
    return with_warmup(step, a.warmup_steps, lambda t: one_cycle(t, a.peak, decay))


def _fam_cyclic(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    return with_warmup(step, a.warmup_steps, lambda t: triangular(t, a.end, a.peak, a.cycle_steps))


def _fam_inverse_sqrt(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    warmup = a.warmup_steps
    timescale = jnp.maximum(warmup, 1.0)
    # ``t + warmup`` is the raw step: the decay is peak * sqrt(w / step) after warmup.
    return with_warmup(step, warmup, lambda t: inverse_sqrt(t + warmup, a.peak, timescale))


def _fam_knots(step: jax.Array, a: ScheduleArgs) -> jax.Array:
    decay = _decay_steps(a)
    return with_warmup(step, a.warmup_steps,
                       lambda t: _f32(a.peak) * knots(t, a.knots, decay))


_SCHEDULE_FNS: dict[str, Callable[[jax.Array, ScheduleArgs], jax.Array]] = {
    "constant": _fam_constant,
    "linear": _fam_linear,
    "cosine": _fam_cosine,
    "exponential": _fam_exponential,
    "step": _fam_step,
    "one_cycle": _fam_one_cycle,
    "cyclic": _fam_cyclic,
    "inverse_sqrt": _fam_inverse_sqrt,
    "knots": _fam_knots,
}
assert tuple(_SCHEDULE_FNS) == SCHEDULES


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    families = tuple(families)
    if not families:
        raise ValueError(
            f"families must name at least one schedule family; valid families: {SCHEDULES}"
        )
    for name in families:
        if not isinstance(name, str) or name not in _SCHEDULE_FNS:
            raise ValueError(f"unknown schedule family {name!r}; valid families: {SCHEDULES}")
    return families


def family_index(name: str, families: Sequence[str] = SCHEDULES) -> int:
    """Index of the family ``name`` within ``families``, for :func:`schedule_value`.

    Args:
        name: A family name, e.g. ``"cosine"``.
        families: The static family tuple the index refers to.

    Returns:
        The position of ``name`` in ``families``.

    Raises:
        ValueError: If ``name`` (or an entry of ``families``) is not a known family,
            or ``name`` is not among ``families``.

    Example:
        >>> family_index("cosine")
        2
        >>> family_index("cosine", families=("step", "cosine"))
        1
    """
    families = _check_families(families)
    if not isinstance(name, str) or name not in _SCHEDULE_FNS:
        raise ValueError(f"unknown schedule family {name!r}; valid families: {SCHEDULES}")
    if name not in families:
        raise ValueError(f"schedule family {name!r} is not among the selected families {families}")
    return families.index(name)


def schedule_value(
    family: ArrayLike | str,
    step: ArrayLike,
    args: ScheduleArgs,
    families: Sequence[str] = SCHEDULES,
) -> jax.Array:
    """Value of the schedule ``families[family]`` with arguments ``args`` at ``step``.

    See :class:`ScheduleArgs` for what each family computes. Only the families
    listed in ``families`` are compiled into the :func:`jax.lax.switch`; with a
    single family there is no switch at all (and ``family`` is ignored).

    Args:
        family: Integer index into ``families``; may be a traced scalar (under
            ``jax.vmap`` one index per member). A traced index out of range is
            clamped by ``lax.switch``; a concrete one raises. A family name is
            also accepted and converted with :func:`family_index`.
        step: Step count(s), any shape.
        args: The schedule arguments; every field may be traced.
        families: Static tuple of family names (a subset of :data:`SCHEDULES`, in
            any order) that ``family`` indexes.

    Returns:
        ``float32`` array of shape ``broadcast(step, scalar args,
        boundaries.shape[:-1])``.

    Raises:
        ValueError: On an unknown family name, an empty ``families``, or a concrete
            index out of range.

    Example:
        >>> args = ScheduleArgs(peak=1.0, end=0.0, warmup_steps=0, total_steps=100,
        ...                     decay_rate=0.1, boundaries=jnp.array([50.0]),
        ...                     step_factor=0.1, cycle_steps=20)
        >>> fams = ("cosine", "step")
        >>> pick = jax.jit(lambda f: schedule_value(f, jnp.array([0, 50, 100]), args, fams))
        >>> [round(x, 4) for x in pick(1).tolist()]
        [1.0, 0.1, 0.1]
    """
    families = _check_families(families)
    if isinstance(family, str):
        family = family_index(family, families)
    elif isinstance(family, (int, np.integer)) and not 0 <= family < len(families):
        raise ValueError(
            f"family index {family} out of range for the {len(families)} families {families}"
        )

    if args.knots is None:
        args = args._replace(knots=jnp.ones(2, jnp.result_type(_f32(args.peak))))
    a = ScheduleArgs(*(_f32(x) for x in args))
    if a.boundaries.ndim < 1:
        raise ValueError(
            f"ScheduleArgs.boundaries must be a 1-D array of K steps, got shape "
            f"{a.boundaries.shape}"
        )
    step = _f32(step)
    if a.knots.ndim < 1 or a.knots.shape[-1] < 2:
        raise ValueError(f"ScheduleArgs.knots must be a 1-D array of K >= 2 values, got shape "
                         f"{a.knots.shape}")
    scalar_shapes = [x.shape for name, x in a._asdict().items()
                     if name not in ("boundaries", "knots")]
    shape = jnp.broadcast_shapes(step.shape, a.boundaries.shape[:-1], a.knots.shape[:-1],
                                 *scalar_shapes)

    dtype = jnp.result_type(step, *a)

    def branch(name: str) -> Callable[[jax.Array, ScheduleArgs], jax.Array]:
        fn = _SCHEDULE_FNS[name]
        return lambda s, x: jnp.broadcast_to(_f32(fn(s, x)).astype(dtype), shape)

    branches = [branch(name) for name in families]
    if len(branches) == 1:
        return branches[0](step, a)
    return lax.switch(jnp.asarray(family, jnp.int32), branches, step, a)
