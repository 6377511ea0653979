"""Commands that read a run file: top, failures, report, plot. None of them imports torch unless
attributions are asked for."""

from __future__ import annotations

import sys

from .common import RUN_WEIGHTS_HELP, add_progress_arg, channel_list, check_out, run_model, use_agg


def add_top(sub) -> None:
    p = sub.add_parser("top", help="print the top-k table of a run")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--layer", default=None, help="one layer, e.g. features.12 or logits (default: all)")
    p.add_argument("--channel", type=int, default=None, help="one channel (default: all)")
    p.add_argument("--csv", action="store_true", help="CSV with every column, to stdout")
    p.add_argument("--max-rows", type=int, default=200, help="rows printed (default: 200)")
    p.add_argument("--rank-by", default="max", choices=["max", "mean", "relevance"],
                   help="the images ranked by spatial max, by spatial mean (scans keep both by "
                        "default) or by relevance (a scan with --rank-by ...,relevance) (default: max)")
    p.add_argument("--bottom", action="store_true",
                   help="the most negative images instead (a scan with --bottom-k)")
    p.add_argument("--label", default=None,
                   help="the top-k among the images of one class (a label such as n02123045, or its "
                        "class name), from the per-image maxima")
    p.set_defaults(func=run_top)


def run_top(args) -> int:
    import pandas as pd

    from ..run.tables import top_patches

    df = top_patches(args.run, layer=args.layer, channel=args.channel, **_view(args))
    cols = ["layer", "channel", "channel_name", "rank", "activation", "image_path", "label", "label_name",
            "y", "x", "rf_y0", "rf_x0", "rf_y1", "rf_x1"]
    # class names where the run has them: a logits channel's class, a WordNet id's or index's name
    cols = [c for c in cols if c not in ("channel_name", "label", "label_name") or df[c].astype(bool).any()]
    if (df["rank_by"] != "max").any():  # say which view this is
        cols.insert(cols.index("rank"), "rank_by")
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    else:
        with pd.option_context("display.max_rows", args.max_rows, "display.width", 200,
                               "display.max_colwidth", 48):
            print(df[cols].to_string(index=False, max_rows=args.max_rows))
    return 0


def _view(args) -> dict:
    """The ranking ``top`` shows: rank_by, bottom, label (only those given)."""
    view = {"rank_by": args.rank_by, "bottom": args.bottom, "label": args.label}
    return {k: v for k, v in view.items() if v not in (None, False, "max")}


def add_failures(sub) -> None:
    p = sub.add_parser("failures", help="the images a scan could not read, and why")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--csv", action="store_true", help="CSV of every failure, to stdout")
    p.set_defaults(func=run_failures)


def run_failures(args) -> int:
    from ..run.tables import failures

    df = failures(args.run)
    if args.csv:
        df.to_csv(sys.stdout, index=False)
        return 0
    print(failure_summary(df, limit=None))
    return 0


def failure_summary(df, limit: int | None = 3) -> str:
    """Failures counted by kind, each with an example; with ``limit`` None, every file too."""
    if df.empty:
        return "every image was read"
    lines = []
    from ..run.tables import failure_kinds

    kinds = failure_kinds(df)
    for kind, n in kinds.items():
        first = df[df.kind == kind].iloc[0]
        lines.append(f"{n:>8} x {kind} (e.g. {first.path}: {first.reason.split(': ', 1)[-1]})")
    if limit is not None and len(lines) > limit:
        lines = lines[:limit] + [f"         ... {len(kinds) - limit} more kinds"]
    if limit is None:
        lines += ["", *(f"{row.path}\t{row.reason}" for row in df.itertuples())]
    return "\n".join(lines)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="static HTML report of a run (open index.html)")
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--out", required=True, help="folder to write (written afresh and swapped in when "
                   "complete: an earlier report there goes whole; a folder of other files is refused)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--channels", default=None,
                   help="N (the first N channels of each layer) or a list like 0-63,100 "
                        "(default: every channel)")
    p.add_argument("--attributions", default=None,
                   help="neuron attributions (guided backprop) for some channels, e.g. "
                        "'layer3.1:0-7;layer4.2:12'; needs the run's model")
    p.add_argument("--no-context", action="store_true",
                   help="leave out the photos the patches come from (with the patch boxed and the "
                        "channel's activation map overlaid: one forward pass per photo shown)")
    p.add_argument("--explain", nargs="+", default=None, metavar="IMAGE",
                   help="add an explain page: where these images stand against the run")
    p.add_argument("--model", default=None,
                   help="the run's model, for activation maps, attributions and --explain "
                        "(default: reloaded from the run file)")
    p.add_argument("--weights", default=None, help=RUN_WEIGHTS_HELP)
    p.add_argument("--device", default="cpu", help="device for the model (default: cpu)")
    p.add_argument("--library", default=None, metavar="FOLDER",
                   help="where the run's images are now, if they moved since the scan; a run written "
                        "before cnnviz 0.2 (no image identities) shows photos only from a folder named "
                        "here")
    add_progress_arg(p)
    p.set_defaults(func=run_report)


def _parse_attributions(spec: str | None) -> dict:
    """'layer3.1:0-7;layer4.2:12' -> {'layer3.1': [0..7], 'layer4.2': [12]}."""
    from ..errors import UsageError

    out: dict[str, list[int]] = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        if ":" not in part:
            raise UsageError(f"`attributions` {part!r}: expected LAYER:CHANNELS, e.g. layer3.1:0-7")
        layer, chans = part.rsplit(":", 1)
        out[layer.strip()] = channel_list(chans, "attributions")
    return out


def run_report(args) -> int:
    from ..report import write_report

    attributions = _parse_attributions(args.attributions)
    model = run_model(args)
    channels = None
    if args.channels:
        channels = int(args.channels) if args.channels.isdigit() else channel_list(args.channels)
    index = write_report(args.run, args.out, layers=args.layers.split(",") if args.layers else None,
                         channels=channels, attributions=attributions, model=model,
                         progress=not args.no_progress, context=not args.no_context,
                         explain=args.explain, library=args.library, device=args.device)
    print(f"report: {index.resolve()}")
    return 0


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="one figure of a run: montage, overview or distribution")
    p.add_argument("kind", choices=["montage", "overview", "distribution"])
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument("--layer", required=True)
    p.add_argument("--channel", type=int, default=0, help="(montage, distribution)")
    p.add_argument("--channels", default=None, help="(overview) default: the first 64")
    p.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    p.add_argument("--rank-by", default="max", choices=["max", "mean", "relevance"],
                   help="(montage) the images ranked by spatial max, mean or relevance (default: max)")
    p.add_argument("--bottom", action="store_true", help="(montage) the most negative images instead")
    p.add_argument("--mask", action="store_true",
                   help="(montage) outline where the channel exceeds its top-0.5%% level (reloads the "
                        "run's model for the k maps)")
    p.set_defaults(func=run_plot)


def run_plot(args) -> int:
    use_agg()
    from ..viz import figures

    figures.check_figure_path(args.out)  # before the figure is drawn
    check_out(args.out, file=True)
    if args.kind == "montage":
        fig = figures.patch_montage(args.run, args.layer, args.channel, rank_by=args.rank_by,
                                    bottom=args.bottom, mask=args.mask)
    elif args.kind == "distribution":
        fig = figures.maxima_distribution(args.run, args.layer, args.channel)
    else:
        chans = channel_list(args.channels) if args.channels else None
        fig = figures.layer_overview(args.run, args.layer, chans)
    figures.save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


COMMANDS = [add_top, add_failures, add_report, add_plot]
