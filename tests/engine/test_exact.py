"""Exact verdicts: ExactLine on hand-built networks with known breakpoints, against
brute force, on torchvision's ResNet18, and the band that inserts pivots where the exact check
finds the path off the target."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from connectivity import connect
from connectivity.engine.checks import Certifier, refine
from connectivity.engine.decisions import Verdict
from connectivity.engine.exact import (
    NotPiecewiseLinearError,
    UnreliableExactCheckError,
    check_paths,
    check_segments,
    why_not_piecewise_linear,
)
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.engine.split import split
from connectivity.errors import ConnectivityError, OptionsError


class Kinks(nn.Module):
    """Two classes on the plane; the ReLU inputs along x are x - 0.25, x - 0.5 and 0.75 - x, so
    on the segment (0, 0) -> (1, 0) the activation pattern changes at t = 1/4, 1/2 and 3/4."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, 3)
        self.out = nn.Linear(3, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]))
            self.hidden.bias.copy_(torch.tensor([-0.25, -0.5, 0.75]))
            self.out.weight.copy_(torch.tensor([[1.0, -2.0, 1.0], [0.0, 0.0, 0.0]]))
            self.out.bias.copy_(torch.tensor([0.125, 0.0]))

    def forward(self, z: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(z)))


def test_breakpoints_of_a_hand_built_network_are_found_exactly() -> None:
    net = Kinks().double()
    starts, ends = torch.tensor([[0.0, 0.0]]).double(), torch.tensor([[1.0, 0.0]]).double()
    check = check_segments(net, starts, ends, torch.tensor([0]))
    assert check.t.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-12)
    assert check.pieces().tolist() == [4]
    # class-0 margin 1/8 + relu(x - 1/4) - 2 relu(x - 1/2) + relu(3/4 - x) at the piece ends
    assert check.margin.tolist() == pytest.approx([0.875, 0.625, 0.625, 0.125, -0.125], abs=1e-12)


def test_max_pool_winner_changes_and_average_pool_has_none() -> None:
    # z(t) = (t, 1 - t): the max of the window changes winner at t = 1/2, where it is 1/2;
    # logits (max - 0.6, 0): the class-0 margin is off target on [0.4, 0.6].
    max_tail = nn.Sequential(nn.Unflatten(1, (1, 2)), nn.MaxPool1d(2), nn.Flatten())
    average = nn.Sequential(nn.Unflatten(1, (1, 2)), nn.AvgPool1d(2), nn.Flatten())

    class Logits(nn.Module):
        def __init__(self, pool: nn.Module) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, z: Tensor) -> Tensor:
            value = self.pool(z)
            return torch.cat([value - 0.6, torch.zeros_like(value)], dim=1)

    start, end = torch.tensor([[0.0, 1.0]]).double(), torch.tensor([[1.0, 0.0]]).double()
    check = check_paths(Logits(max_tail), torch.stack([start, end], dim=1), torch.tensor([0]))
    assert check.positions[0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert float(check.min_margin[0]) == pytest.approx(-0.1)
    assert check.off_target[0].tolist() == [pytest.approx([0.4, 0.6])]
    assert not bool(check.passed[0]) and bool(check.decided[0])
    flat = check_paths(Logits(average), torch.stack([start, end], dim=1), torch.tensor([1]))
    assert flat.pieces.tolist() == [1] and bool(flat.passed[0])  # 0.5 - 0.6 < 0: class 1


class Sliver(nn.Module):
    """Class 1 on a strip ``|x - c| < w`` (w = 0.001) of the plane, limited to ``|y| < 0.3``
    unless ``cut`` (then the strip cuts the plane in two); class 0 elsewhere. Piecewise
    linear: ``min(a, b) = a - relu(a - b)``. In float64: its logits reach 10^4, so in float32
    the exact check's tolerance (1,000 epsilons of the path's largest logit) would be 1.2 and
    leave the strip's margins of 0.8 undecided."""

    def __init__(self, cut: bool = False, c: float = 0.0123) -> None:
        super().__init__()
        self.cut, self.c = cut, c
        self.scale = nn.Parameter(torch.tensor(1.0, dtype=torch.float64), requires_grad=False)

    def forward(self, z: Tensor) -> Tensor:
        z = z.to(self.scale.dtype)
        x, y = z[:, 0] * self.scale, z[:, 1]
        a = 10_000.0 * (0.001 - (x - self.c).abs())
        strip = a if self.cut else a - F.relu(a - 4.0 * (0.3 - y.abs()))
        return torch.stack([torch.zeros_like(strip), strip], dim=1)


SLIVER_ENDS = torch.tensor([[-1.0, 0.1]]), torch.tensor([[1.0, 0.1]])


def test_a_sliver_between_samples_fools_the_sampled_check_only() -> None:
    starts, ends = SLIVER_ENDS
    sampled = PathOptions(num_pivots=8, steps=50, lr=0.05, certify="sampled")
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), sampled)
    assert record.verdict == Verdict.LINEAR and record.certificate == "sampled"  # wrong
    exact = PathOptions(num_pivots=8, steps=0, certify="exact")
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), exact)
    assert record.verdict == Verdict.NONE and record.certificate == "exact"
    # the line leaves the class on |x - c| <= w, i.e. t in [(1 + c - w) / 2, (1 + c + w) / 2]
    (stretch,) = record.line_off_target_intervals.tolist()
    assert stretch == pytest.approx([(1 + 0.0123 - 0.001) / 2, (1 + 0.0123 + 0.001) / 2])
    assert record.line_min_margin == pytest.approx(-4.0 * 0.2, abs=1e-3)  # float32 points
    assert record.line_pieces >= 3


def test_the_band_inserts_a_pivot_in_the_sliver_and_goes_around_it() -> None:
    starts, ends = SLIVER_ENDS
    # No springs: an inserted pivot moves across the band only (a spring would pull it out of
    # the 0.002-wide strip along the band, and the band would never see the strip).
    options = PathOptions(num_pivots=8, steps=300, lr=0.05, spring_constant=0.0, certify="exact")
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONLINEAR and record.certificate == "exact"
    assert record.path.shape[0] > 10  # a pivot was inserted
    assert record.min_margin > 0 and record.off_target_intervals.shape == (0, 2)
    # independent check: 20,000 points per segment
    dense = refine(record.path.unsqueeze(0), 20_000)[0]
    logits = Sliver()(dense)
    assert bool((logits[:, 0] > logits[:, 1]).all())
    # the records' other tensors follow the longer path
    assert record.path_probabilities.shape[0] == record.path.shape[0]
    assert record.distance_l2.shape[0] == record.path.shape[0]


