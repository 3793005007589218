"""The checks the path runs' pairs and the graph runs' inputs share, each failing in one line."""

from __future__ import annotations

import pytest

from connectivity.runs.inputs import ClassInputs
from connectivity.runs.pairs import PairSampling
from connectivity.runs.sampling import PairError, is_whole


def test_only_integers_are_whole_numbers() -> None:
    assert is_whole(3) and is_whole(0) and is_whole(-2)
    assert not is_whole(True)  # `count: true` is a mistake, not 1
    assert not is_whole(3.0) and not is_whole("3") and not is_whole(None)


@pytest.mark.parametrize(
    ("draw", "words"),
    [
        (lambda: PairSampling(count=0), r"pairs\.count must be a whole number >= 1, got 0; set"),
        (lambda: PairSampling(count=True), r"pairs\.count must be a whole number >= 1, got True"),
        (lambda: PairSampling(split="dev"), r"pairs\.split must be one of train, val, test"),
        (lambda: ClassInputs(per_class=1), r"inputs\.per_class must be a whole number >= 2, got 1"),
        (lambda: ClassInputs(per_class=2.5), r"inputs\.per_class must be a whole number"),
        (lambda: ClassInputs(split="valid"), r"inputs\.split must be one of train, val, test"),
    ],
)
def test_both_draws_name_their_own_block_in_the_message(draw, words: str) -> None:
    with pytest.raises(PairError, match=words):
        draw()


def test_valid_draws_keep_their_fields_as_given() -> None:
    assert (PairSampling(count=4, split="val").count, PairSampling(split="val").split) == (4, "val")
    assert ClassInputs(per_class=2, classes=(1, 3)).classes == [1, 3]
