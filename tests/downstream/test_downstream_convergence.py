"""The plateau rule behind steps='auto' and result.json's 'converged'."""

from __future__ import annotations

import math

from mssl.downstream.convergence import on_plateau


def test_rising_curve_is_not_a_plateau() -> None:
    assert not on_plateau([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], window=3, delta=0.005)


def test_flat_tail_is_a_plateau() -> None:
    assert on_plateau([0.0, 0.5, 0.70, 0.702, 0.701, 0.703], window=3, delta=0.005)


def test_gain_just_above_delta_counts_as_progress() -> None:
    assert not on_plateau([0.5, 0.5, 0.5, 0.51], window=3, delta=0.005)
    assert on_plateau([0.5, 0.5, 0.5, 0.504], window=3, delta=0.005)


def test_too_short_history_and_nan_values() -> None:
    assert not on_plateau([0.1, 0.1, 0.1], window=3, delta=0.005)
    assert on_plateau([0.2, math.nan, math.nan, math.nan], window=3, delta=0.005)
    assert not on_plateau([math.nan, math.nan, 0.1, 0.2], window=2, delta=0.005)
