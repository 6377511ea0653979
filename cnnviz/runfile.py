"""The HDF5 run file: writing it from scan checkpoints, and opening it for reading.

The layout is documented in ``docs/run-file-format.md`` (format version
:data:`FORMAT_VERSION`); it is readable with plain ``h5py``. The file is written under a
temporary name and renamed when complete, so a crash never leaves a half-written run file.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .checkpoint import WorkDir
from .library import ImageLibrary
from .patches import downsample, patch_box, patch_factor, patch_shape
from .preprocessing import boxes_to_original, load_rgb
from .reducers import ChannelStats, merge_topk

__all__ = ["FORMAT", "FORMAT_VERSION", "assemble_run", "open_run", "RunFileError"]

FORMAT = "cnnviz-run"
FORMAT_VERSION = 1
_STR = h5py.string_dtype()


class RunFileError(ValueError):
    """Not a cnnviz run file, or one of an unsupported version."""


def open_run(path: str | Path) -> h5py.File:
    """Open a run file read-only, checking its format and version."""
    path = Path(path)
    if not path.is_file():
        work = path.with_name(path.name + ".work")
        extra = (f" ({work} holds an unfinished scan: rerun the scan with --resume)"
                 if work.exists() else "")
        raise FileNotFoundError(f"run file {path} does not exist{extra}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise RunFileError(f"{path} is not an HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise RunFileError(f"{path} is an HDF5 file but not a cnnviz run file")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        f.close()
        raise RunFileError(f"{path} has run-file format {version}; this cnnviz ({__version__}) "
                           f"reads up to {FORMAT_VERSION}: upgrade cnnviz")
    return f


def position_dtype(tap) -> type:
    """Smallest unsigned dtype for a flat position ``y * W + x`` of the tap's map."""
    return np.uint16 if tap.shape[1] * tap.shape[2] <= np.iinfo(np.uint16).max else np.uint32


def _contiguous_runs(ids: np.ndarray):
    """Split increasing ids into ``(first, end, start_index)`` runs of consecutive values."""
    if len(ids) == 0:
        return
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(ids)]])
    for s, e in zip(starts, ends, strict=True):
        yield int(ids[s]), int(ids[e - 1]) + 1, int(s), int(e)


