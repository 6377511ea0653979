"""The library as a torch ``Dataset`` for DataLoader workers: each image decoded to the
network's uint8 crop. A bad file never raises here: it becomes an error string that the scan
records in ``/failures``."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from .decoding import decode_file
from .library import ImageLibrary

if TYPE_CHECKING:
    from ..model.preprocessing import Preprocessing

__all__ = ["LibraryDataset", "collate", "batch_ranges", "decode_crop", "die_with_parent"]


def decode_crop(library: ImageLibrary, preprocessing: Preprocessing, image_id: int):
    """``(crop uint8 (H, W, 3), Geometry, identity)`` of one library image (raises when
    unreadable)."""
    decoded = decode_file(library.path(image_id), preprocessing.resize)
    crop, geometry = preprocessing.crop_uint8(decoded.image, decoded.original_size)
    return crop, geometry, decoded.identity


class LibraryDataset(Dataset):
    """Decodes library images to the network's uint8 crop; never raises on a bad file.

    Each item is ``(image_id, crop, geometry, identity, error)``: ``crop`` is a uint8
    ``(H, W, 3)`` tensor (zeros when unreadable), ``geometry`` a 6-int tensor (see
    :class:`~cnnviz.model.preprocessing.Geometry`), ``identity`` the file's ``(size, mtime_ns,
    digest)``, ``error`` an empty string or the reason.
    """

    def __init__(self, library: ImageLibrary, preprocessing: Preprocessing):
        self.library = library
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.library)

    @staticmethod
    def worker_init(worker_id: int) -> None:
        """``worker_init_fn`` of the DataLoaders that decode images. A worker leaves Ctrl-C (and
        a closed terminal's SIGHUP) to the main process, which finishes the batch and
        checkpoints (a terminal signals the whole process group); and it dies with the main
        process: after ``kill -9`` of the scan alone, a worker lived on for seconds holding the
        run's lock (inherited with the fork), and an immediate ``resume`` was refused."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        die_with_parent()

    def __getitem__(self, image_id: int):
        h, w = self.preprocessing.crop
        try:
            crop, geom, identity = decode_crop(self.library, self.preprocessing, image_id)
            g = torch.tensor([geom.orig_height, geom.orig_width, geom.resized_height,
                              geom.resized_width, geom.crop_top, geom.crop_left], dtype=torch.int64)
            return image_id, torch.from_numpy(crop), g, torch.tensor(identity, dtype=torch.int64), ""
        except Exception as exc:  # noqa: BLE001 - any decoding failure is recorded, not raised
            reason = _reason(exc, self.library.path(image_id))
            blank = torch.zeros((h, w, 3), dtype=torch.uint8)
            zeros = torch.zeros(9, dtype=torch.int64)
            return image_id, blank, zeros[:6], zeros[6:], reason


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel kill this (forked) process when its parent dies (Linux:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere, or if the parent is already gone, leave
    at once when the parent is gone (PyTorch's own watchdog checks every 5 s)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before the prctl took effect


def _reason(exc: Exception, path) -> str:
    reason = f"{type(exc).__name__}: {exc}".strip()
    if str(path).lower().endswith((".heic", ".heif")) and "identify" in reason:
        reason += " (HEIC/HEIF needs the pillow-heif package: pip install pillow-heif)"
    return reason


def collate(items):
    """Batch of dataset items -> ids, crops, geometry, identities (all images) and error strings."""
    ids = torch.tensor([it[0] for it in items], dtype=torch.int64)
    crops = torch.stack([it[1] for it in items])
    geoms = torch.stack([it[2] for it in items])
    identities = torch.stack([it[3] for it in items])
    errors = [it[4] for it in items]
    return ids, crops, geoms, identities, errors


def batch_ranges(n: int, batch_size: int) -> list[list[int]]:
    """Fixed batches ``[i*B, (i+1)*B)``: the same batches whether a scan resumed or not."""
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
