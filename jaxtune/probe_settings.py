"""Which probes the engine computes, and when: :class:`Probes`, plain settings.

The settings live apart from the probing runtime (:mod:`jaxtune.probing`, which
builds one member's probe function from them) so that an
:class:`~jaxtune.Experiment` can hold them without importing the runtime.

Example:
    >>> Probes(every=2, final=False).due(1), Probes(every=2, final=False).due(2)
    (True, False)
"""

from __future__ import annotations

import dataclasses

__all__ = ["Probes"]


@dataclasses.dataclass(frozen=True)
class Probes:
    """Which probes the engine computes for every member, and how often.

    Args:
        every: probe after every ``every``-th chunk (chunk ``every``, ``2 every``,
            ...; a chunk is ``Experiment.eval_every`` steps); ``None``: only where
            members end (``final``).
        final: also probe after the chunk in which a member ends (its step budget
            spent, stopped or diverged), so its final value is measured on its
            final parameters whatever ``every`` is.
        sharpness: the top Hessian eigenvalue by ``order`` Lanczos steps.
        order: Lanczos steps (Hessian-vector products) per member.
        epsilon: Keskar et al.'s epsilon-sharpness with this box size
            (``None``: off), by ``ascent_steps`` projected sign-gradient steps.
        ascent_steps: gradient steps of the epsilon-sharpness ascent.
        examples: rows of the training split the curvature probes read (at most
            the split).
        noise_scale: the gradient noise scale from ``draws`` batches of ``b_big``
            rows, each cut into slices of ``b_small``
            (:func:`jaxtune.probes.gradient_noise_scale`), with its standard error
            (``probe_noise_scale_se``). Read the value with its error: one
            estimate is noisy, and unreliable where ``B_simple`` is far above
            ``b_big`` (near a minimum). With the defaults the relative error was
            measured below 30% for ``b_small / 4 <= B_simple <= b_big / 8`` and
            about 36% at ``b_big / 2.3`` (``docs/probes.md``); the estimator
            before the slices, with 4 draws, was negative in about 30% of the draws
            at ``B_simple`` = 6-8.
        b_small, b_big, draws: the noise-scale estimator's batch sizes (``b_big`` a
            multiple of ``b_small``) and draws (``>= 2`` for a standard error).
        norms: the weight norm and the distance from initialization.

    Example:
        >>> Probes(every=4, noise_scale=False).names
        ('probe_sharpness', 'probe_weight_norm', 'probe_distance')
    """

    every: int | None = None
    final: bool = True
    sharpness: bool = True
    order: int = 20
    epsilon: float | None = None
    ascent_steps: int = 10
    examples: int = 512
    noise_scale: bool = True
    b_small: int = 32
    b_big: int = 512
    draws: int = 8
    norms: bool = True

    def __post_init__(self) -> None:
        for name in ("every", "order", "ascent_steps", "examples", "b_small", "b_big", "draws"):
            v = getattr(self, name)
            if name == "every" and v is None:
                if not self.final:
                    raise ValueError("Probes: every=None and final=False probe nothing")
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Probes.{name} must be a positive int, got {v!r}")
        if self.b_big <= self.b_small:
            raise ValueError(f"Probes: b_big ({self.b_big}) must exceed b_small ({self.b_small})")
        if self.b_big % self.b_small:
            raise ValueError(f"Probes: b_big ({self.b_big}) must be a multiple of b_small "
                             f"({self.b_small})")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"Probes.epsilon must be positive (or None), got {self.epsilon!r}")
        if not self.names:
            raise ValueError("Probes: every probe is off; pass probes=None instead")

    @property
    def names(self) -> tuple[str, ...]:
        """The curves the probes add, in order."""
        out = ["probe_sharpness"] * self.sharpness
        out += ["probe_eps_sharpness"] * (self.epsilon is not None)
        if self.noise_scale:
            out += ["probe_noise_scale", "probe_grad_sq_norm", "probe_trace_cov",
                    "probe_noise_scale_se"]
        if self.norms:
            out += ["probe_weight_norm", "probe_distance"]
        return tuple(out)

    def due(self, chunk: int) -> bool:
        """Whether the boundary after chunk ``chunk`` (0-based) is a periodic probe."""
        return self.every is not None and (chunk + 1) % self.every == 0
