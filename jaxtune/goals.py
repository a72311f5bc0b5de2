"""A study's goals: its objectives and constraints, checked against the experiment,
and what they make of a configuration (its costs, whether it is feasible) and of a
trial's metrics (the other objectives' values, whether it is feasible).

The first objective is a final metric: it ranks trials and drives the trial
scheduler. The others may be costs (known from the configuration's bucket:
parameters, FLOPs; computed once per bucket) or steps to a target (read from the
curves). A constraint on the configuration is checked before anything compiles, one
on final metrics when the trial ends (see :mod:`jaxtune.objectives`).

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=64, n_test=16, dim=4),
    ...     model=jt.models.MLP(width=4, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)),
    ...     steps=4, eval_every=4, defaults={"batch_size": 8})
    >>> objs = study_objectives(exp, None, None, ["val_loss:min", "params:min"])
    >>> [(o.name, o.direction) for o in objs]
    [('val_loss', 'minimize'), ('params', 'minimize')]
    >>> goals = Goals(exp, jt.Programs(exp), objs, study_constraints(exp, ["lr<=0.05"]))
    >>> goals.infeasible_config({"lr": 0.08})
    'lr <= 0.05'
    >>> goals.config_costs({"lr": 0.01})    # two hidden layers of 4, one output: 20 + 20 + 5
    {'params': 45.0}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxtune import objectives as objectives_lib
from jaxtune.experiment import Experiment, default_objective
from jaxtune.programs import Programs, bucket_key
from jaxtune.ranking import default_direction, rank_trials

__all__ = ["Goals", "final_metrics", "study_constraints", "study_objectives"]


def final_metrics(experiment: Experiment) -> list[str]:
    """The metrics a study may select on: validation and training ones (never test)."""
    return sorted({"train_loss", "val_loss"} | (
        {"train_accuracy", "val_accuracy"} if experiment.data.task == "classification"
        else set()))


def study_objectives(experiment: Experiment, objective: str | None, direction: str | None,
                     objectives: Mapping[str, str] | list[str] | None
                     ) -> list[objectives_lib.Objective]:
    """A study's objectives from ``Study(objective=, direction=)`` or
    ``Study(objectives=)`` (the first one a final metric; defaults from the task).

    Raises:
        ValueError: both forms given, a name not known, or a first objective that is
            not a final metric of this experiment.
    """
    allowed = final_metrics(experiment)
    if objectives is not None:
        if objective is not None or direction is not None:
            raise ValueError("give objective/direction or objectives, not both")
        parsed = objectives_lib.parse_objectives(objectives)
        objectives_lib.check_names(parsed, allowed)
        if parsed[0].name not in allowed:
            raise ValueError(f"the first objective ({parsed[0].name!r}) must be a final "
                             f"metric, one of {allowed}: it ranks trials and "
                             "drives the scheduler; put the costs after it")
        objective, direction = parsed[0].name, parsed[0].direction
    objective = objective or default_objective(experiment.data.task)
    direction = direction or default_direction(objective)
    rank_trials([], direction)  # validates the direction
    if objectives is None:
        parsed = [objectives_lib.Objective(objective, direction)]
    if objective not in allowed:
        raise ValueError(f"objective {objective!r} is not a validation/train metric of this "
                         f"experiment; choose one of {allowed} (the test split is "
                         "never used for selection)")
    return parsed


def study_constraints(experiment: Experiment,
                      constraints: list[objectives_lib.Constraint | str] | None
                      ) -> list[objectives_lib.Constraint]:
    """``Study(constraints=)`` parsed, bound to the experiment's names and checked
    (:func:`check_functions`)."""
    dims = [*experiment.space.names, *experiment.defaults]
    metrics = sorted({*final_metrics(experiment), "steps"})
    bound = [(objectives_lib.Constraint.parse(c) if isinstance(c, str) else c).bind(
        dims, metrics) for c in (constraints or [])]
    check_functions(bound, experiment, metrics)
    return bound


def check_functions(constraints: list[objectives_lib.Constraint], experiment: Experiment,
                    metrics: list[str]) -> None:
    """Calls each function constraint once on what it will be given (a sampled
    configuration with its hyperparameters and costs, or every final metric and
    cost, all 0), so that one reading a name that never exists is a ValueError
    before anything compiles. Only a ``KeyError`` counts: the values are dummies."""
    costs = dict.fromkeys(objectives_lib.COSTS, 0.0)
    for c in constraints:
        if not callable(c.what):
            continue
        given = ({**experiment.resolve(experiment.space.sample(1, seed=0)[0]), **costs}
                 if c.on == "config" else {**dict.fromkeys(metrics, 0.0), **costs})
        try:
            c.what(given)
        except KeyError as e:
            raise ValueError(
                f"constraint {c.describe()} reads {e.args[0]!r}, which a {c.on} constraint is "
                f"never given; it gets {sorted(given)}") from None
        except Exception:  # dummy values may upset it; only the names matter here
            pass


def scalar(v: float) -> dict[str, Any]:
    """A metric known once for a trial (not per replicate), as the store keeps it."""
    return {"mean": v, "std": 0.0, "per_seed": [v]}


@dataclasses.dataclass
class Goals:
    """A study's objectives and constraints, with the costs of each bucket computed once.

    Args:
        experiment: the experiment.
        programs: its compiled-program cache (the costs lower its training step).
        objectives: from :func:`study_objectives`.
        constraints: from :func:`study_constraints`.
    """

    experiment: Experiment
    programs: Programs
    objectives: list[objectives_lib.Objective]
    constraints: list[objectives_lib.Constraint]
    costs: dict[Any, dict[str, float]] = dataclasses.field(default_factory=dict)  # per bucket

    def cost(self, config: Mapping[str, Any], names: Any) -> dict[str, float]:
        """The costs ``names`` of a configuration's bucket (computed once per bucket)."""
        static = self.experiment.static_config(config)
        have = self.costs.setdefault(bucket_key(static), {})
        need = [n for n in names if n not in have]
        if need:
            have.update(objectives_lib.costs(self.experiment, self.programs, static, need))
        return {n: have[n] for n in names}

    def config_costs(self, config: Mapping[str, Any]) -> dict[str, float]:
        """The costs the objectives and configuration constraints read."""
        names = sorted({o.name for o in self.objectives if o.is_cost}
                       | {c.needs for c in self.constraints if c.needs})
        return self.cost(config, names) if names else {}

    def infeasible_config(self, config: Mapping[str, Any]) -> str | None:
        """The first configuration constraint ``config`` violates (``None``: feasible)."""
        checks = [c for c in self.constraints if c.on == "config"]
        if not checks:
            return None
        values = {**self.experiment.resolve(config), **self.config_costs(config)}
        return next((c.describe() for c in checks if not c.check(values)), None)

    def infeasible_metrics(self, metrics: Mapping[str, Any]) -> str | None:
        """The first metrics constraint a trial's metrics violate (``None``: feasible)."""
        checks = [c for c in self.constraints if c.on == "metrics"]
        values = {k: v.get("mean") for k, v in metrics.items() if isinstance(v, Mapping)}
        return next((c.describe() for c in checks if not c.check(values)), None)

    def other_objectives(self, config: Mapping[str, Any],
                         curves: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The values of the objectives after the first, stored with a trial's metrics
        (costs from its bucket, steps to a target from its curves; absent: unknown)."""
        out = {}
        for o in self.objectives[1:]:
            v = (self.config_costs(config).get(o.name) if o.is_cost
                 else objectives_lib.steps_to_target(curves, o.name)
                 if o.name.startswith(objectives_lib.STEPS_TO) else None)
            if v is not None:
                out[o.name] = scalar(v)
        return out

    def infeasible_trial_metrics(self, config: Mapping[str, Any], why: str
                                 ) -> dict[str, dict[str, Any]]:
        """The metrics stored for a configuration refused before training: its costs
        and why it is infeasible."""
        return {**{k: scalar(v) for k, v in self.config_costs(config).items()},
                "infeasible": {**scalar(1.0), "why": why}}
