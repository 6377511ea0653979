"""Receptive-field patches: the part of the network's input that a unit saw.

A patch is cut from the image as the network saw it (resized and cropped, uint8, before
normalization). Its box is the unit's receptive field; a field larger than the input is cut to
the input's size, centred on the field's centre, so deep layers still give a picture of what is
around the unit. Where the box passes the image border the patch is filled with 0 (black).
Patches larger than ``patch_size`` are downsampled (area averaging) to fit.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .receptive_field import ReceptiveField

__all__ = ["patch_shape", "patch_box", "cut_patch"]


def patch_extent(rf: ReceptiveField, input_size: tuple[int, int]) -> tuple[int, int]:
    """Side lengths ``(h, w)`` of a layer's patch box in input pixels."""
    return (min(rf.y.size, input_size[0]), min(rf.x.size, input_size[1]))


def patch_shape(rf: ReceptiveField, input_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Stored patch size ``(h, w)``: the extent, scaled down to fit ``patch_size``."""
    h, w = patch_extent(rf, input_size)
    scale = min(1.0, patch_size / max(h, w))
    return (max(1, round(h * scale)), max(1, round(w * scale)))


def patch_box(rf: ReceptiveField, y: int, x: int, input_size: tuple[int, int]):
    """Half-open box ``(y0, x0, y1, x1)`` of the patch for unit ``(y, x)``.

    Equal to the receptive field where it fits the input; otherwise an input-sized box centred
    on the field's centre.
    """
    box = rf.box(y, x)
    ph, pw = patch_extent(rf, input_size)
    y0, x0, y1, x1 = box
    if ph < rf.y.size:
        y0 = math.floor((box[0] + box[2]) / 2 - ph / 2)
        y1 = y0 + ph
    if pw < rf.x.size:
        x0 = math.floor((box[1] + box[3]) / 2 - pw / 2)
        x1 = x0 + pw
    return (y0, x0, y1, x1)


def cut_patch(image: np.ndarray, box, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Cut ``box`` from a uint8 ``(H, W, 3)`` image, zero-filled outside it, resized to
    ``out_shape`` when given and different."""
    y0, x0, y1, x1 = (int(v) for v in box)
    h, w = image.shape[:2]
    patch = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        patch[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if out_shape is not None and tuple(out_shape) != patch.shape[:2]:
        patch = np.asarray(Image.fromarray(patch).resize((out_shape[1], out_shape[0]), Image.BOX))
    return patch
