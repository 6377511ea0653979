"""The dataset scan: stream an image library through a network and keep, per channel, what
fires it most.

For every image and tapped channel the scan keeps the spatial maximum and its position; per
channel an exact top-k over images and summary statistics. It checkpoints to a work folder
(:mod:`cnnviz.checkpoint`) so that ``resume=True`` continues after a crash with identical
results, and writes one HDF5 run file at the end (:mod:`cnnviz.runfile`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import __version__
from .checkpoint import WorkDir
from .library import ImageLibrary, LibraryDataset, batch_ranges, collate
from .reducers import ChannelStats, TopK, spatial_max
from .runfile import assemble_run, position_dtype
from .taps import LayerTap, resolve_layers

__all__ = ["scan", "ScanError", "ScanInterrupted"]


class ScanError(RuntimeError):
    """A scan cannot start (existing output, mismatching resume...)."""


class ScanInterrupted(RuntimeError):
    """Ctrl-C during a scan; everything up to the last batch is checkpointed."""


class _StopForward(Exception):
    """Raised by the last tap's hook: the rest of the network is not needed."""


@dataclass
class _LayerState:
    """A layer's reducers, and its per-image rows buffered until the next checkpoint."""

    tap: LayerTap
    topk: TopK
    stats: ChannelStats
    maxima: list[np.ndarray] = field(default_factory=list)
    argmax: list[np.ndarray] = field(default_factory=list)

    def add(self, reduced, ok: np.ndarray, ok_ids: torch.Tensor, maxima_dtype: str) -> None:
        """One batch: ``reduced`` is ``spatial_max`` of the readable images (``None`` if none
        was); unreadable images get NaN rows."""
        n, c = len(ok), self.tap.channels
        maxima = np.full((n, c), np.nan, dtype=np.float32)
        pos = np.zeros((n, c), dtype=position_dtype(self.tap))
        if reduced is not None:
            values, index, mean = reduced
            self.topk.update(values, index, ok_ids.to(values.device))
            v = values.cpu().numpy()
            self.stats.update(v, mean.cpu().numpy())
            maxima[ok] = v
            pos[ok] = index.cpu().numpy()
        self.maxima.append(maxima.astype(maxima_dtype))
        self.argmax.append(pos)


