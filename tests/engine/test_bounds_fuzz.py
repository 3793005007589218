"""Soundness fuzz of bound propagation (engine/bounds.py), issue 21: random small networks of
every covered operation (MLPs, convolutional nets with batch norm, pools, pointwise max and
concatenation, functional-form nets), each with every covered activation, and random stacks of
transformer-style blocks (LayerNorm, attention with matmul and softmax, gates, RMS
normalisation and divisions, GroupNorm, log-softmax); every proof checked at 100,000 evenly
spaced points per segment, every counterexample off the target, every bound at or below the
sampled margins."""

from __future__ import annotations

import pytest

from tests.engine.test_bounds import soundness
from tests.engine.test_bounds_ops import random_soundness

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # about a minute: 30 networks x 12 activations x 2 segments
def test_fuzz_bounds_against_100k_points() -> None:
    worst = soundness(range(3, 33), 100_000)
    print(worst)
    assert worst["bound_above_sampled"] <= 0
    assert worst["proved_margin_min"] > 0
    assert worst["cex_margin"] <= 0


@pytest.mark.slow  # about two minutes: 150 random block stacks x 3 segments
def test_fuzz_bounds_of_transformer_operations_against_100k_points() -> None:
    worst = random_soundness(range(3, 153), 100_000)
    print(worst)
    assert worst["bound_above_sampled"] <= 0
    assert worst["proved_margin_min"] > 0
    assert worst["cex_margin"] <= 0
