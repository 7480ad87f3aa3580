"""Tests for dakr.evaluation.continual_metrics on hand-made accuracy matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dakr.evaluation.continual_metrics import acc, bwt, forgetting, fwt, summarize

# R[i, j]: Dice on site j after stage i.
R3 = np.array(
    [
        [0.80, 0.50, 0.40],
        [0.60, 0.90, 0.45],
        [0.70, 0.70, 0.85],
    ]
)


def test_acc_is_mean_of_last_row() -> None:
    assert acc(R3) == pytest.approx(0.75)  # (0.70 + 0.70 + 0.85) / 3 = 2.25 / 3


def test_bwt_compares_last_row_with_the_diagonal() -> None:
    assert bwt(R3) == pytest.approx(-0.15)  # ((0.70 - 0.80) + (0.70 - 0.90)) / 2 = (-0.1 - 0.2) / 2


def test_forgetting_takes_the_best_earlier_stage() -> None:
    # j=0: max(0.80, 0.60) - 0.70 = 0.10 ; j=1: max(0.50, 0.90) - 0.70 = 0.20 ; mean 0.15
    assert forgetting(R3) == pytest.approx(0.15)


def test_fwt_averages_sites_from_the_third_on() -> None:
    # b = stage-1 row; only j=2 counts: R[1,2] - b[2] = 0.45 - 0.40 = 0.05 (j=1 would be 0 by construction)
    assert fwt(R3, R3[0]) == pytest.approx(0.05)
    # another reference: j=2: 0.45 - 0.30 = 0.15 ; b[0] and b[1] unused
    assert fwt(R3, np.array([99.0, -50.0, 0.30])) == pytest.approx(0.15)
    assert math.isnan(fwt(R3[:2, :2], R3[0, :2]))  # two sites: no term left


def test_four_stage_matrix_with_distinct_entries() -> None:
    r = np.array([[10.0 * i + j for j in range(4)] for i in range(4)])  # R[i, j] = 10 i + j
    assert acc(r) == pytest.approx(31.5)  # mean(30, 31, 32, 33)
    assert bwt(r) == pytest.approx(20.0)  # mean over j=0..2 of (30 + j) - 11 j = mean(30, 20, 10)
    assert forgetting(r) == pytest.approx(-10.0)  # max_{l<=2} (10 l + j) = 20 + j ; (20 + j) - (30 + j) = -10
    assert fwt(r, np.zeros(4)) == pytest.approx(17.5)  # R[j-1, j] = 11 j - 10 for j=2..3: mean(12, 23)


def test_forgetting_max_includes_stages_before_the_site_and_excludes_the_last() -> None:
    r = np.array(
        [
            [0.50, 0.95, 0.10],
            [0.60, 0.90, 0.20],
            [0.90, 0.80, 0.30],
        ]
    )
    # j=0: max(0.50, 0.60) - 0.90 = -0.30 (the last row is not part of the max)
    # j=1: max(0.95, 0.90) - 0.80 = 0.15 (row 0 is before site 1 was trained, still counted)
    assert forgetting(r) == pytest.approx((-0.30 + 0.15) / 2)


def test_nan_entries_are_left_out() -> None:
    r = R3.copy()
    r[1, 0] = np.nan  # site 0 not evaluated after stage 1
    # j=0: max(0.80) - 0.70 = 0.10 ; j=1: 0.20 -> 0.15, unchanged because 0.60 was not the max
    assert forgetting(r) == pytest.approx(0.15)
    r[2, 1] = np.nan  # site 1 not evaluated after the last stage
    assert acc(r) == pytest.approx((0.70 + 0.85) / 2)
    assert bwt(r) == pytest.approx(0.70 - 0.80)  # only j=0 remains
    assert forgetting(r) == pytest.approx(0.10)


def test_single_stage_has_only_acc() -> None:
    r = np.array([[0.8]])
    assert acc(r) == pytest.approx(0.8)
    assert math.isnan(bwt(r)) and math.isnan(forgetting(r)) and math.isnan(fwt(r, np.array([0.8])))


def test_summarize_collects_all_four() -> None:
    summary = summarize(R3, R3[0])
    assert summary == pytest.approx({"acc": 0.75, "bwt": -0.15, "forgetting": 0.15, "fwt": 0.05})


def test_rejects_non_square_matrix_and_wrong_reference_length() -> None:
    with pytest.raises(ValueError, match="square"):
        acc(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reference"):
        fwt(R3, np.zeros(2))
