"""Whole-class connectivity: the union-find search (plain Python) and ``connect_all``."""

from __future__ import annotations

import itertools

import pytest
import torch

import connectivity
from connectivity.engine.graph import (
    ComponentSearch,
    UnionFind,
    components_of,
    nearest_first,
    search_components,
)
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.errors import InputError, OptionsError
from tests.toy import Annulus, DisksAndRing, disks_and_ring_points

OPTIONS = {"num_pivots": 10, "steps": 20, "lr": 0.05}


def _line_distances(positions: list[float]) -> list[list[float]]:
    return [[abs(a - b) for b in positions] for a in positions]


def test_union_find_groups_largest_first() -> None:
    forest = UnionFind(6)
    assert forest.union(4, 5) and forest.union(1, 4) and not forest.union(5, 1)
    assert forest.groups() == [[1, 4, 5], [0], [2], [3]]


def test_candidates_go_from_near_to_far_and_bad_distances_are_refused() -> None:
    assert nearest_first(_line_distances([0.0, 10.0, 1.0, 4.0])) == [
        (0, 2), (2, 3), (0, 3), (1, 3), (1, 2), (0, 1)
    ]  # fmt: skip
    with pytest.raises(OptionsError, match="square"):
        nearest_first([[0.0, 1.0]])
    with pytest.raises(OptionsError, match="NaN"):
        nearest_first([[0.0, float("nan")], [float("nan"), 0.0]])
    with pytest.raises(OptionsError, match="max_tries must be a whole number >= 1"):
        ComponentSearch([[0.0]], max_tries=0)


def test_search_finds_the_closure_of_all_pairs_deciding_fewer() -> None:
    # Three regions on a line; a pair is connected when both lie in one region, except that
    # (0, 1) fails although both lie in region A (an engine that missed a path): the search
    # must then join them through another member, as deciding all pairs does.
    positions = [0.0, 0.5, 1.0, 1.5, 10.0, 10.5, 11.0, 20.0, 20.5]
    region = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    calls: list[list[tuple[int, int]]] = []

    def decide(pairs: list[tuple[int, int]]) -> list[bool]:
        calls.append(pairs)
        return [region[i] == region[j] and (i, j) != (0, 1) for i, j in pairs]

    found = search_components(_line_distances(positions), decide, connected=bool)
    everything = list(itertools.combinations(range(9), 2))
    all_pairs = components_of(9, dict(zip(everything, decide(everything), strict=True)), bool)
    assert found.components == all_pairs.components == [[0, 1, 2, 3], [4, 5, 6], [7, 8]]
    decided = [pair for round_ in found.rounds for pair in round_]
    assert len(decided) == len(set(decided)) == found.pairs_decided < found.all_pairs == 36
    # A spanning forest (6 edges) and (0, 3): after (0, 1) failed, the next round tried two
    # pairs between {0} and {1, 2, 3} at once, and both were connected.
    assert (0, 1) in found.failed and sorted(found.edges)[:2] == [(0, 2), (0, 3)]
    assert len(found.edges) == 9 - 3 + 1
    # The first round is the spanning forest of all nine, if every pair were connected.
    assert found.rounds[0] == [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (7, 8), (3, 4), (6, 7)]
    assert found.labels() == [0, 0, 0, 0, 1, 1, 1, 2, 2]


def test_tries_between_two_components_double_each_round_up_to_max_tries() -> None:
    positions = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
    region = [0, 0, 0, 0, 1, 1, 1, 1]

    def decide(pairs: list[tuple[int, int]]) -> list[bool]:
        return [region[i] == region[j] for i, j in pairs]

    distances = _line_distances(positions)
    found = search_components(distances, decide, connected=bool)
    assert found.components == [[0, 1, 2, 3], [4, 5, 6, 7]]
    cross = [[p for p in r if region[p[0]] != region[p[1]]] for r in found.rounds]
    assert [len(c) for c in cross] == [1, 2, 4, 8, 1]  # all 16 cross pairs, in 5 rounds
    limited = search_components(distances, decide, connected=bool, max_tries=3)
    assert limited.components == found.components and len(limited.failed) == 3
    capped = search_components(distances, decide, connected=bool, round_size=2)
    assert capped.components == found.components
    assert max(len(r) for r in capped.rounds) == 2


