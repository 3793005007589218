"""Connected components of a class from pairwise path verdicts, without deciding every pair.

Plain Python (no torch, no Lightning): the union-find and the choice of each round's pairs. The
path engine is given as a callable that decides a list of pairs; :func:`connectivity.connect_all`
and ``connectivity graph`` plug the NEB search in.

The strategy is Kruskal's minimum-spanning-forest construction with the verdicts as the edge
test, the way Draxler et al. (2018, "Essentially no barriers in neural network energy
landscape") grow AutoNEB's minimum spanning tree over minima: candidate pairs are taken from near
to far (the distance in the space the paths are searched in), a pair whose ends already lie in
one component is skipped, and each decided pair is never decided again, so a pair that fails can
only be joined later through other members of the two components.

Pairs are decided in rounds so that one band call holds many of them. A round is the spanning
forest Kruskal would add if every pair in it were connected (one pair per gap between the
current components); between two components that a failed pair already separates, the round
takes as many of their nearest untried pairs as failed between them so far, plus one, so the
number tried at once doubles with each round (1, 2, 4, ...) and a class that really splits
costs a logarithmic number of rounds, not one round per pair.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from connectivity.errors import OptionsError

Pair = tuple[int, int]  # (i, j) indices of two inputs, i < j
R = TypeVar("R")

# Verdicts (engine.decisions.Verdict values) that mean a path inside the class was found.
CONNECTED_VERDICTS = frozenset({"linear", "nonlinear"})


def is_connected(record: Any) -> bool:
    """Whether a pair's record says a path was found: a :class:`PairRecord` or a saved record
    (``dict``) whose ``verdict`` is ``linear`` or ``nonlinear``."""
    verdict = record["verdict"] if isinstance(record, Mapping) else record.verdict
    return str(getattr(verdict, "value", verdict)) in CONNECTED_VERDICTS


class UnionFind:
    """Disjoint sets of ``0..n-1`` (union by size, path halving).

    Args:
        n: Number of elements (>= 0).
    """

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        """The representative of ``i``'s set."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> bool:
        """Join the sets of ``i`` and ``j``; False when they were one set already."""
        a, b = self.find(i), self.find(j)
        if a == b:
            return False
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]
        return True

    def copy(self) -> UnionFind:
        other = UnionFind(0)
        other.parent, other.size = list(self.parent), list(self.size)
        return other

    def groups(self) -> list[list[int]]:
        """The sets, each in increasing order, largest first (ties: smallest member first)."""
        members: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            members.setdefault(self.find(i), []).append(i)
        return sorted(members.values(), key=lambda g: (-len(g), g[0]))


def nearest_first(distances: Sequence[Sequence[float]]) -> list[Pair]:
    """Every pair ``(i, j)``, ``i < j``, ordered by ``distances[i][j]`` (ties by ``(i, j)``).

    Args:
        distances: ``(N, N)`` pairwise distances (nested sequences; only ``i < j`` is read).

    Raises:
        OptionsError: a matrix that is not square or holds NaN or infinite distances.
    """
    n = len(distances)
    rows = [list(map(float, row)) for row in distances]
    if any(len(row) != n for row in rows):
        raise OptionsError(
            f"distances must be a square (N, N) matrix, got {n} rows of lengths "
            f"{sorted({len(row) for row in rows})}"
        )
    pairs = [(rows[i][j], i, j) for i in range(n) for j in range(i + 1, n)]
    if any(not math.isfinite(d) for d, _, _ in pairs):
        raise OptionsError("distances hold NaN or infinite values; give finite distances")
    pairs.sort()
    return [(i, j) for _, i, j in pairs]


def check_graph_options(round_size: int | None, max_tries: int | None) -> None:
    """Raise :class:`OptionsError` unless both are None or whole numbers >= 1."""
    for name, value in (("round_size", round_size), ("max_tries", max_tries)):
        ok = value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool))
        if not ok or (value is not None and value < 1):
            raise OptionsError(
                f"{name} must be a whole number >= 1 or None (no limit), got {value!r}"
            )


class ComponentSearch:
    """The state of one class's search: decided pairs, the union-find, the next round.

    Args:
        distances: ``(N, N)`` distances between the inputs in the space searched; they only
            order the candidates.
        round_size: Most pairs in one round (None: no limit).
        max_tries: Most failed pairs between two components before they are left apart as
            not connected by the paths tried (None: every candidate pair may be tried, so the
            components are those of deciding all pairs).

    Raises:
        OptionsError: see :func:`nearest_first` and :func:`check_graph_options`.
    """

    def __init__(
        self,
        distances: Sequence[Sequence[float]],
        round_size: int | None = None,
        max_tries: int | None = None,
    ) -> None:
        check_graph_options(round_size, max_tries)
        self.size = len(distances)
        self.order = nearest_first(distances)
        self.round_size, self.max_tries = round_size, max_tries
        self.outcomes: dict[Pair, bool] = {}
        self.forest = UnionFind(self.size)

    def record(self, pair: Pair, connected: bool) -> None:
        """Take one decided pair into account (a pair decided before keeps its first outcome).

        Raises:
            ValueError: a pair that is not two different inputs of this class.
        """
        i, j = sorted(pair)
        if not (0 <= i < j < self.size):
            raise ValueError(f"pair {pair} is not two different inputs of 0..{self.size - 1}")
        if (i, j) in self.outcomes:
            return
        self.outcomes[(i, j)] = bool(connected)
        if connected:
            self.forest.union(i, j)

    def _gap(self, i: int, j: int) -> tuple[int, int]:
        a, b = self.forest.find(i), self.forest.find(j)
        return (a, b) if a < b else (b, a)

    def next_round(self) -> list[Pair]:
        """The pairs to decide next, nearest first; empty once the search is settled (one
        component, or no candidate left between any two components)."""
        failures = Counter(self._gap(i, j) for (i, j), ok in self.outcomes.items() if not ok)
        optimistic = self.forest.copy()  # as if every pair of this round were connected
        taken: Counter[tuple[int, int]] = Counter()
        picked: list[Pair] = []
        for i, j in self.order:
            if (i, j) in self.outcomes:
                continue
            gap = self._gap(i, j)
            if gap[0] == gap[1]:
                continue
            failed = failures[gap]
            if self.max_tries is not None and failed + taken[gap] >= self.max_tries:
                continue
            if optimistic.union(i, j) or (failed and taken[gap] < failed + 1):
                taken[gap] += 1
                picked.append((i, j))
                if self.round_size is not None and len(picked) >= self.round_size:
                    break
        return picked

    @property
    def components(self) -> list[list[int]]:
        return self.forest.groups()


