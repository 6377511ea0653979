"""Commands that scan: scan (alone, by shard, or under torchrun) and merge."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_model_args, add_progress_arg, load


def add_scan(sub) -> None:
    p = sub.add_parser("scan", help="top-k receptive-field patches per channel over an image "
                       "library, to an HDF5 run file (resumable; under torchrun, distributed)",
                       description="One scan writes an --out at a time (a lock beside it). Under "
                       "`torchrun --nproc_per_node=N -m cnnviz scan ...` every process scans its "
                       "share (batch b goes to rank b % N) and rank 0 merges the shards into --out "
                       "at the end. What happens on faults: README, 'What happens when things go "
                       "wrong'.")
    p.add_argument("library", metavar="LIBRARY",
                   help="image folder (recursive; labels from class/ subfolders) or a text/CSV/TSV "
                        "file of paths (relative to its own folder) with an optional label column, "
                        "as spreadsheets and scripts write it (README, 'List files')")
    add_model_args(p)
    _what_args(p)
    _how_args(p)
    _kept_args(p)
    _views_args(p)
    _job_args(p)
    add_progress_arg(p, "no progress bar: a note per checkpoint instead (images done, img/s)")
    p.set_defaults(func=run_scan)


def _what_args(p) -> None:
    """What is scanned."""
    p.add_argument("--layers", default=None,
                   help="comma-separated tap names (default: the block outputs, see `cnnviz layers`)")
    p.add_argument("--top-k", type=int, default=16, help="images kept per channel (default: 16)")
    p.add_argument("--out", required=True, help="run file to write (HDF5)")


def _how_args(p) -> None:
    """Where and how the network runs."""
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes (default: CPU count - 1, at most 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (default: cpu)")
    p.add_argument("--precision", choices=["fp32", "tf32", "amp"], default=None,
                   help="fp32: IEEE float32, a GPU scan equals the CPU scan (default); tf32: TF32 "
                        "convolutions on GPUs that have them (faster, maxima to ~1e-3); amp: float16 "
                        "autocast on CUDA, bfloat16 on a CPU (fastest; reductions stay float32)")
    p.add_argument("--amp", action="store_true", help="the same as --precision amp")
    p.add_argument("--compile", action="store_true",
                   help="compile the network, its taps traced (torch.compile; seconds to a minute "
                        "before the first batch, then faster; torchvision models)")


def _job_args(p) -> None:
    """The overnight job: resuming, replacing, checkpoints, shards."""
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted scan of the same --out (the images listed when it "
                        "started; an interrupted --overwrite scan too)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out once the new run is complete; without --resume, "
                        "also discard an interrupted scan")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="checkpoint this often: after a crash, --resume loses at most this much "
                        "work (default: 60; the per-image maxima go to disk as they are made)")
    p.add_argument("--checkpoint-images", type=int, default=None,
                   help="also checkpoint after this many images (default: by time only)")
    p.add_argument("--shard", default=None, metavar="RANK/WORLD",
                   help="scan only this share of a distributed scan, without torchrun (e.g. to "
                        "rerun a rank that died, with --resume); then `cnnviz merge`")


def _kept_args(p) -> None:
    """What the run file keeps per image."""
    p.add_argument("--maxima-dtype", "--maxima", dest="maxima_dtype", default="float32",
                   choices=["float32", "float16", "none"],
                   help="the per-image maxima (images x channels, with their positions): float32, "
                        "float16 (a third smaller) or none (top-k, patches and statistics are kept "
                        "all the same) (default: float32)")
    p.add_argument("--maxima-layers", default=None,
                   help="keep the per-image maxima of these layers only (comma-separated; default: all)")
    p.add_argument("--maxima-means", action="store_true",
                   help="keep each image's spatial mean beside its maximum, where maxima are kept "
                        "(in --maxima's dtype: two thirds more than the maxima and positions take); "
                        "the ranking by mean needs none")
    p.add_argument("--patch-size", type=int, default=64,
                   help="largest stored patch side; larger fields are downsampled (default: 64)")


def _views_args(p) -> None:
    """The views of a channel: rankings, bottom-k, quantiles."""
    p.add_argument("--rank-by", default="max,mean", metavar="max[,mean][,relevance]",
                   help="rankings kept per channel, each an exact top-k with patches: max (images by "
                        "their spatial maximum: a strong small part, textures), mean (by their "
                        "spatial mean: the whole map, whole objects) and relevance (by the channel's "
                        "contribution to the image's class logit, activation x gradient: a backward "
                        "pass per batch; docs/relevance.md) (default: max,mean)")
    p.add_argument("--bottom-k", type=int, default=0, metavar="K",
                   help="also keep the K most negative images per channel (by spatial minimum), for "
                        "signed units: logits, Linear layers, taps before a ReLU; layers after a ReLU "
                        "are left out (default: 0, none)")
    p.add_argument("--bottom-layers", default=None,
                   help="the layers given a --bottom-k (comma-separated; default: every scanned layer "
                        "that can be negative; one that cannot is refused)")
    p.add_argument("--no-quantiles", dest="quantiles", action="store_false",
                   help="do not count the distribution over positions (quantiles, mask levels)")
    p.add_argument("--quantile-positions", type=int, default=100, metavar="P",
                   help="positions per image counted for the quantiles; larger maps are sampled, the "
                        "same positions of an image in any scan; 0 counts all (default: 100)")


def _parse_shard(spec: str) -> tuple[int, int]:
    from ..errors import UsageError

    try:
        rank, world = (int(v) for v in spec.split("/"))
    except ValueError:
        raise UsageError(f"`shard` {spec!r}: expected RANK/WORLD_SIZE, e.g. 2/4") from None
    return rank, world


def _check_numbers(args) -> None:
    """The options a number can get wrong, refused before anything is imported: importing the
    scanner loads torch (seconds), and `--top-k 0` should not wait for it. (ScanConfig.validate
    checks them again, for Python callers.)"""
    from ..errors import UsageError

    at_least_one = {"top_k": args.top_k, "batch_size": args.batch_size, "patch_size": args.patch_size}
    if args.checkpoint_images is not None:
        at_least_one["checkpoint_images"] = args.checkpoint_images
    for name, value in at_least_one.items():
        if value < 1:
            raise UsageError(f"`{name}` {value!r}: must be a whole number of at least 1")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"`workers` {args.workers}: must be 0 (decode in the main process) or more")
    if not args.checkpoint_seconds > 0:
        raise UsageError(f"`checkpoint_seconds` {args.checkpoint_seconds}: must be positive")


def run_scan(args) -> int:
    _check_numbers(args)
    from ..scanner import ScanConfig, scan, scan_shard
    from ..scanner.distributed import scan_distributed, torchrun_env

    config = ScanConfig(
        layers=args.layers, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
        device=args.device, precision=args.precision, amp=args.amp, resume=args.resume,
        overwrite=args.overwrite,
        maxima_dtype=args.maxima_dtype, maxima_layers=args.maxima_layers, patch_size=args.patch_size,
        checkpoint_seconds=args.checkpoint_seconds, checkpoint_images=args.checkpoint_images,
        progress=not args.no_progress, compile=args.compile, rank_by=args.rank_by, bottom_k=args.bottom_k,
        bottom_layers=args.bottom_layers, quantiles=args.quantiles,
        quantile_positions=args.quantile_positions, maxima_means=args.maxima_means)
    config.validate()  # before the model loads: a typo costs nothing
    model = load(args)
    if torchrun_env() is not None:
        path = scan_distributed(args.library, model, args.out, config)
        if path is None:
            return 0
    elif args.shard:
        rank, world = _parse_shard(args.shard)
        work = scan_shard(args.library, model, args.out, (rank, world), config=config)
        print(f"shard {rank}/{world} done: {work}. When every shard is done: cnnviz merge "
              f"{Path(args.out).name}.shard-*-of-{world}.work --out {args.out}")
        return 0
    else:
        path = scan(args.library, model, args.out, config=config)
    _print_summary(path)
    return 0


def _print_summary(path: Path) -> None:
    from ..run.reader import RunReader
    from ..run.tables import failures
    from .run_cmds import failure_summary

    with RunReader(path) as r:
        n, failed = r.header.n_images, r.header.n_failed
        timing = scan_timing(r)
    print(f"wrote {path}: {n} images, {failed} unreadable, precision {timing['precision']}")
    for line in timing_lines(timing, n):
        print(line)
    if failed:
        print(failure_summary(failures(path)))
        print(f"every one, with its reason: cnnviz failures {path}")
    if failed == n:
        print(f"note: none of the {n} images could be read (reasons above), so the run holds no "
              "results: is the library the folder you meant?", file=sys.stderr)


def scan_timing(reader) -> dict:
    """The scan's time and what it waited for, as recorded in the run file (0 in older files)."""
    h = reader.header
    kept = sum(reader.layer_meta(n).channels for n in reader.layers if reader.has_maxima(n))
    itemsize = 0 if h.maxima_dtype == "none" else 2 + (2 if h.maxima_dtype == "float16" else 4)  # + position
    return {"precision": reader.precision, "seconds": h.scan_seconds, "wait_data": h.wait_data_seconds,
            "wait_disk": h.wait_disk_seconds, "row_bytes": kept * itemsize, "assemble": h.assemble_seconds}


