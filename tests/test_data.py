"""Tests for jaxtune.data: built-in datasets and user arrays with their checks."""

from __future__ import annotations

import dataclasses
import doctest
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shuffle_reference import reference_permutation, shuffle_rows

import jaxtune as jt
from jaxtune import data as D
from jaxtune.data import train_arrays as train_data


def rows(a) -> set[tuple]:
    return {tuple(r) for r in np.asarray(a).reshape(len(a), -1).tolist()}


def clf_arrays(n_train=100, n_test=30, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, dim)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# --------------------------------------------------------------------------- arrays


def test_arrays_split_is_a_partition_of_the_training_rows():
    xtr, ytr, xte, yte = clf_arrays()
    ds = D.arrays(xtr, ytr, xte, yte, val_fraction=0.2, seed=3)
    assert ds.task == "classification" and ds.num_classes == 3 and ds.num_outputs == 3
    assert ds.x_val.shape == (20, 3) and ds.x_train.shape == (80, 3) and ds.n_train == 80
    assert not rows(ds.x_train) & rows(ds.x_val)
    assert rows(ds.x_train) | rows(ds.x_val) == rows(xtr)
    # labels travel with their rows
    lookup = {tuple(x): y for x, y in zip(xtr.tolist(), ytr.tolist())}
    for x, y in zip(np.asarray(ds.x_val).tolist(), np.asarray(ds.y_val).tolist()):
        assert lookup[tuple(x)] == y
    np.testing.assert_array_equal(ds.x_test, xte)
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    assert isinstance(ds.x_train, jax.Array)
    # the split depends on the seed only
    again = D.arrays(xtr, ytr, xte, yte, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.x_val, ds.x_val)
    other = D.arrays(xtr, ytr, xte, yte, val_fraction=0.2, seed=4)
    assert rows(other.x_val) != rows(ds.x_val)


def test_arrays_task_inference_and_overrides():
    xtr, ytr, xte, yte = clf_arrays()
    reg = D.arrays(xtr, ytr + np.float32(0.5), xte, yte + np.float32(0.5))
    assert reg.task == "regression" and reg.num_classes == 1 and reg.num_outputs == 1
    assert reg.y_train.dtype == np.float32
    forced = D.arrays(xtr, ytr, xte, yte, task="regression")
    assert forced.task == "regression" and forced.y_train.dtype == np.float32
    # integer regression targets with negative values: ambiguous unless task= is given
    signed = (ytr.astype(np.int64) - 5, yte.astype(np.int64) - 5)
    with pytest.raises(ValueError, match="task='regression'"):
        D.arrays(xtr, signed[0], xte, signed[1])
    ints = D.arrays(xtr, signed[0], xte, signed[1], task="regression")
    assert ints.task == "regression" and ints.y_train.dtype == np.float32
    assert float(np.min(np.concatenate([ints.y_train, ints.y_val]))) == float(signed[0].min())
    wide = D.arrays(xtr, ytr, xte, yte, num_classes=7)
    assert wide.num_classes == 7
    spec = json.loads(json.dumps(wide.spec()))
    assert spec["task"] == "classification" and spec["train_shape"] == [90, 3]
    assert set(train_data(wide)) == {"x_train", "y_train", "x_val", "y_val"}


def test_whole_number_float_labels_are_classes_unless_task_says_otherwise():
    """Labels 0.0 .. 9.0 read as classes (as scikit-learn's type_of_target does), with a
    warning naming task=; task= decides either way, silently."""
    xtr, ytr, xte, yte = clf_arrays()
    ints = D.arrays(xtr, ytr, xte, yte)
    with pytest.warns(UserWarning, match="task='regression'"):
        floats = D.arrays(xtr, ytr.astype(np.float32), xte, yte.astype(np.float64))
    assert floats.task == "classification" and floats.num_classes == ints.num_classes
    assert floats.y_train.dtype == np.int32
    np.testing.assert_array_equal(floats.y_train, ints.y_train)
    np.testing.assert_array_equal(floats.y_test, yte)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        said = D.arrays(xtr, ytr.astype(np.float32), xte, yte.astype(np.float32),
                        task="classification")
        assert said.task == "classification"
        np.testing.assert_array_equal(said.y_val, ints.y_val)
        counts = D.arrays(xtr, ytr.astype(np.float32), xte, yte.astype(np.float32),
                          task="regression")
        assert counts.task == "regression" and counts.y_train.dtype == np.float32
    # whole numbers that cannot be labels (negative) stay regression targets
    signed = D.arrays(xtr, ytr - np.float32(5), xte, yte - np.float32(5))
    assert signed.task == "regression"


