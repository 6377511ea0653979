"""Cutting the top-k patches at the end of a scan.

Every image in any channel's top-k is decoded once, by worker processes, into a crop store
(a ``.npy`` file in the work folder, read through the page cache), then each layer's patches
are cut from it. Decoding was the cost: one process re-decoding images layer after layer took
154 s for ResNet50's 16 blocks over 16,384 images with real weights (whose top-k images are
many and different), against 5 s with random weights (a few images win every channel).
"""

from __future__ import annotations

import multiprocessing
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..images.dataset import decode_crop
from ..images.library import ImageLibrary
from ..images.patches import downsample
from ..run import format as fmt

__all__ = ["CropStore", "write_patches"]


class CropStore:
    """Network-input crops of the images ``ids``, decoded once. An image whose file changed or
    vanished since it was scanned gets no crop: ``errors`` says why (its patches stay black),
    and the run file keeps everything else."""

    def __init__(self, lib: ImageLibrary, preprocessing, identity: np.ndarray, ids: np.ndarray,
                 folder: Path, workers: int):
        h, w = preprocessing.crop
        self.ids = np.unique(ids[ids >= 0])
        self.slot = {int(i): j for j, i in enumerate(self.ids)}
        self.path = Path(folder) / "crops.npy"
        self.crops = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8,
                                               shape=(max(1, len(self.ids)), h, w, 3))
        self.errors: dict[int, str] = {}
        jobs = [(int(i), j) for j, i in enumerate(self.ids)]
        context = (lib, preprocessing, identity, str(self.path))
        if workers > 0 and len(jobs) > 1:
            chunks = [jobs[s: s + 64] for s in range(0, len(jobs), 64)]
            with multiprocessing.get_context("fork").Pool(min(workers, len(chunks)), _worker_init,
                                                          (context,)) as pool:
                for errors in pool.imap_unordered(_decode_chunk, chunks):
                    self.errors.update(errors)
        else:
            _worker_init(context, self.crops)
            self.errors.update(_decode_chunk(jobs))
        self.crops.flush()

    def get(self, image_id: int) -> np.ndarray | None:
        if image_id in self.errors or image_id not in self.slot:
            return None
        return self.crops[self.slot[image_id]]

    def close(self) -> None:
        del self.crops
        self.path.unlink(missing_ok=True)


_WORKER: dict = {}


def _worker_init(context, crops: np.ndarray | None = None) -> None:
    lib, preprocessing, identity, path = context
    _WORKER.update(lib=lib, pre=preprocessing, identity=identity,
                   crops=crops if crops is not None else np.load(path, mmap_mode="r+"))


def _decode_chunk(jobs: list[tuple[int, int]]) -> dict[int, str]:
    """Decode ``(image id, slot)`` pairs into the store; returns the images that failed."""
    errors = {}
    for image_id, slot in jobs:
        crop, why = _decode(image_id)
        if crop is None:
            errors[image_id] = why
        else:
            _WORKER["crops"][slot] = crop
    return errors


def _decode(image_id: int) -> tuple[np.ndarray | None, str]:
    try:
        crop, _, identity = decode_crop(_WORKER["lib"], _WORKER["pre"], image_id)
    except FileNotFoundError:
        return None, "vanished after it was scanned"
    except Exception as exc:  # noqa: BLE001 - any failure costs this image's patches only
        return None, f"unreadable when its patches were cut: {type(exc).__name__}: {exc}"
    if identity[2] != int(_WORKER["identity"][image_id][2]):  # the content's digest
        return None, "changed after it was scanned (its content differs)"
    return crop, ""