def timing_lines(t: dict, n: int, share: float = 0.1) -> list[str]:
    """How fast the scan ran, and which limit it met when it waited for decoding or the disk
    for more than ``share`` of its time (the rate it would have needed)."""
    secs = t["seconds"]
    if secs <= 0:
        return []
    lines = [f"scanned at {n / secs:.1f} img/s ({secs:.0f} s), patches cut in {t['assemble']:.0f} s"]
    busy = max(1e-9, secs - t["wait_data"] - t["wait_disk"])  # the network's own time
    if t["wait_data"] > share * secs:
        lines.append(f"decoding was the limit: the network waited {t['wait_data']:.0f} s "
                     f"({t['wait_data'] / secs:.0%}) for images; it could have taken {n / busy:.0f} img/s. "
                     "More --workers (this machine has "
                     f"{_cpus()} CPUs) or faster storage would help")
    if t["wait_disk"] > share * secs:
        need = n / busy * t["row_bytes"] / 1e6
        lines.append(f"the disk was the limit: the scan waited {t['wait_disk']:.0f} s "
                     f"({t['wait_disk'] / secs:.0%}) to write the per-image maxima; the network's pace "
                     f"needed {need:.0f} MB/s. A faster disk, --maxima float16, --maxima-layers or "
                     "--maxima none would help")
    return lines


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge the shard folders of a distributed scan into one run file")
    p.add_argument("shards", nargs="+", metavar="SHARD", help="RUN.h5.shard-R-of-W.work folders")
    p.add_argument("--out", required=True, help="run file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard folders")
    p.set_defaults(func=run_merge)


def run_merge(args) -> int:
    from ..scanner import merge

    path = merge(args.shards, args.out, overwrite=args.overwrite, keep_shards=args.keep_shards)
    _print_summary(path)
    return 0


COMMANDS = [add_scan, add_merge]
