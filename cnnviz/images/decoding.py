"""Decoding library images into the network's uint8 crops, in DataLoader workers.

A bad file never raises here: it becomes an error string that the scan records in
``/failures``.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UsageError
from ..model.preprocessing import Preprocessing
from .library import ImageLibrary

__all__ = ["load_rgb", "read_image", "LibraryDataset", "collate", "batch_ranges"]


def load_rgb(path) -> Image.Image:
    """Open and fully decode an image file as RGB (raises on unreadable files)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def read_image(path, what: str = "image") -> Image.Image:
    """:func:`load_rgb` for an image a user named: a missing or unreadable file is a
    :class:`~cnnviz.errors.UsageError` naming it (``what`` names the argument)."""
    try:
        return load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"`{what}` {path}: cannot read it as an image "
                         f"({type(exc).__name__}: {exc})") from None


class LibraryDataset(Dataset):
    """Decodes library images to the network's uint8 crop; never raises on a bad file.

    Each item is ``(image_id, crop, geometry, error)``: ``crop`` is a uint8 ``(H, W, 3)`` tensor
    (zeros when unreadable), ``geometry`` a 6-int tensor (see
    :class:`~cnnviz.preprocessing.Geometry`), ``error`` an empty string or the reason.
    """

    def __init__(self, library: ImageLibrary, preprocessing: Preprocessing):
        self.library = library
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.library)

    def __getitem__(self, image_id: int):
        h, w = self.preprocessing.crop
        try:
            crop, geom = self.preprocessing.crop_uint8(load_rgb(self.library.path(image_id)))
            g = torch.tensor([geom.orig_height, geom.orig_width, geom.resized_height,
                              geom.resized_width, geom.crop_top, geom.crop_left], dtype=torch.int64)
            return image_id, torch.from_numpy(crop), g, ""
        except Exception as exc:  # noqa: BLE001 - any decoding failure is recorded, not raised
            reason = f"{type(exc).__name__}: {exc}".strip()
            blank = torch.zeros((h, w, 3), dtype=torch.uint8)
            return image_id, blank, torch.zeros(6, dtype=torch.int64), reason


def collate(items):
    """Batch of dataset items -> ids, crops, geometry (all images) and error strings."""
    ids = torch.tensor([it[0] for it in items], dtype=torch.int64)
    crops = torch.stack([it[1] for it in items])
    geoms = torch.stack([it[2] for it in items])
    errors = [it[3] for it in items]
    return ids, crops, geoms, errors


def batch_ranges(n: int, batch_size: int) -> list[list[int]]:
    """Fixed batches ``[i*B, (i+1)*B)``: the same batches whether a scan resumed or not."""
    return [list(range(s, min(s + batch_size, n)))
            for s in range(0, n, batch_size)]

