"""Which cuts of torchvision's zoo models ``layer_names`` lists, and why the others are refused.

    python benchmarks/zoo_cuts.py                 # the issue's 12 models, random weights
    python benchmarks/zoo_cuts.py --run           # also run one band step at every listed cut
    python benchmarks/zoo_cuts.py --models resnet18 vit_b_16
    python benchmarks/zoo_cuts.py --timm --run    # timm's six (issue 18), with the exact check
    python benchmarks/zoo_cuts.py --bounds        # which cuts bounds cover, one line proved each

Prints one row per model: named places (``layer_names`` candidates: every node name and module
prefix), cuts listed, cuts that ran a band step and kept the head's output (with ``--run``), and
the refused names by reason (a skip connection across, sizes carried across, not one tensor).
With ``--timm`` (timm's models of ``tests/test_zoo_timm.py``, 32-pixel images) a second table
gives, per model, the listed cuts the exact check accepts, why it refuses the others (the
operation its message names), and at how many cuts its verdict agrees with the tail's
operations (``tests.test_zoo_timm.not_piecewise_linear``, an independent list).
With ``--bounds`` (issue 21) a table gives, per model (torchvision's, or timm's with ``--timm``),
the listed cuts whose tails bound propagation covers (``bound_program`` accepts them), the
operations it refuses at the others, and the straight lines it decides: at every covered cut, the
first ``--fraction`` (0.05) of the line between the representations of two random images, with the
start's predicted class as the target, through ``prove_segments`` (``--max-splits``, 16): proved,
refuted (a counterexample) or out of budget, and the seconds it took.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter

import torch
import torchvision

from connectivity import connect
from connectivity.engine.exact import why_not_piecewise_linear
from connectivity.engine.split import _can_cut, _named_places, _refusal, _resolve, _trace, split

MODELS = {
    "resnet18": ({}, 32),
    "vgg11_bn": ({}, 32),
    "alexnet": ({}, 63),
    "squeezenet1_1": ({}, 32),
    "mobilenet_v2": ({}, 32),
    "densenet121": ({}, 32),
    "shufflenet_v2_x0_5": ({}, 32),
    "efficientnet_b0": ({}, 32),
    "convnext_tiny": ({}, 32),
    "regnet_y_400mf": ({}, 32),
    "swin_t": ({}, 32),
    "vit_b_16": ({"image_size": 32}, 32),
}
REASONS = {"skip connection": "skip", "reads sizes": "sizes", "its value is": "not one tensor"}


def _zoo_model(name: str, kwargs: dict) -> torch.nn.Module:
    """A torchvision model with random weights, its last layer redrawn (some start at zero:
    every logit equal)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **kwargs).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)][-1]
    torch.nn.init.normal_(last.weight, std=1.0 / last.weight[0].numel() ** 0.5)
    return model


def _row(name: str, kwargs: dict, side: int, run: bool) -> str:
    return _model_row(name, _zoo_model(name, kwargs), side, run)


def _model_row(name: str, model: torch.nn.Module, side: int, run: bool) -> str:
    trace = _trace(model)
    names = _named_places(trace)
    listed, refused = [], Counter()
    for layer in names:
        index = _resolve(trace, layer)
        if _can_cut(trace, index):
            listed.append(layer)
        else:
            why = _refusal(trace, layer, index)
            refused[next(v for k, v in REASONS.items() if k in why)] += 1
    ran = "-"
    start = time.perf_counter()
    if run:
        x = torch.rand(2, 3, side, side)
        with torch.no_grad():
            predicted = model(x).argmax(dim=1).tolist()
        target = next(c for c in range(10) if c not in predicted)
        ok = 0
        for layer in listed:
            (record,) = connect(
                model, layer, x[0], x[1], target, steps=1, num_pivots=1, line_points=3, tol=0.0
            )
            ok += record.steps == 1
        ran = str(ok)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "-"
    seconds = time.perf_counter() - start
    return f"| {name} | {side} | {len(names)} | {len(listed)} | {ran} | {reasons} | {seconds:.0f} |"


