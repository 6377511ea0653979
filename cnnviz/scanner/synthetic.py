"""A format-valid run file of any size without scanning: for benchmarks of the readers at
ImageNet scale (``scripts/bench_read.py``), written by the assembler's own writers.

The values are random (a seeded, ReLU-like distribution; each image's mean a random share of its
maximum), the top-k by max and by mean are the exact top-k of those values, the statistics and
the quantile histograms (of the means, standing for the positions) are computed from them, the
patches are flat colours. The file says what
it is: root attributes ``synthetic = True`` and ``weights_origin = "synthetic: random values,
no network"``.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from ..images.patches import patch_shape
from ..model.taps import LayerTap
from ..run import format as fmt
from ..run.quantiles import SCALE
from .assemble import (
    create_layer_maxima,
    write_header,
    write_image_records,
    write_quantiles,
    write_ranking,
    write_stats,
    write_topk,
)
from .reducers import ChannelStats, merge_topk
from .state import MergedLayer

__all__ = ["write_synthetic_run"]


def write_synthetic_run(path: str | Path, taps: list[LayerTap], n_images: int, top_k: int = 16,
                        patch_size: int = 64, input_size: tuple[int, int] = (224, 224), n_classes: int = 1000,
                        maxima_dtype: str = "float32", seed: int = 0, block_rows: int = 4096) -> Path:
    """Write a synthetic run of ``n_images`` images over ``taps`` (e.g. ResNet50's 16 blocks)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    labels = [f"n{c:08d}" for c in np.arange(n_images) * n_classes // max(1, n_images)]
    relpaths = [f"{label}/synthetic_{i:08d}.JPEG" for i, label in enumerate(labels)]
    meta = _meta(taps, n_images, top_k, patch_size, input_size, maxima_dtype)
    geometry = np.tile(np.array([375, 500, 232, 309, 4, 42], dtype=np.int32), (n_images, 1))
    with h5py.File(path, "w") as f:
        write_header(f, meta, n_images, n_failed=0, world=1)
        f.attrs[fmt.ATTR_SYNTHETIC] = True
        write_image_records(f, relpaths, labels, np.zeros(0, np.int64), [])
        f.create_dataset(fmt.IMAGE_GEOMETRY, data=geometry)
        f.create_dataset(fmt.IMAGE_IDENTITY, data=np.zeros((n_images, 3), np.int64))
        f.create_dataset(fmt.IMAGE_PATCH_ERROR, data=np.array([""] * n_images, dtype=object),
                         dtype=h5py.string_dtype())
        kept = {t.name for t in taps} if maxima_dtype != "none" else set()
        dsets = create_layer_maxima(f, taps, n_images, kept)
        for tap, dset in zip(taps, dsets, strict=True):
            layer = _fill_layer(rng, tap, dset, n_images, top_k, maxima_dtype, block_rows)
            g = f[fmt.layer_group(tap.name)]
            write_topk(g, tap, layer, input_size, patch_size, geometry)
            write_ranking(g, fmt.TOPK_MEAN, tap, *layer.rankings["mean"], input_size, patch_size, geometry)
            write_stats(g, layer.stats)
            write_quantiles(g, layer.histogram, 256)
            for group in (fmt.TOPK, fmt.TOPK_MEAN):
                _flat_patches(g, group, tap, top_k, patch_size, input_size)
        f.attrs[fmt.ATTR_FINISHED] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key in ("scan_seconds", "assemble_seconds", "scan_wait_data_seconds", "scan_wait_disk_seconds"):
            f.attrs[key] = 0.0
        f.attrs[fmt.ATTR_N_PATCH_ERRORS] = 0
    return path


def _meta(taps, n_images: int, top_k: int, patch_size: int, input_size, maxima_dtype: str) -> dict:
    from .. import __version__
    from .state import tap_record

    return {
        "cnnviz_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": "synthetic", "weights_origin": "synthetic: random values, no network",
        "weights_spec": None, "weights_digest": "", "class_names": None,
        "preprocessing": {"resize": 232, "crop": list(input_size), "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"},
        "layers": [t.name for t in taps], "taps": [tap_record(t) for t in taps], "top_k": top_k,
        "batch_size": 256, "library_source": "synthetic", "library_root": "synthetic",
        "library_fingerprint": "synthetic", "n_images": n_images, "maxima_dtype": maxima_dtype,
        "patch_size": patch_size, "amp": False, "precision": "fp32", "rank_by": ["max", "mean"],
        "bottom_k": 0,
    }


def _fill_layer(rng, tap: LayerTap, dset, n: int, k: int, maxima_dtype: str, block_rows: int) -> MergedLayer:
    """Random per-image maxima in row blocks, with their exact top-k and statistics."""
    c, hw = tap.channels, tap.shape[1] * tap.shape[2]
    values = np.full((c, 0), -np.inf, np.float32)
    ids = np.zeros((c, 0), np.int64)
    index = np.zeros((c, 0), np.int64)
    mean_top = (values, ids, index)
    hist = np.zeros((c, SCALE.n_buckets + 1), np.int64)
    stats = ChannelStats.zeros(c)
    scale = rng.uniform(0.5, 4.0, c).astype(np.float32)
    for start in range(0, n, block_rows):
        rows = min(block_rows, n - start)
        m = np.maximum(rng.standard_normal((rows, c), dtype=np.float32) * scale + scale * 0.5, 0)
        pos = rng.integers(0, hw, (rows, c))
        if maxima_dtype != "none":
            m = m.astype(maxima_dtype).astype(np.float32)
        if dset is not None:
            dset["max"][start: start + rows] = m
            dset["pos"][start: start + rows] = pos
        means = m * rng.uniform(0.1, 0.5, (rows, 1)).astype(np.float32)
        stats.update(m, means)
        values, ids, index = _merged(values, ids, index, m, pos, start, k)
        mean_top = _merged(*mean_top, means, pos, start, k)
        keys = SCALE.bucket_of(means) + np.arange(c) * (SCALE.n_buckets + 1)
        hist += np.bincount(keys.ravel(), minlength=hist.size).reshape(hist.shape)
    return MergedLayer(values, ids, index, stats, {"mean": mean_top}, hist[:, :-1])


def _merged(values, ids, index, m: np.ndarray, pos: np.ndarray, start: int, k: int):
    """A block of rows ``m`` (images x channels) merged into a top-k."""
    rows = len(m)
    best = np.argpartition(-m.T, min(k, rows) - 1, axis=1)[:, :k] if rows > k else \
        np.tile(np.arange(rows), (m.shape[1], 1))
    cand_v = np.take_along_axis(m.T, best, axis=1)
    cand_x = np.take_along_axis(pos.T, best, axis=1)
    return merge_topk(np.concatenate([values, cand_v], 1), np.concatenate([ids, best + start], 1), k,
                      np.concatenate([index, cand_x], 1))


def _flat_patches(g, group: str, tap: LayerTap, k: int, patch_size: int, input_size) -> None:
    ph, pw = patch_shape(tap.rf, input_size, patch_size)
    ds = g.create_dataset(f"{group}/{fmt.PATCHES}", shape=(tap.channels, k, ph, pw, 3), dtype=np.uint8,
                          chunks=(1, k, ph, pw, 3), fletcher32=True)
    colours = (np.arange(tap.channels)[:, None] * np.array([37, 91, 151])) % 256
    for c0 in range(0, tap.channels, 256):
        c1 = min(tap.channels, c0 + 256)
        ds[c0:c1] = np.broadcast_to(colours[c0:c1, None, None, None, :].astype(np.uint8),
                                    (c1 - c0, k, ph, pw, 3))
