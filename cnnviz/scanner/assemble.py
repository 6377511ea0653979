"""Writing the HDF5 run file from the checkpoints of one scan or of all shards of one.

Everything comes from the work folders: their ``meta.json`` records the model's name, weights,
class names and preprocessing and every tap's geometry, so assembling (and merging a
distributed scan) loads no model. The layout is documented in ``docs/run-file-format.md``; the
names come from :mod:`cnnviz.run.format`. The file is written under a temporary name and
renamed when complete, so a crash never leaves a half-written run file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import RunFileError, ScanError
from ..images.library import ImageLibrary
from ..images.patches import patch_box, patch_factor, patch_shape
from ..model.preprocessing import Preprocessing, boxes_to_original
from ..model.taps import LayerTap
from ..run import format as fmt
from ..run.isolated import durable_replace, write_isolated
from ..run.quantiles import LEVELS, MASK_LEVEL, SCALE, quantiles_from_histogram
from .config import default_workers
from .cutting import CropStore, write_patches
from .space import check_space, run_file_bytes
from .state import MergedLayer, merge_states, segment_columns, segments_of, tap_from_record
from .workdir import WorkDir, check_work_format

__all__ = ["assemble_run", "write_header", "write_image_records",
           "create_layer_maxima", "write_topk", "write_ranking", "write_quantiles", "write_stats"]

_STR = h5py.string_dtype()


def _contiguous_runs(ids: np.ndarray):
    """Split increasing ids into ``(first, end, start_index)`` runs of consecutive values."""
    if len(ids) == 0:
        return
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(ids)]])
    for s, e in zip(starts, ends, strict=True):
        yield int(ids[s]), int(ids[e - 1]) + 1, int(s), int(e)


def _load_states(works: list[WorkDir], metas: list[dict]) -> list[dict[str, np.ndarray]]:
    """Every shard's last state, each checked to be complete."""
    states = [w.load_state() for w in works]
    missing = [str(w.path) for w, s in zip(works, states, strict=True) if s is None]
    if missing:
        raise RunFileError(f"no checkpoint in {', '.join(missing)}: that scan never finished a batch")
    for w, meta, s in zip(works, metas, states, strict=True):
        rank, world = meta["shard"]
        n_batches = -(-meta["n_images"] // meta["batch_size"])
        mine = [b for b in range(n_batches) if b % world == rank]
        unfinished = (int(s["next_image"]) < meta["n_images"] if world == 1
                      else mine and int(s["next_batch"]) <= mine[-1])
        if unfinished:
            how = "`resume=True`" + (f" with `shard={rank}/{world}`" if world > 1 else "")
            where = (f"image {int(s['next_image'])} of {meta['n_images']}" if world == 1
                     else f"batch {int(s['next_batch'])} of {n_batches}")
            raise RunFileError(f"{w.path} is unfinished ({where}): finish that scan with {how} first")
    return states


def assemble_run(works: list[WorkDir], out: Path, keep_work: bool = False,
                 workers: int | None = None) -> Path:
    """Write the run file ``out`` from the checkpoints of one or more (shard) work folders.

    The file is written as ``out.tmp``, flushed to disk and renamed; on any failure the ``.tmp``
    is removed and the work folders are kept, so the same scan with ``resume=True`` writes it
    again. A full disk becomes one :class:`ScanError` saying so. ``workers`` processes decode
    the top-k images for their patches (``None``: as many as a scan's decoding uses)."""
    metas = [w.read_meta() for w in works]
    for w, m in zip(works, metas, strict=True):
        check_work_format(m, w.path)
    _check_shards_match(metas, works)
    states = _load_states(works, metas)
    started = time.monotonic()
    inputs = _Inputs(metas[0], works[0], default_workers() if workers is None else workers)
    meta = metas[0]
    merged, fail_ids, fail_reasons, scan_seconds = merge_states(states, len(inputs.taps), meta["top_k"],
                                                                meta["bottom_k"])
    n_crops = len(np.unique(np.concatenate([ids.ravel() for m in merged for _, ids, _ in _rankings(m)])))
    check_space(out, run_file_bytes(inputs.taps, len(inputs.lib), meta["top_k"], meta["maxima_dtype"],
                                    meta["patch_size"], inputs.preprocessing.crop, set(meta["maxima_layers"]),
                                    **_extras(meta))
                + n_crops * 3 * int(np.prod(inputs.preprocessing.crop)))
    tmp = out.with_name(out.name + ".tmp")

    segments = [(w, seg) for w, st in zip(works, states, strict=True) for seg in segments_of(st)]

    def write(f: h5py.File) -> None:
        _write(f, inputs, segments, merged, fail_ids, fail_reasons, len(works))
        f.attrs[fmt.ATTR_SCAN_SECONDS] = scan_seconds
        for key in ("wait_data_seconds", "wait_disk_seconds"):
            f.attrs[f"scan_{key}"] = max(float(st[key]) for st in states)
        f.attrs[fmt.ATTR_ASSEMBLE_SECONDS] = time.monotonic() - started

    try:
        outcome, detail = write_isolated(write, tmp, "w")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if outcome != "ok":
        tmp.unlink(missing_ok=True)
    if outcome == "disk full":
        raise ScanError(f"the disk of {out} filled up while the run file was written; the scan "
                        f"itself is kept in {works[0].path}: free some space, then run the same "
                        "scan with `resume=True` to write the run file")
    if outcome == "refused":
        raise ScanError(detail)
    if outcome != "ok":
        raise RuntimeError(f"writing {tmp} failed in its writer process:\n{detail}")
    durable_replace(tmp, out)
    if not keep_work:
        for w in works:
            w.remove()
    return out


def _extras(meta: dict) -> dict:
    """What a scan keeps beyond the top-k by max, as :func:`~.space.run_file_bytes` takes it."""
    return {"rankings": len(meta["rank_by"]), "bottom": (meta["bottom_k"], set(meta["bottom_layers"])),
            "means": set(meta["means_layers"]), "quantiles": meta["quantile_positions"] is not None}


def _rankings(layer: MergedLayer):
    """``(values, ids, index)`` of every ranking a merged layer holds, max first."""
    return [(layer.values, layer.ids, layer.index), *layer.rankings.values()]


class _Inputs:
    """What a run file is written from, all read from the (first) work folder."""

    def __init__(self, meta: dict, work: WorkDir, workers: int):
        self.meta, self.folder, self.workers = meta, work.path, workers
        self.lib = ImageLibrary.from_dict(work.read_library())
        self.taps = [tap_from_record(r) for r in meta["taps"]]
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])


