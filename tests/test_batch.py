"""A point's class must not depend on its batch (issue 18, item 3).

A BatchNorm with ``track_running_stats=False`` normalises with the statistics of whatever batch
it is given, even in eval mode: the same image gets other logits in another batch (the lowest
target probability on a line changed with ``chunk_size``). Such a model is refused before any
work, by what it computes; BatchNorm with running statistics in eval mode is accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from connectivity import connect, connect_all
from connectivity.data import DigitsDataModule
from connectivity.engine.options import PathOptions
from connectivity.engine.search import connect_points
from connectivity.engine.split import BatchDependenceError, LayerError, probe_split, split
from connectivity.errors import ConnectivityError
from connectivity.reporting.wandb_log import WandbOptions
from connectivity.runs.pairs import PairSampling
from connectivity.runs.paths import Experiment, run_paths

CUT = "2"  # after the first BatchNorm and ReLU: index 1 is in the head, index 4 in the tail
WORDS = r"not a function of single points: {what}.* of the same inputs differ by .*track_running"


def _net(batch_stats_in: str | None, classes: int = 3) -> nn.Sequential:
    """Conv-BN-ReLU twice; the BatchNorm ``batch_stats_in`` the head (index 1) or the tail
    (index 4) uses batch statistics, the other running statistics (not the defaults 0 and 1)."""
    torch.manual_seed(0)
    norms = [
        nn.BatchNorm2d(4, track_running_stats=batch_stats_in != where) for where in ("head", "tail")
    ]
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        norms[0],
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        norms[1],
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    )
    for norm in norms:
        if norm.track_running_stats:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _single_point_logits_differ(net: nn.Module, x: torch.Tensor) -> bool:
    """The ground truth, independent of the check: logits of x[0] alone and in a batch."""
    with torch.no_grad():
        return not torch.allclose(net(x[:1]), net(x)[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("where", ["head", "tail"])
def test_batch_statistics_in_head_or_tail_are_refused_by_what_they_do(where: str) -> None:
    net = _net(where)
    x = torch.rand(4, 3, 8, 8)
    assert _single_point_logits_differ(net, x)
    head, tail = split(net, CUT)
    what = "the layer's values" if where == "head" else "the logits"
    with pytest.raises(BatchDependenceError, match=WORDS.format(what=what)) as caught:
        probe_split(head, tail, x[:1])
    assert isinstance(caught.value, LayerError) and "\n" not in str(caught.value)


def test_batch_norm_with_running_statistics_is_accepted() -> None:
    net = _net(None)
    x = torch.rand(4, 3, 8, 8)
    assert not _single_point_logits_differ(net, x)
    for layer in ("input", "0", CUT, "5", "8"):
        probe = probe_split(*split(net, layer), x[:1])
        assert probe.num_classes == 3


@pytest.mark.parametrize("where", ["head", "tail"])
def test_connect_and_connect_all_refuse_before_any_work(where: str) -> None:
    net = _net(where)
    x = torch.rand(3, 3, 8, 8)
    with pytest.raises(BatchDependenceError, match="not a function of single points"):
        connect(net, CUT, x[0], x[1], target=0, steps=1)
    with pytest.raises(BatchDependenceError, match="not a function of single points"):
        connect_all(net, CUT, x, target=0, steps=1)
    # In the input space the whole network is the tail.
    with pytest.raises(BatchDependenceError, match="the logits of the same inputs"):
        connect(net, "input", x[0], x[1], target=0, steps=1)


def test_connect_points_refuses_a_batch_dependent_tail_of_the_users() -> None:
    z = torch.rand(2, 3, 8, 8)
    options = PathOptions(steps=1, num_pivots=1, line_points=3)
    with pytest.raises(BatchDependenceError, match="the logits of the same inputs"):
        connect_points(_net("tail"), z[:1], z[1:], torch.tensor([0]), options)
    (record,) = connect_points(_net(None), z[:1], z[1:], torch.tensor([0]), options)
    assert record.verdict in ("linear", "nonlinear", "none")


def test_a_path_experiment_refuses_it_before_its_run_folder(tmp_path: Path) -> None:
    experiment = Experiment(
        classifier=str(tmp_path / "unused.ckpt"),
        name="bn",
        spaces=["input", CUT],
        pairs=PairSampling(count=2, seed=0),
        path=PathOptions(num_pivots=1, steps=1),
        output_dir=str(tmp_path),
    )
    with pytest.raises(ConnectivityError, match="not a function of single points"):
        run_paths(
            experiment,
            DigitsDataModule(),
            wandb=WandbOptions(enabled=False),
            network=_net("head", classes=10),
        )
    assert not (tmp_path / "bn").exists()


def test_a_network_that_takes_one_input_at_a_time_is_refused_in_one_line() -> None:
    class OneAtATime(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(1, 4))  # the batch size written in

    with pytest.raises(LayerError, match=r"cannot take a batch of 2 or 3 inputs.*RuntimeError"):
        connect(OneAtATime(), "input", torch.rand(4), torch.rand(4), target=0, pixel_range=None)


def test_a_vector_network_that_cannot_take_one_input_is_refused_for_its_batch_statistics() -> None:
    # BatchNorm1d with batch statistics fails on a batch of one; the refusal said "cannot take
    # inputs of shape (4,)" and blamed the input, not the batch statistics.
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(4, 4)
    with pytest.raises(BatchDependenceError, match=r"fails on one input alone .* batch statistics"):
        connect(network, "input", x[:2], x[2:], 0, pixel_range=None)