def write_patches(f, jobs, store: CropStore, block_bytes: int = 128 << 20) -> None:
    """Cut every patch of every ranking, per layer and block of channels: ``jobs`` are
    ``(tap, group, ids, boxes)`` with ``group`` the ranking's group (``topk``, ``topk_mean``,
    ``bottomk``), ``ids`` ``(C, k)`` and ``boxes`` ``(C, k, 4)``.

    Each image's crop is zero-padded to the layer's reach and block-averaged once per phase of
    the boxes modulo the downsampling factor (almost always one phase: boxes move by the
    stride); every patch is then a slice of that small image. The blocks averaged are exactly
    those of each box, so the pixels equal cutting each box and downsampling it alone (what
    :func:`cnnviz.images.patches.cut_patch` does), at a fraction of the memory traffic."""
    for tap, group, ids, boxes in jobs:
        g = f[fmt.layer_group(tap.name)]  # (ids and boxes from memory: a full disk may lose writes)
        ph, pw = (int(v) for v in g.attrs[fmt.LAYER_PATCH_SHAPE])
        c_total, k = ids.shape
        ds = g.create_dataset(f"{group}/{fmt.PATCHES}", shape=(c_total, k, ph, pw, 3), dtype=np.uint8,
                              chunks=(1, k, ph, pw, 3), fletcher32=True)
        cutter = _PatchCutter(store, int(g.attrs[fmt.LAYER_PATCH_FACTOR]), (ph, pw), boxes[ids >= 0])
        channel_block = max(1, block_bytes // (k * ph * pw * 3))
        for c0 in range(0, c_total, channel_block):
            c1 = min(c_total, c0 + channel_block)
            block = cutter.cut(ids[c0:c1].reshape(-1), boxes[c0:c1].reshape(-1, 4))
            ds[c0:c1] = block.reshape(c1 - c0, k, ph, pw, 3)


class _PatchCutter:
    """Patches of one layer: ``cut(ids, boxes)`` -> uint8 ``(n, ph, pw, 3)``, black for empty
    slots and for images that changed since they were scanned."""

    def __init__(self, store: CropStore, factor: int, shape: tuple[int, int], boxes: np.ndarray,
                 max_bytes: int = 256 << 20):
        self.store, self.factor, (self.ph, self.pw) = store, factor, shape
        # the area every box of the layer lies in, in network-input pixels
        self.lo = (int(boxes[:, 0].min()), int(boxes[:, 1].min())) if len(boxes) else (0, 0)
        self.hi = (int(boxes[:, 2].max()), int(boxes[:, 3].max())) if len(boxes) else (0, 0)
        self.smalls: OrderedDict[tuple[int, int, int], np.ndarray | None] = OrderedDict()
        self.max_items = max(16, max_bytes // max(1, (self.hi[0] - self.lo[0]) * (self.hi[1] - self.lo[1])
                                                  * 3 // (factor * factor)))

    def cut(self, ids: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        f, ph, pw = self.factor, self.ph, self.pw
        out = np.zeros((len(ids), ph, pw, 3), dtype=np.uint8)
        for e in np.flatnonzero(ids >= 0):
            qy, qx = int(boxes[e, 0] - self.lo[0]) % f, int(boxes[e, 1] - self.lo[1]) % f
            small = self._small(int(ids[e]), qy, qx)
            if small is not None:
                r = (int(boxes[e, 0]) - self.lo[0] - qy) // f
                c = (int(boxes[e, 1]) - self.lo[1] - qx) // f
                out[e] = small[r: r + ph, c: c + pw]
        return out

    def _small(self, image_id: int, qy: int, qx: int) -> np.ndarray | None:
        key = (image_id, qy, qx)
        if key in self.smalls:
            self.smalls.move_to_end(key)
            return self.smalls[key]
        crop = self.store.get(image_id)
        small = None if crop is None else self._average(crop, qy, qx)
        self.smalls[key] = small
        if len(self.smalls) > self.max_items:
            self.smalls.popitem(last=False)
        return small

    def _average(self, crop: np.ndarray, qy: int, qx: int) -> np.ndarray:
        """The crop zero-padded to the layer's area (starting ``qy, qx`` past its corner),
        averaged in ``factor x factor`` blocks."""
        f = self.factor
        y0, x0 = self.lo[0] + qy, self.lo[1] + qx
        h = (self.hi[0] - y0 + f - 1) // f * f
        w = (self.hi[1] - x0 + f - 1) // f * f
        area = np.zeros((h, w, 3), dtype=np.uint8)
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y0 + h, crop.shape[0]), min(x0 + w, crop.shape[1])
        if sy1 > sy0 and sx1 > sx0:
            area[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = crop[sy0:sy1, sx0:sx1]
        return downsample(area[None], f)[0]
