"""Device-resident datasets with train / validation / test splits.

The validation split is carved from the training data; the test split is never
used for selection (studies read it only when re-evaluating their final top-k).
Arrays are placed on the default device once; training gathers minibatches by
index inside the compiled loop.

Example:
    >>> ds = teacher_student(n_train=200, n_test=50, dim=4)
    >>> ds.x_train.shape, ds.task
    ((180, 4), 'regression')
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Dataset", "arrays", "digits", "linear_classes", "mnist1d", "teacher_student", "test_arrays",
    "train_arrays",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test arrays plus what the loss needs to know.

    Attributes:
        task: ``"classification"`` (integer labels, cross-entropy) or
            ``"regression"`` (float targets, mean squared error).
        num_classes: number of classes (1 for regression: one output).
    """

    name: str
    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    task: str = "classification"
    num_classes: int = 10

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.task == "classification" else 1

    def check(self) -> None:
        """Checks the shapes, dtypes and values of every array, naming the one at fault.

        Run once by :class:`~jaxtune.experiment.Experiment` (before anything compiles),
        so a :class:`Dataset` built by hand gets the same checks as :func:`arrays`.

        Raises:
            ValueError: an ``x`` whose examples differ in shape from ``x_train``'s,
                a ``y`` whose length differs from its ``x``, labels that are not
                integers in ``[0, num_classes)``, or NaN/Inf values.
        """
        if self.task not in ("classification", "regression"):
            raise ValueError(f"Dataset {self.name!r}: task must be 'classification' or "
                             f"'regression', got {self.task!r}")
        example = tuple(self.x_train.shape[1:])
        for split, (x, y) in self.splits().items():
            _assert(chex.assert_rank, f"x_{split}", x, {len(example) + 1})
            _assert(chex.assert_type, f"x_{split}", x, jnp.float32)
            if tuple(x.shape[1:]) != example:
                raise ValueError(f"dataset array x_{split}: examples have shape "
                                 f"{tuple(x.shape[1:])}, x_train's have {example}")
            if y.shape[:1] != x.shape[:1]:
                raise ValueError(f"dataset array y_{split} has {y.shape[0] if y.ndim else 0} "
                                 f"rows but x_{split} has {x.shape[0]}")
            _assert(chex.assert_tree_all_finite, f"x_{split}", x)
            if self.task == "classification":
                _assert(chex.assert_rank, f"y_{split}", y, 1)
                _assert(chex.assert_type, f"y_{split}", y, int)
                lo, hi = int(jnp.min(y)), int(jnp.max(y))
                if lo < 0 or hi >= self.num_classes:
                    raise ValueError(f"dataset array y_{split}: labels must lie in "
                                     f"[0, {self.num_classes}), found [{lo}, {hi}]")
            else:
                _assert(chex.assert_type, f"y_{split}", y, jnp.float32)
                _assert(chex.assert_tree_all_finite, f"y_{split}", y)

    def splits(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        return {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                "test": (self.x_test, self.y_test)}

    def spec(self) -> dict[str, Any]:
        """A JSON description (shapes, task) stored with a study."""
        return {"name": self.name, "task": self.task, "num_classes": self.num_classes,
                **{f"{k}_shape": list(v[0].shape) for k, v in self.splits().items()}}


def train_arrays(ds: Dataset) -> dict[str, jax.Array]:
    """The arrays a training chunk reads: the train and validation splits."""
    return {"x_train": ds.x_train, "y_train": ds.y_train, "x_val": ds.x_val, "y_val": ds.y_val}


def test_arrays(ds: Dataset) -> dict[str, jax.Array]:
    """The arrays the final evaluation reads: the test split."""
    return {"x_test": ds.x_test, "y_test": ds.y_test}


def _assert(assertion: Any, name: str, array: Any, *args: Any) -> None:
    """Runs a chex assertion, re-raised as a ValueError that names the array."""
    try:
        assertion(array, *args)
    except AssertionError as e:
        raise ValueError(f"dataset array {name}: {str(e).strip()}") from None


def _check_finite(name: str, a: np.ndarray) -> None:
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"dataset array {name} contains {bad} NaN/Inf values")


def _integral(y: np.ndarray) -> bool:
    """Whether ``y`` holds integers, or floats that all are whole numbers."""
    if np.issubdtype(y.dtype, np.integer):
        return True
    return bool(np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))


