"""A channel page's views: each ranking the run kept (by max, by mean, most negative...) as its
patches, photos in context, activation maps and mask outlines, written as strips (one image per
ranking and kind, used as sprites by the page), and the cards the page shows.

Files of a channel ``N`` (the max ranking's keep the names they had before there were others)::

    cN.png, cN-mean.png, cN-min.png ...     the stored patches of each ranking
    cN-context.jpg, cN-mean-context.jpg ... each patch's photo, box, map and mask outline
    cN-maps.png, cN-mean-maps.png ...       the maps alone (the click-to-enlarge view)
    cN-masks.png, cN-mean-masks.png ...     mask outlines over the patch tiles (runs with quantiles)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..run.geometry import LayerGeometry
from ..run.reader import RunReader
from .collect import ChannelInfo, LayerInfo, Ranking
from .pictures import patch_strip

__all__ = ["Card", "View", "write_views", "layer_masks"]

PAGE_TILE = 150  # side of a patch on a channel page, pixels


@dataclass
class Card:
    """One entry of a ranking on a channel page."""

    rank: int
    activation: float
    name: str
    label: str | None
    error: str
    photo: str | None = None  # ../photos/<id>.jpg, when the photo is shown
    patch: dict | None = None  # the patch cut from that photo (context.patch_view)
    enlarged: dict | None = None  # its click-to-enlarge view (context.enlarged)


@dataclass
class View:
    """One ranking of a channel as its page shows it."""

    ranking: Ranking
    cards: list[Card]
    strip: str  # its patches' strip (file name beside the page)
    context: str | None = None  # its photos' strip
    maps: str | None = None  # its maps' strip
    masks: str | None = None  # its patches' mask outlines
    outlined: bool = False  # a mask is outlined on one of its photos or patches

    @property
    def anchor(self) -> str:
        """The prefix of its ids on the page (``mean-``; none for the max ranking)."""
        return self.ranking.suffix.lstrip("-") + "-" if self.ranking.suffix else ""


@dataclass
class _Masks:
    """A channel's masks: per image id, its map on the input pixels (``> level`` is the mask)."""

    level: float
    fields: dict[int, np.ndarray] = field(default_factory=dict)


def layer_masks(reader: RunReader, layer: LayerInfo, ctx):
    """What draws a layer's mask outlines (:class:`.outlines.LayerMasks`), or ``None``: the run
    has no quantiles of it, no activation maps were computed, or its units are whole images."""
    if layer.mask_levels is None or ctx is None or not ctx.with_maps or layer.unit != "map":
        return None
    from .outlines import LayerMasks

    g = reader.layer(layer.name)
    return LayerMasks(LayerGeometry(g.attrs, layer.crop, reader.header.patch_size))


def write_views(ctx, reader: RunReader, layer: LayerInfo, ch: ChannelInfo, folder: Path,
                masker) -> list[View]:
    """Write each ranking's strips for a channel page; return its views, by max first."""
    masks = _channel_masks(ctx, layer, ch, masker)
    return [_write_view(ctx, reader, layer, ch.channel, rk, folder, masks) for rk in ch.rankings]


def _channel_masks(ctx, layer: LayerInfo, ch: ChannelInfo, masker) -> _Masks | None:
    """The masks of every image the channel's rankings show, each computed once."""
    if masker is None:
        return None
    level = float(layer.mask_levels[ch.channel])
    ids = {int(i) for rk in ch.rankings for i in rk.image_ids}
    return _Masks(level, masker.fields({i: ctx.maps.get((layer.name, ch.channel, i)) for i in ids}, level))


def _write_view(ctx, reader: RunReader, layer: LayerInfo, c: int, rk: Ranking, folder: Path,
                masks: _Masks | None) -> View:
    from .pages import save_png

    name = f"c{c}{rk.suffix}"
    size = (layer.tile_h, layer.tile_w)
    save_png(patch_strip(rk.patches, rk.patch_boxes, layer.crop, layer.patch_factor, size),
             folder / f"{name}.png")
    view = View(rk, _cards(layer, rk, ctx), f"{name}.png")
    if ctx is None:
        return view
    from .context import context_strip, map_strip
    from .templating import save_photo

    ids = {int(i) for i in rk.image_ids}
    shown = {} if masks is None else {i: f > masks.level for i, f in masks.fields.items() if i in ids}
    save_photo(Image.fromarray(context_strip(ctx, reader, layer.name, c, rk.key, shown)),
               folder / f"{name}-context.jpg")
    view.context = f"{name}-context.jpg"
    strip = map_strip(ctx, reader, layer.name, c, rk.key)
    if strip is not None:
        save_png(Image.fromarray(strip, "RGBA"), folder / f"{name}-maps.png")
        view.maps = f"{name}-maps.png"
    view.outlined = bool(shown) and any(m.any() for m in shown.values())
    if masks is not None and masks.fields:
        from .outlines import patch_outlines

        places = [card.patch["place"] if card.patch else None for card in view.cards]
        lines = patch_outlines([masks.fields.get(int(i)) for i in rk.image_ids], masks.level, rk.patch_boxes,
                               places, layer.crop, PAGE_TILE)
        if lines is not None:
            save_png(Image.fromarray(lines, "RGBA"), folder / f"{name}-masks.png")
            view.masks = f"{name}-masks.png"
            view.outlined = True
    return view


def _cards(layer: LayerInfo, rk: Ranking, ctx) -> list[Card]:
    from .context import enlarged, patch_view

    cards = []
    for r in range(rk.k):
        card = Card(r, float(rk.activations[r]), rk.image_names[r], rk.labels[r] if rk.labels else None,
                    rk.patch_errors[r])
        photo = ctx.photos.get(int(rk.image_ids[r])) if ctx is not None else None
        if photo is not None and photo.view_size != (0, 0):
            card.photo = f"../photos/{int(rk.image_ids[r])}.jpg"
            card.patch = patch_view(photo, rk.orig_boxes[r], rk.patch_boxes[r], layer.crop, PAGE_TILE)
            card.enlarged = enlarged(photo, rk.orig_boxes[r] if layer.unit == "map" else None)
        cards.append(card)
    return cards
