"""Commands that ask questions of finished runs: explain (needs the run's model) and compare
(reads two run files only)."""

from __future__ import annotations

import sys

from .common import RUN_WEIGHTS_HELP, run_model


def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="where new images stand, per channel, against a run's library")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (in the library or new)")
    p.add_argument("--run", required=True, metavar="RUN.h5", help="the run to compare against")
    p.add_argument("--out", default=None, help="folder for the HTML page and one PNG per image, "
                   "written afresh (default: none, print only)")
    p.add_argument("--layers", default=None, help="comma-separated layers of the run (default: all)")
    p.add_argument("--top", type=int, default=5, help="channels shown per image and layer (default: 5)")
    p.add_argument("--csv", action="store_true", help="every row (image x layer x channel) as CSV "
                   "to stdout")
    p.add_argument("--model", default=None, help="the run's model (default: reloaded from the run file)")
    p.add_argument("--weights", default=None, help=RUN_WEIGHTS_HELP)
    p.add_argument("--device", default="cpu", help="device for the forward pass (default: cpu)")
    p.add_argument("--why", action="store_true",
                   help="instead: the channels of each layer that contributed most to the model's "
                        "decision (relevance: activation x gradient of the class logit; "
                        "docs/relevance.md), beside their dataset examples")
    p.add_argument("--target", default=None,
                   help="with --why: the class to explain (index, name, WordNet lemma or id; default: "
                        "the model's top-1 class)")
    p.set_defaults(func=run_explain)


def run_explain(args) -> int:
    from ..errors import UsageError

    if args.top < 1:
        raise UsageError("`top` must be at least 1")
    if args.out:
        from .common import check_out

        check_out(args.out, file=False)  # before the forward passes
    model = run_model(args)
    layers = args.layers.split(",") if args.layers else None
    if args.target is not None and not args.why:
        raise UsageError("`target` goes with `why`: the class whose decision is explained")
    from ..run.reader import RunReader

    with RunReader(args.run) as run:  # opened once: the tables and the page read this reader
        return (_why if args.why else _explain)(args, run, layers, model)


def _explain(args, run, layers, model) -> int:
    import pandas as pd

    from ..analysis.explanation import explain_images

    result = explain_images(args.images, run, layers, model=model, device=args.device)
    table = result.table
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    else:
        cols = ["layer", "channel", "channel_name", "value", "rank", "ties", "n_images", "percentile"]
        if not table["channel_name"].astype(bool).any():
            cols.remove("channel_name")
        predictions = dict(zip(map(str, result.paths), result.predictions or [], strict=False))
        with pd.option_context("display.width", 200, "display.max_colwidth", 40):
            for image, rows in table.groupby("image", sort=False):
                print(f"{image}" + (" (in the library)" if (rows.library_id >= 0).any() else ""))
                if image in predictions:
                    seen = ", ".join(f"{name} {p:.1%}" for _, name, p in predictions[image])
                    print(f"the model sees: {seen}")
                # a channel where the image does not respond is never a top one (logits: by value)
                shown = rows[rows.responds | rows.channel_name.astype(bool)]
                best = shown.groupby("layer", sort=False).head(args.top)
                print(best[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"), end="\n\n")
    if args.out:
        from ..report.analysis_pages import write_explain_page

        index = write_explain_page(result, run, args.out, top=args.top)
        print(f"explain page: {index.resolve()}", file=sys.stderr if args.csv else sys.stdout)
    return 0


def _why(args, run, layers, model) -> int:
    import pandas as pd

    from ..analysis.relevance import explain_predictions

    result = explain_predictions(args.images, run, args.target, layers=layers, top=args.top, model=model,
                                 device=args.device)
    table = result.table
    if args.csv:
        table.assign(examples=table.examples.str.join(";")).to_csv(sys.stdout, index=False)
    else:
        cols = ["layer", "channel", "channel_name", "relevance", "share", "y", "x", "example"]
        shown = table.assign(example=[e[0].rsplit("/", 1)[-1] if e else "" for e in table.examples])
        if not shown["channel_name"].astype(bool).any():
            cols.remove("channel_name")
        with pd.option_context("display.width", 200, "display.max_colwidth", 48):
            groups = shown.groupby("image", sort=False)
            for (image, rows), seen in zip(groups, result.predictions, strict=True):
                first = rows.iloc[0]
                print(image)
                print("the model sees: " + ", ".join(f"{name} {p:.1%}" for _, name, p in seen))
                print(f"why {first.target_name} ({first.probability:.1%}): the channels that contributed "
                      f"most, with their first dataset example (by {first.examples_by})")
                print(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"), end="\n\n")
    if args.out:
        from ..report.analysis_pages import write_why_page

        index = write_why_page(result, run, args.out, top=args.top)
        print(f"why page: {index.resolve()}", file=sys.stderr if args.csv else sys.stdout)
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="what changed per channel between two runs (same layers)")
    p.add_argument("run_a", metavar="RUN_A.h5", help="the first run (before; dataset A)")
    p.add_argument("run_b", metavar="RUN_B.h5", help="the second run (after; dataset B)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: those both runs have)")
    p.add_argument("--out", default=None, help="folder for the HTML page, written afresh (default: none)")
    p.add_argument("--top", type=int, default=20, help="most changed channels printed and shown "
                   "(default: 20)")
    p.add_argument("--csv", action="store_true", help="every channel as CSV to stdout")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    import pandas as pd

    from ..analysis.compare import compare_runs

    table = compare_runs(args.run_a, args.run_b, args.layers.split(",") if args.layers else None)
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    else:
        cols = ["layer", "channel", "change", "topk_overlap", "rank_corr", "mean_max_a", "mean_max_b",
                "fire_rate_a", "fire_rate_b"]
        print(f"{int(table['shared_images'].iloc[0])} images read by both runs; most changed first")
        with pd.option_context("display.width", 200):
            print(table.head(args.top)[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out:
        from ..report.analysis_pages import write_compare_page

        index = write_compare_page(table, args.run_a, args.run_b, args.out, top=args.top)
        print(f"compare page: {index.resolve()}", file=sys.stderr if args.csv else sys.stdout)
    return 0


COMMANDS = [add_explain, add_compare]