def _infer_task(y_train: np.ndarray, y_test: np.ndarray) -> str:
    """Whole-number labels (integers, or floats such as ``0.0 .. 9.0``, as scikit-learn
    reads them), 1-D and non-negative: classification; other floats: regression;
    other whole numbers: ask."""
    if not (_integral(y_train) and _integral(y_test)):
        return "regression"
    if not np.issubdtype(y_train.dtype, np.integer) and (
            y_train.ndim != 1 or min(y_train.min(), y_test.min()) < 0):
        return "regression"  # whole-number floats that cannot be labels: targets
    low = min(int(y_train.min()), int(y_test.min()))
    if low < 0 or y_train.ndim != 1:
        what = f"negative values (min {low})" if low < 0 else f"shape {y_train.shape}"
        raise ValueError(f"integer targets with {what} are ambiguous: class labels must lie in "
                         "[0, num_classes) and be 1-D; pass task='regression' for numeric "
                         "targets, or task='classification' with labels in range")
    return "classification"


def _split_val(x, y, n_val: int, seed: int):
    if not 0 < n_val < len(x):
        raise ValueError(f"validation size {n_val} must be between 1 and {len(x) - 1}")
    perm = np.random.default_rng(seed).permutation(len(x))
    val, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[val], y[val]


def arrays(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
    val_fraction: float = 0.1, task: str | None = None, num_classes: int | None = None,
    name: str = "arrays", seed: int = 0,
) -> Dataset:
    """Builds a :class:`Dataset` from user arrays, checking shapes and values.

    Args:
        x_train, y_train, x_test, y_test: array-likes; ``x`` of shape ``(n, ...)``.
        val_fraction: fraction of the training data held out for validation.
        task: ``"classification"`` or ``"regression"``; inferred when omitted:
            1-D non-negative whole numbers (integers, or floats such as ``0.0, 1.0,
            ..., 9.0``) -> classification, other floats -> regression, other
            integers -> an error asking for ``task=``. Pass ``task="regression"``
            for whole-number regression targets (counts, ratings).
        num_classes: inferred as ``max(label) + 1`` when omitted.
        seed: seed of the validation split.

    Raises:
        ValueError: on mismatched lengths, NaN/Inf values, bad labels.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
        >>> y = (x[:, 0] > 0).astype(np.int32)
        >>> arrays(x[:80], y[:80], x[80:], y[80:]).num_classes
        2
    """
    xs = {k: np.asarray(v) for k, v in
          dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test).items()}
    for split in ("train", "test"):
        x, y = xs[f"x_{split}"], xs[f"y_{split}"]
        if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x_{split} has {x.shape[0] if x.ndim else 0} rows but y_{split} "
                             f"has {y.shape[0] if y.ndim else 0}")
        if x.shape[0] < 2:
            raise ValueError(f"x_{split} needs at least 2 examples")
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise ValueError(f"x_train examples have shape {xs['x_train'].shape[1:]} but x_test "
                         f"examples have shape {xs['x_test'].shape[1:]}")
    for k, v in xs.items():
        _check_finite(k, v)
    if task is None:
        task = _infer_task(xs["y_train"], xs["y_test"])
        if task == "classification" and not np.issubdtype(xs["y_train"].dtype, np.integer):
            warnings.warn(f"dataset {name!r}: y_train holds whole-number floats, read as class "
                          "labels (classification); pass task='regression' for numeric "
                          "targets, or task='classification' to silence this", UserWarning,
                          stacklevel=2)
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if task == "classification":
        for k in ("y_train", "y_test"):
            y = xs[k]
            if not _integral(y) or y.ndim != 1:
                raise ValueError(f"{k} must be a 1-D integer label array for classification "
                                 "(whole-number floats are accepted)")
            xs[k] = y.astype(np.int64)
        num_classes = int(num_classes or max(xs["y_train"].max(), xs["y_test"].max()) + 1)
        for k in ("y_train", "y_test"):
            if xs[k].min() < 0 or xs[k].max() >= num_classes:
                raise ValueError(f"{k} labels must lie in [0, {num_classes})")
        ydt = np.int32
    else:
        num_classes = 1
        ydt = np.float32
    n_val = max(1, int(round(val_fraction * len(xs["x_train"]))))
    xtr, ytr, xva, yva = _split_val(xs["x_train"], xs["y_train"], n_val, seed)

    def put(a, dt):
        return jax.device_put(jnp.asarray(a, dt))

    return Dataset(
        name=name, task=task, num_classes=num_classes,
        x_train=put(xtr, jnp.float32), y_train=put(ytr, ydt),
        x_val=put(xva, jnp.float32), y_val=put(yva, ydt),
        x_test=put(xs["x_test"], jnp.float32), y_test=put(xs["y_test"], ydt),
    )