def _write(f: h5py.File, inputs: _Inputs, segments, merged, fail_ids, fail_reasons, world: int) -> None:
    meta, lib = inputs.meta, inputs.lib
    write_header(f, meta, len(lib), n_failed=len(fail_ids), world=world)
    kept = set(meta["maxima_layers"])
    relevance = kept if "relevance" in meta["rank_by"] else set()
    geometry, identity = _write_images(f, lib, segments, fail_ids, fail_reasons, inputs.taps, kept,
                                       set(meta["means_layers"]), relevance)
    jobs = []
    for tap, layer in zip(inputs.taps, merged, strict=True):
        g = f[fmt.layer_group(tap.name)]
        boxes = write_topk(g, tap, layer, inputs.preprocessing.crop, meta["patch_size"], geometry)
        jobs.append((tap, fmt.TOPK, layer.ids, boxes))
        for rank_by, (values, ids, index) in layer.rankings.items():
            boxes = write_ranking(g, fmt.RANKING_GROUPS[rank_by], tap, values, ids, index,
                                  inputs.preprocessing.crop, meta["patch_size"], geometry)
            jobs.append((tap, fmt.RANKING_GROUPS[rank_by], ids, boxes))
        write_stats(g, layer.stats)
        if layer.histogram is not None:
            write_quantiles(g, layer.histogram, meta["quantile_positions"])
    all_ids = np.concatenate([ids.ravel() for _, _, ids, _ in jobs])
    store = CropStore(lib, inputs.preprocessing, identity, all_ids, inputs.folder, inputs.workers)
    try:
        write_patches(f, jobs, store)
    finally:
        store.close()
    _strings(f, fmt.IMAGE_PATCH_ERROR, [store.errors.get(i, "") for i in range(len(lib))])
    f.attrs[fmt.ATTR_N_PATCH_ERRORS] = len(store.errors)
    f.attrs[fmt.ATTR_FINISHED] = time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


