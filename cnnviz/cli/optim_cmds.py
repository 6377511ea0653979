"""Commands that optimize images: class-vis, channel-vis."""

from __future__ import annotations

import os
from pathlib import Path

from .common import add_device_arg, add_model_args, add_progress_arg, channel_list, check_out, load


def _write_images(images, out: str, names: list[str], columns: int = 8,
                  captions: list[list[str]] | None = None) -> None:
    """A .png/.jpg --out gets one grid (``captions``: lines under each image); anything else is
    a folder of one PNG per image."""
    from PIL import Image

    from ..optim import save_png, to_uint8
    from ..viz.figures import captioned_grid, image_grid

    path = Path(out)
    if _is_grid(out):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = to_uint8(images)
        grid = image_grid(pixels, columns, gutter=2) if captions is None else \
            captioned_grid(pixels, captions, columns, gutter=2)
        try:
            Image.fromarray(grid).save(path)
        except BaseException:
            path.unlink(missing_ok=True)  # no half-written (0-byte) image left behind
            raise
        print(f"wrote {path} ({len(names)} images)")
    else:
        _write_all_or_none(images, path, names, save_png)
        print(f"wrote {len(names)} PNGs to {path}/")


def _write_all_or_none(images, folder: Path, names: list[str], save_png) -> None:
    """One PNG per image into ``folder``, all or none: written into a fresh folder inside it,
    then renamed into place (no space needed) once every image is written. A failure (a full
    disk) leaves ``folder`` as it was, older images of the same names included, and removes it
    when this call made it: no half set is left to be taken for a result."""
    import shutil
    import tempfile

    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=".cnnviz-tmp-", dir=folder))
    try:
        save_png(images, [fresh / f"{name}.png" for name in names])
        for name in names:
            os.replace(fresh / f"{name}.png", folder / f"{name}.png")
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def add_threads_arg(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on a CPU (default: one per core that other processes leave free, "
                        "at least 1: threads that share a busy core make every step wait)")


def use_threads(args) -> None:
    """Set torch's threads for an optimization on a CPU: ``--threads``, else
    :func:`cnnviz.optim.threads.default_threads` (said in a note when it is fewer than torch's)."""
    import warnings

    import torch

    from ..errors import CnnvizWarning, UsageError
    from ..optim.threads import default_threads, free_cores

    if not str(args.device).startswith("cpu"):
        return
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"`threads` {args.threads}: must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        return
    n = default_threads()
    if n < torch.get_num_threads():
        cores, load = free_cores()
        warnings.warn(f"optimizing with {n} torch thread{'s' if n > 1 else ''}: {cores} cores, load average "
                      f"{load:.1f} (other processes keep the rest busy); `threads` chooses", CnnvizWarning,
                      stacklevel=2)
    torch.set_num_threads(n)


def _is_grid(out: str) -> bool:
    return Path(out).suffix.lower() in (".png", ".jpg", ".jpeg")


def add_class_vis(sub) -> None:
    p = sub.add_parser("class-vis", help="an image the model takes for a class (gradient ascent)")
    add_model_args(p)
    p.add_argument("--target", required=True,
                   help="classes by index or name, e.g. 76, tarantula, n01774750 or 76,130-132,zebra")
    p.add_argument("--recipe", choices=["cs231n", "modern"], default="cs231n",
                   help="cs231n: pixels, L2 decay, jitter, blur, clamp (lr 25, 100 steps); modern: "
                        "Fourier + decorrelated colour + transforms + Adam (lr 0.05, 256 steps)")
    p.add_argument("--steps", type=int, default=None, help="(default: the recipe's)")
    p.add_argument("--lr", type=float, default=None,
                   help="modern recipe's Adam lr (default 0.05: vivid; 0.02 gives washed-out images)")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p, "the optimization")
    p.add_argument("--out", required=True, help="grid image (.png) or folder of PNGs")
    add_threads_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run_class_vis)


