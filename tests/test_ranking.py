"""The ranking rule and the final choice among re-trained top trials."""

from __future__ import annotations

import math

import pytest

from jaxtune.ranking import choose_final, chosen_row


def row(trial, val, std=0.01, status="complete", search=0.7, seeds=3):
    return {"trial": trial, "status": status, "search_objective": search, "seeds": seeds,
            "val_accuracy": val, "val_accuracy_std": std}


def test_the_best_retrained_value_wins_whatever_the_search_order():
    rows = [row(7, 0.68, search=0.72), row(2, 0.71, search=0.71), row(9, 0.70, search=0.69)]
    trial, why = choose_final(rows, "val_accuracy", "maximize")
    assert trial == 2
    assert "trial 2 (search rank 2)" in why and "trial 7" in why and "3 fresh seeds" in why


def test_minimize_picks_the_lowest():
    rows = [{"trial": 0, "val_loss": 0.5, "seeds": 2}, {"trial": 1, "val_loss": 0.4, "seeds": 2}]
    assert choose_final(rows, "val_loss", "minimize")[0] == 1


def test_the_search_best_keeps_a_tie():
    rows = [row(3, 0.70), row(4, 0.70)]
    trial, why = choose_final(rows, "val_accuracy", "maximize")
    assert trial == 3 and "also re-trained best" in why


@pytest.mark.parametrize("bad", [
    {"status": "diverged"}, {"val_accuracy": None}, {"val_accuracy": math.nan}])
def test_a_row_without_a_finite_retrained_value_cannot_win(bad):
    rows = [row(1, 0.9) | bad, row(5, 0.6)]
    trial, why = choose_final(rows, "val_accuracy", "maximize")
    assert trial == 5 and "only top trial" in why


def test_nothing_to_compare_keeps_the_search_order():
    rows = [row(1, None), row(5, None)]
    trial, why = choose_final(rows, "val_accuracy", "maximize")
    assert trial == 1 and "stands" in why
    assert choose_final([], "val_accuracy", "maximize") == (None, "no final re-evaluation")


def test_chosen_row_and_direction_check():
    assert chosen_row([{"trial": 1}, {"trial": 2, "chosen": True}])["trial"] == 2
    assert chosen_row([{"trial": 1}]) is None
    with pytest.raises(ValueError, match="direction"):
        choose_final([row(1, 0.5)], "val_accuracy", "up")


def test_docstring_examples():
    import doctest

    from jaxtune import ranking, results

    assert doctest.testmod(ranking).failed == 0
    assert doctest.testmod(results).failed == 0
