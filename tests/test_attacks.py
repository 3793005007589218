"""Targeted adversarial examples (ART's PGD and FGSM, L-infinity) against a classifier whose
answer is known: a linear one, where the best an attack can do is the corner of its box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from connectivity.attacks import (
    AdversarialOptions,
    AttackError,
    check_within_budget,
    targeted_examples,
)
from connectivity.runs.pairs import PairSampling
from connectivity.runs.sampling import PairError


class SumAbove(nn.Module):
    """Class 0 where the pixels sum to more than 2, class 1 below: logits ``(s, -s)`` with
    ``s = sum(x) - 2``. Within an L-infinity ball of radius ``e`` in [0, 1], the lowest sum is
    ``sum(max(x - e, 0))``, so a targeted attack to class 1 can succeed exactly where it is
    below 2, and then at best at that corner."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1) - 2.0
        return torch.stack([s, -s], dim=1)


# (1, 2, 2) images; the lowest reachable sums at budget 0.1 are 1.9, 2.1, 1.94 (a pixel
# clipped at 0 would let it reach 1.94 < 2 unclipped: 2.02 with the clip) and 1.6.
IMAGES = torch.tensor(
    [
        [0.6, 0.6, 0.6, 0.5],
        [0.7, 0.6, 0.6, 0.6],
        [0.02, 0.9, 0.9, 0.52],
        [0.5, 0.5, 0.5, 0.5],
    ]
).reshape(4, 1, 2, 2)
REACHABLE = [True, False, False, True]


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_attacks_succeed_exactly_where_the_box_reaches_the_target(attack: str) -> None:
    targets = torch.ones(4, dtype=torch.long)
    options = AdversarialOptions(attack=attack, budget=0.1, steps=40)
    images = IMAGES.clone()
    adversarial, success = targeted_examples(SumAbove(), images, targets, options)
    assert torch.equal(images, IMAGES)  # the caller's tensor is left as it was
    assert success.tolist() == REACHABLE
    # Checked here without the function's own check: the target class, the budget, [0, 1].
    s = adversarial.flatten(1).sum(dim=1) - 2.0
    assert ((s < 0) == success).all()
    assert float((adversarial - IMAGES).abs().max()) <= 0.1 + 1e-6
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    # Both reach the corner of the box: every pixel down by the budget, clipped at 0.
    corner = (IMAGES - 0.1).clamp(min=0)
    assert torch.allclose(adversarial, corner, atol=1e-6)


def test_the_budget_check_refuses_what_is_out_of_budget_or_out_of_range() -> None:
    sources = torch.full((2, 1, 2, 2), 0.5)
    inside = sources.clone()
    inside[1, 0, 1, 1] += 0.1
    assert check_within_budget(inside, sources, 0.1).tolist() == pytest.approx([0.0, 0.1])
    over = inside.clone()
    over[1, 0, 0, 0] -= 0.1001
    with pytest.raises(AttackError, match=r"example 1 lies 0\.1001 .* over the budget 0\.1"):
        check_within_budget(over, sources, 0.1)
    outside = torch.full((2, 1, 2, 2), 0.99)
    outside[0, 0, 0, 0] = 1.001
    with pytest.raises(AttackError, match=r"outside \[0, 1\]"):
        check_within_budget(outside, torch.full((2, 1, 2, 2), 0.95), 0.1)
    broken = sources.clone()
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(AttackError, match="example 0"):
        check_within_budget(broken, sources, 0.1)


def _small_network() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
    )


def test_the_same_seed_gives_the_same_examples_and_the_caller_keeps_its_network() -> None:
    network = _small_network().train()  # train mode: a forward pass would update batch norm
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images = torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    numpy_state, torch_state = np.random.get_state(), torch.get_rng_state()
    options = AdversarialOptions(budget=0.05, steps=3, seed=7)
    first, success = targeted_examples(network, images, targets, options)
    again, _ = targeted_examples(network, images, targets, options)
    other, _ = targeted_examples(network, images, targets, AdversarialOptions(budget=0.05, steps=3))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # the seed does choose the random start
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert network.training and all(p.requires_grad for p in network.parameters())
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())
    with torch.no_grad():
        predicted = network.eval()(first).argmax(dim=1)
    assert torch.equal(predicted == targets, success)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"attack": "cw"}, "pairs.adversarial.attack must be one of pgd, fgsm, got 'cw'"),
        ({"budget": 0}, r"pairs.adversarial.budget must be in \(0, 1\] .* got 0$"),
        ({"budget": 8}, r"budget must be in \(0, 1\] .* got 8$"),
        ({"budget": float("nan")}, "got nan"),
        ({"steps": 0}, "pairs.adversarial.steps must be a whole number >= 1, got 0"),
        ({"steps": 2.5}, "steps must be a whole number >= 1, got 2.5"),
        ({"step_size": -0.1}, r"step_size must be > 0 .* got -0.1"),
        ({"count": 0}, "pairs.adversarial.count must be a whole number >= 1, got 0"),
        ({"seed": -1}, "pairs.adversarial.seed must be a whole number from 0 to 2147483647"),
        ({"seed": 2**32}, "seed must be a whole number from 0 to 2147483647, got 4294967296"),
    ],
)
def test_options_it_cannot_use_fail_in_one_line(given: dict, words: str) -> None:
    with pytest.raises(PairError, match=words) as error:
        AdversarialOptions(**given)
    assert "\n" not in str(error.value)


def test_pairs_adversarial_takes_true_false_or_a_mapping() -> None:
    assert PairSampling(adversarial=True).adversarial == AdversarialOptions()
    assert PairSampling(adversarial=False).adversarial is None
    chosen = PairSampling(adversarial={"attack": "fgsm", "budget": 0.1}).adversarial
    assert chosen == AdversarialOptions(attack="fgsm", budget=0.1)
    with pytest.raises(PairError, match="no option 'eps'; its options are attack, budget"):
        PairSampling(adversarial={"eps": 0.1})
    assert AdversarialOptions(budget=0.1, steps=20).step == pytest.approx(2.5 * 0.1 / 20)