@pytest.mark.parametrize(("edit", "match"), [
    (lambda a: a.__setitem__(0, a[0][:-1]), "x_train has 99 rows but y_train has 100"),
    (lambda a: a.__setitem__(3, a[3][:-2]), "x_test has 30 rows but y_test has 28"),
    (lambda a: a.__setitem__(2, a[2][:, :2]), "x_train examples have shape"),
    (lambda a: a[0].__setitem__((5, 1), np.nan), "x_train contains 1 NaN/Inf"),
    (lambda a: a[2].__setitem__((0, 0), np.inf), "x_test contains 1 NaN/Inf"),
    (lambda a: a[1].__setitem__(0, -1), "labels must lie in"),
    (lambda a: a.__setitem__(0, a[0][:1]) or a.__setitem__(1, a[1][:1]), "at least 2"),
])
def test_arrays_rejects_bad_inputs(edit, match):
    a = list(clf_arrays())
    edit(a)
    with pytest.raises(ValueError, match=match):
        D.arrays(*a)


def test_arrays_rejects_bad_options():
    xtr, ytr, xte, yte = clf_arrays()
    with pytest.raises(ValueError, match="labels must lie in"):
        D.arrays(xtr, ytr, xte, yte, num_classes=2)
    with pytest.raises(ValueError, match="task"):
        D.arrays(xtr, ytr, xte, yte, task="ranking")
    with pytest.raises(ValueError, match="1-D integer label"):
        D.arrays(xtr, ytr + np.float32(0.5), xte, yte, task="classification")
    with pytest.raises(ValueError, match="validation size"):
        D.arrays(xtr, ytr, xte, yte, val_fraction=1.0)
    with pytest.raises(ValueError, match="y_train contains"):
        D.arrays(xtr, np.full(len(xtr), np.nan, np.float32), xte, yte.astype(np.float32))


# --------------------------------------------------------------------------- built-ins


def test_teacher_student(ts_data):
    ds = ts_data
    assert ds.task == "regression" and ds.num_outputs == 1
    assert ds.x_train.shape == (230, 8) and ds.x_val.shape == (26, 8)
    assert ds.x_test.shape == (64, 8) and ds.y_test.shape == (64,)
    assert np.all(np.isfinite(ds.y_train))
    again = D.teacher_student(n_train=256, n_test=64, dim=8)
    np.testing.assert_array_equal(again.y_train, ds.y_train)
    other = D.teacher_student(n_train=256, n_test=64, dim=8, seed=1)
    assert not np.allclose(other.y_test, ds.y_test)
    # the target is learnable: it is a function of x (noise 0.1 on unit-scale targets)
    assert 0.1 < float(np.std(ds.y_train)) < 3.0


def test_digits(digits_data):
    ds = digits_data
    assert ds.name == "digits" and ds.num_classes == 10
    n = ds.n_train + ds.x_val.shape[0] + ds.x_test.shape[0]
    assert n == 1797 and ds.x_test.shape == (359, 64)
    assert ds.x_val.shape == (144, 64)
    x = np.asarray(ds.x_train)
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.asarray(ds.y_train).tolist()) == set(range(10))
    # the three splits are disjoint (digits has no duplicate images) and cover the data
    train, val, test = rows(ds.x_train), rows(ds.x_val), rows(ds.x_test)
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == 1797