def write_header(f: h5py.File, meta: dict, n_images: int, n_failed: int, world: int):
    """The root attributes and class names, from a work folder's meta."""
    a = f.attrs
    a[fmt.ATTR_FORMAT] = fmt.FORMAT
    a[fmt.ATTR_VERSION] = fmt.FORMAT_VERSION
    a[fmt.ATTR_CNNVIZ_VERSION] = meta["cnnviz_version"]
    a[fmt.ATTR_CREATED] = meta["started"]
    a[fmt.ATTR_MODEL] = meta["model"]
    a[fmt.ATTR_WEIGHTS_ORIGIN] = meta["weights_origin"]
    if meta.get("weights_spec") is not None:
        a[fmt.ATTR_WEIGHTS_SPEC] = json.dumps(meta["weights_spec"])
    a[fmt.ATTR_WEIGHTS_DIGEST] = meta["weights_digest"]
    a[fmt.ATTR_PREPROCESSING] = json.dumps(meta["preprocessing"])
    a[fmt.ATTR_LAYERS] = json.dumps(meta["layers"])
    a[fmt.ATTR_TOP_K] = meta["top_k"]
    a[fmt.ATTR_BATCH_SIZE] = meta["batch_size"]
    a[fmt.ATTR_LIBRARY] = meta["library_source"]
    a[fmt.ATTR_LIBRARY_ROOT] = meta["library_root"]
    a[fmt.ATTR_LIBRARY_FINGERPRINT] = meta["library_fingerprint"]
    a[fmt.ATTR_N_IMAGES] = n_images
    a[fmt.ATTR_N_FAILED] = n_failed
    a[fmt.ATTR_MAXIMA_DTYPE] = meta["maxima_dtype"]
    a[fmt.ATTR_PATCH_SIZE] = meta["patch_size"]
    a[fmt.ATTR_AMP] = meta["amp"]
    a[fmt.ATTR_PRECISION] = meta.get("precision", "amp" if meta["amp"] else "fp32")
    a[fmt.ATTR_RANK_BY] = json.dumps(meta.get("rank_by", ["max"]))
    a[fmt.ATTR_BOTTOM_K] = int(meta.get("bottom_k", 0))
    if meta.get("relevance_target"):
        a[fmt.ATTR_RELEVANCE_TARGET] = meta["relevance_target"]
    a[fmt.ATTR_WORLD_SIZE] = world
    if meta.get("class_names"):
        f.create_dataset(fmt.CLASS_NAMES, data=np.array(meta["class_names"], dtype=object), dtype=_STR)


def _strings(f: h5py.File, path: str, values) -> None:
    """UTF-8 strings; a file name that is not valid UTF-8 (possible on Linux) is stored with
    its undecodable bytes replaced (U+FFFD) rather than failing the run file."""
    clean = [v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for v in map(str, values)]
    f.create_dataset(path, data=np.array(clean, dtype=object), dtype=_STR)


def _write_images(f, lib, segments, fail_ids, fail_reasons, taps, kept: set[str],
                  means: set[str] = frozenset(), relevance: set[str] = frozenset()):
    n = len(lib)
    write_image_records(f, lib.relpaths, lib.labels, fail_ids, fail_reasons)
    geometry = np.zeros((n, 6), dtype=np.int32)
    identity = np.zeros((n, 3), dtype=np.int64)
    dsets = create_layer_maxima(f, taps, n, kept, means, relevance)
    for work, seg in sorted(segments, key=lambda ws: ws[1]["first"]):
        ids = np.asarray(_column(work, seg, "ids"))
        geometry[ids] = _column(work, seg, "geometry")
        identity[ids] = _column(work, seg, "identity")
        for dset, keys in zip(dsets, segment_columns(len(taps)), strict=True):
            for kind, ds in (dset or {}).items():
                rows = _column(work, seg, keys[kind])
                for first, end, s, e in _contiguous_runs(ids):
                    ds[first:end] = rows[s:e]
    _dataset(f, fmt.IMAGE_GEOMETRY, geometry)
    _dataset(f, fmt.IMAGE_IDENTITY, identity)
    return geometry, identity


def write_image_records(f, relpaths, labels, fail_ids, fail_reasons) -> None:
    """Image paths, labels, the readable flags and the failures."""
    _strings(f, fmt.IMAGE_PATH, relpaths)
    if labels is not None:
        _strings(f, fmt.IMAGE_LABEL, labels)
    ok = np.ones(len(relpaths), dtype=bool)
    ok[fail_ids] = False
    _dataset(f, fmt.IMAGE_OK, ok)
    _dataset(f, fmt.FAILURE_ID, fail_ids)
    _strings(f, fmt.FAILURE_PATH, [relpaths[i] for i in fail_ids])
    _strings(f, fmt.FAILURE_REASON, fail_reasons)


