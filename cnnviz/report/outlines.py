"""Mask outlines: where a channel exceeds its top-0.5 % level over all positions (the run's
``mask_level``, :meth:`RunReader.mask_levels`), drawn on the report's patches and photos.

The masks are :func:`cnnviz.run.masks.threshold_mask`'s (the map interpolated bilinearly between
the units' field centres, then thresholded), computed for a channel's images at once: that
interpolation is linear and separable, so its weights are read once per layer from
:func:`~cnnviz.run.masks.map_on_pixels` and each stack of maps is two matrix products (a call
per image took 1 ms: half a minute for a report of every channel of four SqueezeNet layers).
Numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..run.geometry import LayerGeometry
from ..run.masks import map_on_pixels

__all__ = ["MASK_COLOUR", "LayerMasks", "outline", "resized", "patch_outlines"]

MASK_COLOUR = (57, 255, 20)  # a green apart from the box's cyan and the map's inferno tint


class LayerMasks:
    """One layer's maps on the network's input pixels, for many images at once."""

    def __init__(self, geometry: LayerGeometry):
        h, w = geometry.map_shape
        rows, cols = geometry.crop
        # map_on_pixels of a map that is 1 on one row of units (or column) and 0 elsewhere is the
        # weight of that row at every pixel row (column)
        self.wy = np.stack([map_on_pixels(np.outer(np.eye(h)[j], np.ones(w)), geometry, (0, 0, rows, 1))[:, 0]
                            for j in range(h)], axis=1)
        self.wx = np.stack([map_on_pixels(np.outer(np.ones(h), np.eye(w)[j]), geometry, (0, 0, 1, cols))[0]
                            for j in range(w)], axis=1)

    def fields(self, maps: dict[int, np.ndarray | None], level: float) -> dict[int, np.ndarray]:
        """Per image whose map passes ``level`` somewhere, the map on every input pixel: float32
        ``(H, W)`` (``> level`` is its mask). An interpolated map never exceeds its largest unit,
        so an image whose units all stay at or under the level has no mask and is left out."""
        if not np.isfinite(level):
            return {}
        ids = [i for i, m in maps.items() if m is not None and m.shape == (self.wy.shape[1], self.wx.shape[1])
               and float(np.max(m)) > level]
        if not ids:
            return {}
        on = self._on_pixels(np.stack([maps[i] for i in ids]).astype(np.float64))
        return dict(zip(ids, on, strict=True))

    def _on_pixels(self, stack: np.ndarray) -> np.ndarray:
        """``wy @ map @ wx.T`` of each map of ``stack`` ``(n, h, w)``, as two plain matrix
        products (numpy's stacked matmul does not use BLAS: 100 times slower here)."""
        n, h, w = stack.shape
        rows, cols = self.wy.shape[0], self.wx.shape[0]
        across = (stack.reshape(n * h, w) @ self.wx.T).reshape(n, h, cols)  # (n, h, W)
        down = self.wy @ across.transpose(1, 0, 2).reshape(h, n * cols)  # (H, n * W)
        return down.reshape(rows, n, cols).transpose(1, 0, 2).astype(np.float32)


def resized(field: np.ndarray, level: float, size: tuple[int, int]) -> np.ndarray:
    """The mask ``field > level`` at ``size`` ``(width, height)``: the field resampled
    (bilinear, so that an enlarged mask has smooth edges, not the input pixels' steps), then
    thresholded."""
    w, h = max(1, int(size[0])), max(1, int(size[1]))
    image = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.asarray(image.resize((w, h), Image.BILINEAR)) > level


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary of a bool mask, two pixels wide (its pixels next to one outside, and those
    outside next to one inside). The array's edge continues the mask: a region cut by the edge
    of a patch is not outlined along it."""
    p = np.pad(mask, 1, mode="edge")
    near = (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:])
    any_in = near[0] | near[1] | near[2] | near[3]
    all_in = near[0] & near[1] & near[2] & near[3]
    return (mask & ~all_in) | (~mask & any_in)


def draw(pixels: np.ndarray, line: np.ndarray, top: int, left: int, colour=MASK_COLOUR) -> None:
    """Paint ``line`` (bool) onto ``pixels`` (``(H, W, 3)`` or RGBA, in place) at ``(top,
    left)``, clipped to it."""
    ph, pw = pixels.shape[:2]
    lh, lw = line.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + lh, ph), min(left + lw, pw)
    if y1 <= y0 or x1 <= x0:
        return
    part = line[y0 - top: y1 - top, x0 - left: x1 - left]
    value = np.array(colour if pixels.shape[2] == 3 else (*colour, 255), dtype=pixels.dtype)
    pixels[y0:y1, x0:x1][part] = value


def patch_outlines(fields: list[np.ndarray | None], level: float, boxes: np.ndarray,
                   places: list[tuple[float, float, float, float] | None], crop: tuple[int, int],
                   side: int) -> np.ndarray | None:
    """The outlines of a ranking's masks over its patch tiles, side by side: RGBA uint8
    ``(side, k*side, 4)``, transparent but for the lines (``None`` when no patch has one).
    ``boxes``: each patch's box in the network's input; ``places``: where its part inside the
    input lies in its tile (``left, top, width, height``, :func:`.context.patch_view`)."""
    k = len(fields)
    strip = np.zeros((side, k * side, 4), np.uint8)
    drawn = False
    for r, (field, box, place) in enumerate(zip(fields, boxes, places, strict=True)):
        if field is None or place is None:
            continue
        y0, x0 = max(int(box[0]), 0), max(int(box[1]), 0)
        y1, x1 = min(int(box[2]), crop[0]), min(int(box[3]), crop[1])
        if y1 <= y0 or x1 <= x0:
            continue
        left, top, w, h = (round(v) for v in place)
        line = outline(resized(field[y0:y1, x0:x1], level, (w, h)))
        if line.any():
            tile = strip[:, r * side: (r + 1) * side]
            draw(tile, line, top, left)
            drawn = True
    return strip if drawn else None