@pytest.mark.parametrize("optimizer", ["adam", "fire", "lbfgs"])
def test_with_springs_the_band_inserts_again_until_it_goes_around_the_sliver(
    optimizer: str,
) -> None:
    # A spring pulls an inserted pivot out of the 0.002-wide strip along the band before it has
    # gone round; the exact check finds the strip again and inserts again (measured: adam 5
    # insertions, fire 6, lbfgs 1), within max_pivots (32).
    starts, ends = SLIVER_ENDS
    options = PathOptions(num_pivots=8, steps=300, lr=0.05, certify="exact", optimizer=optimizer)
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONLINEAR and record.certificate == "exact"
    assert 10 < record.path.shape[0] <= options.most_pivots + 2
    dense = refine(record.path.unsqueeze(0), 20_000)[0]
    logits = Sliver()(dense)
    assert bool((logits[:, 0] > logits[:, 1]).all())


def test_the_string_keeps_its_inserted_pivots_in_the_sliver(tmp_path) -> None:
    # The string's equal-arc respacing used to carry each inserted pivot out of the
    # 0.002-wide strip before FIRE had moved it round; the band grew to 34 points and ended
    # `none`. Inserted pivots now stay where they are when the string respaces.
    from connectivity.lightning.path_module import PathModule
    from tests.lightning.test_path_module import _fit

    starts, ends = SLIVER_ENDS
    options = PathOptions(
        num_pivots=8, steps=300, lr=0.05, certify="exact", optimizer="fire", method="string"
    )
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONLINEAR and record.certificate == "exact"
    assert 10 < record.path.shape[0] <= 12  # one or two insertions, not 24
    dense = refine(record.path.unsqueeze(0), 20_000)[0]
    logits = Sliver()(dense)
    assert bool((logits[:, 0] > logits[:, 1]).all())
    neb = dataclasses.replace(options, method="neb")
    (with_neb,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), neb)
    assert (with_neb.verdict, with_neb.certificate) == (record.verdict, record.certificate)
    # the Lightning driver keeps the same pivots
    module = PathModule(Sliver(), starts, ends, torch.tensor([0]), options)
    _fit(module, tmp_path)
    (got,) = module.records()
    assert (got.verdict, got.certificate, got.steps) == (record.verdict, "exact", record.steps)
    assert torch.equal(got.path, record.path)


def test_a_sliver_that_cuts_the_plane_gives_no_path_with_an_exact_certificate() -> None:
    starts, ends = SLIVER_ENDS
    options = PathOptions(num_pivots=8, steps=60, lr=0.05, certify="exact", max_pivots=12)
    (record,) = connect_points(Sliver(cut=True), starts, ends, torch.tensor([0]), options)
    assert record.verdict == Verdict.NONE and record.certificate == "exact"
    assert record.min_margin < 0 and record.off_target_intervals.shape[0] >= 1
    assert record.path.shape[0] <= 12 + 2


def test_a_line_that_touches_the_boundary_is_not_certified_exactly() -> None:
    class Touch(nn.Module):
        """Margin |x - 0.25| along the x axis: zero at one point only."""

        def forward(self, z: Tensor) -> Tensor:
            margin = (z[:, 0] - 0.25).abs() + 0.0 * z[:, 1]
            return torch.stack([margin, torch.zeros_like(margin)], dim=1)

    starts, ends = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    check = check_segments(Touch(), starts, ends, torch.tensor([0]))
    assert 0.625 in check.t.tolist() and float(check.margin.min()) == 0.0
    options = PathOptions(num_pivots=4, steps=0, certify="exact", line_points=20)
    (record,) = connect_points(Touch(), starts, ends, torch.tensor([0]), options)
    # a margin of exactly 0 (a tie) is within the tolerance: undecided, left to the samples
    assert record.certificate == "sampled" and "tolerance" in record.certificate_note
    assert record.verdict == Verdict.LINEAR and record.line_off_target_intervals is None


