"""Scan throughput against a bare forward pass of the same model, batch and device.

    python scripts/bench_scan.py [--model resnet50] [--images 160] [--batch-size 32]
                                 [--library ../shared/images/imagen] [--device cpu] [--amp]

Prints, measured in one run: bare forward images/s (a batch of the library's photos already
decoded in memory), scan
images/s (decoding, hooks on every default layer, exact top-k and statistics, checkpointing;
the final patch-cutting pass reported separately), their ratio, and the peak memory of scans of
N and 2N images (each in its own process) to show that memory does not grow with the library.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIBRARY = REPO.parent / "shared" / "images" / "imagen"


def decoded_library(model, library_list: Path) -> torch.Tensor:
    """Every image of the (small) benchmark library, decoded to uint8 crops in memory: the bare
    forward pass runs on the very images the scan sees, since the speed of a random-weight
    network depends on its input (about 30 % slower on random noise than on photos here)."""
    from cnnviz.images.dataset import LibraryDataset, collate
    from cnnviz.images.library import ImageLibrary

    ds = LibraryDataset(ImageLibrary.open(library_list), model.preprocessing)
    return collate([ds[i] for i in range(len(ds))])[1]


def bare_forward(model, crops: torch.Tensor, batch_size: int, device: str, amp: bool) -> float:
    """Images/s of the network alone over the decoded crops (normalization included)."""
    module = model.module.to(device)
    if device.startswith("cuda"):
        module = module.to(memory_format=torch.channels_last)
    ctx = (torch.autocast(device.split(":")[0], dtype=torch.float16 if device.startswith("cuda")
                          else torch.bfloat16) if amp else torch.autocast("cpu", enabled=False))
    fmt = torch.channels_last if device.startswith("cuda") else torch.contiguous_format
    with torch.no_grad(), ctx:
        module(model.preprocessing.normalize(crops[:batch_size].to(device)).contiguous(memory_format=fmt))
        _sync(device)
        t = time.perf_counter()
        for start in range(0, len(crops), batch_size):
            x = model.preprocessing.normalize(crops[start: start + batch_size].to(device))
            module(x.contiguous(memory_format=fmt))
        _sync(device)
    return len(crops) / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_throughput(library_list: Path, model, batch_size: int, workers: int | None) -> float:
    """Images/s of decoding alone (the scan's DataLoader, no network)."""
    from torch.utils.data import DataLoader

    from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate
    from cnnviz.images.library import ImageLibrary
    from cnnviz.scanner.config import _default_workers

    lib = ImageLibrary.open(library_list)
    workers = _default_workers() if workers is None else workers
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
bare1 = bare_forward(m, crops, {args.batch_size}, {args.device!r}, {args.amp}) if {bare} else 0.0
scan({str(library_list)!r}, m, {str(out)!r}, top_k={args.top_k}, batch_size={args.batch_size},
     workers={args.workers}, device={args.device!r}, amp={args.amp}, progress=False, overwrite=True,
     checkpoint_images={args.checkpoint_images})
bare2 = bare_forward(m, crops, {args.batch_size}, {args.device!r}, {args.amp}) if {bare} else 0.0
with h5py.File({str(out)!r}, "r") as f:
    print(json.dumps({{"scan_seconds": float(f.attrs["scan_seconds"]),
                      "assemble_seconds": float(f.attrs["assemble_seconds"]),
                      "n": int(f.attrs["n_images"]), "layers": len(json.loads(f.attrs["layers"])),
                      "bare": [bare1, bare2],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--library", type=Path, default=DEFAULT_LIBRARY)
    p.add_argument("--images", type=int, default=160, help="N (the memory check also scans 2N)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--checkpoint-images", type=int, default=64,
                   help="checkpoint every this many images (default 64, so that N and 2N "
                        "images both checkpoint and their peak memory compares)")
    p.add_argument("--skip-memory", action="store_true", help="skip the 2N-image scan")
    args = p.parse_args()
    if not args.library.exists():
        sys.exit(f"--library {args.library} does not exist (the default needs ../shared)")

    tmp = Path(tempfile.mkdtemp(prefix="bench_scan_"))
    lst = library_subset(args.library, args.images, tmp)
    print(f"model {args.model}, batch {args.batch_size}, device {args.device}, amp {args.amp}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    run = scan_in_child(args, lst, tmp / "run.h5", bare=True)
    bare = sum(run["bare"]) / 2
    scan_ips = run["n"] / run["scan_seconds"]
    e2e_ips = run["n"] / (run["scan_seconds"] + run["assemble_seconds"])
    print(f"bare forward        : {bare:8.2f} img/s  (mean of the runs before/after the scan: "
          f"{run['bare'][0]:.2f}, {run['bare'][1]:.2f})")
    print(f"scan ({run['layers']} layers, k={args.top_k}): {scan_ips:6.2f} img/s over {run['n']} images")
    print(f"scan / bare ratio   : {scan_ips / bare:8.3f}  (against the faster bare run: "
          f"{scan_ips / max(run['bare']):.3f})")
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


if __name__ == "__main__":
    main()
