"""Optimization speed: steps/s for one objective and for a batch of 64, and the batched speed-up.

    python scripts/bench_optim.py [--model squeezenet1_1] [--layer features.7] [--steps 10]
                                  [--device cpu]

Both run the modern recipe (Fourier parameterization, transforms, Adam) on channel objectives of
one layer; "64 one at a time" is estimated from the single-objective rate.
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnviz import load_model
from cnnviz.optim import objectives, render


def steps_per_second(model, obj, batch, steps, device) -> float:
    render(model, obj, batch=batch, steps=2, progress=False, device=device)  # warm-up
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    render(model, obj, batch=batch, steps=steps, progress=False, device=device)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="squeezenet1_1")
    p.add_argument("--layer", default="features.7")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    model = load_model(args.model, None, device=args.device)
    one = steps_per_second(model, objectives.channel(args.layer, 0), 1, args.steps, args.device)
    many = steps_per_second(model, objectives.channels(args.layer, range(args.batch)), args.batch,
                            args.steps, args.device)
    print(f"{args.model} {args.layer}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"one objective        : {one:7.2f} steps/s  ({one:.2f} image-steps/s)")
    print(f"batch of {args.batch:3d}         : {many:7.2f} steps/s  ({many * args.batch:.2f} image-steps/s)")
    print(f"batched speed-up     : {many * args.batch / one:7.2f}x  (time for {args.batch} channels, "
          f"one at a time / batched)")


if __name__ == "__main__":
    main()
