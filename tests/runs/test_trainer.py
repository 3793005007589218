"""What path and graph runs share about their Trainer: options checked before any work."""

from __future__ import annotations

import pytest

from connectivity.errors import ConnectivityError
from connectivity.runs.graph import GraphExperiment
from connectivity.runs.paths import Experiment


@pytest.mark.parametrize("value", [0, 2.5, True])
def test_checkpoint_every_must_be_a_whole_number_of_steps_in_both_runs(value: object) -> None:
    words = rf"checkpoint_every must be a whole number of steps >= 1, got {value!r}"
    with pytest.raises(ConnectivityError, match=words):
        Experiment(classifier="c.ckpt", name="n", checkpoint_every=value)  # type: ignore[arg-type]
    with pytest.raises(ConnectivityError, match=words):
        GraphExperiment(classifiers=["c.ckpt"], name="n", checkpoint_every=value)  # type: ignore[arg-type]