@dataclass
class ClassComponents(Generic[R]):
    """The connected components of one class's inputs, as far as the paths tried show.

    Two inputs are in one component when a chain of pairs joins them each of which was found
    connected; inputs of two components are *not connected by the paths tried* (no path was
    found between the pairs decided, which does not prove none exists).

    Attributes:
        size: ``N``, the number of inputs (indices ``0..N-1``).
        components: Lists of input indices, each increasing, largest first.
        edges: ``{(i, j): record}`` of the pairs decided connected: a spanning forest of the
            components, plus any pair tried in the same round as another pair that joined
            the same two components.
        failed: ``{(i, j): record}`` of the pairs decided not connected.
        rounds: The pairs of each round, in the order they were decided.
    """

    size: int
    components: list[list[int]]
    edges: dict[Pair, R] = field(default_factory=dict)
    failed: dict[Pair, R] = field(default_factory=dict)
    rounds: list[list[Pair]] = field(default_factory=list)

    @property
    def pairs_decided(self) -> int:
        return len(self.edges) + len(self.failed)

    @property
    def all_pairs(self) -> int:
        """``N (N - 1) / 2``: what deciding every pair would cost."""
        return self.size * (self.size - 1) // 2

    def labels(self) -> list[int]:
        """The component number (index into ``components``) of each input."""
        label = [0] * self.size
        for k, members in enumerate(self.components):
            for i in members:
                label[i] = k
        return label


def search_components(
    distances: Sequence[Sequence[float]],
    decide: Callable[[list[Pair]], Sequence[R]],
    *,
    connected: Callable[[R], bool] = is_connected,
    known: Mapping[Pair, R] | None = None,
    round_size: int | None = None,
    max_tries: int | None = None,
    on_round: Callable[[int, list[Pair], ComponentSearch], None] | None = None,
) -> ClassComponents[R]:
    """Find the components of one class, deciding pairs in rounds until settled.

    Args:
        distances: ``(N, N)`` distances between the inputs (order of the candidates).
        decide: Decides a list of pairs together (one band call) and returns one record per
            pair, in order.
        connected: Whether a record says connected (default: its verdict is linear or
            nonlinear).
        known: Records of pairs decided earlier (a resumed search); they are not decided again.
        round_size: See :class:`ComponentSearch`.
        max_tries: See :class:`ComponentSearch`.
        on_round: Called as ``on_round(round_number, pairs, search)`` after each round.

    Returns:
        The components, the edges and failed pairs with their records, and the rounds.

    Raises:
        OptionsError: see :class:`ComponentSearch`.
        ValueError: ``decide`` returned a number of records other than the number of pairs.
    """
    search = ComponentSearch(distances, round_size, max_tries)
    records: dict[Pair, R] = {}
    for pair, record in (known or {}).items():
        key = (min(pair), max(pair))
        records[key] = record
        search.record(key, connected(record))
    rounds: list[list[Pair]] = []
    while pairs := search.next_round():
        decided = list(decide(pairs))
        if len(decided) != len(pairs):
            raise ValueError(f"decide returned {len(decided)} records for {len(pairs)} pairs")
        for pair, record in zip(pairs, decided, strict=True):
            records[pair] = record
            search.record(pair, connected(record))
        rounds.append(pairs)
        if on_round is not None:
            on_round(len(rounds), pairs, search)
    return components_of(search.size, records, connected, rounds)


def components_of(
    size: int,
    records: Mapping[Pair, R],
    connected: Callable[[R], bool] = is_connected,
    rounds: Iterable[list[Pair]] = (),
) -> ClassComponents[R]:
    """The components that decided pairs give (their transitive closure), for ``size`` inputs.

    Works for any set of decided pairs: a search's, or all ``N (N - 1) / 2`` pairs.
    """
    forest = UnionFind(size)
    edges: dict[Pair, R] = {}
    failed: dict[Pair, R] = {}
    for (i, j), record in sorted(records.items()):
        if connected(record):
            edges[(i, j)] = record
            forest.union(i, j)
        else:
            failed[(i, j)] = record
    return ClassComponents(size, forest.groups(), edges, failed, list(rounds))
