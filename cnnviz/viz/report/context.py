"""Dataset examples in context: the whole photo (downscaled), the patch's box drawn on it and
the channel's activation map laid over it.

The activation maps are recomputed at report time: each unique photo of the report is decoded
once and goes once through the run's model (all layers tapped in one forward pass); only the
maps of the channels it is shown for are kept. Without the model (a run of a user module, or
weights that cannot be loaded) the tiles show the photo and the box only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ...images.decoding import decode_file
from ...run import format as fmt
from ...run.reader import RunReader

__all__ = ["Context", "gather_context", "context_tile", "context_strip", "TILE", "BOX_COLOUR"]

TILE = 144  # side of a context tile, pixels
BOX_COLOUR = (0, 255, 255)
_BACKGROUND = (236, 236, 236)


@dataclass
class _Photo:
    pixels: np.ndarray  # uint8 photo scaled to fit the tile
    scale: float  # tile pixels per original pixel
    crop_box: tuple[float, float, float, float]  # the network input, original pixels


@dataclass
class Context:
    """Per image id its downscaled photo; per (layer, channel, image id) its activation map."""

    photos: dict[int, _Photo | None] = field(default_factory=dict)
    maps: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    with_maps: bool = False


def gather_context(reader: RunReader, wanted: dict[str, list[int]], model=None, device: str = "cpu",
                   progress: bool = False) -> Context:
    """Photos and maps for the top-k of the channels ``wanted[layer]``."""
    import torch
    from tqdm.auto import tqdm

    from ...model.taps import capture

    need: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for layer, channels in wanted.items():
        ids = reader.layer(layer)[fmt.TOPK_IMAGE_ID][()]
        for c in channels:
            for i in ids[c][ids[c] >= 0]:
                need[int(i)].append((layer, c))
    ctx = Context(with_maps=model is not None)
    errors = reader.patch_errors
    root = reader.library_root
    module = model.module if model is not None else None
    for i in tqdm(sorted(need), desc="report: photos in context", disable=not progress, leave=False):
        if errors is not None and errors[i]:
            ctx.photos[i] = None  # the file changed or vanished after the scan
            continue
        try:
            decoded = decode_file(root / str(reader.paths[i]),
                                  model.preprocessing.resize if model is not None else TILE)
        except Exception:  # noqa: BLE001 - a photo that cannot be read now is shown as missing
            ctx.photos[i] = None
            continue
        ctx.photos[i] = _photo(decoded.image, decoded.original_size, reader, i)
        if module is None:
            continue
        crop, _ = model.preprocessing.crop_uint8(decoded.image, decoded.original_size)
        x = model.preprocessing.normalize(torch.from_numpy(crop)[None]).to(model.device)
        layers = sorted({layer for layer, _ in need[i]})
        with capture(module, layers) as cap, torch.no_grad():
            cap.forward(x)
        for layer, c in need[i]:
            out = cap.outputs[layer]
            if out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                ctx.maps[(layer, c, i)] = out[0, c].float().cpu().numpy()
    return ctx


def _photo(image: Image.Image, original_size: tuple[int, int], reader: RunReader, image_id: int) -> _Photo:
    ow, oh = original_size
    scale = min(TILE / ow, TILE / oh)
    size = (max(1, round(ow * scale)), max(1, round(oh * scale)))
    pixels = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR, reducing_gap=2.0))
    # orig_h, orig_w, resized_h, resized_w, crop_top, crop_left
    g = reader.file[fmt.IMAGE_GEOMETRY][image_id].astype(np.float64)
    crop_h, crop_w = (int(v) for v in reader.preprocessing["crop"])
    sy, sx = g[0] / g[2], g[1] / g[3]
    crop_box = (g[4] * sy, g[5] * sx, (g[4] + crop_h) * sy, (g[5] + crop_w) * sx)
    return _Photo(pixels, scale, crop_box)


def context_tile(photo: _Photo | None, box: tuple[float, float, float, float] | None,
                 activation: np.ndarray | None = None, vmax: float = 1.0) -> np.ndarray:
    """A ``TILE x TILE`` picture: the photo letterboxed, ``activation`` (the unit's map over the
    network input, shown where > 0, scaled by ``vmax``) laid over the part of the photo the
    network saw, and ``box`` (original-photo pixels ``y0, x0, y1, x1``) drawn on it."""
    tile = Image.new("RGB", (TILE, TILE), _BACKGROUND)
    if photo is None:
        ImageDraw.Draw(tile).text((10, TILE // 2 - 6), "photo unavailable", fill=(90, 90, 90))
        return np.asarray(tile)
    ph, pw = photo.pixels.shape[:2]
    oy, ox = (TILE - ph) // 2, (TILE - pw) // 2
    picture = Image.fromarray(photo.pixels)
    if activation is not None:
        picture = _overlay(picture, photo, activation, vmax)
    tile.paste(picture, (ox, oy))
    if box is not None and not np.isnan(box).any():
        y0, x0, y1, x1 = (v * photo.scale for v in box)
        # a small field on a downscaled photo can be under a pixel: draw at least one
        ImageDraw.Draw(tile).rectangle([ox + x0, oy + y0, ox + max(x1 - 1, x0), oy + max(y1 - 1, y0)],
                                       outline=BOX_COLOUR, width=2)
    return np.asarray(tile)


def _overlay(picture: Image.Image, photo: _Photo, activation: np.ndarray, vmax: float) -> Image.Image:
    """A spotlight: inside the network's crop each pixel keeps ``0.3 + 0.7 * level`` of its
    brightness (level = the square root of the activation there / ``vmax``, bilinear between
    units: the root lifts the mid-levels a reader would otherwise not see) and takes an inferno
    tint as strong as the level; outside the crop (never seen by the network) it is dimmed to a
    half."""
    from matplotlib import colormaps

    y0, x0, y1, x1 = (round(v * photo.scale) for v in photo.crop_box)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    level = np.clip(activation / vmax, 0, 1) if vmax > 0 else np.zeros_like(activation)
    level = np.asarray(Image.fromarray(level.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    level = np.sqrt(np.clip(level, 0, 1))[..., None]
    pixels = np.asarray(picture, dtype=np.float32) * 0.5
    ph, pw = pixels.shape[:2]
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, ph), min(x1, pw)
    if sy1 > sy0 and sx1 > sx0:
        lv = level[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0]
        seen = np.asarray(picture, dtype=np.float32)[sy0:sy1, sx0:sx1] * (0.3 + 0.7 * lv)
        tint = colormaps["inferno"](lv[..., 0])[..., :3] * 255
        pixels[sy0:sy1, sx0:sx1] = seen * (1 - 0.35 * lv) + tint * 0.35 * lv
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def context_strip(ctx: Context, reader: RunReader, layer: str, channel: int) -> np.ndarray:
    """The context tiles of a channel's filled top-k slots side by side, uint8 ``(TILE, k*TILE, 3)``."""
    g = reader.layer(layer)
    ids = g[fmt.TOPK_IMAGE_ID][channel]
    ids = ids[ids >= 0]
    boxes = g[fmt.TOPK_ORIG_BOX][channel]
    vmax = float(np.nan_to_num(g[fmt.TOPK_ACTIVATION][channel][0], nan=0.0))
    tiles = [context_tile(ctx.photos.get(int(i)), tuple(boxes[r]), ctx.maps.get((layer, channel, int(i))),
                          vmax) for r, i in enumerate(ids)]
    return np.concatenate(tiles, axis=1) if tiles else np.zeros((TILE, TILE, 3), np.uint8)
