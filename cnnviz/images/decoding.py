"""Decoding image files into RGB pictures, as a photo viewer shows them.

The rules (also in the README, "What happens when things go wrong"):

* EXIF orientation is applied: a phone photo tagged "rotate 90" is seen upright, and its
  original size is that of the upright photo.
* 16-bit images are scaled from their 0..65535 range, 32-bit integer images from the range
  their values use (0..255 or 0..65535); float images from 0..1 when their values lie there,
  else from their own minimum..maximum. Grayscale becomes three equal channels; alpha is
  dropped; palette images are expanded.
* An image of more than :data:`MAX_PIXELS` pixels is refused before it is decoded (a small file
  can declare gigapixels), and so is a file over :data:`MAX_FILE_BYTES` or one that is not a
  regular file (a FIFO named ``x.jpg`` would block a worker forever). A JPEG of more than
  :data:`DRAFT_PIXELS` is decoded at a reduced scale (libjpeg's DCT scaling, ``Image.draft``),
  still at least twice the size the network's resize needs, so memory per image stays bounded
  whatever its size; smaller photos (phone photos included) are decoded exactly, as
  torchvision's own transforms would see them.
* Every decoding also reports the file's identity (size, modification time, a 64-bit BLAKE2b
  digest of its bytes), so a scan can tell that a file changed after it was scanned.

Nothing here imports torch: the assembler and the readers decode too.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError

__all__ = ["MAX_PIXELS", "DRAFT_PIXELS", "Decoded", "decode_file", "load_rgb", "read_image", "file_digest"]

#: Pillow's own "decompression bomb" error threshold: larger images are refused unread.
MAX_PIXELS = 178_956_970
#: JPEGs larger than this (in pixels) are decoded at a reduced scale.
DRAFT_PIXELS = 16_000_000
#: Files larger than this are refused unread (a decoder holds the whole file in memory).
MAX_FILE_BYTES = 512 * 1024 * 1024
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Decoded:
    """An RGB picture, the size of the (upright) original in pixels, and the file's identity
    ``(size, mtime_ns, digest)``."""

    image: Image.Image
    original_size: tuple[int, int]  # (width, height)
    identity: tuple[int, int, int]


def file_digest(data: bytes) -> int:
    """A signed 64-bit BLAKE2b digest of a file's bytes (fits an int64 dataset)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def decode_file(path: str | os.PathLike, min_side: int | None = None) -> Decoded:
    """Decode ``path`` by the rules above; ``min_side`` is the shorter side the picture will be
    resized to (JPEGs more than twice as large are decoded at a reduced scale).

    Raises:
        OSError, ValueError, Image.DecompressionBombError: unreadable or too large (the scan
            records the reason; :func:`read_image` turns it into a UsageError).
    """
    path = Path(path)
    stat = path.stat()
    if not S_ISREG(stat.st_mode):  # a FIFO or device named like an image would block or never end
        raise ValueError(f"{path.name} is not a regular file")
    if stat.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{stat.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,} "
                         "(cnnviz.images.decoding.MAX_FILE_BYTES)")
    data = path.read_bytes()
    identity = (stat.st_size, stat.st_mtime_ns, file_digest(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise _too_large(*_declared_size(data)) from None
        except UnidentifiedImageError:  # Pillow's message names the in-memory buffer, not the file
            raise UnidentifiedImageError(f"not an image format Pillow can read ({path.name}, "
                                         f"{len(data):,} bytes)") from None
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise _too_large(w, h)
            orientation = im.getexif().get(0x0112, 1)
            _draft(im, min_side)
            im.load()
            image = _to_rgb(ImageOps.exif_transpose(im))
    original = (h, w) if orientation in _ROTATED else (w, h)
    return Decoded(image, original, identity)


def _too_large(w: int, h: int) -> Image.DecompressionBombError:
    size = f"{w}x{h} = {w * h:,} pixels" if w and h else "too many pixels"
    return Image.DecompressionBombError(f"{size}, over the limit of {MAX_PIXELS:,} "
                                        "(cnnviz.images.decoding.MAX_PIXELS)")


def _declared_size(data: bytes) -> tuple[int, int]:
    """The size an image declares, read without Pillow's own size limit."""
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - only for the message
        return (0, 0)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _draft(im: Image.Image, min_side: int | None) -> None:
    w, h = im.size
    if not min_side or im.format != "JPEG" or w * h <= DRAFT_PIXELS:
        return
    scale = min(w, h) / (2 * min_side)
    if scale >= 2:
        im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            finite = a[np.isfinite(a)]
            lo, hi = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) \
                else (float(finite.min()), float(finite.max()))
        else:
            top = float(a.max()) if a.size else 0.0
            hi = 65535.0 if im.mode.startswith("I;16") or top > 255 else 255.0
            lo, hi = 0.0, max(hi, top)
        scaled = np.nan_to_num((a - lo) / max(hi - lo, 1e-12), nan=0.0)
        gray = np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return im.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Open and fully decode an image file as RGB by the rules above (raises on unreadable
    files)."""
    return decode_file(path).image


def read_image(path, what: str = "image") -> Image.Image:
    """:func:`load_rgb` for an image a user named: a missing or unreadable file is a
    :class:`~cnnviz.errors.UsageError` naming it (``what`` names the argument)."""
    try:
        return load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"`{what}` {path}: cannot read it as an image "
                         f"({type(exc).__name__}: {exc})") from None