def _brute_force_margin(net: nn.Module, start: Tensor, end: Tensor, target: int, n: int) -> Tensor:
    t = torch.linspace(0, 1, n, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        logits = net(start + t * (end - start))
    others = logits.clone()
    others[:, target] = -torch.inf
    return logits[:, target] - others.amax(dim=1)


@pytest.mark.parametrize("dimension", [2, 3])
def test_exact_check_agrees_with_a_million_points(dimension: int) -> None:
    torch.manual_seed(dimension)
    net = nn.Sequential(
        nn.Linear(dimension, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    ).double()
    starts, ends = torch.randn(4, dimension).double(), torch.randn(4, dimension).double()
    targets = torch.tensor([0, 1, 2, 0])
    paths = torch.stack([starts, ends], dim=1)
    check = check_paths(net, paths, targets)
    n = 1_000_000
    grid = torch.linspace(0, 1, n, dtype=torch.float64)
    for i in range(4):
        brute = _brute_force_margin(net, starts[i], ends[i], int(targets[i]), n)
        assert bool(check.passed[i]) == bool((brute > 0).all())
        assert float(check.min_margin[i]) == pytest.approx(float(brute.min()), abs=1e-5)
        # every brute-force point off target lies in a reported stretch, and none on target
        inside = torch.zeros(n, dtype=torch.bool)
        for low, high in check.off_target[i].tolist():
            inside |= (grid >= low) & (grid <= high)
        assert bool((inside == (brute <= 0)).all())


def test_resnet18_tail_is_affine_between_breakpoints_and_no_relu_sign_change_is_missed() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    head, tail = split(model, "layer3")
    with torch.no_grad():
        points = head(torch.rand(2, 3, 32, 32))
    check = check_segments(tail, points[:1], points[1:], torch.tensor([3]))
    t = check.t
    assert check.pieces().item() == t.numel() - 1 > 20
    # logits at a quarter, the middle and three quarters of every piece, by a plain forward
    inputs: list[Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
        for m in tail.modules()
        if isinstance(m, nn.ReLU)
    ]
    inner = torch.cat([t[:-1] + f * (t[1:] - t[:-1]) for f in (0.25, 0.5, 0.75)])
    weight = inner.float().view(-1, 1, 1, 1)
    with torch.no_grad():
        logits = tail(torch.lerp(points[:1], points[1:], weight))
    for hook in hooks:
        hook.remove()
    pieces = t.numel() - 1
    found = [
        check.logits[:-1] + f * (check.logits[1:] - check.logits[:-1]) for f in (0.25, 0.5, 0.75)
    ]
    assert torch.allclose(logits, torch.cat(found), atol=1e-5)
    # each ReLU input keeps its sign inside a piece (values within rounding of 0 aside)
    for value in inputs:
        quarters = value.reshape(3, pieces, -1)
        sign = torch.where(quarters.abs() > 1e-5, quarters.sign(), torch.zeros_like(quarters))
        assert not bool(((sign[0] * sign[2]) < 0).any())
        assert not bool(((sign[0] * sign[1]) < 0).any())


def _refused_by_exact(tail: nn.Module, name: str, auto: str) -> None:
    """``certify="exact"`` refuses ``tail`` naming ``name``; ``auto`` decides it with the
    ``auto`` certificate (``"bounds"`` where they cover the tail; ``"sampled"``, saying why,
    where they do not)."""
    starts, ends = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    with pytest.raises(NotPiecewiseLinearError, match=name):
        connect_points(tail, starts, ends, torch.tensor([0]), PathOptions(certify="exact"))
    (record,) = connect_points(
        tail, starts, ends, torch.tensor([0]), PathOptions(certify="auto", steps=2)
    )
    assert record.certificate == auto
    assert auto != "sampled" or name in record.certificate_note


def test_non_piecewise_linear_tails_are_refused_with_the_operation_named() -> None:
    _refused_by_exact(nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2)), "GELU", "bounds")
    assert "softmax" in why_not_piecewise_linear(nn.Softmax(dim=1)).lower()
    for bad in (nn.LayerNorm(2), nn.SiLU(), nn.Sigmoid()):
        assert why_not_piecewise_linear(nn.Sequential(nn.Linear(2, 2), bad)) is not None


def test_certify_options_are_checked() -> None:
    with pytest.raises(OptionsError, match="certify must be one of"):
        PathOptions(certify="proven")
    with pytest.raises(OptionsError, match="max_pivots must be an integer >= 8"):
        PathOptions(max_pivots=4)
    assert PathOptions(num_pivots=5).most_pivots == 20


@pytest.mark.slow  # about 6 s: bands of a trained ResNet18 checked exactly at every step
def test_exact_verdicts_of_a_trained_classifier_survive_2000_points_per_segment(
    digits_classifier,
) -> None:
    from connectivity.classifier import ClassifierModule
    from connectivity.data import DigitsDataModule

    network = ClassifierModule.from_checkpoint(digits_classifier).network
    dataset = DigitsDataModule().dataset("test")
    images = torch.stack([dataset[i][0] for i in range(40)])
    labels = torch.tensor([int(dataset[i][1]) for i in range(40)])
    starts, ends, targets = [], [], []
    for label in labels.unique()[:2].tolist():
        index = (labels == label).nonzero().squeeze(1)[:2]
        if index.numel() == 2:
            starts.append(images[index[0]])
            ends.append(images[index[1]])
            targets.append(label)
    starts_t, ends_t = torch.stack(starts), torch.stack(ends)
    records = connect(
        network, "layer3", starts_t, ends_t, torch.tensor(targets), steps=10, certify="exact"
    )
    _, tail = split(network, "layer3")
    exact = [r for r in records if r.certificate == "exact" and r.verdict != "none"]
    assert exact
    for record in exact:
        dense = refine(record.path.unsqueeze(0), 2000)[0]
        with torch.no_grad():
            logits = torch.cat([tail(chunk) for chunk in dense.split(1024)])
        assert bool((logits.argmax(dim=1) == record.target).all())


def test_the_table_says_which_check_each_count_rests_on() -> None:
    from connectivity.reporting.tables import table_markdown, verdict_table

    def record(verdict: str, certificate: str) -> dict:
        return {"verdict": verdict, "pivot_verdict": verdict, "certificate": certificate}

    rows = [record("linear", "exact"), record("linear", "sampled"), record("none", "exact")]
    markdown = table_markdown(verdict_table({"input": rows}), 3)
    assert "| Linear path exists | 2 (2): 1 exact, 1 sampled |" in markdown
    assert "| No path found | 1 (1) exact |" in markdown
    assert "| Nonlinear path exists | 0 (0) |" in markdown


def test_figures_take_a_path_with_inserted_pivots() -> None:
    from dataclasses import asdict

    from connectivity.reporting.figures import pair_figure

    starts, ends = SLIVER_ENDS
    options = PathOptions(num_pivots=8, steps=300, lr=0.05, spring_constant=0.0, certify="exact")
    (record,) = connect_points(Sliver(), starts, ends, torch.tensor([0]), options)
    assert record.path.shape[0] > record.line.shape[0]
    figure = pair_figure(asdict(record), "sliver")
    energy = figure.axes[-1]  # the energy at the pivots of line and path
    lengths = sorted(len(line.get_xdata()) for line in energy.get_lines()[:2])
    assert lengths == [record.line.shape[0], record.path.shape[0]]
    # each strip's bar chart has 2 bars (classes) per point: the path's is as long as the path
    bars = sorted(len(ax.containers[0]) for ax in figure.axes if ax.containers)
    assert bars == [2 * record.line.shape[0], 2 * record.path.shape[0]]


# Pair 0 crosses the sliver between pivots (its line gets a pivot inserted there, 11 points);
# pair 1 has its 5th point in the sliver (10 points, no insertion): two rounds of bands.
TWO_ROUNDS = (
    torch.tensor([[-1.0, 0.1], [-0.8766, -0.1]]),
    torch.tensor([[1.0, 0.1], [1.1234, -0.1]]),
    torch.tensor([0, 0]),
)
TWO_ROUNDS_OPTIONS = PathOptions(
    num_pivots=8, steps=300, lr=0.05, spring_constant=0.0, certify="exact"
)


