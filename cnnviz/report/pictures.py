"""The report's pictures made of numbers: strips of stored patches, and the histogram.

A receptive field that runs past the network's input was stored with black where it did (zero
padding); a strip shows the part inside the input, enlarged to its tile, and a light hatch
where the field went on, so that a deep layer's corner unit is not three quarters black.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

__all__ = ["patch_strip", "inside_part", "hatch", "histogram_svg"]

HATCH = ((238, 238, 238), (224, 224, 224))  # the margin where a field passed the input: two light greys


def hatch(height: int, width: int) -> np.ndarray:
    """Light grey diagonal stripes, uint8 ``(height, width, 3)`` (a new array: the caller may
    draw on it)."""
    return _hatch(height, width).copy()


@functools.lru_cache(maxsize=16)
def _hatch(height: int, width: int) -> np.ndarray:
    # every tile of a layer has one size: drawn once
    y, x = np.indices((height, width))
    stripes = ((x + y) // 4) % 2
    return np.where(stripes[..., None] == 0, np.array(HATCH[0], np.uint8), np.array(HATCH[1], np.uint8))


def inside_part(patch: np.ndarray, box, crop: tuple[int, int], factor: int):
    """The rows and columns of a stored ``patch`` (cut from ``box`` ``y0, x0, y1, x1`` of the
    network's input, ``factor`` input pixels per patch pixel: each the mean of a block) whose
    blocks lie wholly inside the input ``crop`` ``(H, W)`` (a block astride the border is part
    black), and on which sides the field went past it: ``(part, (top, left, bottom, right))``;
    ``part`` is ``None`` when nothing is inside."""
    y0, x0 = int(box[0]), int(box[1])
    h, w = patch.shape[:2]
    starts_y, starts_x = y0 + np.arange(h) * factor, x0 + np.arange(w) * factor
    rows = np.flatnonzero((starts_y >= 0) & (starts_y + factor <= crop[0]))
    cols = np.flatnonzero((starts_x >= 0) & (starts_x + factor <= crop[1]))
    cut = (bool(y0 < 0), bool(x0 < 0), bool(int(box[2]) > crop[0]), bool(int(box[3]) > crop[1]))
    if not len(rows) or not len(cols):
        return None, cut
    return patch[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1], cut


def _offset(before: bool, after: bool, free: int) -> int:
    """Against the side where the field went on, else centred."""
    if before and not after:
        return free
    if after and not before:
        return 0
    return free // 2


def _tile(patch: np.ndarray, box, crop: tuple[int, int], factor: int, size: tuple[int, int]) -> np.ndarray:
    th, tw = size
    part, (top, left, bottom, right) = inside_part(patch, box, crop, factor)
    if part is None:
        return hatch(th, tw)
    if not (top or left or bottom or right) and part.shape[:2] == patch.shape[:2]:
        return np.asarray(Image.fromarray(part).resize((tw, th), Image.NEAREST))
    s = min(th / part.shape[0], tw / part.shape[1])
    h, w = max(1, round(part.shape[0] * s)), max(1, round(part.shape[1] * s))
    out = hatch(th, tw)
    oy, ox = _offset(top, bottom, th - h), _offset(left, right, tw - w)
    out[oy: oy + h, ox: ox + w] = np.asarray(Image.fromarray(part).resize((w, h), Image.NEAREST))
    return out


def patch_strip(patches: np.ndarray, boxes: np.ndarray, crop: tuple[int, int], factor: int,
                size: tuple[int, int]) -> Image.Image:
    """A channel's stored patches side by side, each in a ``size`` ``(h, w)`` tile: the part
    inside the network's input, enlarged (nearest neighbour), and a hatch where the field
    went past it. ``boxes``: each patch's box in the input."""
    th, tw = size
    tiles = [_tile(p, b, crop, factor, size) for p, b in zip(patches, boxes, strict=True)]
    return Image.fromarray(np.concatenate(tiles, axis=1) if tiles else hatch(th, tw))


def histogram_svg(values: np.ndarray, top: np.ndarray, width: int = 460, height: int = 190) -> str:
    """An SVG histogram of ``values`` (a channel's per-image maxima) with ``top`` marked in red
    and both axes labelled (numbers and fixed words only: safe markup)."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return "<p>no readable images</p>"
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    left, right, bottom, top_pad = 46, 12, 40, 8
    pw, ph = width - left - right, height - bottom - top_pad
    counts, _ = np.histogram(values, bins=40, range=(lo, hi))
    peak = max(1, int(counts.max()))
    bar_w = pw / len(counts)
    base = top_pad + ph

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    bars = "".join(
        f'<rect x="{left + i * bar_w:.1f}" y="{base - c / peak * ph:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
        f'height="{c / peak * ph:.1f}" fill="#7aa6c2"/>' for i, c in enumerate(counts))
    marks = "".join(f'<line x1="{x_of(v):.1f}" y1="{top_pad}" x2="{x_of(v):.1f}" y2="{base}" '
                    'stroke="#c0392b" stroke-width="1"/>' for v in top[~np.isnan(top)])
    axes = (f'<line x1="{left}" y1="{base}" x2="{left + pw}" y2="{base}" stroke="#888"/>'
            f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{base}" stroke="#888"/>')
    ticks = (f'<text x="{left}" y="{base + 13}" font-size="10" text-anchor="middle">{lo:.3g}</text>'
             f'<text x="{left + pw}" y="{base + 13}" font-size="10" text-anchor="end">{hi:.3g}</text>'
             f'<text x="{left - 4}" y="{base}" font-size="10" text-anchor="end">0</text>'
             f'<text x="{left - 4}" y="{top_pad + 9}" font-size="10" text-anchor="end">{peak}</text>')
    labels = (f'<text x="{left + pw / 2:.0f}" y="{height - 6}" font-size="11" text-anchor="middle">'
              "the channel's maximum in an image (its strongest unit)</text>"
              f'<text x="12" y="{top_pad + ph / 2:.0f}" font-size="11" text-anchor="middle" '
              f'transform="rotate(-90 12 {top_pad + ph / 2:.0f})">images</text>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="distribution of the per-image '
            f'maxima">{bars}{marks}{axes}{ticks}{labels}</svg>')
