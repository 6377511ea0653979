"""Dataset examples in context: the whole photo (downscaled), the patch's box drawn on it and
the channel's activation map laid over it; and each photo once as a file (``photos/<id>.jpg``,
at most :data:`VIEW` pixels a side) from which the pages show every patch at the photo's own
resolution and enlarge a photo on a click.

The activation maps are recomputed at report time: each unique photo of the report is decoded
once and goes once through the run's model (all layers tapped in one forward pass); only the
maps of the channels it is shown for are kept. Without the model (a run of a user module, or
weights that cannot be loaded) the tiles show the photo and the box only.
"""

from __future__ import annotations

import functools
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..images.decoding import decode_file
from ..run import format as fmt
from ..run.reader import RunReader

__all__ = ["Context", "gather_context", "context_tile", "context_strip", "map_strip", "map_scale",
           "patch_view", "enlarged", "TILE", "VIEW", "BOX_COLOUR"]

TILE = 150  # side of a context tile, pixels
VIEW = 1024  # longest side of a photo's file in the report (most photos are smaller: their own size)
BOX_COLOUR = (0, 255, 255)
_BACKGROUND = (236, 236, 236)


@dataclass
class _Photo:
    pixels: np.ndarray  # uint8 photo scaled to fit the tile
    scale: float  # tile pixels per original pixel
    crop_box: tuple[float, float, float, float]  # the network input, original pixels
    view_size: tuple[int, int] = (0, 0)  # (width, height) of the photo's file; (0, 0): none written
    view_scale: float = 1.0  # file pixels per original pixel


@dataclass
class Context:
    """Per image id its downscaled photo (``None``: not shown, ``notes[i]`` says why); per
    (layer, channel, image id) its activation map."""

    photos: dict[int, _Photo | None] = field(default_factory=dict)
    maps: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    with_maps: bool = False
    notes: dict[int, str] = field(default_factory=dict)