def test_the_lightning_driver_inserts_pivots_as_connect_points_does(tmp_path) -> None:
    from connectivity.lightning.path_module import PathModule
    from tests.lightning.test_path_module import _fit

    starts, ends, targets = TWO_ROUNDS
    expected = connect_points(Sliver(), starts, ends, targets, TWO_ROUNDS_OPTIONS)
    module = PathModule(Sliver(), starts, ends, targets, TWO_ROUNDS_OPTIONS)
    _fit(module, tmp_path)
    got = module.records()
    assert [r.path.shape[0] for r in got] == [11, 10]  # one inserted pivot in pair 0
    for a, b in zip(got, expected, strict=True):
        assert (a.verdict, a.certificate, a.status) == ("nonlinear", "exact", "certified")
        assert (b.verdict, b.certificate, b.status) == ("nonlinear", "exact", "certified")
        assert a.steps == b.steps and torch.equal(a.path, b.path)
        assert a.min_margin > 0 and a.off_target_intervals.shape == (0, 2)
    # both rounds' bands were logged, with their sizes
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header, *rows = metrics.splitlines()
    column = header.split(",").index("path/pivots")
    assert {float(r.split(",")[column]) for r in rows if r.split(",")[column]} == {8.0, 9.0}
    with pytest.raises(NotPiecewiseLinearError, match="GELU"):
        PathModule(nn.Sequential(nn.Linear(2, 2), nn.GELU()), options=TWO_ROUNDS_OPTIONS)


def test_a_split_tail_wrapped_again_by_the_lightning_driver_is_checked_exactly() -> None:
    # PathModule keeps FrozenTail(copy of the split's FrozenTail): found by running
    # `connectivity paths --path.certify exact` on a ResNet18, refused as untraceable before.
    import torchvision

    from connectivity.lightning.path_module import PathModule

    model = torchvision.models.resnet18(num_classes=10).eval()
    _, tail = split(model, "layer4")
    points = torch.randn(2, 512, 1, 1)
    options = PathOptions(certify="exact")
    module = PathModule(tail, points[:1], points[1:], torch.tensor([3]), options)
    assert Certifier.for_tail(module.tail, module.options).kind == "exact"
    assert Certifier.for_tail(module.tail, options.with_values(certify="bounds")).kind == "bounds"


# Run as a script (the ddp_pairs launcher starts it again for rank 1): the two pairs of
# TWO_ROUNDS with springs, so pair 0 goes through several rounds of insertion on rank 0 while
# rank 1 has other rounds of its own, or none.
DDP_SCRIPT = """
import sys
import lightning as L
sys.path.insert(0, {repo!r})
from connectivity.runs.trainer import RecordWriter
from connectivity.runs.graph import RoundModule
from connectivity.store.records import Pair, RunStore
from tests.engine.test_exact import TWO_ROUNDS, TWO_ROUNDS_OPTIONS, Sliver
import dataclasses

folder, devices = sys.argv[1], int(sys.argv[2])
starts, ends, targets = TWO_ROUNDS
options = dataclasses.replace(TWO_ROUNDS_OPTIONS, spring_constant=1.0)
pairs = [Pair(i, 2 * i, 2 * i + 1, 0) for i in range(2)]
store = RunStore(folder)
ends_of = {{i: (starts[i], ends[i]) for i in range(2)}}
bands = store.folder / "bands"
module = RoundModule(Sliver(), "plane", "plane", pairs, ends_of, options, store, bands)
L.Trainer(
    max_epochs=1, accelerator="cpu", devices=devices,
    strategy="ddp_pairs" if devices > 1 else "auto", logger=False, enable_progress_bar=False,
    enable_model_summary=False, enable_checkpointing=False, callbacks=[RecordWriter(store)],
).fit(module)
"""


@pytest.mark.slow  # two processes: about 30 s
def test_ranks_with_different_rounds_of_insertion_stop_together(tmp_path) -> None:
    import subprocess
    import sys

    from connectivity.store.records import RunStore
    from tests.conftest import REPO

    script = tmp_path / "rounds.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    for name, devices in (("one", "1"), ("two", "2")):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name), devices],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = RunStore(tmp_path / "one").load("plane"), RunStore(tmp_path / "two").load("plane")
    assert len(one) == len(two) == 2
    assert one[0]["path"].shape[0] > 11  # pair 0 went through several rounds
    for a, b in zip(one, two, strict=True):
        assert (a["verdict"], a["certificate"], a["steps"]) == (
            b["verdict"],
            b["certificate"],
            b["steps"],
        )
        assert a["verdict"] == "nonlinear" and a["certificate"] == "exact"
        assert torch.equal(a["path"], b["path"])


# ---------------------------------------------------------------------------------------------
# What an operation computes decides, never what it is called


def _dense_margins(tail: nn.Module, start: Tensor, end: Tensor, target: int, count: int) -> Tensor:
    """``(count,)`` float64 target margins at evenly spaced points of one segment."""
    t = torch.linspace(0.0, 1.0, count, dtype=torch.float64).view(-1, *([1] * start.dim()))
    with torch.no_grad():
        logits = tail(torch.lerp(start.double(), end.double(), t).to(start.dtype)).double()
    logits = logits.flatten(1)
    others = torch.cat([logits[:, :target], logits[:, target + 1 :]], dim=1).amax(dim=1)
    return logits[:, target] - others


class Tail(nn.Module):
    """``Linear(2, 3)``, then ``operation`` on its output ``h``, then ``Linear(3, 2)``."""

    def __init__(self, operation) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first, self.last, self.operation = nn.Linear(2, 3), nn.Linear(3, 2), operation

    def forward(self, z: Tensor) -> Tensor:
        return self.last(self.operation(self.first(z)))


