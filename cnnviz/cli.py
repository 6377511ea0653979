"""The ``cnnviz`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

_WEIGHTS_HELP = ("DEFAULT or a torchvision weights name (IMAGENET1K_V2...), a local state_dict "
                 "file, or 'none' for random weights (default: DEFAULT)")


def _add_model_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--model", required=default is None, default=default,
                   help="torchvision model name (resnet50, squeezenet1_1...) or efficientnet_lite0"
                   + (f" (default: {default})" if default else ""))
    p.add_argument("--weights", default="DEFAULT", help=_WEIGHTS_HELP)


def _load(args):
    from .models import load_model

    return load_model(args.model, args.weights, device=getattr(args, "device", "cpu"))


def cmd_models(args) -> int:
    from .models import available_models

    print("\n".join(available_models()))
    return 0


def cmd_layers(args) -> int:
    from .taps import default_layers, list_layers

    model = _load(args)
    defaults = {t.name for t in default_layers(model)}
    print(f"{model.name} ({model.weights_origin}), input {model.input_size[0]}x{model.input_size[1]}")
    print(f"{'layer':<34s} {'type':<22s} {'channels':>8s} {'map':>9s} {'stride':>7s} "
          f"{'rf size':>9s} {'rf offset':>10s}  note")
    for tap in list_layers(model).values():
        if not args.all and tap.name not in defaults:
            continue
        rf = tap.rf
        note = "default" if tap.name in defaults else ""
        if not tap.tappable:
            note = f"runs {tap.calls}x: not tappable"
        elif rf is None:
            note = note or "no receptive field"
        stride = f"{rf.stride[0]}" if rf else "-"
        size = f"{rf.size[0]}x{rf.size[1]}" if rf else "-"
        offset = f"{rf.offset[0]},{rf.offset[1]}" if rf else "-"
        print(f"{tap.name:<34s} {tap.type:<22s} {tap.channels:>8d} "
              f"{tap.shape[1]:>4d}x{tap.shape[2]:<4d} {stride:>7s} {size:>9s} {offset:>10s}  {note}")
    if not args.all:
        print("\n(the default scan layers; --all lists every module with a 4-D output)")
    return 0


def cmd_classify(args) -> int:
    from .preprocessing import load_rgb

    model = _load(args)
    images = [load_rgb(p) for p in args.images]
    for path, top in zip(args.images, model.classify(images, top=args.top), strict=True):
        print(path)
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"   {rank}. {name:<28s} {prob:6.1%}  (class {index})")
    return 0


def cmd_featuremaps(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .featuremaps import feature_map_grid, layer_activation, parse_channels
    from .preprocessing import load_rgb

    model = _load(args)
    act = layer_activation(model, load_rgb(args.image), args.layer)
    channels = parse_channels(args.channels, act.shape[0])
    fig = feature_map_grid(act, channels, columns=args.columns, shared_scale=args.shared_scale,
                           title=f"{Path(args.image).name} — {model.name} {args.layer} "
                                 f"({act.shape[1]}x{act.shape[2]})")
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out} ({len(channels)} channels of {args.layer})")
    return 0


def _parse_shard(spec: str | None) -> tuple[int, int]:
    if not spec:
        return (0, 1)
    try:
        rank, world = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected RANK/WORLD_SIZE, e.g. 2/4") from None
    return rank, world


def cmd_scan(args) -> int:
    from .distributed import scan_distributed, torchrun_env
    from .scan import scan

    model = _load(args)
    kwargs = dict(
        layers=args.layers, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
        resume=args.resume, overwrite=args.overwrite, maxima_dtype=args.maxima_dtype,
        patch_size=args.patch_size, checkpoint_seconds=args.checkpoint_seconds,
        checkpoint_images=args.checkpoint_images, amp=args.amp, progress=not args.no_progress,
    )
    if torchrun_env() is not None:
        path = scan_distributed(args.library, model, args.out, device=args.device, **kwargs)
        if path is None:
            return 0
    elif args.shard:
        rank, world = _parse_shard(args.shard)
        work = scan(args.library, model, args.out, device=args.device, shard=(rank, world),
                    finalize=False, **kwargs)
        print(f"shard {rank}/{world} done: {work}. When every shard is done: cnnviz merge "
              f"{Path(args.out).name}.shard-*-of-{world}.work --out {args.out}")
        return 0
    else:
        path = scan(args.library, model, args.out, device=args.device, **kwargs)
    import h5py

    with h5py.File(path, "r") as f:
        n, failed = int(f.attrs["n_images"]), int(f.attrs["n_failed"])
    print(f"wrote {path}: {n} images, {failed} unreadable"
          + (" (see /failures in the file)" if failed else ""))
    return 0


def cmd_top(args) -> int:
    import pandas as pd

    from .tables import top_patches

    df = top_patches(args.run, layer=args.layer, channel=args.channel)
    cols = ["layer", "channel", "rank", "activation", "image_path", "label", "y", "x",
            "rf_y0", "rf_x0", "rf_y1", "rf_x1"]
    if not df["label"].astype(bool).any():
        cols.remove("label")
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        with pd.option_context("display.max_rows", args.max_rows, "display.width", 200,
                               "display.max_colwidth", 48):
            print(df[cols].to_string(index=False, max_rows=args.max_rows))
    return 0


def _parse_attributions(spec: str | None) -> dict:
    """'layer3.1:0-7;layer4.2:12' -> {'layer3.1': [0..7], 'layer4.2': [12]}."""
    out: dict[str, list[int]] = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        if ":" not in part:
            raise ValueError(f"--attributions {part!r}: expected LAYER:CHANNELS, e.g. layer3.1:0-7")
        layer, chans = part.rsplit(":", 1)
        out[layer.strip()] = _channel_list(chans)
    return out


def cmd_report(args) -> int:
    from .report import write_report

    attributions = _parse_attributions(args.attributions)
    model = None
    if attributions:
        if args.model:
            model = _load(args)
        else:
            from .attribution import model_of_run

            model = model_of_run(args.run, device=args.device)
    channels = None
    if args.channels:
        channels = int(args.channels) if args.channels.isdigit() else _channel_list(args.channels)
    index = write_report(args.run, args.out, layers=args.layers.split(",") if args.layers else None,
                         channels=channels, attributions=attributions, model=model,
                         progress=not args.no_progress)
    print(f"report: {index.resolve()}")
    return 0


def _channel_list(spec: str) -> list[int]:
    from .featuremaps import parse_channels

    return parse_channels(spec, 1 << 30)


def cmd_plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from . import figures

    if args.kind == "montage":
        fig = figures.patch_montage(args.run, args.layer, args.channel)
    elif args.kind == "distribution":
        fig = figures.maxima_distribution(args.run, args.layer, args.channel)
    else:
        chans = _channel_list(args.channels) if args.channels else None
        fig = figures.layer_overview(args.run, args.layer, chans)
    figures.save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def _write_images(images, out: str, names: list[str], columns: int = 8) -> None:
    """A .png/.jpg --out gets one grid; anything else is a folder of one PNG per image."""
    from PIL import Image

    from .figures import image_grid
    from .optim import save_png, to_uint8

    path = Path(out)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid(to_uint8(images), columns, gutter=2)).save(path)
        print(f"wrote {path} ({len(names)} images)")
    else:
        save_png(images, [path / f"{n}.png" for n in names])
        print(f"wrote {len(names)} PNGs to {path}/")


def cmd_class_vis(args) -> int:
    import torch

    from .optim import class_probabilities, cs231n_class_visualization, objectives, render, to_uint8

    model = _load(args)
    targets = _channel_list(args.target)
    bad = [t for t in targets if not 0 <= t < len(model.class_names or range(1 << 30))]
    if bad:
        raise ValueError(f"--target {bad}: out of range for {model.name}")
    torch.set_grad_enabled(True)
    if args.recipe == "cs231n":
        res = cs231n_class_visualization(model, targets, steps=args.steps or 100, seed=args.seed,
                                         progress=not args.no_progress)
    else:
        res = render(model, objectives.class_logits(targets), batch=len(targets),
                     steps=args.steps or 256, lr=args.lr or 0.02, seed=args.seed,
                     progress=not args.no_progress)
    probs = class_probabilities(model, to_uint8(res.images))
    for i, t in enumerate(targets):
        print(f"class {t} ({model.class_name(t)}): p = {float(probs[i, t]):.4f} after saving as 8-bit")
    _write_images(res.images, args.out, [f"class{t}" for t in targets])
    return 0


def cmd_channel_vis(args) -> int:
    from .featuremaps import parse_channels
    from .optim import objectives, render, store_in_run
    from .taps import resolve_layer

    model = _load(args)
    tap = resolve_layer(model, args.layer)
    chans = parse_channels(args.channels, tap.channels)
    images = []
    for start in range(0, len(chans), args.batch_size):
        part = chans[start: start + args.batch_size]
        res = render(model, objectives.channels(tap.name, part), batch=len(part),
                     steps=args.steps, lr=args.lr or 0.05, seed=args.seed, progress=not args.no_progress)
        images.append(res.images)
        if args.run:
            store_in_run(args.run, tap.name, part, res.images, "modern")
    import torch

    _write_images(torch.cat(images), args.out, [f"{tap.name}-c{c}" for c in chans])
    if args.run:
        print(f"stored in {args.run} (layers/{tap.name}/optimized): the report shows them")
    return 0


def cmd_merge(args) -> int:
    from .distributed import merge

    path = merge(args.shards, args.out, overwrite=args.overwrite, keep_shards=args.keep_shards)
    print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, model_name=args.model, weights=args.weights, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnviz", description="What do the channels of a convolutional network respond to?")
    parser.add_argument("--version", action="version", version=f"cnnviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="offline demo on bundled photos with a real ImageNet model")
    p.add_argument("--out", default="cnnviz-demo", help="output folder (default: cnnviz-demo)")
    _add_model_args(p, default="efficientnet_lite0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the model names --model accepts")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("layers", help="list a model's tappable layers with receptive fields")
    _add_model_args(p)
    p.add_argument("--all", action="store_true", help="every module with a 4-D output, not "
                   "only the default scan layers")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("classify", help="top classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_args(p)
    p.add_argument("--top", type=int, default=5, help="classes per image (default: 5)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("featuremaps", help="grid of one layer's channel maps for one image")
    p.add_argument("image", metavar="IMAGE")
    _add_model_args(p)
    p.add_argument("--layer", required=True, help="tap name, e.g. layer2.0.conv3")
    p.add_argument("--channels", default=None, help="e.g. 0-63 or 3,7,10-20 (default: first 64)")
    p.add_argument("--columns", type=int, default=8, help="tiles per row (default: 8)")
    p.add_argument("--shared-scale", action="store_true",
                   help="one colour scale for all tiles (default: one per tile)")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--out", required=True, help="image file to write (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_featuremaps)

    p = sub.add_parser("scan", help="top-k receptive-field patches per channel over an image "
                       "library, to an HDF5 run file (resumable; under torchrun, distributed)",
                       description="Under `torchrun --nproc_per_node=N -m cnnviz scan ...` every "
                       "process scans its share (batch b goes to rank b % N) and rank 0 merges "
                       "the shards into --out at the end.")
    p.add_argument("library", metavar="LIBRARY",
                   help="image folder (recursive; labels from class/ subfolders) or a text/CSV "
                        "file of paths with an optional label column")
    _add_model_args(p)
    p.add_argument("--layers", default=None,
                   help="comma-separated tap names (default: the block outputs, see `cnnviz layers`)")
    p.add_argument("--top-k", type=int, default=16, help="images kept per channel (default: 16)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes (default: CPU count - 1, at most 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (default: cpu)")
    p.add_argument("--amp", action="store_true",
                   help="mixed-precision forward pass (reductions stay float32)")
    p.add_argument("--out", required=True, help="run file to write (HDF5)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted scan of the same --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out and discard an interrupted scan")
    p.add_argument("--maxima-dtype", default="float32", choices=["float32", "float16"],
                   help="dtype of the stored images x channels maxima (default: float32)")
    p.add_argument("--patch-size", type=int, default=64,
                   help="largest stored patch side; larger fields are downsampled (default: 64)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="checkpoint at most this often (default: 60)")
    p.add_argument("--checkpoint-images", type=int, default=None,
                   help="also checkpoint after this many images (default: whenever 64 MB of "
                        "per-image maxima are buffered)")
    p.add_argument("--shard", default=None, metavar="RANK/WORLD",
                   help="scan only this share of a distributed scan, without torchrun (e.g. to "
                        "rerun a rank that died, with --resume); then `cnnviz merge`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("merge", help="merge the shard folders of a distributed scan into one run file")
    p.add_argument("shards", nargs="+", metavar="SHARD", help="RUN.h5.shard-R-of-W.work folders")
    p.add_argument("--out", required=True, help="run file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard folders")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("class-vis", help="an image the model takes for a class (gradient ascent)")
    _add_model_args(p)
    p.add_argument("--target", required=True, help="class index or list, e.g. 76 or 76,130,366")
    p.add_argument("--recipe", choices=["cs231n", "modern"], default="cs231n",
                   help="cs231n: pixels, L2 decay, jitter, blur, clamp (lr 25, 100 steps); modern: "
                        "Fourier + decorrelated colour + transforms + Adam (lr 0.02, 256 steps)")
    p.add_argument("--steps", type=int, default=None, help="(default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="modern recipe's Adam lr (default 0.02)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="grid image (.png) or folder of PNGs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_class_vis)

    p = sub.add_parser("channel-vis", help="images that maximize channels of a layer (modern recipe, "
                       "batched)")
    _add_model_args(p)
    p.add_argument("--layer", required=True)
    p.add_argument("--channels", default="0-63", help="e.g. 0-63 (default) or 3,7,10-20")
    p.add_argument("--steps", type=int, default=256, help="(default: 256)")
    p.add_argument("--lr", type=float, default=None, help="Adam lr (default: 0.05, Lucid's)")
    p.add_argument("--batch-size", type=int, default=64, help="channels optimized at once (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default=None, help="also store the images in this run file for the report")
    p.add_argument("--out", required=True, help="grid image (.png) or folder of PNGs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_channel_vis)

    p = sub.add_parser("top", help="print the top-k table of a run")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--layer", default=None, help="one layer (default: all)")
    p.add_argument("--channel", type=int, default=None, help="one channel (default: all)")
    p.add_argument("--csv", action="store_true", help="CSV with every column, to stdout")
    p.add_argument("--max-rows", type=int, default=200, help="rows printed (default: 200)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("report", help="static HTML report of a run (open index.html)")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--channels", default=None,
                   help="N (the first N channels of each layer) or a list like 0-63,100 "
                        "(default: every channel)")
    p.add_argument("--attributions", default=None,
                   help="neuron attributions (guided backprop) for some channels, e.g. "
                        "'layer3.1:0-7;layer4.2:12'; needs the run's model")
    p.add_argument("--model", default=None,
                   help="model for attributions (default: reloaded from the run file)")
    p.add_argument("--weights", default="DEFAULT", help=_WEIGHTS_HELP)
    p.add_argument("--device", default="cpu", help="device for attributions (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", help="one figure of a run: montage, overview or distribution")
    p.add_argument("kind", choices=["montage", "overview", "distribution"])
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--layer", required=True)
    p.add_argument("--channel", type=int, default=0, help="(montage, distribution)")
    p.add_argument("--channels", default=None, help="(overview) default: the first 64")
    p.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .models import WeightsUnavailableError
    from .runfile import RunFileError
    from .scan import ScanError, ScanInterrupted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScanInterrupted as exc:
        print(f"\ncnnviz: {exc}", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, ImportError, ScanError,
            WeightsUnavailableError, RunFileError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cnnviz {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
