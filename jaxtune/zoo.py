"""Built-in experiments, by name (``jaxtune list`` shows them).

Each entry builds an :class:`~jaxtune.experiment.Experiment` and names the metric a
study optimizes by default.

Example:
    >>> from jaxtune import zoo
    >>> "mnist1d-mlp" in zoo.EXPERIMENTS
    True
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from collections.abc import Callable
from typing import Any

from jaxtune import data, models
from jaxtune.experiment import Experiment, default_objective
from jaxtune.ranking import default_direction
from jaxtune.space import Choice, Int, Real, Space

__all__ = ["DEFAULT", "EXPERIMENTS", "Entry", "load"]


def mnist1d_mlp(steps: int = 1500, eval_every: int = 250) -> Experiment:
    """The MNIST-1D paper's MLP (40-100-100-10); every hyperparameter traced: one program."""
    space = Space(
        lr=Real(1e-4, 1e-1, log=True),
        weight_decay=Real(1e-6, 1e-1, log=True),
        warmup=Real(0.0, 0.2),
        schedule=Choice(["constant", "cosine", "linear", "exponential"]),
        batch_size=Int(16, 256, log=True),
        dropout=Real(0.0, 0.5),
        optimizer=Choice(["adamw", "nesterov"]),
    )
    return Experiment(data=data.mnist1d(), model=lambda hp: models.MLP(width=100, depth=2),
                      space=space, steps=steps, eval_every=eval_every, name="mnist1d-mlp")


def mnist1d_cnn(steps: int = 1500, eval_every: int = 250) -> Experiment:
    """The MNIST-1D paper's 1-D CNN (three conv layers of 25 channels)."""
    space = Space(
        lr=Real(1e-4, 3e-2, log=True),
        weight_decay=Real(1e-6, 1e-1, log=True),
        warmup=Real(0.0, 0.2),
        schedule=Choice(["constant", "cosine", "one_cycle"]),
        batch_size=Int(32, 128, log=True),
    )
    return Experiment(data=data.mnist1d(), model=lambda hp: models.CNN1D(), space=space,
                      steps=steps, eval_every=eval_every, defaults={"optimizer": "adamw"},
                      name="mnist1d-cnn")


def digits_cnn(steps: int = 600, eval_every: int = 100) -> Experiment:
    """A small 2-D CNN on scikit-learn's 8x8 digits."""
    space = Space(
        lr=Real(1e-4, 3e-2, log=True),
        weight_decay=Real(1e-6, 1e-1, log=True),
        schedule=Choice(["constant", "cosine"]),
        batch_size=Int(16, 128, log=True),
        label_smoothing=Real(0.0, 0.2),
    )
    return Experiment(data=data.digits(), model=lambda hp: models.CNN2D(), space=space,
                      steps=steps, eval_every=eval_every, name="digits-cnn")


def digits_cnn_bn(steps: int = 600, eval_every: int = 100) -> Experiment:
    """The digits CNN with batch normalization (batch statistics are model state)."""
    space = Space(
        lr=Real(1e-4, 3e-2, log=True),
        weight_decay=Real(1e-6, 1e-1, log=True),
        schedule=Choice(["constant", "cosine"]),
        batch_size=Int(16, 128, log=True),
    )
    return Experiment(data=data.digits(), model=lambda hp: models.CNN2DBatchNorm(),
                      space=space, steps=steps, eval_every=eval_every, name="digits-cnn-bn")


def digits_logistic(steps: int = 300, eval_every: int = 50) -> Experiment:
    """Logistic regression on digits: a seconds-long smoke test of the whole loop."""
    space = Space(lr=Real(1e-3, 1.0, log=True), l2=Real(1e-6, 1e-1, log=True),
                  batch_size=Int(8, 128, log=True))
    return Experiment(data=data.digits(), model=lambda hp: models.Logistic(), space=space,
                      steps=steps, eval_every=eval_every, defaults={"optimizer": "sgd"},
                      name="digits-logistic")


def teacher_student(steps: int = 500, eval_every: int = 100) -> Experiment:
    """Synthetic teacher-student regression with a width bucket (minimize val_loss)."""
    space = Space(lr=Real(1e-4, 1e-1, log=True), batch_size=Int(8, 128, log=True),
                  width=Choice([32, 128], static=True))
    return Experiment(data=data.teacher_student(),
                      model=lambda hp: models.MLP(width=hp["width"], num_outputs=1),
                      space=space, steps=steps, eval_every=eval_every, name="teacher-student")


@dataclasses.dataclass(frozen=True)
class Entry:
    build: Callable[..., Experiment]
    objective: str
    direction: str

    @property
    def description(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0]


EXPERIMENTS: dict[str, Entry] = {
    "mnist1d-mlp": Entry(mnist1d_mlp, "val_accuracy", "maximize"),
    "mnist1d-cnn": Entry(mnist1d_cnn, "val_accuracy", "maximize"),
    "digits-cnn": Entry(digits_cnn, "val_accuracy", "maximize"),
    "digits-cnn-bn": Entry(digits_cnn_bn, "val_accuracy", "maximize"),
    "digits-logistic": Entry(digits_logistic, "val_accuracy", "maximize"),
    "teacher-student": Entry(teacher_student, "val_loss", "minimize"),
}
DEFAULT = "mnist1d-mlp"


def load(ref: str, **kwargs: Any) -> tuple[Experiment, str, str]:
    """Builds a built-in experiment by name, or loads ``experiment`` from a Python file.

    A file may also define ``objective`` and ``direction``. ``kwargs`` (e.g.
    ``steps``) are passed to built-in builders, or to a file's
    ``make_experiment(**kwargs)`` if it defines one.

    Returns:
        ``(experiment, objective, direction)``.

    Raises:
        ValueError: unknown name, missing file, or a file without ``experiment``.
    """
    if ref in EXPERIMENTS:
        e = EXPERIMENTS[ref]
        return e.build(**kwargs), e.objective, e.direction
    path = pathlib.Path(ref)
    if not path.suffix == ".py":
        raise ValueError(f"unknown experiment {ref!r}; built-in ones are {list(EXPERIMENTS)} "
                         "(or pass a path to a .py file defining `experiment`)")
    if not path.is_file():
        raise ValueError(f"experiment file {ref} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxtune_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if hasattr(module, "make_experiment"):
        exp = module.make_experiment(**kwargs)
    elif hasattr(module, "experiment"):
        exp = module.experiment
        if "steps" in kwargs:
            exp = dataclasses.replace(exp, steps=int(kwargs["steps"]))
    else:
        raise ValueError(f"{ref} defines neither `experiment` nor `make_experiment`")
    if not isinstance(exp, Experiment):
        raise ValueError(f"{ref}: `experiment` is a {type(exp).__name__}, not a jaxtune Experiment")
    objective = getattr(module, "objective", default_objective(exp.data.task))
    direction = getattr(module, "direction", default_direction(objective))
    return exp, objective, direction