def run_class_vis(args) -> int:
    from ..labels import class_indices
    from ..optim import class_probabilities, cs231n_class_visualization, objectives, render, to_uint8

    check_out(args.out, file=_is_grid(args.out))  # before the optimization, not after it
    model = load(args)
    targets = class_indices(args.target, model.class_names, "target")
    use_threads(args)
    if args.recipe == "cs231n":
        res = cs231n_class_visualization(model, targets, steps=args.steps or 100, seed=args.seed,
                                         progress=not args.no_progress)
    else:
        res = render(model, objectives.class_logits(targets), batch=len(targets),
                     steps=args.steps or 256, lr=args.lr or 0.05, seed=args.seed,
                     progress=not args.no_progress)
    probs = class_probabilities(model, to_uint8(res.images))
    captions = []
    for i, t in enumerate(targets):
        seen = _top_classes(model, probs[i])
        print(f"class {t} ({model.class_name(t)}): p = {float(probs[i, t]):.4f} after saving as 8-bit; "
              f"the model sees " + ", ".join(f"{name} {p:.3f}" for name, p in seen))
        captions.append([f"{model.class_name(t)} ({t}): p {float(probs[i, t]):.3f}",
                         *(f"{j}. {name} {p:.3f}" for j, (name, p) in enumerate(seen, 1))])
    _write_images(res.images, args.out, [f"class{t}" for t in targets], captions=captions)
    return 0


def _top_classes(model, probs, top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` classes the model sees in an image, with their probabilities: what a failed
    visualization turned into."""
    values, indices = probs.topk(min(top, probs.shape[0]))
    return [(model.class_name(int(i)), float(v)) for v, i in zip(values, indices, strict=True)]


def add_channel_vis(sub) -> None:
    p = sub.add_parser("channel-vis", help="images that maximize channels of a layer (modern recipe, "
                       "batched)")
    add_model_args(p)
    p.add_argument("--layer", required=True)
    p.add_argument("--channels", default="0-63", help="e.g. 0-63 (default) or 3,7,10-20")
    p.add_argument("--steps", type=int, default=256, help="(default: 256)")
    p.add_argument("--lr", type=float, default=None, help="Adam lr (default: 0.05, Lucid's)")
    p.add_argument("--batch-size", type=int, default=64, help="channels optimized at once (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default=None, help="also store the images in this run file for the report "
                   "(written into a copy that replaces it when complete: a failure leaves it as it was)")
    add_device_arg(p, "the optimization")
    p.add_argument("--out", required=True, help="grid image (.png) or folder of PNGs")
    add_threads_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run_channel_vis)


def run_channel_vis(args) -> int:
    import torch

    from ..model.taps import resolve_layer
    from ..optim import objectives, render, store_in_run

    check_out(args.out, file=_is_grid(args.out))  # before the optimization, not after it
    model = load(args)
    tap = resolve_layer(model, args.layer)
    use_threads(args)
    chans = channel_list(args.channels, n_channels=tap.channels)
    if args.run:  # before the optimization, not after it
        h, w = model.input_size
        _check_run_takes(args.run, tap, extra_bytes=len(chans) * h * w * 3)
    images, done, stopped = [], [], None
    try:
        for start in range(0, len(chans), args.batch_size):
            part = chans[start: start + args.batch_size]
            res = render(model, objectives.channels(tap.name, part), batch=len(part),
                         steps=args.steps, lr=args.lr or 0.05, seed=args.seed, progress=not args.no_progress)
            images.append(res.images)
            done += part
    except BaseException as exc:  # Ctrl-C: the images finished so far are kept all the same
        stopped = exc
    if images:
        finished = torch.cat(images)
        _write_images(finished, args.out, [f"{tap.name}-c{c}" for c in done])
        if args.run:  # once, at the end: each store writes a copy of the run file
            store_in_run(args.run, tap.name, done, finished, "modern")
            print(f"stored {len(done)} images in {args.run} (layers/{tap.name}/optimized): the report "
                  "shows them")
    if stopped is not None:
        raise stopped
    return 0


def _check_run_takes(run: str, tap, extra_bytes: int) -> None:
    """The run file has the layer, with as many channels as the model's, and its disk has room
    for a copy of it with the images (see :func:`cnnviz.run.update.update_run`)."""
    from pathlib import Path

    from ..errors import UsageError
    from ..run.reader import RunReader
    from ..run.update import check_update_space

    with RunReader(run) as r:
        r.check_layer(tap.name, "layer")
        channels = r.layer_meta(tap.name).channels
    if channels != tap.channels:
        raise UsageError(f"`run` {run}: its layer {tap.name} has {channels} channels, this model's "
                         f"{tap.channels}: is it the run of this model?")
    check_update_space(Path(run), extra_bytes)


COMMANDS = [add_class_vis, add_channel_vis]
