"""The three checks of a segment side by side: sampled, exact (ExactLine) and bounds (issue 21).

On the same segments, in one run, per setting (network and space):

* **sampled**: the 64-point check: :func:`connectivity.engine.checks.path_log_probabilities`
  with 63 points inside each segment, then :func:`~connectivity.engine.checks.on_target`
  (``on``: segments on target at all 65 points);
* **exact**: ExactLine, :func:`connectivity.engine.exact.check_paths` (one segment per path):
  ``pieces/seg`` (median), verdicts ``passed / left the class / undecided``;
* **bounds**: branch and bound on ``t``, :func:`connectivity.engine.bounds.prove_segments`
  (``--max-splits``): ``sub-int/seg`` (final sub-intervals, median), ``evals/seg`` (bound
  evaluations, median), verdicts ``proved / counterexample / budget``.

``s/seg`` is each check's wall time on all segments at once (one call, as the tool batches
them), divided by the segments; the tracing of the program is not counted. Each check first
runs on one segment under ``--time-limit`` seconds (a warm-up that also decides whether the
setting is feasible); over the limit, the check is skipped there and ``> limit`` printed. The
batch then runs under ``--time-limit`` times the segments; when it runs over, the cells show
the first segment's time and counts (``> limit (1st 12.3)``, ``1st: ...``). ``b/e`` and
``b/s``: bounds' time over exact's and over sampled's. Goals (issue 21): in the input space
``b/e <= 1/5``, at hidden layers ``b/e <= 1/3``, and ``b/s <= 10``. ``agree``: segments where
bounds' proof (or counterexample) and the exact verdict agree, of those both decided; a bounds
proof where exact finds the path leaving the class would be a soundness defect.

Settings:

* ``resnet18``: the trained ResNet18 of ``configs/classifier/cifar10_jpeg_resnet18.yaml``
  (``--checkpoint``, loaded with :func:`connectivity.runs.networks.load_network`), split with
  :func:`connectivity.engine.split.split` in the input space, at ``layer1`` and at ``layer3``;
  segments join pairs of correctly classified test images of one class (the first in file
  order, classes in turn), target that class.
* ``vit``, ``swin``, ``convnext``: random-weight torchvision tails (``VisionTransformer`` with
  32-pixel images, patches of 8, 2 layers, 2 heads, width 32, MLP 64, its head (zero in
  torchvision) drawn from N(0, 1/32); ``swin_t`` and
  ``convnext_tiny`` as torchvision builds them, 10 classes, 32-pixel images), in the input
  space and at one hidden layer; segments join test images of one *predicted* class. Where a
  check does not cover an operation yet, its cell says ``not covered [k]`` and note ``k`` under
  the tables gives the reason (the check's error message).

Usage::

    python benchmarks/bounds_check.py --checkpoint ../ckpt/cifar10_jpeg_resnet18.ckpt \\
        [--segments 4] [--models resnet18,vit,swin,convnext] [--device cpu|cuda] [--threads N] \\
        [--spaces input,layer1] [--max-splits 1024] [--time-limit 60] [--skip-exact] \\
        [--data ../shared/data/cifar10-jpeg]

Measured 2026-12-06 on this project's 2-core CPU shared with other jobs (load average 4-5, so
times are upper bounds; the checks of a row ran one after another in one process), ``--threads
1``, 4 segments, ``--time-limit 60``, ``--max-splits 1024``; ``bounds`` as of main d6972f4
(forward lines in ``t``). The ResNet18 was trained here (``connectivity fit -c
configs/classifier/cifar10_jpeg_resnet18.yaml --trainer.max_epochs 4
--trainer.limit_val_batches 10``, stopped after 2 epochs; validation accuracy 0.629, test
accuracy 0.641):

| model | space | point | sampled s/seg | exact s/seg | bounds s/seg | b/e | b/s | goals |
|---|---|---|---|---|---|---|---|---|
| resnet18 | input | 3x32x32 | 0.090 | 32.169 | > 60 | - | - | - |
| resnet18 | layer1 | 64x8x8 | 0.038 | 1.614 | > 60 | - | - | - |
| resnet18 | layer3 | 256x2x2 | 0.012 | 0.041 | 0.573 | 13.88 | 48.5 | e/3 no, s*10 no |

| model | space | on | pieces/seg | exact p/l/u | sub-int/seg | evals/seg | bounds p/c/b | agree |
|---|---|---|---|---|---|---|---|---|
| resnet18 | input | 3/4 | 24680 (23689-28391) | 3/1/0 | - | - | - | - |
| resnet18 | layer1 | 4/4 | 4345 (4054-4867) | 4/0/0 | - | - | - | - |
| resnet18 | layer3 | 4/4 | 486 (289-611) | 4/0/0 | 4 (4-6) | 8 (7-11) | 4/0/0 | 4/4 |

(``exact p/l/u``: passed / left the class / undecided; ``bounds p/c/b``: proved /
counterexample / out of budget.)

Bounds ran over the limit on the batch of 4 in the input space and at ``layer1``; in the input
space its first segment, the one that leaves the class, took 2.3 s (a counterexample after 15
evaluations; a later run). With ``--max-splits 32 --skip-exact`` the same segments end out of
budget: input 5.5 s/seg, 33 sub-intervals, 65 evaluations, 0 proved / 1 counterexample / 3
budget; ``layer1`` 3.4 s/seg, 0 / 0 / 4. The random-weight tails (``--models
vit,swin,convnext``): sampled 0.003 (vit input), 0.82 (swin input), 0.48 (swin ``features.5``),
0.25 (convnext input), 0.12 (convnext ``features.5``) s/seg; exact and bounds both "not
covered" (MultiheadAttention's control flow for tracing, LayerNorm, torchvision's
``_patch_merging_pad``).

Where bounds loses (scratch measurements on these segments, not part of this script):

* In the input space and at ``layer1`` the forward lines are tight until the first ReLU whose
  input crosses zero on the sub-interval; from there every convolution multiplies the width of
  the bounds, relative to the true range of the value, by about 8 (its slack goes through
  ``|W|``, without the cancellation of the signal): on ``t`` in [0.5, 0.501] at ``layer1`` the
  bound is 1.4 times the true range after ``layer2``, 36 times after ``layer3.0``, 10^4 at
  ``layer4.0``, 5 10^6 at the logits (margin bound -1.0e4, true margin 2.07); in the input
  space on a width of 1e-4 (2 ReLUs crossing of 16,384) 3.5 10^15 at the logits. The width
  does not help: a sub-interval holding one kink early in the tail is never proved, so bounds
  needs sub-intervals narrower than ExactLine's pieces. At ``layer3`` (4 convolutions left) the
  bounds stay within 2.2 times the true range and 8 evaluations prove a segment; there each
  evaluation's cost loses (~50 ms per sub-interval against 0.3 ms for a float32 forward).
* A noise symbol per crossing ReLU (a zonotope, DeepZ: Singh et al., NeurIPS 2018) keeps that
  cancellation: at ``layer1`` on [0.5, 0.5625] the margin bound is 1.98 (true minimum 2.07;
  forward lines -5.9e7) with 461 symbols, where ExactLine finds 349 pieces; on [0.5, 0.516] 2.06
  with 96 symbols, 92 pieces. Symbols cannot be dropped: boxing all but the 16 largest per layer
  gives -1.7e7, keeping symbols in the first 4 of the 12 ReLU layers only -2.3e3 (the first 8:
  1.18). Its cost grows like ExactLine's
  (one row per crossing neuron against one per piece), so on piecewise-linear tails it matches
  ExactLine rather than beating it; it is what makes deep non-piecewise-linear tails provable.
* Per evaluation: the signed layers run 8 float64 convolutions per layer (``A+``, ``A-`` of 4
  lines) and clamp the weights at every call. The centre-radius form (``W c -+ |W| r``, 2 calls
  on 2N rows, ``|W|`` cached) gives the same bounds (1e-13 relative) 2 to 7 times faster
  (layer3: 47 -> 22 ms per sub-interval at 64 per call; 359 -> 49 at 1). Float64
  convolutions are 4 to 12 times slower than float32 ones on this CPU: the centre-radius
  propagation in float32 takes 0.7 ms per sub-interval at ``layer3`` (2.8 at ``layer1``; 26
  and 41 now), but a sound worst-case rounding term (``gamma_n |W| |c|``, ``n`` the fan-in) is
  one more per-neuron slack that ``|W|`` amplifies downstream: at ``layer3`` it lowers the
  margin bounds by up to 3 and proves none of the 64 sub-intervals float64 proves. Float32 is
  safe for the radius (``|W| r``, rounded up) only; the centre needs float64.
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from connectivity.data import ImageFolderDataModule, stack_images
from connectivity.engine.bounds import NotBoundedError, bound_program, prove_segments
from connectivity.engine.checks import on_target, path_log_probabilities
from connectivity.engine.exact import (
    NotPiecewiseLinearError,
    UnreliableExactCheckError,
    check_paths,
    piecewise_linear_program,
)
from connectivity.engine.split import split
from connectivity.runs.networks import load_network

SPACES = {
    "resnet18": ["input", "layer1", "layer3"],
    "vit": ["input", "encoder.layers.encoder_layer_1"],
    "swin": ["input", "features.5"],
    "convnext": ["input", "features.5"],
}
# Goal of bounds' time against exact's: a fifth in the input space, a third at hidden layers.
INPUT_GOAL, HIDDEN_GOAL, SAMPLED_GOAL = 5.0, 3.0, 10.0


class _OverTime(BaseException):
    """Raised by the alarm; a BaseException, so no ``except Exception`` of a check turns it into
    an error of its own."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, seconds: float, function: Callable[[], Any]) -> tuple[Any, float]:
    """``(result, wall seconds)``, result None when the call ran past ``seconds`` (it is
    interrupted by SIGALRM at the next Python bytecode after the limit)."""

    def stop(signum: int, frame: Any) -> None:
        raise _OverTime

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    began = time.perf_counter()
    try:
        result = function()
        _sync(device)
    except _OverTime:
        return None, time.perf_counter() - began
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return result, time.perf_counter() - began


