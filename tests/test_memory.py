"""Tests for jaxtune.memory: plans never exceed the memory limit."""

from __future__ import annotations

import doctest

import pytest

from jaxtune import memory
from jaxtune.memory import plan_bucket


@pytest.mark.parametrize(("members", "per", "limit", "devices", "multiple", "max_pop"), [
    (10, 100, 500, 2, 8, None),    # fewer fit (5) than the padding multiple (8)
    (10, 100, 450, 1, 8, None),
    (64, 1, 10**9, 2, 8, None),
    (64, 1, 10**9, 2, 8, 20),
    (3, 100, 250, 1, 1, None),
    (17, 10, 1000, 4, 8, None),
])
def test_plan_respects_the_limit_and_the_devices(members, per, limit, devices, multiple,
                                                 max_pop):
    plan = plan_bucket(members, per, limit, n_devices=devices, size_multiple=multiple,
                       max_population=max_pop)
    assert plan.size * per <= limit
    assert max_pop is None or plan.size <= max(max_pop, devices)
    assert plan.size % devices == 0
    assert plan.size * plan.subpopulations >= members
    assert plan.size * (plan.subpopulations - 1) < members  # no empty sub-population


def test_padding_multiple_used_when_it_fits():
    assert plan_bucket(10, 1, 10**6, n_devices=2, size_multiple=8).size == 16


def test_plan_errors_name_the_problem():
    with pytest.raises(ValueError, match="more than the memory limit"):
        plan_bucket(4, 1000, 10, n_devices=1)
    with pytest.raises(ValueError, match="sharded over 4 devices"):
        plan_bucket(4, 100, 300, n_devices=4)


def test_docstring_examples():
    assert doctest.testmod(memory).failed == 0