def test_known_pairs_are_not_decided_again() -> None:
    distances = _line_distances([0.0, 1.0, 2.0])

    def decide(pairs: list[tuple[int, int]]) -> list[bool]:
        assert (0, 1) not in pairs
        return [True] * len(pairs)

    found = search_components(distances, decide, connected=bool, known={(1, 0): True})
    assert found.components == [[0, 1, 2]] and found.rounds == [[(1, 2)]]


def test_connect_all_finds_the_two_disks_and_the_ring() -> None:
    points, truth = disks_and_ring_points()
    seen: list[tuple[int, int]] = []
    found = connectivity.connect_all(
        DisksAndRing(), "input", points, 0, on_record=lambda pair, _: seen.append(pair), **OPTIONS
    )
    assert found.components == truth
    assert sorted(seen) == sorted([*found.edges, *found.failed])
    assert all(r.verdict == "linear" for r in found.edges.values())
    assert all(r.verdict == "none" for r in found.failed.values())
    assert found.pairs_decided < found.all_pairs == 55

    # Deciding all 55 pairs gives the same components.
    everything = list(itertools.combinations(range(len(points)), 2))
    first, second = (torch.tensor(side) for side in zip(*everything, strict=True))
    records = connect_points(
        DisksAndRing(), points[first], points[second], torch.zeros(55, dtype=torch.long),
        PathOptions(**OPTIONS),
    )  # fmt: skip
    assert components_of(11, dict(zip(everything, records, strict=True))).components == truth


def test_connect_all_joins_a_ring_through_bent_paths() -> None:
    # Three points 120 degrees apart on the ring 1 < r < 2: every straight line crosses the
    # hole, so the one component needs nonlinear paths.
    angles = torch.tensor([0.0, 2.0, 4.0]) * torch.pi / 3
    points = 1.5 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    found = connectivity.connect_all(Annulus(), "input", points, 0, steps=300, num_pivots=10,
                                     lr=0.05)  # fmt: skip
    assert found.components == [[0, 1, 2]] and found.pairs_decided == 2
    assert {r.verdict for r in found.edges.values()} == {"nonlinear"}


@pytest.mark.parametrize(
    ("target", "kwargs", "error", "words"),
    [
        (0.0, {}, InputError, r"target must be one integer class .* got 0\.0"),
        ([0, 0], {}, InputError, r"target must be one integer class"),
        (0, {"round_size": 0}, OptionsError, r"round_size must be a whole number >= 1"),
        (0, {"max_tries": 1.5}, OptionsError, r"max_tries must be a whole number >= 1"),
        (0, {"stepz": 3}, OptionsError, r"unknown path option 'stepz'"),
    ],
)
def test_connect_all_refuses_bad_arguments(target, kwargs: dict, error, words: str) -> None:
    points, _ = disks_and_ring_points()
    with pytest.raises(error, match=words):
        connectivity.connect_all(DisksAndRing(), "input", points, target, **kwargs)


def test_connect_all_names_inputs_outside_the_class() -> None:
    # (0, 0) and (3, 3) lie in class 1 of DisksAndRing: each can only be a component of its own.
    points, true = disks_and_ring_points()
    outside = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    with pytest.warns(UserWarning, match=r"inputs 11 \(class 1\), 12 \(class 1\) are not"):
        found = connectivity.connect_all(
            DisksAndRing(),
            "input",
            torch.cat([points, outside]),
            0,
            steps=40,
            num_pivots=10,
            lr=0.05,
            max_tries=2,
        )
    assert found.components == [*true, [11], [12]]