@pytest.mark.parametrize(
    ("operation", "named"),
    [
        (lambda h: torch.mul(h, h), "mul"),
        (lambda h: h * h, "mul"),
        (lambda h: h.mul(h), "mul"),
        (lambda h: h.clone().mul_(h), "mul_"),
        (lambda h: h**2, "pow"),
        (lambda h: torch.pow(h, 2), "pow"),
        (lambda h: torch.square(h), "square"),
        (lambda h: h @ h.transpose(0, 1) @ h, "matmul"),
        (lambda h: torch.einsum("bi,bi->b", h, h).unsqueeze(1).expand(-1, 3), "einsum"),
        (lambda h: torch.einsum("bi,bj->bij", [h, h]).sum(2), "einsum"),
        (lambda h: h / h.sum(1, keepdim=True), "truediv"),
        (lambda h: torch.div(h, 2, rounding_mode="floor"), "div"),
        (lambda h: torch.where(h > 0, h, 0.5 * h), "gt"),
        (lambda h: h.max(1, keepdim=True).values.expand(-1, 3), "max"),
        (lambda h: h.sort(1).values, "sort"),
        (lambda h: h.topk(3, 1).values, "topk"),
        (lambda h: h[:, h.argmax(1)], "argmax"),
        (lambda h: h.to(torch.long).to(h.dtype), "to"),
        (lambda h: F.linear(h, h[:, :1].expand(-1, 3)[:3]), "linear"),
    ],
)
def test_products_and_point_dependent_operands_are_refused_by_name(operation, named) -> None:
    tail = Tail(operation).double()
    why = why_not_piecewise_linear(tail)
    assert why is not None and named in why


def test_affine_operations_of_one_value_used_twice_are_still_accepted() -> None:
    a, b = torch.tensor([[-1.0, 0.5]]).double(), torch.tensor([[1.0, -0.5]]).double()
    for operation in (
        lambda h: torch.add(h, h),
        lambda h: h + h - 0.5 * h,
        lambda h: torch.cat([h, h], 1)[:, 1:4],
        lambda h: torch.maximum(h, -h),  # |h|: piecewise linear in both operands
        lambda h: torch.max(F.relu(h), h.flip(1)),
    ):
        tail = Tail(operation).double()
        assert why_not_piecewise_linear(tail) is None
        check = check_paths(tail, torch.stack([a, b], dim=1), torch.tensor([0]))
        dense = _dense_margins(tail, a[0], b[0], 0, 100_001)
        # The dense minimum lies within a slope times the spacing (1e-5) of the exact one.
        assert float(check.min_margin[0]) <= float(dense.min()) + 1e-12
        assert float(check.min_margin[0]) == pytest.approx(float(dense.min()), abs=1e-4)


def test_a_squared_value_gives_no_exact_certificate() -> None:
    # The case: h * h in the tail was taken as affine (linear, exact, a wrong margin).
    _refused_by_exact(Tail(lambda h: h * h), "mul", "bounds")