def create_layer_maxima(f, taps, n: int, kept: set[str], means: set[str] = frozenset(),
                        relevance: set[str] = frozenset()) -> list:
    """Each layer's group, with empty ``{"max": maxima, "pos": position[, "mean": means]
    [, "rel": relevance]}`` datasets (row chunks of about 1 MB) where its maxima are kept, else
    ``None``."""
    dsets = []
    for tap in taps:
        g = f.create_group(fmt.layer_group(tap.name))
        g.attrs[fmt.LAYER_MAXIMA_KEPT] = tap.name in kept
        if tap.name not in kept:
            dsets.append(None)
            continue
        c = tap.channels
        dtype = f.attrs[fmt.ATTR_MAXIMA_DTYPE]
        rows = int(max(1, min(n, (1 << 20) // max(1, c * np.dtype(dtype).itemsize))))
        made = {"max": g.create_dataset(fmt.MAXIMA, shape=(n, c), dtype=dtype, chunks=(rows, c),
                                        fillvalue=np.nan, fletcher32=True),
                "pos": g.create_dataset(fmt.POSITION, shape=(n, c), dtype=fmt.position_dtype(*tap.shape[1:]),
                                        chunks=(rows, c), fletcher32=True)}
        for key, wanted, path in (("mean", means, fmt.MEANS), ("rel", relevance, fmt.RELEVANCE)):
            if tap.name in wanted:
                made[key] = g.create_dataset(path, shape=(n, c), dtype=dtype, chunks=(rows, c),
                                             fillvalue=np.nan, fletcher32=True)
        dsets.append(made)
    return dsets


def _column(work: WorkDir, segment: dict, key: str) -> np.ndarray:
    """One array of a sealed segment (memory-mapped); a damaged one is named."""
    try:
        return work.read_column(segment, key)
    except (OSError, ValueError, EOFError) as exc:
        raise ScanError(f"checkpoint {work.path / segment['name']} is damaged ({type(exc).__name__}: "
                        f"{exc}): the per-image maxima in it are lost; start the scan again with "
                        "`overwrite=True`") from None


def _dataset(parent, path: str, data) -> None:
    """A numeric dataset with HDF5's Fletcher-32 checksum (so damage is found when read)."""
    data = np.asarray(data)
    if data.size:
        parent.create_dataset(path, data=data, fletcher32=True, chunks=True)
    else:
        parent.create_dataset(path, data=data)


def write_topk(g, tap: LayerTap, layer: MergedLayer, input_size, patch_size, geometry) -> np.ndarray:
    """The top-k records of a layer (ranked by max) and its attributes; returns the patch boxes
    ``(C, k, 4)``."""
    p_box = write_ranking(g, fmt.TOPK, tap, layer.values, layer.ids, layer.index, input_size, patch_size,
                          geometry)
    rf = tap.rf
    g.attrs.update({
        fmt.LAYER_TYPE: tap.type, fmt.LAYER_CHANNELS: tap.channels, fmt.LAYER_HEIGHT: tap.shape[1],
        fmt.LAYER_WIDTH: tap.shape[2], fmt.LAYER_RF_SIZE: list(rf.size), fmt.LAYER_RF_STRIDE: list(rf.stride),
        fmt.LAYER_RF_OFFSET: list(rf.offset),
        fmt.LAYER_PATCH_SHAPE: list(patch_shape(rf, input_size, patch_size)),
        fmt.LAYER_PATCH_FACTOR: patch_factor(rf, input_size, patch_size),
        fmt.LAYER_UNIT: tap.unit, fmt.LAYER_LOGITS: tap.logits,
    })
    return p_box


def write_ranking(g, group: str, tap: LayerTap, vals: np.ndarray, ids: np.ndarray, index: np.ndarray,
                  input_size, patch_size, geometry) -> np.ndarray:
    """One ranking's records (``topk/``, ``topk_mean/``, ``bottomk/``) but the patches; returns
    the patch boxes ``(C, k, 4)``."""
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
    at = f"{group}/"
    _dataset(g, at + fmt.ACTIVATION, np.where(valid, vals, np.nan).astype(np.float32))
    _dataset(g, at + fmt.IMAGE_ID, ids.astype(np.int64))
    _dataset(g, at + fmt.Y, y)
    _dataset(g, at + fmt.X, x)
    _dataset(g, at + fmt.RF_BOX, rf_box)
    _dataset(g, at + fmt.PATCH_BOX, p_box)
    _dataset(g, at + fmt.ORIG_BOX, o_box)
    return p_box


def write_quantiles(g, counts: np.ndarray, positions: int) -> None:
    """A layer's histogram over positions, the levels read from it and the scale's attributes."""
    q = g.create_group(fmt.QUANTILES)
    q.attrs.update(SCALE.attrs())
    q.attrs[fmt.QUANTILE_LEVELS] = np.array(LEVELS, dtype=np.float64)
    q.attrs[fmt.QUANTILE_POSITIONS] = int(positions)
    q.attrs[fmt.QUANTILE_MASK_LEVEL] = MASK_LEVEL
    # mostly empty buckets: gzip makes them small (~1/50)
    g.create_dataset(fmt.QUANTILE_HISTOGRAM, data=counts.astype(np.int64), chunks=True, compression="gzip",
                     compression_opts=1, shuffle=True, fletcher32=True)
    _dataset(g, fmt.QUANTILE_VALUE, quantiles_from_histogram(counts, LEVELS).astype(np.float32))


def write_stats(g, stats) -> None:
    """A layer's statistics (:meth:`ChannelStats.summary`)."""
    for k, v in stats.summary().items():
        _dataset(g, f"{fmt.STATS}/{k}", v)