def test_mnist1d_smoke():
    ds = D.mnist1d()
    train, val, test = rows(ds.x_train), rows(ds.x_val), rows(ds.x_test)
    assert not train & val and not train & test and not val & test
    assert ds.x_train.shape == (3600, 40) and ds.x_val.shape == (400, 40)
    assert ds.x_test.shape == (1000, 40) and ds.num_classes == 10
    assert set(np.asarray(ds.y_test).tolist()) == set(range(10))


def test_docstring_examples():
    result = doctest.testmod(D, verbose=False)
    assert result.failed == 0 and result.attempted > 0


def test_dataset_with_nan_cannot_reach_an_experiment():
    xtr, ytr, xte, yte = clf_arrays()
    xtr[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jt.Experiment(data=D.arrays(xtr, ytr, xte, yte), model=jt.models.Logistic(3),
                      space=jt.Space(lr=jt.Real(1e-3, 1.0)))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: {"y_val": d.y_val.astype(jnp.float32)}, "y_val"),
    (lambda d: {"x_test": d.x_test.at[0, 0].set(jnp.nan)}, "x_test.*finite"),
    (lambda d: {"x_val": d.x_val[:, :3]}, "x_val: examples have shape"),
    (lambda d: {"y_train": d.y_train[:-1]}, "y_train has"),
    (lambda d: {"y_test": d.y_test.at[0].set(12)}, r"y_test: labels must lie in \[0, 10\)"),
    (lambda d: {"x_train": d.x_train.astype(jnp.int32)}, "x_train"),
])
def test_hand_built_dataset_checked_before_compiling(digits_data, edit, match):
    """A Dataset built by hand (not through `arrays`) is checked when an Experiment is made,
    and the error names the array at fault."""
    bad = dataclasses.replace(digits_data, **edit(digits_data))
    with pytest.raises(ValueError, match=match):
        jt.Experiment(data=bad, model=jt.models.Logistic(10),
                      space=jt.Space(lr=jt.Real(1e-3, 1.0)))


def test_shuffle_sees_every_example_once_per_epoch_for_traced_batch_sizes():
    """Epoch-wise shuffling without replacement, several traced batch sizes in one
    vmapped population: the examples a member consumes in its first epoch are a
    permutation of the training split, and so are those of its second epoch."""
    from jaxtune.batches import Sampler

    n, max_batch, per_chunk, chunks = 50, 16, 4, 9
    sampler = Sampler("shuffle", n, max_batch)

    def member(key, batch):
        def chunk(seen, _):
            def step(seen, s):
                rows = sampler.indices(key, s, seen)
                return seen + batch, jnp.where(jnp.arange(max_batch) < batch, rows, -1)

            return jax.lax.scan(step, seen, jnp.arange(per_chunk))
        _, rows = jax.lax.scan(chunk, jnp.zeros((), jnp.int32), None, length=chunks)
        return rows.reshape(-1, max_batch)

    batches = jnp.asarray([3, 7, 16], jnp.int32)
    keys = jax.random.split(jax.random.key(0), 3)
    rows = np.asarray(jax.jit(jax.vmap(member))(keys, batches))
    for m, b in enumerate([3, 7, 16]):
        consumed = rows[m][rows[m] >= 0]  # in order, only the member's own batch rows
        assert len(consumed) >= 2 * n, (b, len(consumed))
        for epoch in range(2):
            np.testing.assert_array_equal(np.sort(consumed[epoch * n:(epoch + 1) * n]),
                                          np.arange(n))
        assert not np.array_equal(consumed[:n], consumed[n:2 * n])  # a fresh permutation


