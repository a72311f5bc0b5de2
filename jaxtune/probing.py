"""Probes inside the engine: which to compute for every member, and when.

``Experiment(probes=Probes(...))`` asks the engine to measure every member of
a running population at chosen chunk boundaries and where they end, all members at once (one
vmapped program per bucket, compiled the first time it is needed). The values
join the learning curves as ``probe_<name>`` (NaN at chunks not probed) and go
wherever curves go: :class:`~jaxtune.PopulationResult`, the study store, the
report. Without ``probes`` (the default) nothing is traced or compiled.

=====================  ==========================================================
curve                  what (see :mod:`jaxtune.probes` and ``docs/probes.md``)
=====================  ==========================================================
``probe_sharpness``    top Hessian eigenvalue of the training loss (Lanczos)
``probe_eps_sharpness`` Keskar et al.'s epsilon-sharpness in percent (``epsilon``)
``probe_noise_scale``  McCandlish et al.'s ``B_simple`` (with ``probe_grad_sq_norm``
                       and ``probe_trace_cov``, its two unbiased parts, and
                       ``probe_noise_scale_se``, its standard error from the draws)
``probe_weight_norm``  L2 norm of all parameters
``probe_distance``     L2 distance from the member's initial parameters
=====================  ==========================================================

The curvature probes read a fixed subset of the training split (its first
``examples`` rows; the split is shuffled when it is made); the noise scale
draws its batches from the whole training split. The generalization gap needs
no probe: every chunk already evaluates the full training and validation splits
(``train_loss``, ``val_loss``, ...), and :func:`jaxtune.probes.generalization_gaps`
turns them into gaps. Steps to a target come from the curves too
(:func:`jaxtune.probes.steps_to_target`).

Each member's probe key derives from its member key and the chunk, so a probe
is reproducible and independent of the population it ran in.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=64, n_test=16, dim=3),
    ...     model=jt.models.MLP(width=4, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), steps=4, eval_every=2,
    ...     defaults={"batch_size": 8},
    ...     probes=jt.Probes(every=2, final=False, examples=32, order=4, b_small=4, b_big=16,
    ...                      draws=2))
    >>> r = jt.train_population(exp, [{"lr": 0.01}, {"lr": 0.05}], verbose=False)
    >>> r.curves["probe_sharpness"].shape           # members x evaluations
    (2, 2)
    >>> import math; math.isnan(r.curves["probe_sharpness"][0, 0])   # chunk 1: not probed
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxtune import probes as P
from jaxtune.probe_settings import Probes

if TYPE_CHECKING:
    from jaxtune.experiment import Experiment
    from jaxtune.train import MemberProgram, MemberState

__all__ = ["Probes", "make_probe", "probe_keys"]


def _with_state(loss_fn: Callable[..., jax.Array], model_state: Any, params: Any,
                batch: Any) -> jax.Array:
    return loss_fn({**params, **model_state}, batch)


def probe_keys(member_key: jax.Array, chunk: ArrayLike) -> jax.Array:
    """The keys of one member's probes after chunk ``chunk``: (Lanczos, epsilon, noise).

    Example:
        >>> probe_keys(jax.random.key(0), 3).shape
        (3,)
    """
    key = jax.random.fold_in(jax.random.fold_in(member_key, 0x70726F62), chunk)
    return jax.random.split(key, 3)


def make_probe(experiment: Experiment, static: Mapping[str, Any], member: MemberProgram
               ) -> Callable[[MemberState, Mapping[str, jax.Array], jax.Array, jax.Array],
                             dict[str, jax.Array]]:
    """One member's probe: ``probe(state, data, member_key, chunk) -> {curve: scalar}``.

    ``data`` is the engine's training arrays (``x_train``, ``y_train``, ...),
    ``member_key`` the key the member was initialized from (its initial
    parameters are recreated from it for the distance), ``chunk`` the chunk index
    the probe key is folded with. Vmap it over a population.
    """
    spec = experiment.probes
    if spec is None:
        raise ValueError("the experiment has no probes")
    base_loss = P.make_loss_fn(experiment, static)
    n_sub = min(spec.examples, experiment.data.x_train.shape[0])

    def probe(state, data, member_key, chunk):
        k_hess, k_eps, k_noise = probe_keys(member_key, chunk)
        x, y = data["x_train"], data["y_train"]
        subset = (x[:n_sub], y[:n_sub])
        params = state.params
        if state.model_state:  # the model's state (batch statistics) is held fixed
            loss_fn = functools.partial(_with_state, base_loss, state.model_state)
        else:
            loss_fn = base_loss
        out = {}
        if spec.sharpness:
            out["probe_sharpness"] = P.hessian_lanczos(loss_fn, params, subset, k_hess,
                                                       order=spec.order).top
        if spec.epsilon is not None:
            out["probe_eps_sharpness"] = P.epsilon_sharpness(
                loss_fn, params, subset, k_eps, eps=spec.epsilon,
                steps=spec.ascent_steps).sharpness
        if spec.noise_scale:
            ns = P.gradient_noise_scale(loss_fn, params, (x, y), k_noise, b_small=spec.b_small,
                                        b_big=spec.b_big, draws=spec.draws)
            out.update(probe_noise_scale=ns.b_simple, probe_grad_sq_norm=ns.grad_sq_norm,
                       probe_trace_cov=ns.trace_cov, probe_noise_scale_se=ns.b_simple_se)
        if spec.norms:
            init = member.init(state.hparams, member_key).params
            out.update(probe_weight_norm=P.weight_norm(params),
                       probe_distance=P.distance_from_init(params, init))
        return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

    return probe
