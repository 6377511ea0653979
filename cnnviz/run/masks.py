"""Threshold masks: the part of a patch (or of the network's input) where a channel exceeds its
top-0.5 % level over all positions (NetDissect's convention; the level is the run's
``quantiles/value`` at ``mask_level``, :meth:`RunReader.mask_levels`).

A run stores the level per channel, not the masks: a mask needs the unit's whole activation
map, which the scan does not keep (keeping a window of the map with every top-k entry would
cost the scan a gather per candidate and the checkpoint the windows). Whoever has the map (the
report's photos in context, :func:`cnnviz.figures.patch_montage` with ``mask=True``, which
recomputes it for the k images shown) draws the mask from it with :func:`threshold_mask`.
The map is interpolated bilinearly between the units' field centres (as NetDissect upsamples
its maps), then thresholded. Numpy only.
"""

from __future__ import annotations

import numpy as np

from .geometry import LayerGeometry

__all__ = ["map_on_pixels", "threshold_mask"]


def map_on_pixels(act_map: np.ndarray, geometry: LayerGeometry, box, factor: int = 1) -> np.ndarray:
    """The activation map ``(H', W')`` interpolated at the centres of the ``factor x factor``
    pixel blocks of ``box`` ``(y0, x0, y1, x1)`` (network-input pixels, half-open): a float
    ``((y1-y0)//factor, (x1-x0)//factor)`` array. Unit ``(y, x)`` sits at its field's centre;
    beyond the outermost centres the edge value holds."""
    y0, x0, y1, x1 = (int(v) for v in box)
    ys, xs = geometry.unit_centres()
    py = y0 + (np.arange((y1 - y0) // factor) + 0.5) * factor
    px = x0 + (np.arange((x1 - x0) // factor) + 0.5) * factor
    act = np.asarray(act_map, dtype=np.float64)
    rows = _interp_axis(act, ys, py, axis=0)
    return _interp_axis(rows, xs, px, axis=1)


def _interp_axis(values: np.ndarray, centres: np.ndarray, at: np.ndarray, axis: int) -> np.ndarray:
    if len(centres) == 1:
        return np.repeat(values, len(at), axis=axis)
    u = np.clip((at - centres[0]) / (centres[1] - centres[0]), 0, len(centres) - 1)
    lo = np.minimum(np.floor(u).astype(np.int64), len(centres) - 2)
    w = u - lo
    a, b = np.take(values, lo, axis=axis), np.take(values, lo + 1, axis=axis)
    shape = [1, 1]
    shape[axis] = len(at)
    w = w.reshape(shape)
    return a * (1 - w) + b * w


def threshold_mask(act_map: np.ndarray, level: float, geometry: LayerGeometry, box=None,
                   factor: int = 1) -> np.ndarray:
    """Where the unit's interpolated map exceeds ``level``, on the pixel blocks of ``box``
    (default: the whole network input): a bool array. For a stored patch pass its
    ``patch_box`` and the layer's ``patch_factor``: the mask then has the patch's shape. Blocks
    whose centre lies outside the network's input (a patch's black border) are never in it."""
    if box is None:
        box = (0, 0, *geometry.crop)
    y0, x0, y1, x1 = (int(v) for v in box)
    py = y0 + (np.arange((y1 - y0) // factor) + 0.5) * factor
    px = x0 + (np.arange((x1 - x0) // factor) + 0.5) * factor
    seen = ((py >= 0) & (py < geometry.crop[0]))[:, None] & ((px >= 0) & (px < geometry.crop[1]))[None, :]
    if not np.isfinite(level):
        return np.zeros_like(seen)
    return (map_on_pixels(act_map, geometry, box, factor) > level) & seen
