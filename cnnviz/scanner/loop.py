"""The dataset scan: stream an image library through a network and keep, per channel, what
fires it most.

For every image and tapped channel the scan keeps the spatial maximum and its position; per
channel an exact top-k over images by maximum (and by mean, and a bottom-k by minimum, when asked
for), summary statistics and a histogram over positions (:mod:`.state`, :mod:`.reducers`).
It checkpoints into a work folder (:mod:`.workdir`) so that ``resume=True`` continues after a
crash with identical results, and writes one HDF5 run file at the end (:mod:`.assemble`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import CnnvizWarning, ScanError, ScanInterrupted, UsageError, user_level
from ..images.dataset import LibraryDataset, batch_ranges, collate
from ..images.library import ImageLibrary
from ..model.copying import inference_copy
from ..model.loading import weights_digest
from ..model.precision import precision_scope
from ..model.taps import LayerTap, capture, forward_crops, require_fields, resolve_layers
from ..run.lock import OutputLock
from ..types import LayerSpec
from .assemble import assemble_run
from .checkpoint import CheckpointWriter
from .config import ScanConfig, check_folder, check_output
from .reducers import TapReducer
from .relevance import TARGET_RULE
from .space import check_space, estimate_bytes
from .state import ScanState, tap_record
from .workdir import WORK_FORMAT, WorkDir, work_path

__all__ = ["scan", "scan_shard", "ScanConfig", "reduce_images"]


def scan(library: str | Path | ImageLibrary, model, out: str | Path, layers: LayerSpec = None, *,
         config: ScanConfig | None = None, **options) -> Path:
    """Scan a library and write the run file ``out``.

    Args:
        library: a directory, a list file, or an :class:`~cnnviz.images.ImageLibrary`.
        model: a :class:`~cnnviz.model.LoadedModel`.
        out: the HDF5 run file to write (never overwritten unless ``overwrite=True``).
        layers: tap names (list or comma-separated); default: the model's block outputs.
        config: a :class:`ScanConfig`; keyword ``options`` (any of its fields: ``top_k``,
            ``batch_size``, ``device``, ``resume``...) override it.

    Returns:
        The path of the run file.

    Example:
        >>> from cnnviz import load_model, scan                                 # doctest: +SKIP
        >>> scan("photos/", load_model("resnet50"), "run.h5", top_k=16)        # doctest: +SKIP
    """
    out = Path(out)
    check_folder(out)
    with OutputLock(out, str(out)):  # one writer for the run file and its work folder
        work = _scan_work(library, model, out, (0, 1), _checked(config, layers, options))
        try:
            workers = _with_options(config, layers, options).num_workers
            return assemble_run([WorkDir(work)], out, workers=workers)
        except KeyboardInterrupt:
            raise ScanInterrupted(
                f"interrupted while writing {out}; every image is scanned and checkpointed in {work}. "
                "Run the same scan again with `resume=True` to write the run file.") from None


def scan_shard(library: str | Path | ImageLibrary, model, out: str | Path, shard: tuple[int, int],
               layers: LayerSpec = None, *, config: ScanConfig | None = None, **options) -> Path:
    """Scan one share ``(rank, world_size)`` of the library into its work folder (batch ``b``
    goes to rank ``b % world_size``); returns the folder. :func:`scan` is the one-share case;
    :func:`cnnviz.scanner.merge` writes the run file from all shares."""
    out = Path(out)
    config = _checked(config, layers, options)
    rank, world = shard
    if not 0 <= rank < world:
        raise UsageError(f"`shard` {rank}/{world}: the rank must be in 0..{world - 1}")
    check_folder(out)
    with OutputLock(work_path(out, rank, world), f"{out} (shard {rank}/{world})"):
        return _scan_work(library, model, out, shard, config)


def _checked(config: ScanConfig | None, layers, options: dict) -> ScanConfig:
    config = _with_options(config, layers, options)
    config.validate()
    return config


def _scan_work(library, model, out: Path, shard: tuple[int, int], config: ScanConfig) -> Path:
    """The scan of one share into its work folder, its lock held by the caller."""
    return _scan_into(library, model, Path(out), shard, config, WorkDir(work_path(Path(out), *shard)))


def _scan_into(library, model, out: Path, shard, config: ScanConfig, work: WorkDir) -> Path:
    resuming = config.resume and work.exists()              # 1. validate everything first
    check_output(out, config.overwrite or (resuming and work.read_meta().get("overwrite_output", False)))
    lib = _library(library, work if resuming else None)
    taps = resolve_layers(model, config.layers)
    require_fields(taps)
    if config.top_k > len(lib):
        raise UsageError(f"`top_k` {config.top_k} is more than the {len(lib)} images of the library; "
                         f"use at most {len(lib)}")
    device = torch.device(config.device)
    module = inference_copy(model.module, device)
    bottom = _bottom_layers(config, taps, module, model, len(lib))
    meta = scan_meta(lib, model, taps, config, shard, bottom)
    need = estimate_bytes(taps, len(lib) // shard[1] + 1, config, model.input_size, bottom)
    check_space(out, need, work.used_bytes())
    state = ScanState(taps, config.top_k, device, config.maxima_dtype, set(meta["maxima_layers"]),  # 2.
                      config.rankings, config.bottom_k, bottom, config.quantiles, set(meta["means_layers"]))
    resumed = work.prepare(meta, lib.to_dict(), config.resume, config.overwrite)
    if resumed is not None:
        state.load(resumed)
    plan = _plan(len(lib), config.batch_size, shard, state)      # 3. plan batches
    names = [t.name for t in taps]
    reducer = TapReducer(bottom, config.quantile_positions if config.quantiles else None)
    writer = CheckpointWriter(work, state, config.checkpoint_seconds, config.checkpoint_images,
                              row_bytes=config.batch_size * _row_bytes(state),
                              notes=None if config.progress else plan[1:])
    try:
        with precision_scope(config.resolved_precision, device), \
                _taps(module, names, config, model, reducer, lib) as cap:  # 4. capture the taps
            loader = _loader(lib, model.preprocessing, [ids for _, ids in plan[0]], config.num_workers,
                             device.type == "cuda")
            _run_batches(cap, loader, model.preprocessing, plan, state, writer, config, out, reducer)
        if plan[0] or resumed is None:  # (a finished scan resumed: its last checkpoint stands)
            writer.checkpoint(wait=True)                         # 5. the last checkpoint
    finally:
        writer.close()
    return work.path


def _row_bytes(state: ScanState) -> int:
    return sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
               for dtype, shape in state.column_dtypes().values())


def _plan(n_images: int, batch_size: int, shard: tuple[int, int], state: ScanState):
    """``(batches to do as (index, image ids), images already done, images in all)`` of this
    scan or shard. A single process goes on from the first image not done, in batches of
    ``batch_size`` (which may differ from the batch size it started with); a shard takes batch
    ``b`` of the fixed batches ``[b*B, (b+1)*B)`` when ``b % world == rank``."""
    rank, world = shard
    if world == 1:
        start = state.next_image
        todo = [(state.next_batch + j, list(range(s, min(s + batch_size, n_images))))
                for j, s in enumerate(range(start, n_images, batch_size))]
        return todo, start, n_images
    mine = [(b, ids) for b, ids in enumerate(batch_ranges(n_images, batch_size)) if b % world == rank]
    todo = [(b, ids) for b, ids in mine if b >= state.next_batch]
    total = sum(len(ids) for _, ids in mine)
    return todo, total - sum(len(ids) for _, ids in todo), total


def _bottom_layers(config: ScanConfig, taps: list[LayerTap], module, model, n_images: int) -> set[str]:
    """The layers given a bottom-k: those asked for (every scanned one by default) whose output
    can be negative, probed with one forward pass of noise (a map after a ReLU never is, and its
    "most negative" images would be a tie at 0). A layer named in ``bottom_layers`` that cannot
    be negative is refused; by default such layers are left out, with a note."""
    if config.bottom_k < 1:
        return set()
    if config.bottom_k > n_images:
        raise UsageError(f"`bottom_k` {config.bottom_k} is more than the {n_images} images of the library; "
                         f"use at most {n_images}")
    named = config.bottom_named(taps)
    asked = [t.name for t in taps if named is None or t.name in named]
    lows = _probe_minima(module, asked, model)
    never = [n for n in asked if lows[n] >= 0]
    if named is not None and never:
        raise UsageError(f"`bottom_layers` {', '.join(never)}: never negative (its output comes after a "
                         "ReLU or another non-negative op: 0 is its least value, and its most negative "
                         "images would be a tie at 0); give the bottom-k to a layer before the ReLU, a "
                         "Linear layer or the logits")
    if len(never) == len(asked):
        raise UsageError(f"`bottom_k`: none of the scanned layers can be negative ({', '.join(never)} come "
                         "after a ReLU or another non-negative op); scan a layer before the ReLU, a "
                         "Linear layer or the logits, and name it in `bottom_layers`")
    if never:
        warnings.warn(f"no bottom-k for {', '.join(never)}: never negative (after a ReLU); the bottom-k "
                      f"is kept for {', '.join(n for n in asked if n not in never)}", CnnvizWarning,
                      stacklevel=user_level())
    return {n for n in asked if n not in never}


def _probe_minima(module, names: list[str], model) -> dict[str, float]:
    """Each tap's least value over two images of pseudo-random noise (a fixed integer hash of the
    pixel index: no generator), through the scan's copy of the network."""
    device = next(iter(module.parameters()), torch.zeros(0)).device
    h, w = model.input_size
    index = torch.arange(2 * h * w * 3, dtype=torch.int64)
    noise = ((index * 2654435761) % 4294967291 % 256).to(torch.uint8).view(2, h, w, 3).to(device)
    x = model.preprocessing.normalize(noise).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), capture(module, names, reduce=lambda _, out: float(out.detach().float().min()),
                                  stop_early=True) as cap:
        cap.forward(x)
    return cap.outputs


