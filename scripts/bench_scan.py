"""Scan throughput against a bare forward pass of the same model, batch and device.

    python scripts/bench_scan.py [--model resnet50] [--images 160] [--batch-size 32]
                                 [--library ../shared/images/imagen] [--device cpu]
                                 [--precision fp32|tf32|amp] [--compile]
    python scripts/bench_scan.py --host-only [--images 4096] [--batch-size 256]

``--host-only`` measures what a GPU scan asks of the CPU, on any machine: the scan's own loop
(reducers, rows handed to the writer thread, checkpoints) with the network replaced by a
stand-in that costs nothing and hands it reduced outputs of the real shapes, and no decoding
(``cnnviz/scanner/standin.py``). It prints ``host work per image`` without per-image maxima (no
disk), then with float32 maxima and the write rate those need.

Prints, measured in one run: bare eager forward images/s in both layouts (NCHW and
channels_last, ``inference_mode``, the library's photos already decoded in memory; the ratio is
taken against the faster), the bare pipeline (the scan's own decoding DataLoader feeding that
forward, nothing kept: the scan minus cnnviz), scan
images/s (decoding, hooks on every default layer, exact top-k and statistics, checkpointing;
the final patch-cutting pass reported separately), their ratio, and the peak memory of scans of
N and 2N images (each in its own process) to show that memory does not grow with the library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnviz.model.precision import precision_scope

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIBRARY = REPO.parent / "shared" / "images" / "imagen"


def decoded_library(model, library_list: Path, limit: int = 1024) -> torch.Tensor:
    """The benchmark library's first ``limit`` images, decoded to uint8 crops in memory (the
    bare forward cycles through them): the bare forward pass runs on the very images the scan
    sees, since the speed of a random-weight network depends on its input (about 30 % slower on
    random noise than on photos here)."""
    from torch.utils.data import DataLoader

    from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate
    from cnnviz.images.library import ImageLibrary

    lib = ImageLibrary.open(library_list)
    lib.relpaths = lib.relpaths[:limit]
    workers = min(8, os.cpu_count() or 1)
    loader = DataLoader(LibraryDataset(lib, model.preprocessing), collate_fn=collate, num_workers=workers,
                        batch_sampler=batch_ranges(len(lib), 64))
    return torch.cat([batch[1] for batch in loader])


def bare_forward(model, crops: torch.Tensor, batch_size: int, device: str, precision: str,
                 channels_last: bool, total: int) -> float:
    """Images/s of the network alone over the decoded crops (normalization included), under
    ``torch.inference_mode`` in the given layout: the baseline a user would write."""
    import copy

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module = copy.deepcopy(model.module).to(device).to(memory_format=fmt)
    ctx = precision_scope(precision, device)  # the scan's precision: TF32 switches and autocast
    with torch.inference_mode(), ctx:
        module(model.preprocessing.normalize(crops[:batch_size].to(device)).contiguous(memory_format=fmt))
        _sync(device)
        batches = [crops[s: s + batch_size] for s in range(0, len(crops), batch_size)]
        done = 0
        t = time.perf_counter()
        while done < total:
            for batch in batches:
                x = model.preprocessing.normalize(batch.to(device))
                module(x.contiguous(memory_format=fmt))
                done += len(batch)
                if done >= total:
                    break
        _sync(device)
    return done / (time.perf_counter() - t)


def bare_compiled(model, crops: torch.Tensor, batch_size: int, device: str, precision: str,
                  total: int) -> tuple[float, float]:
    """Images/s of ``torch.compile`` of the bare network (channels_last), and its compile time."""
    import copy

    module = copy.deepcopy(model.module).to(device).to(memory_format=torch.channels_last)
    compiled = torch.compile(module, dynamic=False)
    ctx = precision_scope(precision, device)  # the scan's precision: TF32 switches and autocast
    batches = [crops[s: s + batch_size] for s in range(0, len(crops) - batch_size + 1, batch_size)]
    with torch.inference_mode(), ctx:
        t = time.perf_counter()
        compiled(model.preprocessing.normalize(batches[0].to(device)).contiguous(memory_format=torch.channels_last))
        _sync(device)
        compile_s = time.perf_counter() - t
        done, t = 0, time.perf_counter()
        while done < total:
            for batch in batches:
                compiled(model.preprocessing.normalize(batch.to(device)).contiguous(memory_format=torch.channels_last))
                done += len(batch)
                if done >= total:
                    break
        _sync(device)
    return done / (time.perf_counter() - t), compile_s


def bare_pipeline(model, library_list: Path, batch_size: int, device: str, precision: str,
                  workers: int | None, compiled: bool = False) -> float:
    """Images/s of the best plain pipeline a user would write without cnnviz: the same decoding
    DataLoader as the scan (same workers), channels_last, ``inference_mode``, nothing kept."""
    import copy

    from torch.utils.data import DataLoader

    from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate
    from cnnviz.images.library import ImageLibrary
    from cnnviz.scanner.config import default_workers

    module = copy.deepcopy(model.module).to(device).to(memory_format=torch.channels_last)
    if compiled:
        module = torch.compile(module, dynamic=False)
    lib = ImageLibrary.open(library_list)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(LibraryDataset(lib, model.preprocessing),
                        batch_sampler=batch_ranges(len(lib), batch_size), collate_fn=collate,
                        num_workers=workers, pin_memory=device.startswith("cuda"),
                        prefetch_factor=4 if workers else None)
    ctx = precision_scope(precision, device)  # the scan's precision: TF32 switches and autocast
    t = time.perf_counter()
    with torch.inference_mode(), ctx:
        for _, crops, _, _, _ in loader:
            x = model.preprocessing.normalize(crops.to(device, non_blocking=True))
            module(x.contiguous(memory_format=torch.channels_last))
        _sync(device)
    return len(lib) / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_throughput(library_list: Path, model, batch_size: int, workers: int | None) -> float:
    """Images/s of decoding alone (the scan's DataLoader, no network)."""
    from torch.utils.data import DataLoader

    from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate
    from cnnviz.images.library import ImageLibrary
    from cnnviz.scanner.config import default_workers

    lib = ImageLibrary.open(library_list)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(LibraryDataset(lib, model.preprocessing),
                        batch_sampler=batch_ranges(len(lib), batch_size), collate_fn=collate,
                        num_workers=workers, prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    n = sum(len(batch[0]) for batch in loader)
    return n / (time.perf_counter() - t)


def library_subset(library: Path, n: int, folder: Path) -> Path:
    """A list file naming the first ``n`` images of the library (repeating it if smaller)."""
    from cnnviz import ImageLibrary

    lib = ImageLibrary.open(library)
    paths = [str(lib.path(i % len(lib))) for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    lst = folder / f"first{n}.txt"
    # one symlink per entry, so a library smaller than n repeats under distinct names
    links = folder / f"links{n}"
    links.mkdir(exist_ok=True)
    rel = []
    for i, p in enumerate(paths):
        link = links / f"{i:06d}{Path(p).suffix}"
        if not link.exists():
            link.symlink_to(p)
        rel.append(str(link))
    lst.write_text("\n".join(rel) + "\n")
    return lst


def scan_in_child(args, library_list: Path, out: Path, bare: bool) -> dict:
    """In a fresh process: a bare forward over the library, the scan, a bare forward again;
    returns timings and the process's peak RSS."""
    code = f"""
import json, resource, sys, torch, h5py
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_scan import bare_forward
from cnnviz import load_model, scan
from bench_scan import decoded_library
m = load_model({args.model!r}, None)
crops = decoded_library(m, {str(library_list)!r}) if {bare} else None
def bare_pair():
    if not {bare}:
        return [0.0, 0.0]
    return [bare_forward(m, crops, {args.batch_size}, {args.device!r}, {args.precision!r}, cl, {args.images})
            for cl in (False, True)]
bare1 = bare_pair()
scan({str(library_list)!r}, m, {str(out)!r}, top_k={args.top_k}, batch_size={args.batch_size},
     workers={args.workers}, device={args.device!r}, precision={args.precision!r}, progress=False,
     overwrite=True, checkpoint_images={args.checkpoint_images})
bare2 = bare_pair()
from bench_scan import bare_pipeline
pipeline = bare_pipeline(m, {str(library_list)!r}, {args.batch_size}, {args.device!r}, {args.precision!r},
                         {args.workers})
compiled = {{}}
if {args.compile}:
    import time
    from bench_scan import bare_compiled
    compiled["bare"], compiled["bare_compile_s"] = bare_compiled(m, crops, {args.batch_size}, {args.device!r},
                                                                 {args.precision!r}, {args.images})
    t = time.perf_counter()
    cout = {str(out)!r} + ".compiled.h5"
    scan({str(library_list)!r}, m, cout, top_k={args.top_k}, batch_size={args.batch_size},
         workers={args.workers}, device={args.device!r}, precision={args.precision!r}, progress=False,
         overwrite=True, checkpoint_images={args.checkpoint_images}, compile=True)
    with h5py.File(cout, "r") as f:
        compiled["scan_seconds"] = float(f.attrs["scan_seconds"])
        compiled["total_s"] = time.perf_counter() - t
        compiled["assemble_seconds"] = float(f.attrs["assemble_seconds"])
with h5py.File({str(out)!r}, "r") as f:
    print(json.dumps({{"scan_seconds": float(f.attrs["scan_seconds"]),
                      "assemble_seconds": float(f.attrs["assemble_seconds"]),
                      "n": int(f.attrs["n_images"]), "layers": len(json.loads(f.attrs["layers"])),
                      "bare": [bare1, bare2], "compiled": compiled, "pipeline": pipeline,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


#: What each option of the views adds to a scan, against a scan keeping none of them: the
#: name, then the scan options (``layers="signed"``: each block's last batch norm, the signed
#: map before the block's ReLU (ResNet50's ``bn3``), where a bottom-k means something; measured
#: against the same layers).
OPTIONS = [
    ("none of the views", dict(rank_by="max", quantiles=False)),
    ("--rank-by max,mean", dict(rank_by="max,mean", quantiles=False)),
    ("quantiles (100 positions)", dict(rank_by="max", quantiles=True, quantile_positions=100)),
    ("quantiles (every position)", dict(rank_by="max", quantiles=True, quantile_positions=0)),
    ("--maxima-means", dict(rank_by="max", quantiles=False, maxima_means=True)),
    ("--rank-by max,relevance", dict(rank_by="max,relevance", quantiles=False)),
    ("the defaults (max,mean + quantiles)", dict()),
    ("signed layers, none of the views", dict(rank_by="max", quantiles=False, layers="signed")),
    ("signed layers, --bottom-k K", dict(rank_by="max", quantiles=False, layers="signed", bottom_k="K")),
]


ROUNDS = 3


def option_costs(args, library_list: Path, folder: Path) -> None:
    """What each entry of :data:`OPTIONS` costs, in one fresh process: each scan :data:`ROUNDS`
    times in alternating order, its wall time and the CPU time of the scanning process (the
    fastest of the rounds counts: on a shared machine the wall time of one scan varies 2x from
    one minute to the next, its CPU time much less), the file's size; then the reducers' own
    time per batch on the same maps (:func:`reducer_costs`), the figure least disturbed by
    other processes."""
    code = f"""
import json, os, resource, sys, time, h5py, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_scan import OPTIONS, ROUNDS, reducer_costs
from cnnviz import load_model, scan
from cnnviz.model.taps import resolve_layers
m = load_model({args.model!r}, None)
blocks = [t.name for t in resolve_layers(m, None)]
signed = [[b + "." + n for n, s in m.module.get_submodule(b).named_modules()
           if isinstance(s, torch.nn.BatchNorm2d)][-1] for b in blocks]
out = {{"seconds": {{}}, "cpu": {{}}, "bytes": {{}}}}
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
for round_ in range(ROUNDS):
    for name, opts in (OPTIONS if round_ % 2 == 0 else OPTIONS[::-1]):
        opts = dict(opts)
        if opts.get("layers") == "signed":
            opts["layers"] = signed
        if opts.get("bottom_k") == "K":
            opts["bottom_k"] = {args.top_k}
        path = {str(folder)!r} + "/opt.h5"
        before = cpu()
        scan({str(library_list)!r}, m, path, top_k={args.top_k}, batch_size={args.batch_size},
             workers={args.workers}, device={args.device!r}, precision={args.precision!r}, progress=False,
             overwrite=True, checkpoint_seconds=3600, **opts)
        with h5py.File(path, "r") as f:
            secs, used = float(f.attrs["scan_seconds"]), cpu() - before  # (the run file: another process)
        out["seconds"][name] = min(secs, out["seconds"].get(name, secs))
        out["cpu"][name] = min(used, out["cpu"].get(name, used))
        out["bytes"][name] = os.path.getsize(path)
out["reducers"] = reducer_costs(m, blocks, signed, {args.batch_size}, {args.top_k}, {args.device!r})
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"\nthe cost of each option ({args.images} images, k={args.top_k}; the fastest of {ROUNDS} "
          "scans each; CPU: the scanning process's, not the writer process that cuts the patches):")
    for name, _ in OPTIONS:
        base = "signed layers, none of the views" if name.startswith("signed") else "none of the views"
        s, c, b = r["seconds"][name], r["cpu"][name], r["bytes"][name]
        s0, c0, b0 = r["seconds"][base], r["cpu"][base], r["bytes"][base]
        print(f"  {name:36s} scan {s:6.1f} s ({s / s0 - 1:+6.1%}), CPU {c:6.1f} s ({c / c0 - 1:+6.1%}), "
              f"file {b / 1e6:7.1f} MB ({(b - b0) / 1e6:+7.1f} MB)")
    t = r["reducers"]
    fwd = t["forward"]
    print(f"  per batch of {args.batch_size} on the same maps (the best of several): forward to the last tap "
          f"{fwd * 1e3:.0f} ms; what each view adds to the hooks and reducers:")
    for key, what in REDUCER_PARTS:
        print(f"    {what:52s} {t[key] * 1e3:7.1f} ms  ({t[key] / fwd:6.1%} of the forward)")


#: The parts :func:`reducer_costs` times, and what they are.
REDUCER_PARTS = [
    ("max", "max, position, mean (every scan; the baseline)"),
    ("topk", "top-k by max (every scan)"),
    ("topk_mean", "--rank-by max,mean: the top-k by mean"),
    ("hist100", "quantiles: the histogram, 100 positions (default)"),
    ("hist256", "quantiles: the histogram, 256 positions"),
    ("hist0", "quantiles: the histogram, every position"),
    ("relevance", "--rank-by relevance: the whole pass, to the logits and back"),
    ("min", "--bottom-k (signed layers): the minimum"),
    ("bottom", "--bottom-k (signed layers): its top-k"),
]


def reducer_costs(model, layers: list[str], signed: list[str], batch_size: int, k: int, device: str,
                  batches: int = 6) -> dict:
    """Seconds per batch, each the best over ``batches`` batches of noise streamed through, of the
    forward pass to the last tap and of each reduction and top-k update a view adds (the top-k
    warm: after the first batches a CPU top-k sees few candidates)."""
    import copy

    from cnnviz.model.copying import without_inplace
    from cnnviz.model.relevance import relevance_pass
    from cnnviz.model.taps import capture
    from cnnviz.scanner.reducers import TopK, position_histogram, spatial_max, spatial_min

    module = copy.deepcopy(model.module).to(device).to(memory_format=torch.channels_last)
    plain = without_inplace(module)
    best: dict[str, float] = {}
    tops: dict[tuple[str, str], TopK] = {}

    def timed(key: str, fn, maps) -> list:
        t = time.perf_counter()
        out = [fn(name, a) for name, a in maps.items()]
        _sync(device)
        best[key] = min(best.get(key, float("inf")), time.perf_counter() - t)
        return out

    def update(kind: str, names: list[str], values, index, ids):
        def fn(name, a):
            i = names.index(name)
            top = tops.setdefault((kind, name), TopK(values[i].shape[1], k, device))
            top.update(values[i], index[i], ids)
        return fn

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), capture(module, layers + signed, stop_early=True) as cap:
        for b in range(batches):
            x = torch.randn(batch_size, 3, *model.input_size, generator=gen).to(device)
            ids = torch.arange(b * batch_size, (b + 1) * batch_size, device=device)
            t = time.perf_counter()
            cap.forward(x.contiguous(memory_format=torch.channels_last))
            _sync(device)
            best["forward"] = min(best.get("forward", float("inf")), time.perf_counter() - t)
            maps = {n: cap.outputs[n] for n in layers}
            reduced = timed("max", lambda _, a: spatial_max(a), maps)
            vals, idx, means = zip(*reduced, strict=True)
            timed("topk", update("max", layers, vals, idx, ids), maps)
            timed("topk_mean", update("mean", layers, means, idx, ids), maps)
            timed("hist100", lambda _, a, ids=ids: position_histogram(a, ids, 100), maps)
            timed("hist256", lambda _, a, ids=ids: position_histogram(a, ids, 256), maps)
            timed("hist0", lambda _, a, ids=ids: position_histogram(a, ids, 0), maps)
            t = time.perf_counter()
            relevance_pass(plain, x.contiguous(memory_format=torch.channels_last), layers)
            _sync(device)
            best["relevance"] = min(best.get("relevance", float("inf")), time.perf_counter() - t)
            maps = {n: cap.outputs[n] for n in signed}
            lows = timed("min", lambda _, a: spatial_min(a), maps)
            timed("bottom", update("min", signed, [-v for v, _ in lows], [i for _, i in lows], ids), maps)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--library", type=Path, default=DEFAULT_LIBRARY)
    p.add_argument("--images", type=int, default=160, help="N (the memory check also scans 2N)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "tf32", "amp"], default="fp32")
    p.add_argument("--amp", action="store_true", help="the same as --precision amp")
    p.add_argument("--host-only", action="store_true",
                   help="the scan's host work per image, the network and decoding replaced by stand-ins "
                        "that cost nothing (no GPU or library needed)")
    p.add_argument("--checkpoint-images", type=int, default=None,
                   help="checkpoint every this many images (default: the scan's own rule, or 64 "
                        "when the memory check runs, so that N and 2N images both checkpoint and "
                        "their peak memory compares)")
    p.add_argument("--skip-memory", action="store_true", help="skip the 2N-image scan")
    p.add_argument("--skip-costs", action="store_true",
                   help="skip the cost of each option of the views (rankings, quantiles, means, bottom-k)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (run files, report)")
    p.add_argument("--compile", action="store_true",
                   help="also bare compiled and scan --compile (torch.compile; adds the compile times)")
    args = p.parse_args()
    if args.amp:
        args.precision = "amp"
    args.amp = args.precision == "amp"
    if args.host_only:
        host_only(args)
        return
    if args.checkpoint_images is None and not args.skip_memory:
        args.checkpoint_images = 64
    if not args.library.exists():
        sys.exit(f"--library {args.library} does not exist (the default needs ../shared)")

    tmp = Path(tempfile.mkdtemp(prefix="bench_scan_"))
    try:
        _measure(args, tmp)
    finally:  # run files, reports and links: gigabytes per run
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _measure(args, tmp: Path) -> None:
    lst = library_subset(args.library, args.images, tmp)
    print(f"model {args.model}, batch {args.batch_size}, device {args.device}, precision {args.precision}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    run = scan_in_child(args, lst, tmp / "run.h5", bare=True)
    (nchw1, nhwc1), (nchw2, nhwc2) = run["bare"]
    nchw, nhwc = (nchw1 + nchw2) / 2, (nhwc1 + nhwc2) / 2
    bare = max(nchw, nhwc)
    scan_ips = run["n"] / run["scan_seconds"]
    e2e_ips = run["n"] / (run["scan_seconds"] + run["assemble_seconds"])
    print(f"bare eager, NCHW    : {nchw:8.2f} img/s  (before/after the scan: {nchw1:.2f}, {nchw2:.2f})")
    print(f"bare eager, NHWC    : {nhwc:8.2f} img/s  (before/after the scan: {nhwc1:.2f}, {nhwc2:.2f})")
    print(f"bare pipeline       : {run['pipeline']:8.2f} img/s  (same decoding DataLoader, NHWC, "
          "inference_mode: the scan minus cnnviz)")
    print(f"scan ({run['layers']} layers, k={args.top_k}): {scan_ips:6.2f} img/s over {run['n']} images")
    print(f"scan / bare pipeline: {scan_ips / run['pipeline']:8.3f}")
    print(f"scan / best bare    : {scan_ips / bare:8.3f}  (against the best single bare run: "
          f"{scan_ips / max(nchw1, nchw2, nhwc1, nhwc2):.3f})")
    if run["compiled"]:
        c = run["compiled"]
        cscan = run["n"] / c["scan_seconds"]
        print(f"bare compiled, NHWC : {c['bare']:8.2f} img/s  (compiling took {c['bare_compile_s']:.0f} s)")
        print(f"scan --compile      : {cscan:8.2f} img/s  (compiling took about "
              f"{c['total_s'] - c['scan_seconds'] - c['assemble_seconds']:.0f} s)")
        print(f"scan --compile / best bare eager: {cscan / bare:6.3f};  "
              f"/ bare compiled: {cscan / c['bare']:.3f}")
    print(f"patch cutting       : {run['assemble_seconds']:8.2f} s once at the end, independent of "
          f"the library size (end-to-end here {e2e_ips:.2f} img/s)")
    print(f"peak RSS, {run['n']:5d} images: {run['peak_rss_mb']:8.0f} MB")
    from cnnviz import load_model

    dec = decode_throughput(lst, load_model(args.model, None), args.batch_size, args.workers)
    print(f"decode only         : {dec:8.2f} img/s with the same workers "
          f"({'decoding' if dec < bare else 'the network'} is the limit here)")
    if not args.skip_memory:
        lst2 = library_subset(args.library, 2 * args.images, tmp)
        run2 = scan_in_child(args, lst2, tmp / "run2.h5", bare=False)
        print(f"peak RSS, {run2['n']:5d} images: {run2['peak_rss_mb']:8.0f} MB "
              f"(scan {run2['n'] / run2['scan_seconds']:.2f} img/s)")
    if not args.skip_costs:
        option_costs(args, lst, tmp)


def writer_rate(taps, images: int, folder: Path, batch: int = 256) -> float:
    """MB/s at which the writer thread's work (appending float32 rows with their positions, the
    CRC, the fsync of a checkpoint) goes, on rows made in advance."""
    import numpy as np

    from cnnviz.scanner.state import ScanState
    from cnnviz.scanner.workdir import SegmentWriter

    state = ScanState(taps, 1, "cpu", "float32")
    columns = state.column_dtypes()
    rng = np.random.default_rng(0)
    rows = {k: (rng.random((batch, *shape)) * 100).astype(dt) for k, (dt, shape) in columns.items()}
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seg = SegmentWriter(folder, 0, columns)
    for b in range(images // batch):
        seg.append(rows, (b + 1) * batch)
    seg.seal()
    nbytes = sum(v.nbytes for v in rows.values()) * (images // batch)
    return nbytes / (time.perf_counter() - started) / 1e6


def host_only(args) -> None:
    """``host work per image`` of the scan's loop with stand-ins for the network and decoding."""
    from cnnviz import load_model
    from cnnviz.model.taps import resolve_layers
    from cnnviz.scanner.standin import host_only_scan

    images = args.images if args.images != 160 else 4096
    batch = args.batch_size if args.batch_size != 32 else 256
    taps = resolve_layers(load_model(args.model, None), None)
    print(f"host only: {args.model}, {len(taps)} layers, {sum(t.channels for t in taps)} channels, "
          f"k={args.top_k}, batch {batch}, {images} stand-in images, torch threads {torch.get_num_threads()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_host_"))
    try:
        for dtype in ("none", "float32"):
            r = host_only_scan(taps, images, tmp / dtype, batch_size=batch, top_k=args.top_k,
                               maxima_dtype=dtype)
            us = r["seconds"] / images * 1e6
            reduce_us = r["reduce_seconds"] / images * 1e6
            if dtype == "none":
                print(f"host work per image: {us:.1f} µs  (maxima not kept; a GPU network at 11,000 img/s "
                      "leaves 90 µs)")
                print(f"  of which the reducers' arithmetic on this CPU: {reduce_us:.1f} µs (on a GPU it "
                      f"runs there, launched by the host); the rest of the loop: {us - reduce_us:.1f} µs")
                continue
            mb = r["row_bytes"] * images / r["seconds"] / 1e6
            print(f"host work per image with float32 maxima: {us:.1f} µs (reducers {reduce_us:.1f}); "
                  f"{r['row_bytes'] / 1000:.0f} KB of maxima per image, written at {mb:.0f} MB/s by the "
                  f"writer thread (the loop waited {r['wait_disk_seconds']:.2f} s for it); 11,000 img/s "
                  f"would need {r['row_bytes'] * 11000 / 1e9:.2f} GB/s")
        rate = writer_rate(taps, min(images, 2048), tmp / "writer")
        print(f"the writer alone (rows appended, CRC-32, fsync at the end): {rate:.0f} MB/s on this disk")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