def _exact_row(name: str) -> str:
    """Listed cuts the exact check accepts, its reasons for the others, and agreement with the
    tail's operations."""
    from tests.test_zoo_timm import not_piecewise_linear, timm_layers, timm_model

    accepted, agree, reasons = 0, 0, Counter()
    names = timm_layers(name)
    for layer in names:
        _, tail = split(timm_model(name), layer)
        offending = not_piecewise_linear(tail)
        why = why_not_piecewise_linear(tail)
        accepted += why is None
        named = next((op for op, w in offending if why and re.search(w, why, re.I)), None)
        if why is not None:
            reason = named or ("_assert" if "_assert" in why else why[:60])
            reasons[reason] += 1
        agree += (why is None and not offending) or (named is not None and "_assert" not in why)
    why_text = ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "-"
    return f"| {name} | {len(names)} | {accepted} | {why_text} | {agree} of {len(names)} |"


def _bounds_row(
    name: str, model: torch.nn.Module, side: int, max_splits: int, fraction: float
) -> str:
    """Listed cuts bounds cover, the operations they refuse elsewhere, and one line per covered
    cut: proved / counterexample / budget."""
    from connectivity.engine.bounds import NotBoundedError, bound_program, prove_segments
    from connectivity.engine.split import layer_names

    torch.manual_seed(0)
    x = torch.rand(2, 3, side, side)
    names = layer_names(model)
    covered, outcome, refused = 0, Counter(), Counter()
    start = time.perf_counter()
    for layer in names:
        head, tail = split(model, layer)
        with torch.no_grad():
            z = head(x)
            target = tail(z[:1]).argmax(dim=1)
        try:
            program = bound_program(tail, z[:1])
        except NotBoundedError as error:
            refused[_operation(str(error))] += 1
            continue
        covered += 1
        try:
            end = torch.lerp(z[:1], z[1:], fraction)
            proof = prove_segments(program, z[:1], end, target, max_splits=max_splits)
            outcome[proof.status[0]] += 1
        except NotBoundedError as error:  # found only when run
            outcome["refused when run"] += 1
            refused[_operation(str(error))] += 1
    seconds = time.perf_counter() - start
    lines = ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())) or "-"
    why = ", ".join(f"{k} {v}" for k, v in refused.most_common()) or "-"
    return f"| {name} | {len(names)} | {covered} | {why} | {lines} | {seconds:.0f} |"


def _operation(message: str) -> str:
    """The operation a refusal names (its first quoted or bracketed word), else its start."""
    found = re.search(r"covers? ([\w.<>]+)|'([^']+)'|\(([^)]+)\)", message)
    return next((g for g in found.groups() if g), message[:50]) if found else message[:50]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--run", action="store_true", help="run a band step at every cut")
    parser.add_argument("--timm", action="store_true", help="timm's six models (issue 18)")
    parser.add_argument("--bounds", action="store_true", help="bounds' cover and lines (issue 21)")
    parser.add_argument("--max-splits", type=int, default=16)
    parser.add_argument("--fraction", type=float, default=0.05, help="of the line, from its start")
    args = parser.parse_args()
    if args.timm:
        import timm

        from tests.test_zoo_timm import MODELS as TIMM_MODELS
        from tests.test_zoo_timm import SIDE, timm_model

        names = args.models or list(TIMM_MODELS)
        print(f"torch {torch.__version__}, timm {timm.__version__}, CPU, {SIDE}-pixel images")
    else:
        names = args.models or list(MODELS)
        print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU")
    print("| model | input side | named places | cuts listed | cuts run | refused (why) | s |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        if args.timm:
            print(_model_row(name, timm_model(name), SIDE, args.run), flush=True)
        else:
            kwargs, side = MODELS[name]
            print(_row(name, kwargs, side, args.run), flush=True)
    if args.bounds:
        print()
        print("| model | cuts listed | bounds cover | refused (operation named) | lines | s |")
        print("|---|---|---|---|---|---|")
        for name in names:
            if args.timm:
                model, side = timm_model(name), SIDE
            else:
                kwargs, side = MODELS[name]
                model = _zoo_model(name, kwargs)
            print(_bounds_row(name, model, side, args.max_splits, args.fraction), flush=True)
    if args.timm:
        print()
        print("| model | cuts listed | exact check accepts | refused (operation named) | agrees |")
        print("|---|---|---|---|---|")
        for name in names:
            print(_exact_row(name), flush=True)


if __name__ == "__main__":
    main()
