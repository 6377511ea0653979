"""Optimization speed: milliseconds per image-step of the modern recipe, one image at a time and
batched, for a channel objective and a class objective; with Lucent's default beside it when
``lucent`` (torch-lucent) is importable, measured in the same run, alternating.

    python scripts/bench_optim.py [--model squeezenet1_1] [--weights FILE|none] [--layer features.7]
                                  [--steps 20] [--batch 8] [--device cpu]

Default weights: the real SqueezeNet of ../shared when present. Lucent's default is its
``render_vis`` with ``param.image(128)`` (upsampled to 224 for the network), Adam lr 0.05 and
its standard transforms. cnnviz runs its defaults (224 px Fourier image, fixed network input
size, redirected ReLU for the first steps only: the timed steps start after them, as in a
256-step render most steps do).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from cnnviz import load_model
from cnnviz.optim import objectives, render
from cnnviz.optim.ascent import REDIRECT_STEPS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def cnnviz_ms(model, obj, batch, steps, device) -> float:
    """ms per image-step over ``steps`` steps after the redirected-ReLU phase."""
    warm = REDIRECT_STEPS + 2
    render(model, obj, batch=batch, steps=warm, progress=False, device=device)
    t = time.perf_counter()
    render(model, obj, batch=batch, steps=warm + steps, progress=False, device=device)
    total = time.perf_counter() - t
    t = time.perf_counter()
    render(model, obj, batch=batch, steps=warm, progress=False, device=device)
    return (total - (time.perf_counter() - t)) / steps / batch * 1000


def lucent_ms(model, objective, batch, steps) -> float:
    from lucent.optvis import param as lparam
    from lucent.optvis import render as lrender

    module = copy.deepcopy(model.module)  # Lucent leaves its hooks on the module it is given

    def run(n):
        lrender.render_vis(module, objective, lambda: lparam.image(128, batch=batch), thresholds=(n,),
                           show_image=False, progress=False)
    run(2)
    t = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t) / steps / batch * 1000


def lucent_objective(kind: str, layer: str, targets):
    from lucent.optvis import objectives as lobj

    name = "labels" if kind == "class" else layer.replace(".", "_")
    parts = [lobj.channel(name, t, batch=i) for i, t in enumerate(targets)]
    return parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="squeezenet1_1")
    default_weights = SHARED / "weights" / "squeezenet1_1-imagenet.pt"
    p.add_argument("--weights", default=str(default_weights) if default_weights.is_file() else "none")
    p.add_argument("--layer", default="features.7")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=2, help="alternating rounds; the median is printed")
    args = p.parse_args()
    model = load_model(args.model, args.weights, device=args.device)
    try:
        import lucent  # noqa: F401
        have_lucent = args.model != "efficientnet_lite0"
    except ImportError:
        have_lucent = False
    print(f"{args.model} ({model.weights_origin}) {args.layer}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}; ms per image-step, median of {args.repeat} alternating rounds")
    classes = [76, 130, 366, 683, 963, 1, 2, 3][: args.batch]
    cases = [("one channel", "channel", [0]), (f"{args.batch} channels", "channel", list(range(args.batch))),
             ("one class", "class", classes[:1]), (f"{len(classes)} classes", "class", classes)]
    ours_of = {}
    for label, kind, targets in cases:
        obj = (objectives.channels(args.layer, targets) if kind == "channel"
               else objectives.class_logits(targets))
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(cnnviz_ms(model, obj, len(targets), args.steps, args.device))
            if have_lucent:
                theirs.append(lucent_ms(model, lucent_objective(kind, args.layer, targets), len(targets),
                                        args.steps))
        ours_of[label] = statistics.median(ours)
        line = f"{label:12s}: cnnviz {ours_of[label]:6.1f}"
        if theirs:
            lucent = statistics.median(theirs)
            line += f"   Lucent default {lucent:6.1f}   Lucent / cnnviz {lucent / ours_of[label]:.2f}x"
        print(line, flush=True)
    for kind, one, many in (("channels", "one channel", f"{args.batch} channels"),
                            ("classes", "one class", f"{len(classes)} classes")):
        print(f"batched speed-up ({kind}): {ours_of[one] / ours_of[many]:.2f}x per image")
    if not have_lucent:
        print("(Lucent not importable: pip install torch-lucent to compare in the same run)")


if __name__ == "__main__":
    main()
