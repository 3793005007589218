"""Options declared once: BandOptions (the band's, taken by ElasticBand and find_paths) and
PathOptions, which extends them with the checks'; one name and one default each."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from connectivity.engine.band import ElasticBand
from connectivity.engine.options import BandOptions, PathOptions
from connectivity.engine.search import find_paths
from connectivity.errors import OptionsError


def test_points_per_segment_gives_at_least_line_points() -> None:
    options = PathOptions(num_pivots=8, line_points=64)
    assert (options.num_pivots + 1) * (options.points_per_segment + 1) + 1 >= 64


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        PathOptions(method="elastic")
    with pytest.raises(ValueError, match="optimizer"):
        PathOptions(optimizer="bfgs")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"method": "string", "climbing": True}, "climbing works with method='neb' only"),
        ({"bounds": (1, 0)}, r"low < high, got \(1, 0\)"),
        ({"bounds": (0, float("inf"))}, "bounds must be a finite number, got inf"),
        ({"bounds": "01"}, "bounds must be"),
        ({"bounds": ("0", "1")}, "bounds must be a finite number, got '0'"),
        ({"bounds": (True, 2)}, "bounds must be a finite number, got True"),
        ({"bounds": {0: 1, 1: 2}}, "bounds must be"),
        ({"lr": -0.1}, "lr must be a finite number > 0, got -0.1"),
        ({"lr": 0}, "lr must be a finite number > 0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"num_pivots": 0}, "num_pivots must be an integer >= 1, got 0"),
        ({"num_pivots": 2.5}, "num_pivots must be an integer >= 1, got 2.5"),
        ({"steps": -1}, "steps must be an integer >= 0"),
        ({"line_points": 1}, "line_points must be an integer >= 2"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"spring_constant": -1.0}, "spring_constant must be a finite number >= 0"),
        ({"tol": -1e-3}, "tol must be a finite number >= 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"method": "spline"}, "method must be one of"),
        ({"converge": "yes"}, "converge must be true or false"),
        ({"optimizer": "bfgs"}, "optimizer must be one of .*'fire', 'lbfgs'"),
        ({"max_step": 0}, r"max_step must be a number > 0 \(\.inf: none\) or null .*got 0"),
        ({"max_step": "1"}, "max_step must be a number > 0"),
        ({"max_step": float("nan")}, "max_step must be a number > 0"),
        ({"max_energy_rise": -1.0}, r"max_energy_rise must be a number > 0 \(\.inf: none\), got"),
        ({"max_energy_rise": None}, "max_energy_rise must be a number > 0"),
        ({"backoffs": -1}, "backoffs must be an integer >= 0, got -1"),
        ({"backoffs": 1.5}, "backoffs must be an integer >= 0"),
        ({"climb_after": -1}, "climb_after must be an integer >= 0, got -1"),
        ({"nudge_seed": 0.5}, "nudge_seed must be an integer, got 0.5"),
        ({"max_pivots": 7}, "max_pivots must be an integer >= 8, got 7"),
        ({"certify": "maybe"}, "certify must be one of"),
    ],
)
def test_invalid_options_are_refused_when_built(options: dict, words: str) -> None:
    with pytest.raises(OptionsError, match=words):
        PathOptions(**options)


def test_options_are_frozen_and_take_numpy_integers() -> None:

    options = PathOptions(num_pivots=np.int64(3), lr=np.float32(0.5))
    assert options.num_pivots == 3 and type(options.num_pivots) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.lr = -1.0  # type: ignore[misc]
    with pytest.raises(OptionsError, match="lr must be"):
        dataclasses.replace(options, lr=-1.0)
    with pytest.raises(OptionsError, match="unknown path option 'foo'"):
        PathOptions.from_dict({"foo": 1})


def test_new_options_take_their_defaults_and_infinity() -> None:
    assert PathOptions().resolved_max_step == math.inf  # adam: no cap, as before
    assert PathOptions(optimizer="fire").resolved_max_step == 0.5
    options = PathOptions(optimizer="lbfgs", max_step=math.inf, max_energy_rise=math.inf)
    assert options.resolved_max_step == math.inf
    assert options.max_energy_rise == math.inf
    assert PathOptions(max_step=2).max_step == 2.0 and PathOptions(backoffs=0).backoffs == 0


def test_nudge_option_is_checked() -> None:
    for bad in (-1e-3, math.nan, math.inf, "small", True):
        with pytest.raises(OptionsError, match="nudge"):
            PathOptions(nudge=bad)


def test_path_options_are_band_options_with_the_same_defaults() -> None:
    band_fields = {f.name: f.default for f in dataclasses.fields(BandOptions)}
    path_fields = {f.name: f.default for f in dataclasses.fields(PathOptions)}
    assert issubclass(PathOptions, BandOptions)
    assert {k: path_fields[k] for k in band_fields} == band_fields
    assert set(path_fields) - set(band_fields) == {
        "line_points",
        "converge",
        "chunk_size",
        "certify",
        "max_splits",
        "max_pivots",
    }
    assert (BandOptions().steps, BandOptions().backoffs, BandOptions().max_step) == (200, 4, None)


def test_the_band_and_find_paths_take_the_same_defaults() -> None:
    starts, ends = torch.zeros(1, 2), torch.ones(1, 2)
    band = ElasticBand(starts, ends)
    assert band.options == BandOptions()
    assert (band.options.steps, band.options.backoffs, band.max_step) == (200, 4, math.inf)
    result = find_paths(lambda z: (z**2).sum(dim=1), starts, ends, steps=0)
    assert result.steps.tolist() == [0]


def test_keywords_replace_options_and_the_max_step_follows_the_optimizer() -> None:
    starts, ends = torch.zeros(1, 2), torch.ones(1, 2)
    band = ElasticBand(starts, ends, PathOptions(optimizer="fire"), num_pivots=3)
    assert band.num_pivots == 3 and band.max_step == 0.5  # fire's cap
    assert ElasticBand(starts, ends, max_step=0.25).max_step == 0.25


def test_former_names_are_read_as_the_new_ones_and_never_both() -> None:
    options = BandOptions()
    assert options.with_values(max_backoffs=2).backoffs == 2
    assert options.with_values(max_steps=7).steps == 7
    with pytest.raises(OptionsError, match="backoffs or its former name max_backoffs"):
        options.with_values(max_backoffs=2, backoffs=3)
    energy = lambda z: (z**2).sum(dim=1)  # noqa: E731
    result = find_paths(energy, torch.zeros(1, 2), torch.ones(1, 2), steps=3, max_backoffs=0)
    assert result.path.shape == (1, 10, 2) and result.backoffs.tolist() == [0]


def test_an_unknown_option_is_refused_not_ignored() -> None:
    starts, ends = torch.zeros(1, 2), torch.ones(1, 2)
    with pytest.raises(OptionsError, match="unknown option 'max_stpe'"):
        ElasticBand(starts, ends, max_stpe=0.5)
    with pytest.raises(OptionsError, match="unknown option 'line_points'"):
        find_paths(lambda z: z.sum(dim=1), starts, ends, line_points=9)  # a PathOptions field


def test_band_gives_the_band_options_of_path_options() -> None:
    options = PathOptions(num_pivots=4, max_pivots=8, optimizer="lbfgs", line_points=9)
    band = options.band(num_pivots=6)
    assert type(band) is BandOptions
    assert (band.num_pivots, band.optimizer) == (6, "lbfgs")