@pytest.mark.parametrize("order", ["shuffle", "replacement"])
def test_a_members_rows_and_dropout_keys_do_not_depend_on_the_capacity(order):
    """The first ``b`` rows a step gathers, and the per-example dropout keys, are the
    same at every row capacity (16, 32, 64): a member computes the same batch whatever
    capacity its group runs at. Rows against the documented streams, drawn here one
    by one with jax.random."""
    from jaxtune.batches import Sampler

    n, b, seen, step = 100, 13, 91, 5  # a batch that straddles two epochs
    key = jax.random.key(7)
    if order == "replacement":
        k = jax.random.split(jax.random.fold_in(key, step))[0]
        want = [int(jax.random.randint(jax.random.fold_in(k, j), (), 0, n)) for j in range(b)]
    else:
        want = shuffle_rows(key, seen, b, n)
    k_drop = Sampler.dropout_key(key, jnp.int32(step))
    for capacity in (16, 32, 64):
        sampler = Sampler(order, n, capacity)
        idx = sampler.indices(key, jnp.int32(step), jnp.int32(seen))
        assert idx.shape == (capacity,)
        np.testing.assert_array_equal(idx[:b], want)
        np.testing.assert_array_equal(
            jax.random.key_data(Sampler.row_keys(k_drop, capacity)[:b]),
            jax.random.key_data(jnp.stack([jax.random.fold_in(k_drop, j) for j in range(b)])))


@pytest.mark.parametrize("n", [1, 2, 3, 50, 97, 1000, 4097])
def test_shuffle_permutation_is_the_documented_feistel_bijection(n):
    """``batches.permute`` against the Feistel network written in plain Python integers
    (odd and even bit counts, n = 1 and a power of two plus one), and a bijection."""
    from jaxtune.batches import ROUNDS, permute

    keys = jax.random.bits(jax.random.key(n), (ROUNDS,), jnp.uint32)
    got = np.asarray(jax.jit(permute, static_argnums=2)(jnp.arange(n, dtype=jnp.uint32),
                                                          keys, n))
    np.testing.assert_array_equal(np.sort(got), np.arange(n))
    np.testing.assert_array_equal(got, reference_permutation(np.asarray(keys), n))


def test_shuffle_permutations_are_close_to_uniform():
    """Over 4000 epochs' keys, where each of 8 examples lands is close to uniform (a
    chi-square test of the 8 x 8 position counts at the 0.1% level), and an example's
    neighbour in the permutation is not its neighbour in the split."""
    from jaxtune.batches import ROUNDS, permute

    n, epochs = 8, 4000
    keys = jax.random.bits(jax.random.key(0), (epochs, ROUNDS), jnp.uint32)
    perms = np.asarray(jax.vmap(lambda k: permute(jnp.arange(n, dtype=jnp.uint32), k, n))(keys))
    counts = np.zeros((n, n))
    for p in perms:
        counts[np.arange(n), p] += 1
    expected = epochs / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 106.4, chi2  # chi-square, 49 degrees of freedom, p = 0.001
    follows = np.mean(perms[:, 1:] == perms[:, :-1] + 1)
    assert follows < 0.2, follows  # 1/8 for a uniform permutation


def test_row_capacities():
    from jaxtune.batches import MIN_CAPACITY, row_capacities

    assert row_capacities(16, 256) == (16, 32, 64, 128, 256)
    assert row_capacities(1, 100) == (MIN_CAPACITY, 32, 64, 100)
    assert row_capacities(33, 64) == (64,)
    for low, high in [(16, 256), (5, 300), (40, 41)]:
        caps = row_capacities(low, high)
        for bsz in range(low, high + 1):  # the capacity of a batch is less than twice it
            cap = next(c for c in caps if c >= bsz)
            assert cap < 2 * max(bsz, MIN_CAPACITY)


def test_digits_are_cached_on_disk_and_equal_scikit_learns(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    D._digits_raw.cache_clear()
    try:
        data, target = D._digits_raw()
        ref = load_digits()
        np.testing.assert_array_equal(data, ref.data)
        np.testing.assert_array_equal(target, ref.target)
        (path,) = (tmp_path / "jaxtune" / "data").glob("digits-sklearn*.npz")
        path.write_bytes(b"not an npz")  # unreadable: made again, and rewritten
        D._digits_raw.cache_clear()
        again, _ = D._digits_raw()
        np.testing.assert_array_equal(again, ref.data)
        with np.load(path) as f:
            np.testing.assert_array_equal(f["target"], ref.target)
    finally:
        D._digits_raw.cache_clear()