_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _data_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxtune/data`` (``~/.cache/jaxtune/data``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxtune" / "data"


def _disk_cached(name: str, keys: tuple[str, ...],
                 make: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """``make()``'s arrays, cached on disk as ``name.npz`` (the name carries the
    source's version): generating or importing the source takes a second or more,
    loading milliseconds. An unreadable file is made again (and rewritten
    atomically); a read-only home makes it every time."""
    path = _data_cache_dir() / f"{name}.npz"
    try:
        with np.load(path) as f:
            return tuple(f[k] for k in keys)
    except (OSError, KeyError, ValueError):
        pass
    out = tuple(np.asarray(a) for a in make())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            np.savez(f, **dict(zip(keys, out, strict=True)))
        os.replace(f.name, path)
    except OSError:
        pass
    return out


@functools.cache
def _mnist1d_raw(data_seed: int) -> tuple[np.ndarray, ...]:
    """The generated MNIST-1D arrays (generated locally, no download; cached on disk)."""
    from importlib.metadata import version

    def make() -> tuple[np.ndarray, ...]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = data_seed
        d = make_dataset(args)
        return tuple(d[k] for k in _MNIST1D_KEYS)

    return _disk_cached(f"mnist1d-{version('mnist1d')}-seed{data_seed}", _MNIST1D_KEYS, make)


@functools.cache
def _digits_raw() -> tuple[np.ndarray, ...]:
    """scikit-learn's digits (pixels 0-16, labels), cached on disk: importing
    scikit-learn takes about a second."""
    from importlib.metadata import version

    def make() -> tuple[np.ndarray, ...]:
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target

    return _disk_cached(f"digits-sklearn{version('scikit-learn')}", ("data", "target"), make)


def mnist1d(val_fraction: float = 0.1, seed: int = 0, data_seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package.

    Default arguments give 4000 training (of which ``val_fraction`` is held out
    for validation) and 1000 test sequences of length 40, 10 classes.

    Args:
        val_fraction: fraction of the 4000 training examples used for validation.
        seed: seed of the validation split.
        data_seed: seed of the generator (42 is the paper's dataset).
    """
    x, y, xt, yt = _mnist1d_raw(int(data_seed))
    return arrays(x.astype(np.float32), y.astype(np.int32), xt.astype(np.float32),
                  yt.astype(np.int32), val_fraction=val_fraction, num_classes=10,
                  name="mnist1d", seed=seed)


def digits(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with the package).

    Pixels are scaled to ``[0, 1]``; images are returned flat, shape ``(n, 64)``.
    """
    data, target = _digits_raw()
    x, y = (data / 16.0).astype(np.float32), target.astype(np.int32)
    perm = np.random.default_rng(1234).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    return arrays(x[tr], y[tr], x[te], y[te], val_fraction=val_fraction, num_classes=10,
                  name="digits", seed=seed)


def teacher_student(
    n_train: int = 2000, n_test: int = 500, dim: int = 20, hidden: int = 32,
    noise: float = 0.1, val_fraction: float = 0.1, seed: int = 0,
) -> Dataset:
    """A synthetic regression task: targets from a random one-hidden-layer tanh teacher.

    ``y = v . tanh(W x / sqrt(dim)) / sqrt(hidden) + noise * eps`` with Gaussian
    ``x``, ``W``, ``v`` and ``eps``.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, hidden))
    v = rng.normal(size=(hidden,))
    x = rng.normal(size=(n_train + n_test, dim))
    y = np.tanh(x @ w / np.sqrt(dim)) @ v / np.sqrt(hidden)
    y = y + noise * rng.normal(size=y.shape)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:], val_fraction=val_fraction,
                  task="regression", name="teacher_student", seed=seed)


def linear_classes(n_train: int = 200, n_test: int = 50, dim: int = 4, classes: int = 3,
                   val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """A synthetic classification task: the class of a Gaussian ``x`` is the argmax of a
    random linear map ``x @ W`` (``W`` Gaussian, ``dim x classes``). Small and fast: a
    smoke test of a study, or a test's problem.

    Example:
        >>> ds = linear_classes(n_train=100, n_test=20)
        >>> ds.task, ds.num_classes, ds.x_train.shape[1]
        ('classification', 3, 4)
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, dim)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(dim, classes)), -1).astype(np.int32)
    return arrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:], val_fraction=val_fraction,
                  task="classification", name=f"linear_classes_{dim}x{classes}", seed=seed)