def _random_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "vit":
        model: nn.Module = torchvision.models.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=10,
        )
        # torchvision starts the head at zero: every logit equal, every margin 0
        nn.init.normal_(model.heads.head.weight, std=32**-0.5)
    elif name == "swin":
        model = torchvision.models.swin_t(num_classes=10)
    elif name == "convnext":
        model = torchvision.models.convnext_tiny(num_classes=10)
    else:
        raise ValueError(f"unknown model {name!r}")
    return model.eval()


def _pairs(labels: Tensor, right: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` pairs ``(first index, second index, class)`` of items of one class among those
    ``right`` marks, classes in turn (each class's items in order, consecutive ones paired)."""
    pools = {int(c): (labels.eq(c) & right).nonzero().squeeze(1).tolist() for c in labels.unique()}
    pools = {c: items for c, items in pools.items() if len(items) >= 2}
    if not pools:
        raise ValueError("no class has two usable images; use more images (--images)")
    firsts, seconds, classes = [], [], []
    taken = dict.fromkeys(pools, 0)
    while len(firsts) < count:
        grew = False
        for c, items in pools.items():
            k = taken[c]
            if len(firsts) < count and k + 1 < len(items):
                firsts.append(items[k])
                seconds.append(items[k + 1])
                classes.append(c)
                taken[c] = k + 2
                grew = True
        if not grew:
            break
    return torch.tensor(firsts), torch.tensor(seconds), torch.tensor(classes)


@dataclass
class _Row:
    """One setting's measurements; strings already formatted for the table."""

    cells: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # s/seg of each check that ran


NOTES: list[str] = []  # why a check did not cover a setting, printed under the table


def _not_covered(error: Exception) -> str:
    """``not covered [k]``; the reason, the error's first line, is note ``k`` under the table."""
    NOTES.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    return f"not covered [{len(NOTES)}]"


def _median(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} ({min(values)}-{max(values)})"


def _run_sampled(
    tail: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor, row: _Row, limit: float
) -> None:
    device = starts.device
    count = starts.shape[0]

    def check(first: int, last: int) -> Tensor:
        path = torch.stack([starts[first:last], ends[first:last]], dim=1)
        log_p = path_log_probabilities(tail, path, 63, 65 * (last - first))
        return on_target(log_p, targets[first:last]).all(dim=1)

    _timed(device, limit, lambda: check(0, 1))  # warm-up
    result, elapsed = _timed(device, limit * count, lambda: check(0, count))
    if result is None:
        row.cells["sampled"] = f"> {limit:g}"
        return
    row.seconds["sampled"] = elapsed / count
    row.cells["sampled"] = f"{elapsed / count:.3f}"
    row.cells["on"] = f"{int(result.sum())}/{count}"


def _pilot_then_all(
    device: torch.device, limit: float, count: int, check: Callable[[int, int], Any]
) -> tuple[Any, float, bool]:
    """Run ``check(0, 1)`` under ``limit`` seconds, then ``check(0, count)`` under ``limit *
    count``: ``(result, seconds per segment, whole)``. The first segment's result when the batch
    ran over (``whole`` False); None when the first segment did."""
    pilot, first = _timed(device, limit, lambda: check(0, 1))
    if pilot is None:
        return None, first, False
    result, elapsed = _timed(device, limit * count, lambda: check(0, count))
    if result is None:
        return pilot, first, False
    return result, elapsed / count, True


def _time_cell(row: _Row, name: str, seconds: float, whole: bool, limit: float) -> str:
    """The ``s/seg`` cell; a batch over the limit shows the first segment's time (its counts,
    marked ``1st:``, fill the other cells)."""
    if whole:
        row.seconds[name] = seconds
        row.cells[name] = f"{seconds:.3f}"
        return ""
    row.cells[name] = f"> {limit:g} (1st {seconds:.1f})"
    return "1st: "


def _run_exact(
    tail: nn.Module, starts: Tensor, ends: Tensor, targets: Tensor, row: _Row, limit: float
) -> Any:
    """ExactLine's cells; returns its :class:`PathCheck` of all segments (None if none)."""
    count = starts.shape[0]
    try:
        program = piecewise_linear_program(tail)

        def check(first: int, last: int) -> Any:
            path = torch.stack([starts[first:last], ends[first:last]], dim=1)
            return check_paths(program, path, targets[first:last])

        result, seconds, whole = _pilot_then_all(starts.device, limit, count, check)
    except (NotPiecewiseLinearError, UnreliableExactCheckError) as error:
        row.cells["exact"] = _not_covered(error)
        return None
    if result is None:
        row.cells["exact"] = f"> {limit:g}"
        return None
    mark = _time_cell(row, "exact", seconds, whole, limit)
    done = count if whole else 1
    row.cells["pieces"] = mark + _median(result.pieces.tolist())
    passed, decided = int(result.passed.sum()), int(result.decided.sum())
    row.cells["exact verdicts"] = f"{mark}{passed}/{decided - passed}/{done - decided}"
    return result if whole else None


def _run_bounds(
    tail: nn.Module,
    starts: Tensor,
    ends: Tensor,
    targets: Tensor,
    row: _Row,
    limit: float,
    max_splits: int,
) -> Any:
    """Bounds' cells; returns its :class:`SegmentProof` of all segments (None if none)."""
    count = starts.shape[0]
    try:
        program = bound_program(tail, starts[:1])

        def check(first: int, last: int) -> Any:
            return prove_segments(
                program,
                starts[first:last],
                ends[first:last],
                targets[first:last],
                max_splits=max_splits,
            )

        result, seconds, whole = _pilot_then_all(starts.device, limit, count, check)
    except NotBoundedError as error:
        row.cells["bounds"] = _not_covered(error)
        return None
    if result is None:
        row.cells["bounds"] = f"> {limit:g}"
        return None
    mark = _time_cell(row, "bounds", seconds, whole, limit)
    row.cells["sub-int"] = mark + _median(result.sub_intervals.tolist())
    row.cells["evals"] = mark + _median(result.bound_evaluations.tolist())
    states = [result.status.count(s) for s in ("proved", "counterexample", "budget")]
    row.cells["bounds verdicts"] = mark + "/".join(str(n) for n in states)
    return result if whole else None


def _compare(row: _Row, exact: Any, bounds: Any, space: str, limit: float) -> None:
    """Ratios, goals and agreement of one setting (cells ``b/e``, ``b/s``, ``goals``, ``agree``)."""
    seconds = row.seconds
    goal = INPUT_GOAL if space == "input" else HIDDEN_GOAL
    goals = []
    if "bounds" in seconds and "exact" in seconds:
        ratio = seconds["bounds"] / seconds["exact"]
        row.cells["b/e"] = f"{ratio:.2f}"
        goals.append(f"e/{goal:g} {'yes' if ratio <= 1 / goal else 'no'}")
    elif "bounds" in seconds and row.cells.get("exact", "").startswith(">"):
        ratio = seconds["bounds"] / limit
        row.cells["b/e"] = f"< {ratio:.2f}"
        goals.append(f"e/{goal:g} {'yes' if ratio <= 1 / goal else '?'}")
    if "bounds" in seconds and "sampled" in seconds:
        ratio = seconds["bounds"] / seconds["sampled"]
        row.cells["b/s"] = f"{ratio:.1f}"
        goals.append(f"s*{SAMPLED_GOAL:g} {'yes' if ratio <= SAMPLED_GOAL else 'no'}")
    row.cells["goals"] = ", ".join(goals) or "-"
    if exact is None or bounds is None:
        return
    same = both = 0
    for s, state in enumerate(bounds.status):
        if state == "budget" or not bool(exact.decided[s]):
            continue
        both += 1
        same += (state == "proved") == bool(exact.passed[s])
    row.cells["agree"] = f"{same}/{both}"


# Two tables, each narrow enough to read: times and goals, then counts and verdicts.
TABLES = [
    [
        ("model", "model"),
        ("space", "space"),
        ("point", "point"),
        ("sampled", "sampled s/seg"),
        ("exact", "exact s/seg"),
        ("bounds", "bounds s/seg"),
        ("b/e", "b/e"),
        ("b/s", "b/s"),
        ("goals", "goals"),
    ],
    [
        ("model", "model"),
        ("space", "space"),
        ("on", "on"),
        ("pieces", "pieces/seg"),
        ("exact verdicts", "exact p/l/u"),
        ("sub-int", "sub-int/seg"),
        ("evals", "evals/seg"),
        ("bounds verdicts", "bounds p/c/b"),
        ("agree", "agree"),
    ],
]


def _print_tables(rows: list[_Row]) -> None:
    """Both tables (markdown), then the notes of the ``not covered [k]`` cells."""
    for table in TABLES:
        print("\n| " + " | ".join(title for _, title in table) + " |")
        print("|" + "---|" * len(table))
        for row in rows:
            print("| " + " | ".join(row.cells.get(key, "-") for key, _ in table) + " |")
    for k, note in enumerate(NOTES, 1):
        print(f"\n[{k}] {note}")


def _test_images(root: str, per_class: int) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` test images of every class, in file order, and their labels."""
    data = ImageFolderDataModule(train_root=f"{root}/train", test_root=f"{root}/test")
    test = data.dataset("test")
    labels = torch.as_tensor(test.targets)  # type: ignore[attr-defined]
    indices = [
        i for c in labels.unique() for i in labels.eq(c).nonzero().squeeze(1)[:per_class].tolist()
    ]
    return stack_images(test, indices)


def _setting(
    name: str,
    space: str,
    network: nn.Module,
    segments: tuple[Tensor, Tensor, Tensor],
    args: argparse.Namespace,
) -> _Row:
    """Run the three checks on one setting; prints a progress line, returns the row."""
    device = torch.device(args.device)
    first, second, targets = segments
    row = _Row()
    row.cells.update(model=name, space=space)
    try:
        head, tail = split(network, space)
    except ValueError as error:
        row.cells["sampled"] = _not_covered(error)
        return row
    head, tail = head.to(device), tail.to(device)
    with torch.no_grad():
        starts, ends = head(first.to(device)), head(second.to(device))
    targets = targets.to(device)
    row.cells["point"] = "x".join(str(s) for s in starts.shape[1:])
    limit = args.time_limit
    _run_sampled(tail, starts, ends, targets, row, limit)
    exact = _run_exact(tail, starts, ends, targets, row, limit) if not args.skip_exact else None
    bounds = _run_bounds(tail, starts, ends, targets, row, limit, args.max_splits)
    _compare(row, exact, bounds, space, limit)
    done = ", ".join(f"{k} {row.cells.get(k, '-')}" for k in ("sampled", "exact", "bounds"))
    print(f"<!-- {name} {space}: s/seg {done} -->", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="../ckpt/cifar10_jpeg_resnet18.ckpt")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--models", default="resnet18,vit,swin,convnext")
    parser.add_argument("--spaces", default="", help="comma-separated; default: each model's")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--max-splits", type=int, default=1024)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per segment")
    parser.add_argument("--skip-exact", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    per_class = 2 * math.ceil(args.segments / 10) + 6  # spare ones for misclassified images
    images, labels = _test_images(args.data, per_class)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.segments} segments, max splits {args.max_splits}, time limit {args.time_limit:g} "
        "s/seg"
    )
    rows = []
    for name in args.models.split(","):
        network = load_network(args.checkpoint) if name == "resnet18" else _random_model(name)
        network = network.to(device).eval()
        with torch.no_grad():
            predicted = network(images.to(device)).argmax(1).cpu()
        if name == "resnet18":
            right = predicted.eq(labels)
            print(
                f"<!-- {name}: {args.checkpoint}, {int(right.sum())}/{len(labels)} of the loaded "
                "test images correct -->",
                flush=True,
            )
            first, second, targets = _pairs(labels, right, args.segments)
        else:
            # Random weights: pairs of one predicted class, that class the target.
            anyone = torch.ones_like(predicted, dtype=torch.bool)
            first, second, targets = _pairs(predicted, anyone, args.segments)
        segments = (images[first], images[second], targets)
        spaces = args.spaces.split(",") if args.spaces else SPACES[name]
        rows += [_setting(name, space, network, segments, args) for space in spaces]
    _print_tables(rows)


if __name__ == "__main__":
    main()
