"""Commands about a network itself: models, layers, classify, featuremaps."""

from __future__ import annotations

from .common import add_device_arg, add_model_args, channel_list, load, use_agg


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the model names --model accepts")
    p.set_defaults(func=run_models)


def run_models(args) -> int:
    from ..model.loading import available_models

    print("\n".join(available_models()))
    return 0


def add_layers(sub) -> None:
    p = sub.add_parser("layers", help="list a model's tappable layers with receptive fields")
    add_model_args(p)
    p.add_argument("--all", action="store_true", help="every module with a 4-D output or a "
                   "whole-image output, not only the default scan layers and the logits")
    p.set_defaults(func=run_layers)


def run_layers(args) -> int:
    from ..model.taps import default_layers, list_layers

    model = load(args)
    defaults = {t.name for t in default_layers(model)}
    print(f"{model.name} ({model.weights_origin}), input {model.input_size[0]}x{model.input_size[1]}")
    print(f"{'layer':<34s} {'type':<22s} {'channels':>8s} {'map':>9s} {'stride':>7s} "
          f"{'rf size':>9s} {'rf offset':>10s}  note")
    layers = list_layers(model)
    logits = [n for n, t in layers.items() if t.logits and t.tappable][-1:]
    for tap in layers.values():
        if not args.all and tap.name not in defaults and tap.name not in logits:
            continue
        rf = tap.rf
        note = "default" if tap.name in defaults else ""
        if tap.whole_image:
            note = ("whole image; class logits (--layers logits)" if tap.name in logits
                    else "whole image; class logits" if tap.logits else "whole image")
        if not tap.tappable:
            note = f"runs {tap.calls}x: not tappable"
        elif rf is None:
            note = note or "no receptive field: not scannable"
        stride = f"{rf.stride[0]}" if rf else "-"
        size = f"{rf.size[0]}x{rf.size[1]}" if rf else "-"
        offset = f"{rf.offset[0]},{rf.offset[1]}" if rf else "-"
        print(f"{tap.name:<34s} {tap.type:<22s} {tap.channels:>8d} "
              f"{tap.shape[1]:>4d}x{tap.shape[2]:<4d} {stride:>7s} {size:>9s} {offset:>10s}  {note}")
    if not args.all:
        print("\n(the default scan layers and the class logits; --all lists every module with a 4-D "
              "or whole-image output. A whole-image unit has one value per image: its top-k are "
              "whole images, stored as thumbnails)")
    return 0


def add_classify(sub) -> None:
    p = sub.add_parser("classify", help="top classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_args(p)
    p.add_argument("--top", type=int, default=5, help="classes per image (default: 5)")
    add_device_arg(p)
    p.set_defaults(func=run_classify)


def run_classify(args) -> int:
    from ..images.decoding import read_image

    images = [read_image(p, "images") for p in args.images]
    model = load(args)
    for path, top in zip(args.images, model.classify(images, top=args.top), strict=True):
        print(path)
        for rank, (index, name, prob) in enumerate(top, 1):
            print(f"   {rank}. {name:<28s} {prob:6.1%}  (class {index})")
    return 0


def add_featuremaps(sub) -> None:
    p = sub.add_parser("featuremaps", help="grid of one layer's channel maps for one image")
    p.add_argument("image", metavar="IMAGE")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="tap name, e.g. layer2.0.conv3")
    p.add_argument("--channels", default=None, help="e.g. 0-63 or 3,7,10-20 (default: first 64)")
    p.add_argument("--columns", type=int, default=8, help="tiles per row (default: 8)")
    p.add_argument("--shared-scale", action="store_true",
                   help="one colour scale for all tiles (default: one per tile)")
    p.add_argument("--dpi", type=int, default=100)
    add_device_arg(p)
    p.add_argument("--out", required=True, help="image file to write (.png, .svg, .pdf)")
    p.set_defaults(func=run_featuremaps)


def run_featuremaps(args) -> int:
    use_agg()
    from ..images.decoding import read_image
    from ..viz.featuremaps import feature_map_grid, layer_activation
    from ..viz.figures import save_figure

    image = read_image(args.image)
    model = load(args)
    act = layer_activation(model, image, args.layer)
    channels = channel_list(args.channels, n_channels=act.shape[0]) if args.channels else None
    fig = feature_map_grid(act, channels, columns=args.columns, shared_scale=args.shared_scale,
                           title=f"{args.image.rsplit('/', 1)[-1]} — {model.name} {args.layer} "
                                 f"({act.shape[1]}x{act.shape[2]})")
    save_figure(fig, args.out, dpi=args.dpi)
    shown = len(channels) if channels else min(64, act.shape[0])
    print(f"wrote {args.out} ({shown} channels of {args.layer})")
    return 0


COMMANDS = [add_models, add_layers, add_classify, add_featuremaps]