class ActBatchNorm(nn.BatchNorm2d):
    """A batch norm that applies an activation in its own forward (as timm's BatchNormAct2d)."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__(channels)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class FusedBatchNorm(ActBatchNorm):
    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return self.act(x)


class SmoothReLU(nn.ReLU):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def _conv_tail(block: nn.Module) -> nn.Module:
    torch.manual_seed(4)
    tail = nn.Sequential(nn.Conv2d(1, 2, 2), block, nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    with torch.no_grad():
        for m in tail.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return tail.eval().double()


def test_subclasses_with_a_forward_of_their_own_are_traced_into_not_trusted() -> None:
    # BatchNorm2d's own forward has control flow torch.fx cannot trace: the block is named.
    assert "ActBatchNorm (module 1)" in why_not_piecewise_linear(
        _conv_tail(ActBatchNorm(2, nn.ReLU()))
    )
    assert "sigmoid" in why_not_piecewise_linear(_conv_tail(SmoothReLU()))
    relu = nn.ReLU()
    relu.forward = torch.sigmoid  # an instance-level forward
    assert "sigmoid" in why_not_piecewise_linear(_conv_tail(relu))
    hooked = nn.ReLU()
    hooked.register_forward_hook(lambda module, args, out: out * out)
    assert "mul" in why_not_piecewise_linear(_conv_tail(hooked))
    pre = nn.BatchNorm2d(2)
    pre.register_forward_pre_hook(lambda module, args: (torch.tanh(args[0]),))
    assert "BatchNorm2d (module 1)" in why_not_piecewise_linear(_conv_tail(pre))
    # A fused norm + ReLU written with F.batch_norm is traced into and checked exactly.
    tail = _conv_tail(FusedBatchNorm(2, nn.ReLU()))
    assert "SiLU" in why_not_piecewise_linear(_conv_tail(FusedBatchNorm(2, nn.SiLU())))
    a, b = torch.rand(1, 1, 3, 3).double(), torch.rand(1, 1, 3, 3).double()
    check = check_paths(tail, torch.stack([a, b], dim=1), torch.tensor([1]))
    dense = _dense_margins(tail, a[0], b[0], 1, 100_001)
    assert float(check.min_margin[0]) <= float(dense.min()) + 1e-12
    assert float(check.min_margin[0]) == pytest.approx(float(dense.min()), abs=1e-4)


def test_timm_batch_norm_act_is_checked_by_its_activation() -> None:
    layers = pytest.importorskip("timm.layers")
    silu = layers.BatchNormAct2d(2, act_layer=nn.SiLU)
    assert "SiLU" in why_not_piecewise_linear(_conv_tail(silu))
    relu = _conv_tail(layers.BatchNormAct2d(2, act_layer=nn.ReLU))
    assert why_not_piecewise_linear(relu) is None
    a, b = torch.rand(1, 1, 3, 3).double(), torch.rand(1, 1, 3, 3).double()
    check = check_paths(relu, torch.stack([a, b], dim=1), torch.tensor([0]))
    dense = _dense_margins(relu, a[0], b[0], 0, 100_001)
    assert float(check.min_margin[0]) <= float(dense.min()) + 1e-12
    assert float(check.min_margin[0]) == pytest.approx(float(dense.min()), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Valid piecewise-linear tails are checked, not crashed or refused


class PoolSliver(nn.Module):
    """Class 1 on the strip ``|x - c| < w`` of the plane, class 0 elsewhere: the logits are
    ``(0, w - relu(x - c) - relu(c - x))`` with each ReLU a max pool over ``[h, 0]`` (or
    ``torch.maximum(h, 0)``). The class-0 margin is ``|x - c| - w``."""

    def __init__(self, c: float, w: float, maximum: bool = False) -> None:
        super().__init__()
        self.c, self.w, self.maximum = c, w, maximum

    def forward(self, z: Tensor) -> Tensor:
        x = z[:, :1]
        h = torch.cat([x - self.c, self.c - x], 1)
        if self.maximum:
            r = torch.maximum(h, torch.zeros_like(h))
        else:
            r = F.max_pool1d(torch.stack([h, torch.zeros_like(h)], 2), 2).flatten(1)
        strip = self.w - r.sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(strip), strip], 1)


@pytest.mark.parametrize("maximum", [False, True])
def test_a_max_pool_used_as_a_relu_around_a_thin_sliver_is_checked(maximum: bool) -> None:
    # float32, a 1e-4 strip: the pool's two winners tie within rounding near the strip's edges
    # (this raised "winners of max pool did not settle in 200 rounds").
    generator = torch.Generator().manual_seed(0)
    starts, ends = torch.randn(64, 2, generator=generator), torch.randn(64, 2, generator=generator)
    tail = PoolSliver(0.123456, 1e-4, maximum)
    # By hand: the margin |x - c| - w is lowest (-w) where the segment crosses x = c, else at
    # the end nearer the strip.
    x0, x1 = starts[:, 0].double() - 0.123456, ends[:, 0].double() - 0.123456
    crosses = x0.sign() != x1.sign()
    lowest = torch.where(crosses, 0.0, torch.minimum(x0.abs(), x1.abs())) - 1e-4
    assert bool(crosses.any()) and bool((~crosses).any())
    for dtype, slack in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        paths = torch.stack([starts, ends], dim=1).to(dtype)
        check = check_paths(tail, paths, torch.zeros(64).long())
        assert check.min_margin.tolist() == pytest.approx(lowest.tolist(), abs=slack)
        decided = check.decided
        assert check.passed[decided].tolist() == (~crosses)[decided].tolist()
        # Undecided only where the margin is within the tolerance of zero (float32: 1.2e-4).
        assert bool((check.min_margin[~decided].abs() <= check.tolerance[~decided]).all())
        assert bool(decided.all()) == (dtype == torch.float64)


class Cancelling(nn.Module):
    """ReLU, average pool and large, nearly cancelling weights: logit 0 is
    ``sum_k w_k (p_k - p'_k)`` with ``p' = (1 + 1/(s^2 n)) p`` of size ``s`` each, so it is of
    order one while its terms are of order ``s^2``; float32 rounding of those terms depends on
    the batch the points are run in."""

    def __init__(self, scale: float = 100.0, n: int = 512) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first, self.pool, self.last = nn.Linear(2, 4 * n), nn.AvgPool1d(2), nn.Linear(2 * n, 2)
        relative = 1.0 / (scale**2 * n)
        with torch.no_grad():
            weight = torch.randn(n, 2, generator=generator) * scale
            bias = torch.randn(n, generator=generator) * scale
            self.first.weight.copy_(
                torch.cat([weight, weight * (1 + relative)]).repeat_interleave(2, 0)
            )
            self.first.bias.copy_(torch.cat([bias, bias * (1 + relative)]).repeat_interleave(2, 0))
            w = torch.randn(1, n, generator=generator) * scale
            self.last.weight.copy_(torch.cat([torch.cat([w, -w], 1), torch.zeros(1, 2 * n)]))
            self.last.bias.fill_(0.01)

    def forward(self, z: Tensor) -> Tensor:
        return self.last(self.pool(F.relu(self.first(z)).unsqueeze(1)).squeeze(1))


def test_rounding_the_exact_check_cannot_vouch_for_falls_back_to_sampled() -> None:
    # This raised "RuntimeError: traced tail disagrees with the tail ... please report".
    generator = torch.Generator().manual_seed(1)
    starts, ends = torch.randn(2, 2, generator=generator), torch.randn(2, 2, generator=generator)
    tail = Cancelling()
    with pytest.raises(UnreliableExactCheckError, match="floating-point tolerance"):
        check_paths(tail, torch.stack([starts, ends], dim=1), torch.zeros(2).long())
    assert issubclass(UnreliableExactCheckError, ConnectivityError)
    assert not issubclass(UnreliableExactCheckError, RuntimeError)
    records = connect_points(
        tail, starts[:1], ends[:1], torch.zeros(1).long(), PathOptions(certify="exact", steps=1)
    )
    for record in records:
        assert record.certificate == "sampled"
        assert "exact check failed" in record.certificate_note
        assert "floating-point tolerance" in record.certificate_note


class ViewByShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Conv2d(1, 2, 2), nn.Linear(8, 2)

    def forward(self, z: Tensor) -> Tensor:
        x = self.first(z)
        x = x.view(x.shape[0], -1)  # raised KeyError: relu (a size outlived its tensor)
        return self.last(F.relu(x))


class Padded(nn.Module):
    """Reflection, replication and circular padding, as layers and as ``F.pad`` modes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.pads = nn.Sequential(
            nn.ReflectionPad2d(1), nn.ReplicationPad2d(1), nn.CircularPad2d((1, 0, 0, 1))
        )
        self.conv, self.last = nn.Conv2d(1, 2, 3, stride=2), nn.Linear(2 * 6 * 6, 3)

    def forward(self, z: Tensor) -> Tensor:
        z = F.relu(self.pads(z))
        for mode in ("reflect", "replicate", "circular"):
            z = F.pad(z, (1, 1, 1, 1), mode=mode)
        return self.last(F.relu(self.conv(z)).flatten(1))


class Asserting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.first, self.last = nn.Linear(2, 4), nn.Linear(4, 2)

    def forward(self, z: Tensor) -> Tensor:
        torch._assert(z.shape[1] == 2, "two features")
        h = self.first(z)
        torch._assert((h.abs() < 1e6).all(), "finite")  # point-dependent, no value
        return self.last(F.relu(h))


class ClassToken(nn.Module):
    """A fixed token expanded to the batch and joined to the point (a ViT's class token)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.token = nn.Parameter(torch.randn(1, 1, 3))
        self.first, self.last = nn.Linear(3, 3), nn.Linear(3 * 4, 2)

    def forward(self, z: Tensor) -> Tensor:
        tokens = torch.cat([self.token.expand(z.shape[0], -1, -1), z], dim=1)  # (B, 4, 3)
        return self.last(F.relu(self.first(tokens)).flatten(1))


@pytest.mark.parametrize(
    "tail",
    [ViewByShape(), Padded(), Asserting(), ClassToken()],
    ids=lambda tail: type(tail).__name__,
)
def test_valid_piecewise_linear_tails_are_checked_exactly(tail: nn.Module) -> None:
    # Weights of our own seed: made at collection, they would depend on what ran before.
    torch.manual_seed(0)
    for module in tail.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    tail = tail.double()
    shape = {Asserting: (2,), ClassToken: (3, 3)}.get(type(tail), (1, 3, 3))
    generator = torch.Generator().manual_seed(7)
    starts = torch.randn(1, *shape, generator=generator, dtype=torch.float64)
    ends = torch.randn(1, *shape, generator=generator, dtype=torch.float64)
    assert why_not_piecewise_linear(tail) is None
    check = check_paths(tail, torch.stack([starts, ends], dim=1), torch.zeros(1).long())
    assert bool(check.decided.all())
    assert int(check.pieces.sum()) > 1  # kinks crossed: the ReLUs were checked
    # 20,001 points: the dense minimum is within a slope times 5e-5 of the exact one.
    dense = _dense_margins(tail, starts[0], ends[0], 0, 20_001)
    assert float(check.min_margin[0]) <= float(dense.min()) + 1e-12
    assert float(check.min_margin[0]) == pytest.approx(float(dense.min()), abs=1e-3)
    assert bool(check.passed[0]) == bool((dense > 0).all())


@pytest.mark.slow  # about 4 s (timm models); the default run covers _assert with Asserting
def test_timm_models_are_judged_by_their_activations_not_their_asserts() -> None:
    # timm's torch._assert made every cut of RegNet, EfficientNet and MobileNetV3 refused for
    # "_assert"; now RegNetX (ReLU) is checked and MobileNetV3 refused for its hard-swish.
    timm = pytest.importorskip("timm")
    regnet = timm.create_model("regnetx_002", pretrained=False, num_classes=10).eval()
    head, tail = split(regnet, "s4.b6.act3")
    assert why_not_piecewise_linear(tail) is None
    torch.manual_seed(8)
    with torch.no_grad():
        points = head(torch.rand(2, 3, 32, 32))
    end = torch.lerp(points[:1], points[1:], 0.05)
    check = check_paths(tail, torch.stack([points[:1], end], dim=1), torch.tensor([0]))
    dense = _dense_margins(tail, points[0], end[0], 0, 2_001)
    # float32: the exact minimum is at most every sampled margin, within rounding.
    assert float(check.min_margin[0]) <= float(dense.min()) + float(check.tolerance[0])
    assert int(check.pieces[0]) >= 1
    mobilenet = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    _, tail = split(mobilenet.eval(), "blocks.4.0.bn3.drop")
    assert "Hardswish" in why_not_piecewise_linear(tail)


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


class HiddenWrite(nn.Module):
    """``h = g = |1 - 2x| - 0.5`` on [0, 1]; the logits are ``[0.5, 2 (h - g)]``, margin
    ``0.5 - 2 (h - g)``: 0.5 everywhere unless an in-place ReLU changes ``h`` behind the check's
    back (then ``h - g = relu(-g)``, margin down to -0.5 at x = 0.5)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.a1 = _linear([[-2.0], [2.0]], [1.0, -1.0])
        self.a2, self.a3 = _linear([[1.0, 1.0]], [-0.5]), _linear([[1.0, 1.0]], [-0.5])
        self.b = _linear([[0.0, 0.0], [2.0, -2.0]], [0.5, 0.0])
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.relu(self.a1(x))
        h, g = self.a2(z), self.a3(z)
        if self.mode == "view method":
            h.view(-1, 1).relu_()
        elif self.mode == "view module":
            self.act(h.view(-1, 1))
        elif self.mode == "slice":
            h[:, :1].relu_()
        elif self.mode == "assertion":
            torch._assert(h.relu_().sum() >= 0, "never fails")
        return self.b(torch.cat([h, g], 1))


class BatchNotFirst(nn.Module):
    """A ReLU applied while the points are on dimension 1 (a sequence-first layout)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.a = _linear([[-2.0], [2.0], [-2.0], [2.0]], [1.0, -1.0, 1.0, -1.0])
        self.b = _linear([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], [-1.0, 0.0])

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "transpose":
            return self.b(torch.relu(self.a(x).transpose(0, 1)).transpose(0, 1))
        h = self.a(x).unsqueeze(0)
        return self.b(torch.maximum(h, torch.zeros_like(h)).squeeze(0))


class WritesBuffer(nn.Module):
    """``h * h`` disguised as a product with a buffer that ``out=`` filled with ``h``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("buf", torch.zeros(1, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = x - 0.5
        torch.add(h, 0.0, out=self.buf)
        square = h * self.buf
        return torch.cat([square, torch.full_like(square, 0.1)], 1)


def _own_conv_forward() -> nn.Module:
    """A Conv1d whose instance ``_conv_forward`` (which its forward calls) squares."""
    conv = nn.Conv1d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    conv._conv_forward = lambda x, w, b: F.conv1d(x, w, b) ** 2

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: Tensor) -> Tensor:
            square = self.conv(x.view(-1, 1, 1) - 0.5).view(-1, 1)
            return torch.cat([square, torch.full_like(square, 0.1)], 1)

    return Net()


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        (HiddenWrite("view method"), r"\.relu_\(\) \(node relu_\) changes in place .* node a2"),
        (HiddenWrite("view module"), r"ReLU \(module act\) .* changes in place .* node a2"),
        (HiddenWrite("slice"), r"changes in place the value of node a2"),
        (HiddenWrite("assertion"), r"changes in place .*in an assertion"),
        (BatchNotFirst("transpose"), r"\.transpose\(\) .* first dimension is not the path's"),
        (BatchNotFirst("unsqueeze"), r"\.unsqueeze\(\) .* first dimension is not the path's"),
        (WritesBuffer(), r"add \(node add\) writes into the tail's own buf"),
    ],
    ids=["view-method", "view-module", "slice", "assertion", "transpose", "unsqueeze", "out"],
)
def test_what_the_check_cannot_follow_is_seen_by_running_the_tail(
    tail: nn.Module, words: str
) -> None:
    # Each of these passed the exact check with a wrong lowest margin: 0.5 for the in-place
    # writes (the true one is -0.5), the transposed ReLU taken as affine, h * h as h * constant.
    tail = tail.double()
    x0, x1 = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    dense = _dense_margins(tail, x0[0], x1[0], 0, 100_001)
    assert float(dense.min()) < 0  # every one of them leaves the class on the segment
    with pytest.raises(NotPiecewiseLinearError, match=words):
        check_segments(tail, x0, x1, torch.tensor([0]))
    if isinstance(tail, WritesBuffer):
        return  # writing into a buffer with out= is refused by autograd in a band's step
    (record,) = connect_points(
        tail, x0, x1, torch.tensor([0]), PathOptions(certify="exact", steps=0)
    )
    assert record.certificate == "sampled" and re.search(words, record.certificate_note)