@contextlib.contextmanager
def _taps(module, names: list[str], config: ScanConfig, model, reducer: TapReducer, lib: ImageLibrary):
    """Hooks on the taps; with ``rank_by`` relevance, hooks and a backward pass; or
    (``compile=True``) the network compiled with its taps traced."""
    if "relevance" in config.rankings:
        from .relevance import RelevanceTaps, label_targets

        targets = label_targets(lib.labels, model.class_names)
        yield RelevanceTaps(module, names, reducer, targets, torch.device(config.device))
        return
    if not config.compile:
        with capture(module, names, reduce=reducer, stop_early=True) as cap:
            yield cap
        return
    from .compiled import CompiledTaps

    h, w = model.input_size
    example = torch.zeros((config.batch_size, 3, h, w), device=next(module.parameters()).device)
    example = example.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        yield CompiledTaps(module, names, config.batch_size, example, reducer)


def _library(library, work: WorkDir | None) -> ImageLibrary:
    """The library to scan: as listed now, or, for a resumed scan, as listed when it started
    (files added or removed meanwhile are noted; a removed one is recorded as unreadable)."""
    if work is None:
        return library if isinstance(library, ImageLibrary) else ImageLibrary.open(library)
    frozen = ImageLibrary.from_dict(work.read_library())
    source = Path(library.source if isinstance(library, ImageLibrary) else library).expanduser().resolve()
    if source != Path(frozen.source).resolve():
        raise ScanError(f"`resume`: {work.path} is a scan of {frozen.source}, not of {source}")
    try:
        now = set((library if isinstance(library, ImageLibrary) else ImageLibrary.open(library)).relpaths)
    except UsageError:
        now = set()
    added, removed = len(now - set(frozen.relpaths)), len(set(frozen.relpaths) - now)
    if added or removed:
        warnings.warn(f"since this scan started, {added} images were added to and {removed} removed "
                      f"from {frozen.source}; it goes on with the {len(frozen)} images it started with",
                      CnnvizWarning, stacklevel=user_level())
    return frozen