def _merge_states(works: list[WorkDir], metas: list[dict], n_layers: int, top_k: int):
    """Top-k, statistics and failures of all shards merged (order-independent)."""
    states = [w.load_state() for w in works]
    if any(s is None for s in states):
        missing = [str(w.path) for w, s in zip(works, states, strict=True) if s is None]
        raise RunFileError(f"no checkpoint in {', '.join(missing)}: that scan never finished a batch")
    for w, meta, s in zip(works, metas, states, strict=True):
        rank, world = meta["shard"]
        n_batches = -(-meta["n_images"] // meta["batch_size"])
        mine = [b for b in range(n_batches) if b % world == rank]
        if mine and int(s["next_batch"]) <= mine[-1]:
            raise RunFileError(
                f"{w.path} is unfinished (batch {int(s['next_batch'])} of {n_batches}): finish that "
                f"scan with --resume{f' --shard {rank}/{world}' if world > 1 else ''} first")
    layers = []
    for i in range(n_layers):
        vals = np.concatenate([s[f"l{i}_values"] for s in states], axis=1)
        ids = np.concatenate([s[f"l{i}_ids"] for s in states], axis=1)
        idx = np.concatenate([s[f"l{i}_index"] for s in states], axis=1)
        v, d, x = merge_topk(vals, ids, top_k, idx)
        stats = ChannelStats.from_state(states[0], f"l{i}_stat_")
        for s in states[1:]:
            stats = stats.merged(ChannelStats.from_state(s, f"l{i}_stat_"))
        layers.append((v, d, x, stats))
    fids = np.concatenate([s["failure_ids"] for s in states]).astype(np.int64)
    freasons = np.concatenate([s["failure_reasons"].astype(str) for s in states])
    order = np.argsort(fids, kind="stable")
    scan_seconds = max(float(s["elapsed_seconds"]) for s in states)
    return layers, fids[order], freasons[order], scan_seconds


def assemble_run(works: list[WorkDir], out: Path, lib: ImageLibrary, model,
                 keep_work: bool = False) -> Path:
    """Write the run file ``out`` from the checkpoints of one or more (shard) work folders."""
    from .taps import resolve_layers

    metas = [w.read_meta() for w in works]
    meta = metas[0]
    _check_shards_match(metas, works)
    taps = resolve_layers(model, meta["layers"])
    started = time.monotonic()
    merged, fail_ids, fail_reasons, scan_seconds = _merge_states(works, metas, len(taps), meta["top_k"])
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        _write_header(f, meta, model, lib, n_failed=len(fail_ids), world=len(works))
        geometry = _write_images(f, lib, works, fail_ids, fail_reasons, taps)
        for tap, (vals, ids, index, stats) in zip(taps, merged, strict=True):
            g = f[f"layers/{tap.name}"]
            _write_topk(g, tap, vals, ids, index, model.preprocessing.crop, meta["patch_size"], geometry)
            for k, v in stats.summary().items():
                g.create_dataset(f"stats/{k}", data=v)
        _write_patches(f, taps, lib, model.preprocessing, meta["patch_size"])
        f.attrs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["scan_seconds"] = scan_seconds
        f.attrs["assemble_seconds"] = time.monotonic() - started
    os.replace(tmp, out)
    if not keep_work:
        for w in works:
            w.remove()
    return out


def _check_shards_match(metas: list[dict], works: list[WorkDir]) -> None:
    ignore = {"shard", "started", "cnnviz_version"}
    for m, w in zip(metas[1:], works[1:], strict=True):
        diff = [k for k in metas[0] if k not in ignore and metas[0][k] != m.get(k)]
        if diff:
            raise RunFileError(f"{w.path} is not a shard of the same scan as {works[0].path} "
                               f"(differs in {', '.join(diff)})")
    worlds = {tuple(m["shard"])[1] for m in metas}
    ranks = sorted(m["shard"][0] for m in metas)
    if len(worlds) != 1 or ranks != list(range(worlds.pop())):
        raise RunFileError(f"shards {ranks} do not make a whole scan: every rank "
                           f"0..{metas[0]['shard'][1] - 1} is needed exactly once")


def _write_header(f: h5py.File, meta: dict, model, lib: ImageLibrary, n_failed: int, world: int):
    a = f.attrs
    a["format"] = FORMAT
    a["format_version"] = FORMAT_VERSION
    a["cnnviz_version"] = __version__
    a["created"] = meta["started"]
    a["model"] = meta["model"]
    a["weights_origin"] = meta["weights_origin"]
    a["preprocessing"] = json.dumps(meta["preprocessing"])
    a["layers"] = json.dumps(meta["layers"])
    a["top_k"] = meta["top_k"]
    a["batch_size"] = meta["batch_size"]
    a["library"] = meta["library_source"]
    a["library_root"] = meta["library_root"]
    a["library_fingerprint"] = meta["library_fingerprint"]
    a["n_images"] = len(lib)
    a["n_failed"] = n_failed
    a["maxima_dtype"] = meta["maxima_dtype"]
    a["patch_size"] = meta["patch_size"]
    a["amp"] = meta["amp"]
    a["world_size"] = world
    if model.class_names:
        f.create_dataset("class_names", data=np.array(model.class_names, dtype=object), dtype=_STR)


def _write_images(f, lib, works, fail_ids, fail_reasons, taps) -> np.ndarray:
    n = len(lib)
    f.create_dataset("images/path", data=np.array(lib.relpaths, dtype=object), dtype=_STR)
    if lib.labels is not None:
        f.create_dataset("images/label", data=np.array(lib.labels, dtype=object), dtype=_STR)
    ok = np.ones(n, dtype=bool)
    ok[fail_ids] = False
    f.create_dataset("images/ok", data=ok)
    f.create_dataset("failures/image_id", data=fail_ids)
    f.create_dataset("failures/path", data=np.array([lib.relpaths[i] for i in fail_ids], dtype=object),
                     dtype=_STR)
    f.create_dataset("failures/reason", data=np.array(list(fail_reasons), dtype=object), dtype=_STR)
    geometry = np.zeros((n, 6), dtype=np.int32)
    dsets = []
    for tap in taps:
        g = f.create_group(f"layers/{tap.name}")
        c = tap.channels
        itemsize = np.dtype(f.attrs["maxima_dtype"]).itemsize
        rows = int(max(1, min(n, (1 << 20) // max(1, c * itemsize))))
        pos_dtype = position_dtype(tap)
        mx = g.create_dataset("maxima", shape=(n, c), dtype=f.attrs["maxima_dtype"], chunks=(rows, c),
                              fillvalue=np.nan)
        ps = g.create_dataset("position", shape=(n, c), dtype=pos_dtype, chunks=(rows, c))
        dsets.append((mx, ps))
    segments = sorted((s for w in works for s in w.segments()), key=lambda s: s[0])
    for _, _, path in segments:
        with np.load(path) as z:
            ids = z["ids"]
            geometry[ids] = z["geometry"]
            for i, (mx, ps) in enumerate(dsets):
                m, p = z[f"l{i}_max"], z[f"l{i}_pos"]
                for first, end, s, e in _contiguous_runs(ids):
                    mx[first:end] = m[s:e]
                    ps[first:end] = p[s:e]
    f.create_dataset("images/geometry", data=geometry)
    return geometry


def _write_topk(g, tap, vals, ids, index, input_size, patch_size, geometry):
    width = tap.shape[2]
    valid = ids >= 0
    y = np.where(valid, index // width, -1).astype(np.int32)
    x = np.where(valid, index % width, -1).astype(np.int32)
    # boxes move with the unit: the box of unit (y, x) is that of (0, 0) shifted by the stride
    sy, sx = tap.rf.stride
    shift = np.stack([y * sy, x * sx, y * sy, x * sx], axis=-1)
    rf_box = np.where(valid[..., None], np.array(tap.rf.box(0, 0)) + shift, -1).astype(np.int32)
    p_box = np.where(valid[..., None], np.array(patch_box(tap.rf, 0, 0, input_size, patch_size)) + shift,
                     -1).astype(np.int32)
    clipped = np.clip(p_box.reshape(-1, 4), 0, [input_size[0], input_size[1]] * 2)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty slots borrow a row; masked below
        o_box = boxes_to_original(clipped, geometry[np.maximum(ids, 0).reshape(-1)]).reshape(p_box.shape)
    o_box = np.where(valid[..., None], o_box, np.nan).astype(np.float32)
    t = g.create_group("topk")
    t.create_dataset("activation", data=np.where(valid, vals, np.nan).astype(np.float32))
    t.create_dataset("image_id", data=ids.astype(np.int64))
    t.create_dataset("y", data=y)
    t.create_dataset("x", data=x)
    t.create_dataset("rf_box", data=rf_box)
    t.create_dataset("patch_box", data=p_box)
    t.create_dataset("orig_box", data=o_box)
    rf = tap.rf
    g.attrs.update({
        "type": tap.type, "channels": tap.channels, "height": tap.shape[1], "width": tap.shape[2],
        "rf_size": list(rf.size), "rf_stride": list(rf.stride), "rf_offset": list(rf.offset),
        "patch_shape": list(patch_shape(rf, input_size, patch_size)),
        "patch_factor": patch_factor(rf, input_size, patch_size),
    })


class _CropCache:
    """Decoded network-input crops, least recently used dropped first."""

    def __init__(self, lib: ImageLibrary, preprocessing, size: int = 1024):
        self.lib, self.pre, self.size = lib, preprocessing, size
        self.items: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, image_id: int) -> np.ndarray:
        if image_id in self.items:
            self.items.move_to_end(image_id)
            return self.items[image_id]
        crop, _ = self.pre.crop_uint8(load_rgb(self.lib.path(image_id)))
        self.items[image_id] = crop
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return crop


def _write_patches(f, taps, lib, preprocessing, patch_size, block_bytes: int = 128 << 20) -> None:
    """Cut every top-k patch: per layer and block of channels, entries grouped by image (one
    padded copy per image), then all downsampled at once."""
    cache = _CropCache(lib, preprocessing)
    for tap in taps:
        g = f[f"layers/{tap.name}"]
        ids = g["topk/image_id"][()]
        boxes = g["topk/patch_box"][()]
        ph, pw = (int(v) for v in g.attrs["patch_shape"])
        factor = int(g.attrs["patch_factor"])
        eh, ew = ph * factor, pw * factor
        c_total, k = ids.shape
        ds = g.create_dataset("topk/patches", shape=(c_total, k, ph, pw, 3), dtype=np.uint8,
                              chunks=(1, k, ph, pw, 3))
        channel_block = max(1, block_bytes // (k * eh * ew * 3))
        for c0 in range(0, c_total, channel_block):
            c1 = min(c_total, c0 + channel_block)
            block_ids = ids[c0:c1].reshape(-1)
            block_boxes = boxes[c0:c1].reshape(-1, 4)
            raw = np.zeros((len(block_ids), eh, ew, 3), dtype=np.uint8)
            current, padded = None, None
            for j in np.argsort(block_ids, kind="stable"):
                image_id = int(block_ids[j])
                if image_id < 0:
                    continue
                if image_id != current:
                    current = image_id
                    padded = np.pad(cache.get(image_id), ((eh, eh), (ew, ew), (0, 0)))
                y0, x0 = int(block_boxes[j, 0]) + eh, int(block_boxes[j, 1]) + ew
                raw[j] = padded[y0: y0 + eh, x0: x0 + ew]
            ds[c0:c1] = downsample(raw, factor).reshape(c1 - c0, k, ph, pw, 3)