def _default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def scan(
    library: str | Path | ImageLibrary,
    model,
    out: str | Path,
    layers: Sequence[str] | str | None = None,
    top_k: int = 16,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    maxima_dtype: str = "float32",
    patch_size: int = 64,
    checkpoint_seconds: float = 60.0,
    checkpoint_images: int | None = None,
    amp: bool = False,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    finalize: bool = True,
) -> Path:
    """Scan a library and write the run file ``out``.

    Args:
        library: a directory, a list file, or an :class:`~cnnviz.library.ImageLibrary`.
        model: a :class:`~cnnviz.models.LoadedModel`.
        out: the HDF5 run file to write.
        layers: tap names (list or comma-separated); default: the model's block outputs.
        top_k: images kept per channel.
        batch_size: images per forward pass.
        workers: decoding processes (default: CPU count - 1, at most 8; 0 decodes inline).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        resume: continue from ``out``'s work folder after an interruption.
        overwrite: replace an existing ``out`` / discard an existing work folder.
        maxima_dtype: dtype of the stored images x channels maxima (``float32`` or ``float16``).
        patch_size: largest side of a stored patch; larger receptive fields are downsampled.
        checkpoint_seconds: checkpoint at most this often (and at the end).
        checkpoint_images: also checkpoint after this many images (default: when the buffered
            per-image maxima reach 64 MB, so memory does not depend on the library size).
        amp: run the forward pass in float16 (CUDA) / bfloat16 (CPU) autocast; maxima and top-k
            are still computed in float32 from the activations the network produced.
        progress: show a tqdm progress bar.
        shard: ``(rank, world_size)``: scan only this rank's images (distributed scans).
        finalize: write ``out`` at the end (``False`` leaves only the work folder; used by
            distributed scans, which merge shards).

    Returns:
        The path of the run file (or of the work folder when ``finalize`` is False).

    Example:
        >>> from cnnviz import load_model, scan                      # doctest: +SKIP
        >>> scan("photos/", load_model("resnet50"), "run.h5")        # doctest: +SKIP
    """
    out = Path(out)
    lib = library if isinstance(library, ImageLibrary) else ImageLibrary.open(library)
    taps = resolve_layers(model, layers)
    if not taps:
        raise ScanError("no layers to scan: pass --layers (see `cnnviz layers --model ...`)")
    if maxima_dtype not in ("float32", "float16"):
        raise ScanError(f"--maxima-dtype {maxima_dtype!r}: choose float32 or float16")
    if top_k < 1 or batch_size < 1:
        raise ScanError("--top-k and --batch-size must be at least 1")
    rank, world = shard
    if not 0 <= rank < world:
        raise ScanError(f"--shard {rank}/{world}: the rank must be in 0..{world - 1}")
    work = WorkDir(work_path(out, rank, world))
    meta = {
        "format": "cnnviz-scan-work", "cnnviz_version": __version__, "model": model.name,
        "weights_origin": model.weights_origin, "preprocessing": model.preprocessing.to_dict(),
        "layers": [t.name for t in taps], "top_k": top_k, "batch_size": batch_size,
        "library_source": str(Path(lib.source).resolve()), "library_root": str(Path(lib.root).resolve()),
        "library_fingerprint": lib.fingerprint(), "n_images": len(lib), "maxima_dtype": maxima_dtype,
        "patch_size": patch_size, "shard": [rank, world], "amp": bool(amp),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as read back from meta.json
    state = _prepare_output(out, work, meta, resume, overwrite, finalize)
    device = torch.device(device)
    module = model.module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    layer_states = {t.name: _LayerState(t, TopK(t.channels, top_k, device), ChannelStats.zeros(t.channels))
                    for t in taps}
    failures: list[tuple[int, str]] = []
    next_batch = 0
    elapsed_before = 0.0
    if state is not None:
        next_batch = int(state["next_batch"])
        elapsed_before = float(state["elapsed_seconds"])
        failures = list(zip(state["failure_ids"].tolist(), state["failure_reasons"].tolist(), strict=True))
        for i, ls in enumerate(layer_states.values()):
            ls.topk.load({k: state[f"l{i}_{k}"] for k in ("values", "ids", "index")})
            ls.stats = ChannelStats.from_state(state, f"l{i}_stat_")

    # a segment written just before a crash, without the state that counts it, is redone
    work.segments(upto=next_batch * batch_size)
    all_batches = batch_ranges(len(lib), batch_size)
    my_batches = [(b, ids) for b, ids in enumerate(all_batches) if b % world == rank]
    todo = [(b, ids) for b, ids in my_batches if b >= next_batch]
    done_images = sum(len(ids) for b, ids in my_batches if b < next_batch)
    total_images = sum(len(ids) for _, ids in my_batches)

    if checkpoint_images is None:
        bytes_per_image = sum(t.channels for t in taps) * (np.dtype(maxima_dtype).itemsize + 4)
        checkpoint_images = max(batch_size, (64 << 20) // bytes_per_image)
    workers = _default_workers() if workers is None else workers
    loader = DataLoader(
        LibraryDataset(lib, model.preprocessing), batch_sampler=[ids for _, ids in todo],
        collate_fn=collate, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    seg_ids: list[np.ndarray] = []
    seg_geoms: list[np.ndarray] = []
    last_ckpt = session_start = time.monotonic()
    since_ckpt = 0

    def checkpoint(batch_index_done: int) -> None:
        nonlocal seg_ids, seg_geoms, last_ckpt, since_ckpt
        if seg_ids:
            ids_arr = np.concatenate(seg_ids)
            arrays = {"ids": ids_arr, "geometry": np.concatenate(seg_geoms)}
            for i, ls in enumerate(layer_states.values()):
                arrays[f"l{i}_max"] = np.concatenate(ls.maxima)
                arrays[f"l{i}_pos"] = np.concatenate(ls.argmax)
                ls.maxima.clear()
                ls.argmax.clear()
            work.save_segment(int(ids_arr[0]), int(ids_arr[-1]) + 1, **arrays)
        st = {"next_batch": np.int64(batch_index_done + 1),
              "elapsed_seconds": np.float64(elapsed_before + time.monotonic() - session_start),
              "failure_ids": np.array([f[0] for f in failures], dtype=np.int64),
              "failure_reasons": np.array([f[1] for f in failures], dtype=str)}
        for i, ls in enumerate(layer_states.values()):
            for k, v in ls.topk.state().items():
                st[f"l{i}_{k}"] = v
            st.update(ls.stats.state(f"l{i}_stat_"))
        work.save_state(**st)
        seg_ids, seg_geoms = [], []
        last_ckpt = time.monotonic()
        since_ckpt = 0

    names = list(layer_states)
    captured: dict[str, tuple] = {}

    def make_hook(name):
        def hook(mod, inputs, output):
            captured[name] = spatial_max(output.detach())
            if len(captured) == len(names):
                raise _StopForward
        return hook

    handles = [module.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    bar = _progress_bar(progress, total_images, done_images, out)
    last_b = next_batch - 1
    autocast = _autocast(device, amp)
    interrupt = _InterruptFlag()
    interrupt.install()
    try:
        for (b, _), (ids, crops, geoms, errors) in zip(todo, loader, strict=True):
            ok = np.array([e == "" for e in errors])
            for i, e in zip(ids.tolist(), errors, strict=True):
                if e:
                    failures.append((i, e))
            n = len(errors)
            ok_ids = ids[torch.from_numpy(ok)]
            results = {}
            if ok.any():
                # copy the whole (pinned) batch asynchronously, then drop unreadable images on
                # the device: indexing first would make a pageable copy and a blocking transfer
                batch = crops.to(device, non_blocking=True)
                if not ok.all():
                    batch = batch[torch.from_numpy(ok).to(device)]
                x = model.preprocessing.normalize(batch)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                captured.clear()
                with torch.no_grad(), autocast:
                    try:
                        module(x)
                    except _StopForward:
                        pass
                results = captured
            for name, ls in layer_states.items():
                ls.add(results.get(name), ok, ok_ids, maxima_dtype)
            seg_ids.append(ids.numpy())
            seg_geoms.append(geoms.numpy())
            since_ckpt += n
            last_b = b
            bar.update(n)
            if any(errors):
                bar.set_postfix(unreadable=len(failures))
            if time.monotonic() - last_ckpt >= checkpoint_seconds or since_ckpt >= checkpoint_images:
                checkpoint(b)
            if interrupt.requested:
                checkpoint(b)
                raise ScanInterrupted(
                    f"scan interrupted after {bar.n} of {total_images} images; checkpoint saved "
                    f"in {work.path}. Continue with the same command plus --resume."
                )
    except KeyboardInterrupt:
        # a second Ctrl-C, or one while waiting for data: keep the last checkpoint as it is
        raise ScanInterrupted(
            f"scan stopped; the last checkpoint in {work.path} is kept. Continue with the "
            "same command plus --resume."
        ) from None
    finally:
        interrupt.restore()
        bar.close()
        for h in handles:
            h.remove()
    checkpoint(last_b if todo else next_batch - 1)
    if not finalize:
        return work.path
    try:
        return assemble_run([work], out, lib, model)
    except KeyboardInterrupt:
        out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise ScanInterrupted(
            f"interrupted while writing {out}; every image is scanned and checkpointed in "
            f"{work.path}. Rerun the same command with --resume to write the run file."
        ) from None


def work_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """The checkpoint folder of a scan (``RUN.h5.work``) or of one shard of a distributed scan
    (``RUN.h5.shard-R-of-W.work``)."""
    out = Path(out)
    suffix = ".work" if world == 1 else f".shard-{rank}-of-{world}.work"
    return out.with_name(out.name + suffix)


class _InterruptFlag:
    """Ctrl-C during a scan: the first one is noted and honoured after the current batch (so
    the checkpoint never holds half a batch); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this batch and saving a checkpoint (Ctrl-C again to stop "
              "now)", file=sys.stderr)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _prepare_output(out: Path, work: WorkDir, meta: dict, resume: bool, overwrite: bool,
                    finalize: bool):
    """Check the output and the work folder; returns the checkpoint to resume from, if any."""
    if out.exists() and finalize:
        if not overwrite:
            raise ScanError(f"--out {out} exists; pass --overwrite to replace it, or choose "
                            "another file (a finished run is never overwritten silently)")
    if work.exists() and not overwrite:
        if not resume:
            raise ScanError(
                f"{work.path} holds an interrupted scan of {out.name}; pass --resume to continue "
                "it, or --overwrite to start again from scratch"
            )
        old = work.read_meta()
        keys = [k for k in meta if k not in ("started", "cnnviz_version") and old.get(k) != meta[k]]
        if keys:
            diff = "; ".join(f"{k}: was {old.get(k)!r}, now {meta[k]!r}" for k in keys)
            raise ScanError(f"--resume: this is not the same scan as the one in {work.path} ({diff})")
        return work.load_state()
    if resume and not work.exists():
        print(f"note: --resume given but {work.path} does not exist; starting a new scan",
              file=sys.stderr)
    parent = out.parent
    if not parent.exists():
        raise ScanError(f"--out {out}: folder {parent} does not exist")
    work.create(meta)
    return None


def _progress_bar(enabled: bool, total: int, initial: int, out: Path):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=f"scan {out.name}",
                disable=not enabled, dynamic_ncols=True, smoothing=0.05)


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)