def test_a_function_set_on_a_layer_instance_is_traced_not_trusted() -> None:
    tail = _own_conv_forward().double()
    why = why_not_piecewise_linear(tail)
    assert why is not None and "pow" in why


class UnbatchedPool(nn.Module):
    """``max_pool1d`` of a ``(B, L)`` value: PyTorch reads the points as channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.max_pool1d(self.a(x), 2))


def test_a_pool_without_channels_falls_back_to_sampled_not_a_crash() -> None:
    # It raised IndexError from inside the check (or could read the wrong winners).
    tail = UnbatchedPool().double()
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = int(tail(x[:1]).argmax())
    (record,) = connect_points(
        tail, x[:1], x[1:], torch.tensor([target]), PathOptions(certify="exact")
    )
    assert record.certificate == "sampled"
    assert "pools an input without a channel dimension" in record.certificate_note


class MadeConstants(nn.Module):
    """Constants made with a point's dtype and device (as models place their constants), or,
    with ``batch``, shaped by the number of points."""

    def __init__(self, batch: bool = False) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.batch = batch
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.batch:
            return self.b(torch.relu(h) + torch.ones((x.shape[0], 8), dtype=h.dtype))
        shift = torch.arange(8, device=h.device).to(h.dtype) / 8 + torch.zeros(8, dtype=h.dtype)
        return self.b(torch.relu(h) @ torch.eye(8, dtype=h.dtype, device=h.device) + shift)


def test_constants_made_with_a_points_dtype_are_checked_exactly() -> None:
    tail = MadeConstants().double()
    generator = torch.Generator().manual_seed(12)
    starts = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    ends = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    assert why_not_piecewise_linear(tail) is None
    targets = tail(starts).argmax(dim=1)
    check = check_paths(tail, torch.stack([starts, ends], dim=1), targets)
    for i in range(3):
        dense = _dense_margins(tail, starts[i], ends[i], int(targets[i]), 100_001)
        assert float(check.min_margin[i]) <= float(dense.min()) + 1e-12
        assert float(check.min_margin[i]) == pytest.approx(float(dense.min()), abs=1e-4)
        assert bool(check.passed[i]) == bool((dense > 0).all())
    # A constant shaped by the number of points cannot be one constant of the check.
    batch = MadeConstants(batch=True).double()
    with pytest.raises(NotPiecewiseLinearError, match="changes with the number of points"):
        check_paths(batch, torch.stack([starts, ends], dim=1), targets)


class Tents(nn.Module):
    """The tent map ``T(x) = 2 relu(x) - 4 relu(x - 1/2)`` (1 - |2x - 1| on [0, 1]) composed
    ``depth`` times: on [0, 1] the activation pattern changes at the dyadic points ``m /
    2^depth`` and nowhere else (``relu(T^j)`` only touches 0 there, ``relu(T^j - 1/2)`` crosses
    at the next level). Logits ``[T^depth(x), 1/2]``. Each tent keeps its input alive across
    its ReLU (``+ (x - x)``, exactly 0) and reshapes by a size read off the points, so that a
    batch cut at a ReLU carries both."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.up = _linear([[1.0], [1.0]], [0.0, -0.5])
        self.down = _linear([[2.0, -4.0]], [0.0])
        self.head = _linear([[1.0], [0.0]], [0.0, 0.5])

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.depth):
            y = self.down(F.relu(self.up(x)))
            x = (y + (x - x)).view(x.size(0), -1)
        return self.head(x)


