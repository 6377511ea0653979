"""A scanned layer's geometry as its run file records it: where each unit of its map looks in
the network's input (receptive fields, patch boxes) and back in the photo. Numpy only (the
scanner computes the same boxes from the traced field; tests compare the two)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..images.patches import patch_box
from . import format as fmt

__all__ = ["LayerGeometry"]


@dataclass(frozen=True)
class _Axis:
    size: int
    stride: int
    offset: int


@dataclass(frozen=True)
class _Field:
    """The duck type of :class:`cnnviz.model.receptive_field.ReceptiveField` that
    :func:`~cnnviz.images.patches.patch_box` needs, without importing torch."""

    y: _Axis
    x: _Axis

    @property
    def size(self) -> tuple[int, int]:
        return (self.y.size, self.x.size)

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        y0, x0 = self.y.offset + y * self.y.stride, self.x.offset + x * self.x.stride
        return (y0, x0, y0 + self.y.size, x0 + self.x.size)

    def center(self, y: int, x: int) -> tuple[float, float]:
        y0, x0, y1, x1 = self.box(y, x)
        return ((y0 + y1) / 2, (x0 + x1) / 2)


class LayerGeometry:
    """From a layer group's attributes (``rf_size``, ``rf_stride``, ``rf_offset``, ``height``,
    ``width``, ``patch_shape``, ``patch_factor``) and the run's crop ``(H, W)``."""

    def __init__(self, attrs, crop, patch_size: int):
        size, stride, offset = (tuple(int(v) for v in attrs[k])
                                for k in ("rf_size", "rf_stride", "rf_offset"))
        self.field = _Field(_Axis(size[0], stride[0], offset[0]), _Axis(size[1], stride[1], offset[1]))
        self.map_shape = (int(attrs[fmt.LAYER_HEIGHT]), int(attrs[fmt.LAYER_WIDTH]))
        self.patch_shape = tuple(int(v) for v in attrs[fmt.LAYER_PATCH_SHAPE])
        self.patch_factor = int(attrs[fmt.LAYER_PATCH_FACTOR])
        self.crop = (int(crop[0]), int(crop[1]))
        self.patch_size = int(patch_size)

    def boxes(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rf_box, patch_box)`` ``(M, 4)`` int32 of the units ``(y, x)``, as the scan writes them."""
        sy, sx = self.field.y.stride, self.field.x.stride
        shift = np.stack([y * sy, x * sx, y * sy, x * sx], axis=-1)
        rf = np.array(self.field.box(0, 0)) + shift
        patch = np.array(patch_box(self.field, 0, 0, self.crop, self.patch_size)) + shift
        return rf.astype(np.int32), patch.astype(np.int32)

    def unit_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """The centres of the map's rows and columns in network-input pixels (continuous: pixel
        ``i`` spans ``[i, i + 1)``)."""
        f = self.field
        ys = f.y.offset + f.y.size / 2 + f.y.stride * np.arange(self.map_shape[0])
        xs = f.x.offset + f.x.size / 2 + f.x.stride * np.arange(self.map_shape[1])
        return ys, xs
