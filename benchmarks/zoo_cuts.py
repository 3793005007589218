"""Which cuts of torchvision's zoo models ``layer_names`` lists, and why the others are refused.

    python benchmarks/zoo_cuts.py                 # the issue's 12 models, random weights
    python benchmarks/zoo_cuts.py --run           # also run one band step at every listed cut
    python benchmarks/zoo_cuts.py --models resnet18 vit_b_16

Prints one row per model: named places (``layer_names`` candidates: every node name and module
prefix), cuts listed, cuts that ran a band step and kept the head's output (with ``--run``), and
the refused names by reason (a skip connection across, sizes carried across, not one tensor).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
import torchvision

from connectivity import connect
from connectivity.split import _can_cut, _named_places, _refusal, _resolve, _trace

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


def _row(name: str, kwargs: dict, side: int, run: bool) -> str:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **kwargs).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)][-1]
    torch.nn.init.normal_(last.weight, std=1.0 / last.weight[0].numel() ** 0.5)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--run", action="store_true", help="run a band step at every cut")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU")
    print("| model | input side | named places | cuts listed | cuts run | refused (why) | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        kwargs, side = MODELS[name]
        print(_row(name, kwargs, side, args.run), flush=True)


if __name__ == "__main__":
    main()