@pytest.mark.parametrize("max_values", [None, 48, 20, 8])
def test_batches_cut_for_memory_find_every_breakpoint_exactly_once(max_values: int | None) -> None:
    # Memory bounds of a few points make the batches overflow at every depth: they are cut and
    # go on from the ReLU where they overflowed, or start again from the input when too short.
    depth = 7
    starts = torch.tensor([[0.0], [1.0], [0.25]])
    ends = torch.tensor([[1.0], [0.0], [0.8125]])
    check = check_segments(
        Tents(depth).eval(), starts, ends, torch.ones(3, dtype=torch.long), max_values=max_values
    )
    dyadic = torch.arange(2**depth + 1, dtype=torch.float64) / 2**depth
    inside = dyadic[(dyadic > 0.25) & (dyadic < 0.8125)]
    expected = [
        dyadic,
        1.0 - dyadic.flip(0),
        torch.cat([torch.tensor([0.0]), (inside - 0.25) / 0.5625, torch.tensor([1.0])]),
    ]
    for s, want in enumerate(expected):
        t = check.t[check.offsets[s] : check.offsets[s + 1]]
        torch.testing.assert_close(t, want, rtol=0.0, atol=1e-12)
        x = starts[s].double() + t * (ends[s] - starts[s]).double()
        on_grid = (x * 2**depth).round() / 2**depth
        # T^depth is 0 at even and 1 at odd multiples of 2^-depth: margin 1/2 - T.
        tent = (on_grid * 2**depth).round() % 2
        margins = check.margin[check.offsets[s] : check.offsets[s + 1]]
        torch.testing.assert_close(margins, 0.5 - tent, rtol=0.0, atol=1e-5)
    assert check.pieces().tolist() == [2**depth, 2**depth, inside.numel() + 1]