def reduce_images(model, names: list[str], crops: torch.Tensor, device="cpu", batch_size: int = 16,
                  precision: str = "fp32") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image and channel of each named tap, ``(maximum, flat position)`` as float32/int64
    ``(N, C)`` arrays, computed exactly as a scan computes them (its copy of the module in
    the channels_last layout, its reductions, its ``precision``), so an image of a scanned
    library gets the values the scan recorded for it.

    Args:
        crops: uint8 ``(N, H, W, 3)`` network-input crops (``Preprocessing.crop_uint8``).
    """
    device = torch.device(device)
    module = inference_copy(model.module, device)
    parts: dict[str, list] = {n: [] for n in names}
    ok = [""] * batch_size
    with precision_scope(precision, device), \
            capture(module, names, reduce=TapReducer(), stop_early=True) as cap:
        for start in range(0, len(crops), batch_size):
            batch = crops[start: start + batch_size]
            for name, r in _forward(cap, model.preprocessing, batch, ok[: len(batch)], device).items():
                parts[name].append((r.values.cpu().numpy(), r.index.cpu().numpy()))
    return {n: (np.concatenate([v for v, _ in p]), np.concatenate([i for _, i in p]).astype(np.int64))
            for n, p in parts.items()}


def _with_options(config: ScanConfig | None, layers, options: dict) -> ScanConfig:
    if layers is not None:
        options = {**options, "layers": layers}
    if config is None:
        return ScanConfig.from_options(options)
    return ScanConfig.from_options({**config.__dict__, **options})


def scan_meta(lib: ImageLibrary, model, taps: list[LayerTap], config: ScanConfig,
              shard: tuple[int, int], bottom: set[str] = frozenset()) -> dict:
    """What the scan is: a resume must match it, and merge/assemble need nothing else (no model)."""
    kept = config.kept_maxima(taps)
    means = config.kept_means(taps)
    meta = {
        "format": "cnnviz-scan-work", "cnnviz_version": _version(), "model": model.name,
        "weights_origin": model.weights_origin, "weights_spec": model.weights_spec,
        "weights_digest": weights_digest(model.module), "overwrite_output": bool(config.overwrite),
        "class_names": model.class_names, "preprocessing": model.preprocessing.to_dict(),
        "layers": [t.name for t in taps], "taps": [tap_record(t) for t in taps],
        "top_k": config.top_k, "batch_size": config.batch_size,
        "library_source": str(Path(lib.source).resolve()), "library_root": str(Path(lib.root).resolve()),
        "library_fingerprint": lib.fingerprint(), "n_images": len(lib),
        "maxima_dtype": config.maxima_dtype, "patch_size": config.patch_size,
        "maxima_layers": [t.name for t in taps if t.name in kept],
        "shard": list(shard), "precision": config.resolved_precision,
        "amp": config.resolved_precision == "amp", "work_format": WORK_FORMAT,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rank_by": list(config.rankings),
        "bottom_k": config.bottom_k if bottom else 0,
        "bottom_layers": [t.name for t in taps if t.name in bottom],
        "quantile_positions": config.quantile_positions if config.quantiles else None,
        "means_layers": [t.name for t in taps if t.name in means],
        "relevance_target": TARGET_RULE if "relevance" in config.rankings else None,
    }
    return json.loads(json.dumps(meta))  # tuples -> lists, as read back from meta.json


def _version() -> str:
    from .. import __version__

    return __version__


_OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, _OUT_OF_MEMORY) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _run_batches(cap, loader, preprocessing, plan, state: ScanState, writer: CheckpointWriter,
                 config: ScanConfig, out: Path, reducer: TapReducer | None = None) -> None:
    """Forward and reduce every batch not done yet, as ``loader`` delivers them decoded; Ctrl-C
    stops after a whole batch."""
    device = torch.device(config.device)
    todo, done, total = plan
    bar = _progress_bar(config.progress, total, done, out)
    interrupt = _InterruptFlag()
    interrupt.install()
    try:
        batches = iter(loader)
        for b, ids_planned in todo:
            started = time.monotonic()
            ids, crops, geoms, identity, errors = next(batches)
            state.wait_data_seconds += time.monotonic() - started
            try:
                reduced = _forward(cap, preprocessing, crops, errors, device, ids, reducer)
            except Exception as exc:
                if _out_of_memory(exc):
                    _out_of_memory_stop(writer, config, done, ids_planned, device)
                raise
            writer.rows(state.add_batch(b, ids, geoms, identity, errors, reduced))
            done += len(errors)
            bar.update(len(errors))
            if any(errors):
                bar.set_postfix(unreadable=len(state.failures))
            if interrupt.requested:
                writer.checkpoint(wait=True)
                raise ScanInterrupted(
                    f"scan interrupted after {done} of {total} images; checkpoint saved in "
                    f"{writer.work.path}. Continue with the same scan plus `resume=True`.")
    except KeyboardInterrupt:
        # a second Ctrl-C, or one while waiting for data: keep the last checkpoint as it is
        raise ScanInterrupted(
            f"scan stopped; the last checkpoint in {writer.work.path} is kept. Continue with "
            "the same scan plus `resume=True`.") from None
    finally:
        interrupt.restore()
        bar.close()


def _out_of_memory_stop(writer: CheckpointWriter, config: ScanConfig, done: int, ids: list[int],
                        device: torch.device) -> None:
    """The batch did not fit: checkpoint what was scanned before it, and say what to do."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    writer.checkpoint(wait=True)
    smaller = max(1, config.batch_size // 2)
    raise ScanError(
        f"the {'GPU' if device.type == 'cuda' else 'machine'} ran out of memory for a batch of "
        f"{config.batch_size} images (images {ids[0]}-{ids[-1]}); the {done} images before it are "
        f"checkpointed in {writer.work.path}. Continue with a smaller batch: the same scan with "
        f"`batch_size={smaller}` and `resume=True` (a resumed scan may change its batch size; the "
        "results are the same)") from None


def _loader(lib: ImageLibrary, preprocessing, batches: list[list[int]], workers: int, pin: bool):
    return DataLoader(
        LibraryDataset(lib, preprocessing), batch_sampler=batches, collate_fn=collate,
        num_workers=workers, pin_memory=pin, worker_init_fn=LibraryDataset.worker_init,
        prefetch_factor=4 if workers else None,
    )


def _forward(cap, preprocessing, crops: torch.Tensor, errors: list[str], device: torch.device,
             ids: torch.Tensor | None = None, reducer: TapReducer | None = None) -> dict:
    """The reduced taps of the readable images of one batch (``{}`` when none was readable).
    Runs in the precision of the enclosing :func:`~cnnviz.model.precision.precision_scope`."""
    ok = np.array([e == "" for e in errors])
    if not ok.any():
        return {}
    if reducer is not None and ids is not None:  # the images' own sampled positions
        reducer.ids = ids[torch.from_numpy(ok)].to(device, non_blocking=True)
    # copy the whole (pinned) batch asynchronously, then drop unreadable images on the device:
    # indexing first would make a pageable copy and a blocking transfer
    batch = crops.to(device, non_blocking=True)
    if not ok.all():
        batch = batch.index_select(0, torch.from_numpy(np.flatnonzero(ok)).to(device))
    return forward_crops(cap, batch, preprocessing)


class _InterruptFlag:
    """Ctrl-C during a scan: the first one is noted and honoured after the current batch (so
    the checkpoint never holds half a batch); a second one stops at once. SIGTERM (what Slurm
    and ``kill`` send before the end) and SIGHUP (the terminal closed) are treated alike."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}
        self._pid = os.getpid()

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked child that inherited the handler
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        warnings.warn("interrupt: finishing this batch and saving a checkpoint (Ctrl-C again to "
                      "stop now)", CnnvizWarning, stacklevel=user_level())

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

    def restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}


def _progress_bar(enabled: bool, total: int, initial: int, out: Path):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=f"scan {out.name}",
                disable=not enabled, dynamic_ncols=True, smoothing=0.05)
