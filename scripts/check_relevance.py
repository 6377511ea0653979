"""Is channel relevance faithful? Zero the most relevant channels of a layer and watch the logit.

    python scripts/check_relevance.py [--model squeezenet1_1] [--layers features.9,features.12]
                                      [--images 200] [--device cpu]

For real photos of ``../shared`` (those whose WordNet id is an ImageNet-1k class; the target is
that class) and each layer, the channels are ranked by relevance
(:func:`cnnviz.analysis.relevance.layer_relevance`: activation x gradient of the target logit,
summed over positions) and the top ``n`` (1, 5, 20) are set to zero in a second forward pass.
The drop of the target logit is compared with zeroing ``n`` random channels (mean of 5 draws)
and the ``n`` channels with the largest spatial maximum (what the scan ranks by). A faithful
relevance makes the first drop clearly the largest. Prints one table per layer: mean logit drop
(and the share of images whose top-1 class changed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = {"squeezenet1_1": SHARED / "weights" / "squeezenet1_1-imagenet.pt",
           "mobilenet_v2": SHARED / "weights" / "mobilenet_v2-imagenet.pt"}


def photos_with_classes(model, n: int) -> tuple[list[Path], list[int]]:
    from cnnviz.labels import imagenet_classes

    wnids = {c.wnid: c.index for c in imagenet_classes()}
    photos, targets = [], []
    for p in sorted((SHARED / "images" / "imagen").glob("*.jpg")):
        wnid = p.name.split("_")[0]
        if wnid in wnids:
            photos.append(p)
            targets.append(wnids[wnid])
        if len(photos) == n:
            break
    return photos, targets


def batch_of(model, photos: list[Path], device: str) -> torch.Tensor:
    from cnnviz.images.decoding import load_rgb

    return torch.cat([model.preprocessing(load_rgb(p)) for p in photos]).to(device)


def logits_with_zeroed(module, x: torch.Tensor, layer: str, masks: torch.Tensor) -> torch.Tensor:
    """The logits with channels of ``layer`` zeroed where ``masks`` (N, C) is 0."""
    def hook(mod, inputs, output):
        shape = (*masks.shape, *([1] * (output.dim() - 2)))
        return output * masks.view(shape).to(output.dtype)

    handle = module.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return module(x)
    finally:
        handle.remove()


def keep_all_but(chosen: torch.Tensor, channels: int) -> torch.Tensor:
    masks = torch.ones((chosen.shape[0], channels))
    masks.scatter_(1, chosen.cpu(), 0.0)
    return masks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="squeezenet1_1", choices=sorted(WEIGHTS))
    p.add_argument("--layers", default="features.9,features.12")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=25)
    args = p.parse_args()
    if not WEIGHTS[args.model].is_file():
        sys.exit(f"{WEIGHTS[args.model]} is absent: this check needs ../shared")
    from cnnviz import load_model
    from cnnviz.analysis.relevance import layer_relevance
    from cnnviz.model.taps import capture

    model = load_model(args.model, str(WEIGHTS[args.model]), device=args.device)
    photos, targets = photos_with_classes(model, args.images)
    layers = args.layers.split(",")
    gen = torch.Generator().manual_seed(0)
    drops = {(layer, how, n): [] for layer in layers for how in ("relevance", "random", "max")
             for n in (1, 5, 20)}
    flips = {key: [] for key in drops}
    for start in range(0, len(photos), args.batch_size):
        x = batch_of(model, photos[start: start + args.batch_size], args.device)
        t = torch.tensor(targets[start: start + args.batch_size], device=x.device)
        rel = layer_relevance(model.module, x, layers, t)
        with capture(model.module, layers) as cap, torch.no_grad():
            base = cap.forward(x)
        rows = torch.arange(len(t), device=x.device)
        for layer in layers:
            act = cap.outputs[layer]
            channels = act.shape[1]
            by = {"relevance": rel.sums[layer], "max": act.flatten(2).amax(dim=2)}
            for n in (1, 5, 20):
                for how, score in by.items():
                    chosen = score.topk(n, dim=1).indices
                    masks = keep_all_but(chosen, channels).to(x.device)
                    out = logits_with_zeroed(model.module, x, layer, masks)
                    drops[(layer, how, n)].append((base[rows, t] - out[rows, t]).cpu())
                    flips[(layer, how, n)].append((out.argmax(1) != base.argmax(1)).float().cpu())
                for _ in range(5):
                    chosen = torch.stack([torch.randperm(channels, generator=gen)[:n] for _ in range(len(t))])
                    masks = keep_all_but(chosen, channels).to(x.device)
                    out = logits_with_zeroed(model.module, x, layer, masks)
                    drops[(layer, "random", n)].append((base[rows, t] - out[rows, t]).cpu() / 5)
                    flips[(layer, "random", n)].append((out.argmax(1) != base.argmax(1)).float().cpu() / 5)
    print(f"{args.model}, {len(photos)} photos of ../shared whose class is an ImageNet-1k class "
          "(target: that class); mean drop of the target logit when n channels are zeroed "
          "(share of images whose top-1 class changed)")
    for layer in layers:
        print(f"\n{layer}")
        print("  n | top relevance      | random (5 draws)   | top spatial max")
        for n in (1, 5, 20):
            cells = []
            for how in ("relevance", "random", "max"):
                d = torch.cat(drops[(layer, how, n)]).numpy()
                f = torch.cat(flips[(layer, how, n)]).numpy()
                cells.append(f"{np.sum(d) / len(photos):7.3f} ({np.sum(f) / len(photos):5.1%})")
            print(f" {n:2d} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