def gather_context(reader: RunReader, wanted: dict[str, list[int]], model=None, device: str | None = None,
                   progress: bool = False, workers: int | None = None, batch_size: int = 16,
                   library: str | Path | None = None, photo_dir: Path | None = None) -> Context:
    """Photos and maps for every ranking (top-k by max, by mean, bottom-k...) of the channels
    ``wanted[layer]``.

    Photos are decoded by ``workers`` processes (``None``: as many as a scan uses; 0: inline)
    and go through the network ``batch_size`` at a time, each once. A photo whose bytes are not
    the ones scanned (size and digest recorded in the run) is not shown: its box and map
    would describe another picture. Files are found by :meth:`RunReader.image_file` (under
    ``library`` when given): a run without identities shows photos only from a ``library``
    the user names. With ``photo_dir``, each photo shown is also written there as
    ``<id>.jpg`` (at most :data:`VIEW` pixels a side), as it arrives: nothing of it is held."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..images.dataset import LibraryDataset
    from ..model.copying import inference_copy
    from ..model.precision import precision_scope
    from ..model.taps import capture, forward_crops
    from ..scanner.config import default_workers

    need = _needed(reader, wanted)
    ctx = Context(with_maps=model is not None)
    photos = _Photos(reader, sorted(need), None if model is None else model.preprocessing, library,
                     views=photo_dir is not None)
    if photo_dir is not None:
        photo_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(photos, batch_size=batch_size, num_workers=min(workers, len(photos) // batch_size),
                        collate_fn=_as_list, worker_init_fn=LibraryDataset.worker_init)
    module = None
    if model is not None:
        device = torch.device(device or model.device)
        module = inference_copy(model.module, device)
    layers = sorted({layer for pairs in need.values() for layer, _ in pairs})
    bar = tqdm(total=len(photos), desc="report: photos in context", disable=not progress, leave=False)
    for items in loader:
        for i, photo, _, note, view in items:
            ctx.photos[i] = photo
            if note:
                ctx.notes[i] = note
            if view is not None:
                _write_bytes(photo_dir / f"{i}.jpg", view)
        shown = [(i, crop) for i, photo, crop, _, _ in items if photo is not None and crop is not None]
        if module is not None and shown:
            x = torch.from_numpy(np.stack([crop for _, crop in shown])).to(device)
            with precision_scope(reader.precision, device), capture(module, layers, stop_early=True) as cap:
                forward_crops(cap, x, model.preprocessing)
            for row, (i, _) in enumerate(shown):
                for layer, c in need[i]:
                    out = cap.outputs[layer]
                    if out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                        ctx.maps[(layer, c, i)] = out[row, c].float().cpu().numpy().copy()
        bar.update(len(items))
    bar.close()
    return ctx


def _needed(reader: RunReader, wanted: dict[str, list[int]]) -> dict[int, list[tuple[str, int]]]:
    """Per image id, the ``(layer, channel)`` pairs whose rankings (every one the run kept) show
    it, each once."""
    need: dict[int, dict[tuple[str, int], None]] = defaultdict(dict)
    for layer, channels in wanted.items():
        for key in reader.rankings(layer):
            ids = reader.ranking(layer, key)[fmt.IMAGE_ID][()]
            for c in channels:
                for i in ids[c][ids[c] >= 0]:
                    need[int(i)][(layer, c)] = None
    return {i: list(pairs) for i, pairs in need.items()}


def _as_list(items: list) -> list:
    return items


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written file on a full disk
        raise


class _Photos:
    """The photos a report shows, as a map-style dataset for a DataLoader: item ``j`` is
    ``(image id, photo or None, the network's uint8 crop or None, note, JPEG bytes of the photo
    or None)`` (the bytes with ``views``). Holds plain arrays only (no open HDF5 file), so that it
    can go to decoding processes."""

    def __init__(self, reader: RunReader, image_ids: list[int], preprocessing=None, library=None,
                 views: bool = False):
        self.image_ids = image_ids
        self.views = views
        self.preprocessing = preprocessing
        self.files = [reader.image_file(i, library) for i in image_ids]
        self.geometry = reader.file[fmt.IMAGE_GEOMETRY][()][image_ids] if image_ids else None
        identity = reader.file[fmt.IMAGE_IDENTITY] if reader.has_identity else None
        self.identity = identity[()][image_ids] if identity is not None and image_ids else None
        errors = reader.patch_errors
        self.errors = [str(errors[i]) if errors is not None else "" for i in image_ids]
        self.crop = tuple(int(v) for v in reader.preprocessing["crop"])

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, j: int):
        i = self.image_ids[j]
        if self.errors[j]:
            return i, None, None, self.errors[j], None  # the file changed or vanished before assembly
        if self.files[j] is None:
            return i, None, None, "not inside the library folder given", None
        try:
            decoded = decode_file(self.files[j], self.preprocessing.resize if self.preprocessing else TILE)
        except Exception as exc:  # noqa: BLE001 - a photo that cannot be read now is shown as missing
            return i, None, None, f"unreadable now ({type(exc).__name__})", None
        if self.identity is not None:  # a run that records identities vouches for those bytes only
            size, _, digest = (int(v) for v in self.identity[j])
            if (size, digest) == (0, 0) or (decoded.identity[0], decoded.identity[2]) != (size, digest):
                return i, None, None, "changed since the scan", None
        photo = _photo(decoded.image, decoded.original_size, self.geometry[j], self.crop)
        crop = None
        if self.preprocessing is not None:
            crop = self.preprocessing.crop_uint8(decoded.image, decoded.original_size)[0]
        view = _view(decoded.image, decoded.original_size, photo) if self.views else None
        return i, photo, crop, "", view


def _view(image: Image.Image, original_size: tuple[int, int], photo: _Photo) -> bytes:
    """The photo as a JPEG of at most :data:`VIEW` pixels a side (its own size when smaller; a
    large JPEG is decoded at a reduced scale already); records its size and scale in ``photo``."""
    import io

    image = image.convert("RGB")
    scale = min(1.0, VIEW / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.LANCZOS, reducing_gap=3.0)
    photo.view_size = image.size
    photo.view_scale = image.width / original_size[0]
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _photo(image: Image.Image, original_size: tuple[int, int], geometry: np.ndarray,
           crop: tuple[int, int]) -> _Photo:
    ow, oh = original_size
    scale = min(TILE / ow, TILE / oh)
    size = (max(1, round(ow * scale)), max(1, round(oh * scale)))
    pixels = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR, reducing_gap=2.0))
    # orig_h, orig_w, resized_h, resized_w, crop_top, crop_left
    g = geometry.astype(np.float64)
    crop_h, crop_w = crop
    with np.errstate(all="ignore"):
        sy, sx = g[0] / g[2], g[1] / g[3]
        box = np.array([g[4] * sy, g[5] * sx, (g[4] + crop_h) * sy, (g[5] + crop_w) * sx])
    if not np.isfinite(box).all():  # a geometry no scan writes: the whole photo, not a crash
        box = np.array([0.0, 0.0, oh, ow])
    side = 4.0 * max(oh, ow)
    return _Photo(pixels, scale, tuple(float(v) for v in np.clip(box, -side, side)))


def context_tile(photo: _Photo | None, box: tuple[float, float, float, float] | None,
                 activation: np.ndarray | None = None, vmax: float = 1.0, note: str = "",
                 mask: np.ndarray | None = None) -> np.ndarray:
    """A ``TILE x TILE`` picture: the photo letterboxed, ``activation`` (the unit's map over the
    network input, shown where > 0, scaled by ``vmax``) laid over the part of the photo the
    network saw, ``mask`` (bool, over the network's input pixels) outlined there, and ``box``
    (original-photo pixels ``y0, x0, y1, x1``) drawn on it."""
    tile = Image.new("RGB", (TILE, TILE), _BACKGROUND)
    if photo is None:
        draw = ImageDraw.Draw(tile)
        draw.text((10, TILE // 2 - 12), "photo unavailable", fill=(90, 90, 90))
        for n, line in enumerate(textwrap.wrap(note, 22)[:3]):
            draw.text((10, TILE // 2 + 4 + 13 * n), line, fill=(90, 90, 90))
        return np.asarray(tile)
    ph, pw = photo.pixels.shape[:2]
    oy, ox = (TILE - ph) // 2, (TILE - pw) // 2
    picture = Image.fromarray(photo.pixels)
    if activation is not None:
        picture = _overlay(picture, photo, activation, vmax)
    tile.paste(picture, (ox, oy))
    if mask is not None:
        tile = _outlined(tile, photo, (oy, ox), mask)
    if box is not None and np.isfinite(box).all():
        y0, x0, y1, x1 = (float(np.clip(v * photo.scale, -TILE, 2 * TILE)) for v in box)
        # a small field on a downscaled photo can be under a pixel: draw at least one
        ImageDraw.Draw(tile).rectangle([ox + x0, oy + y0, ox + max(x1 - 1, x0), oy + max(y1 - 1, y0)],
                                       outline=BOX_COLOUR, width=2)
    return np.asarray(tile)


def _outlined(tile: Image.Image, photo: _Photo, offset: tuple[int, int], mask: np.ndarray) -> Image.Image:
    """``tile`` with ``mask`` (over the network's input) outlined on the photo's crop."""
    from .outlines import draw, outline

    y0, x0, y1, x1 = (round(v * photo.scale) for v in photo.crop_box)
    w, h = min(max(1, x1 - x0), 4 * TILE), min(max(1, y1 - y0), 4 * TILE)
    shrunk = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) > 127
    pixels = np.array(tile)
    ph, pw = photo.pixels.shape[:2]
    # on the photo only (a crop past its edge has nothing under it)
    line = outline(shrunk)
    inside = np.zeros_like(line)
    inside[max(-y0, 0): ph - y0, max(-x0, 0): pw - x0] = True
    draw(pixels, line & inside, offset[0] + y0, offset[1] + x0)
    return Image.fromarray(pixels)


@functools.cache
def _inferno_table() -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["inferno"]
    return cmap(np.arange(cmap.N))


def inferno(level: np.ndarray) -> np.ndarray:
    """matplotlib's inferno colours (RGBA floats) of ``level`` in [0, 1], as its colormap picks
    them (the entry ``floor(level * N)``), from a table built once: a colormap that
    matplotlib's registry hands out is a fresh copy that builds its table at its first call,
    once per tile of a report's thousands."""
    table = _inferno_table()
    n = len(table)
    level = np.nan_to_num(np.asarray(level, dtype=np.float64), nan=0.0)
    return table[np.clip((level * n).astype(np.int64), 0, n - 1)]


def _overlay(picture: Image.Image, photo: _Photo, activation: np.ndarray, vmax: float) -> Image.Image:
    """A spotlight: inside the network's crop each pixel keeps ``0.3 + 0.7 * level`` of its
    brightness (level = the square root of the activation there / ``vmax``, bilinear between
    units: the root lifts the mid-levels a reader would otherwise not see) and takes an inferno
    tint as strong as the level; outside the crop (never seen by the network) it is dimmed to a
    half."""
    y0, x0, y1, x1 = (round(v * photo.scale) for v in photo.crop_box)
    # the crop lies on the photo: no larger than a few tiles (a crafted geometry cannot size it)
    w, h = min(max(1, x1 - x0), 4 * TILE), min(max(1, y1 - y0), 4 * TILE)
    level = np.clip(activation / vmax, 0, 1) if vmax > 0 else np.zeros_like(activation)
    level = np.asarray(Image.fromarray(level.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    level = np.sqrt(np.clip(level, 0, 1))[..., None]
    pixels = np.asarray(picture, dtype=np.float32) * 0.5
    ph, pw = pixels.shape[:2]
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, ph), min(x1, pw)
    if sy1 > sy0 and sx1 > sx0:
        lv = level[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0]
        seen = np.asarray(picture, dtype=np.float32)[sy0:sy1, sx0:sx1] * (0.3 + 0.7 * lv)
        tint = inferno(lv[..., 0])[..., :3] * 255
        pixels[sy0:sy1, sx0:sx1] = seen * (1 - 0.35 * lv) + tint * 0.35 * lv
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def context_strip(ctx: Context, reader: RunReader, layer: str, channel: int, rank_by: str = "max",
                  masks: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The context tiles of the filled slots of one of a channel's rankings side by side, uint8
    ``(TILE, k*TILE, 3)``; ``masks``: per image id, a mask to outline (bool, over the network's
    input)."""
    grp = reader.ranking(layer, rank_by)
    ids = grp[fmt.IMAGE_ID][channel]
    ids = ids[ids >= 0]
    boxes = grp[fmt.ORIG_BOX][channel]
    sign, vmax = map_scale(reader, layer, channel, rank_by)
    masks = masks or {}
    tiles = []
    for r, i in enumerate(ids):
        m = ctx.maps.get((layer, channel, int(i)))
        tiles.append(context_tile(ctx.photos.get(int(i)), tuple(boxes[r]), None if m is None else sign * m,
                                  vmax, ctx.notes.get(int(i), ""), masks.get(int(i))))
    return np.concatenate(tiles, axis=1) if tiles else np.zeros((TILE, TILE, 3), np.uint8)


def map_scale(reader: RunReader, layer: str, channel: int, rank_by: str = "max") -> tuple[int, float]:
    """How a ranking's photos show a channel's map: ``(sign, vmax)``, the map times ``sign``
    scaled to ``vmax``. The most negative images show where the map is below 0, scaled to the
    most negative value; every other ranking where it is above 0, scaled to the channel's top-1
    (so that its rankings' photos compare)."""
    if rank_by == "min":
        return -1, -float(np.nan_to_num(reader.ranking(layer, "min")[fmt.ACTIVATION][channel][0], nan=0.0))
    return 1, float(np.nan_to_num(reader.layer(layer)[fmt.TOPK_ACTIVATION][channel][0], nan=0.0))


def _place(cut_before: bool, cut_after: bool, free: float) -> float:
    """Offset of a patch's part inside the network's input in its tile: against the side where
    the field went on (so the hatched margin lies where the field was cut), else centred."""
    if cut_before and not cut_after:
        return free
    if cut_after and not cut_before:
        return 0.0
    return free / 2


def patch_view(photo: _Photo | None, box, patch_box, crop: tuple[int, int], side: int) -> dict | None:
    """How a ``side`` x ``side`` tile shows a patch cut from the photo's file at its own
    resolution: ``box`` is its part inside the network's input in original-photo pixels
    (``topk/orig_box``), ``patch_box`` the whole patch in the input ``crop`` ``(H, W)``
    (``topk/patch_box``: where it passes the input, the field went on). Returns ``inner`` (CSS
    of the picture inside the tile: place, size, background size and position; the rest of the
    tile is a hatched margin on the side where the field was cut), ``cut``, ``pixelated``
    (magnified more than 2.5x: pixels shown as squares) and ``place`` (``left, top, width,
    height`` of the picture in the tile); ``None`` when the photo's file was not written or the
    box is empty."""
    if photo is None or photo.view_size == (0, 0) or box is None or not np.isfinite(box).all():
        return None
    cy0, cx0, cy1, cx1 = photo.crop_box
    y0, x0, y1, x1 = (float(v) for v in box)
    iy0, ix0, iy1, ix1 = max(y0, cy0), max(x0, cx0), min(y1, cy1), min(x1, cx1)
    if iy1 <= iy0 or ix1 <= ix0:
        return None
    py0, px0, py1, px1 = (int(v) for v in patch_box)
    vs = photo.view_scale
    s = side / (max(iy1 - iy0, ix1 - ix0) * vs)  # tile pixels per file pixel
    w, h = (ix1 - ix0) * vs * s, (iy1 - iy0) * vs * s
    left = _place(px0 < 0, px1 > crop[1], side - w)
    top = _place(py0 < 0, py1 > crop[0], side - h)
    vw, vh = photo.view_size
    inner = (f"left:{left:.1f}px;top:{top:.1f}px;width:{w:.1f}px;height:{h:.1f}px;"
             f"background-size:{vw * s:.1f}px {vh * s:.1f}px;"
             f"background-position:{-ix0 * vs * s:.1f}px {-iy0 * vs * s:.1f}px")
    cut = py0 < 0 or px0 < 0 or py1 > crop[0] or px1 > crop[1]
    return {"inner": inner, "cut": cut, "pixelated": s > 2.5, "place": (left, top, w, h)}


def enlarged(photo: _Photo | None, box) -> dict | None:
    """What a click-to-enlarge view of a photo draws over it, in percent of the photo (so that
    it scales with it): ``box`` (the patch) and ``crop`` (the network's input), as CSS."""
    if photo is None or photo.view_size == (0, 0):
        return None
    ow, oh = (v / photo.view_scale for v in photo.view_size)

    def css(y0, x0, y1, x1) -> str:
        return (f"left:{100 * x0 / ow:.2f}%;top:{100 * y0 / oh:.2f}%;"
                f"width:{100 * (x1 - x0) / ow:.2f}%;height:{100 * (y1 - y0) / oh:.2f}%")

    finite = box is not None and np.isfinite(box).all()
    vw, vh = photo.view_size
    # small photos are enlarged too: to fit 1280 x 860 px, and the window
    width = f"min(94vw, calc(86vh * {vw / vh:.4f}), {min(1280.0, 860.0 * vw / vh):.0f}px)"
    return {"size": photo.view_size, "width": width, "crop": css(*photo.crop_box),
            "box": css(*(float(v) for v in box)) if finite else None}


def map_strip(ctx: Context, reader: RunReader, layer: str, channel: int,
              rank_by: str = "max") -> np.ndarray | None:
    """The channel's activation maps over the photos of one of its rankings side by side, as
    RGBA uint8 (each map at the layer's own resolution: a browser enlarges it smoothly over the
    photo): the context tiles' inferno tint, as opaque as the level (square root of the
    activation / the scale of :func:`map_scale`). ``None`` when no map was computed."""
    ids = reader.ranking(layer, rank_by)[fmt.IMAGE_ID][channel]
    ids = ids[ids >= 0]
    maps = [ctx.maps.get((layer, channel, int(i))) for i in ids]
    shape = next((m.shape for m in maps if m is not None), None)
    if shape is None:
        return None
    sign, vmax = map_scale(reader, layer, channel, rank_by)
    tiles = []
    for m in maps:
        level = np.zeros(shape) if m is None or vmax <= 0 else np.sqrt(np.clip(sign * m / vmax, 0, 1))
        rgba = inferno(level)
        rgba[..., 3] = 0.75 * level
        tiles.append((rgba * 255).round().astype(np.uint8))
    return np.concatenate(tiles, axis=1)
