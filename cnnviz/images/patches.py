"""Receptive-field patches: the part of the network's input that a unit saw.

A patch is cut from the image as the network saw it (resized and cropped, uint8, before
normalization). Its box is the unit's receptive field; a field larger than the input is cut to
the input's size, centred on the field's centre, so deep layers still give a picture of what is
around the unit. Where the box passes the image border the patch is filled with 0 (black).
Patches larger than ``patch_size`` are downsampled by an integer factor (the mean of each
``factor x factor`` block); the box then grows by less than the factor so that it divides evenly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..model.receptive_field import ReceptiveField

__all__ = ["patch_extent", "patch_factor", "patch_shape", "patch_box", "cut_patch", "downsample",
           "boxes_to_original"]


def patch_extent(rf: ReceptiveField, input_size: tuple[int, int]) -> tuple[int, int]:
    """The part of a field worth showing, ``(h, w)``: the field, at most the input's size."""
    return (min(rf.y.size, input_size[0]), min(rf.x.size, input_size[1]))


def patch_factor(rf: ReceptiveField, input_size: tuple[int, int], patch_size: int) -> int:
    """Integer downsampling factor so that the stored patch fits ``patch_size``."""
    return max(1, math.ceil(max(patch_extent(rf, input_size)) / patch_size))


def patch_shape(rf: ReceptiveField, input_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Stored patch size ``(h, w)``: the extent divided by the factor, rounded up."""
    f = patch_factor(rf, input_size, patch_size)
    h, w = patch_extent(rf, input_size)
    return (math.ceil(h / f), math.ceil(w / f))


def patch_box(rf: ReceptiveField, y: int, x: int, input_size: tuple[int, int], patch_size: int):
    """Half-open box ``(y0, x0, y1, x1)`` the patch of unit ``(y, x)`` is cut from.

    The unit's receptive field when it fits the input and needs no downsampling. Otherwise a box
    of ``factor * patch_shape`` pixels (the field at most input-sized, grown by less than the
    factor so that it divides evenly) centred on the field's centre.
    """
    f = patch_factor(rf, input_size, patch_size)
    sh, sw = patch_shape(rf, input_size, patch_size)
    if f == 1 and (sh, sw) == rf.size:
        return rf.box(y, x)
    cy, cx = rf.center(y, x)
    y0 = math.floor(cy - f * sh / 2)
    x0 = math.floor(cx - f * sw / 2)
    return (y0, x0, y0 + f * sh, x0 + f * sw)


def downsample(patches: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of ``(n, h, w, 3)`` patches (uint8: rounded half up).

    Sums ``factor`` row slices, then ``factor`` column slices: plain array additions, which
    numpy runs at memory speed (a multi-axis ``sum`` on the 6-D block view is ~10x slower).
    """
    if factor == 1:
        return patches
    n, h, w, c = patches.shape
    if patches.dtype == np.uint8:
        acc_dtype = np.uint16 if factor <= 16 else np.uint32
    else:
        acc_dtype = np.float64
    rows = patches.reshape(n, h // factor, factor, w * c)
    acc = rows[:, :, 0, :].astype(acc_dtype)
    for i in range(1, factor):
        acc += rows[:, :, i, :]
    cols = acc.reshape(n, h // factor, w // factor, factor, c)
    out = cols[:, :, :, 0, :].copy()
    for i in range(1, factor):
        out += cols[:, :, :, i, :]
    area = factor * factor
    if patches.dtype == np.uint8:
        return ((out + area // 2) // area).astype(np.uint8)
    return (out / area).astype(patches.dtype)


def cut_patch(image: np.ndarray, box, factor: int = 1) -> np.ndarray:
    """Cut ``box`` from a ``(H, W, 3)`` image, zero-filled outside it, then downsampled by
    ``factor`` (as the run file stores it)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    h, w = image.shape[:2]
    patch = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        patch[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return downsample(patch[None], factor)[0] if factor > 1 else patch


def boxes_to_original(boxes: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """Vectorized :meth:`Geometry.to_original`: boxes ``(M, 4)`` with one geometry row each
    ``(M, 6)`` (``orig_h, orig_w, resized_h, resized_w, crop_top, crop_left``)."""
    g = geometry.astype(np.float64)
    sy = g[:, 0] / g[:, 2]
    sx = g[:, 1] / g[:, 3]
    b = boxes.astype(np.float64)
    return np.stack([(b[:, 0] + g[:, 4]) * sy, (b[:, 1] + g[:, 5]) * sx,
                     (b[:, 2] + g[:, 4]) * sy, (b[:, 3] + g[:, 5]) * sx], axis=1)
