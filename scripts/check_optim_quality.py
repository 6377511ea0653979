"""The optimization issue's quality checks on real ImageNet weights (needs ../shared).

    python scripts/check_optim_quality.py [--out optim-quality]

1. Class visualization on squeezenet1_1 for 76 tarantula, 130 flamingo, 366 gorilla, 683 oboe
   and 963 pizza with the cs231n recipe (its defaults) and the modern recipe; each image is saved
   as an 8-bit PNG, reloaded, and classified: prints the softmax probability of the target.
2. Channel visualization of 8 channels of a middle layer: the mean activation (over space) of
   the optimized image against the best of 200 real photos from ../shared/images/imagen.
Writes the images side by side to OUT/classes.png and OUT/channels.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cnnviz
from cnnviz.channels import parse_channels
from cnnviz.images import load_rgb
from cnnviz.model.taps import capture
from cnnviz.optim import class_probabilities, cs231n_class_visualization, objectives, render, save_png

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TARGETS = [76, 130, 366, 683, 963]


def reload_probs(model, paths, targets):
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    probs = class_probabilities(model, arrays)
    return [float(probs[i, t]) for i, t in enumerate(targets)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("optim-quality"))
    p.add_argument("--layer", default="features.7")
    p.add_argument("--channels", default="0-7")
    p.add_argument("--photos", type=int, default=200)
    args = p.parse_args()
    torch.manual_seed(0)
    model = cnnviz.load_model("squeezenet1_1", str(SHARED / "weights" / "squeezenet1_1-imagenet.pt"))
    rows = []
    for recipe in ("cs231n", "modern"):
        if recipe == "cs231n":
            res = cs231n_class_visualization(model, TARGETS, progress=False)
        else:
            res = render(model, objectives.class_logits(TARGETS), batch=len(TARGETS), steps=256,
                         progress=False)
        paths = save_png(res.images, [args.out / f"{recipe}-{t}.png" for t in TARGETS])
        probs = reload_probs(model, paths, TARGETS)
        print(f"{recipe:7s} " + "  ".join(f"{t} {model.class_name(t)}: {p:.4f}"
                                         for t, p in zip(TARGETS, probs, strict=True)))
        rows.append(np.concatenate([np.asarray(Image.open(q)) for q in paths], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out / "classes.png")

    chans = parse_channels(args.channels, 10_000)
    res = render(model, objectives.channels(args.layer, chans), batch=len(chans), steps=256,
                 progress=False)
    paths = save_png(res.images, [args.out / f"channel-{c}.png" for c in chans])
    opt = np.stack([np.asarray(Image.open(q).convert("RGB")) for q in paths])
    every = sorted((SHARED / "images" / "imagen").glob("*.jpg"))
    photos = every[:: max(1, len(every) // args.photos)][: args.photos]

    def mean_act(batch):
        with capture(model.module, [args.layer]) as rec, torch.no_grad():
            model.module(batch)
        return rec.outputs[args.layer].mean(dim=(2, 3))

    opt_act = mean_act(model.preprocessing.normalize(torch.from_numpy(opt)))
    best = torch.full((len(chans),), -float("inf"))
    for i in range(0, len(photos), 25):
        x = torch.cat([model.preprocessing(load_rgb(q)) for q in photos[i: i + 25]])
        best = torch.maximum(best, mean_act(x)[:, chans].max(0).values)
    for j, c in enumerate(chans):
        print(f"{args.layer} channel {c}: optimized {float(opt_act[j, c]):8.3f}   best of "
              f"{len(photos)} photos {float(best[j]):8.3f}   ratio {float(opt_act[j, c] / best[j]):.2f}")
    Image.fromarray(np.concatenate(list(opt), axis=1)).save(args.out / "channels.png")
    print(f"images in {args.out}/")


if __name__ == "__main__":
    main()
