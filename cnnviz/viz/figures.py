"""Pictures of a run: patch montages, layer overview sheets, distributions of maxima.

Every function returns a matplotlib ``Figure``; the CLI and the HTML report save them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..run import format as fmt
from ..run.reader import RunReader, reading

__all__ = ["patch_montage", "layer_overview", "maxima_distribution", "save_figure", "check_figure_path",
           "image_grid", "captioned_grid", "channel_title"]


def _plt():
    # the backend is the caller's business (a notebook's inline or widget backend, the CLI's
    # Agg): a library must not switch it
    import matplotlib.pyplot as plt

    return plt


def patch_montage(run: str | Path, layer: str, channel: int, *, columns: int | None = None,
                  extra: np.ndarray | None = None, extra_label: str = "attribution",
                  tile_inches: float = 1.35, rank_by: str = "max", bottom: bool = False,
                  mask: bool = False, model=None, device: str = "cpu"):
    """The top-k patches of one channel, best first, with activation and image under each.

    Args:
        run: the run file.
        layer, channel: which channel.
        columns: tiles per row (default: up to 8).
        extra: optional ``(k, h, w, 3)`` float images (e.g. attributions) shown in a second row
            under each patch.
        rank_by: ``"max"`` or ``"mean"`` (a ranking the scan kept); ``bottom``: the bottom-k
            (most negative images) instead.
        mask: outline on each patch where the channel exceeds its top-0.5 % level over all
            positions (:mod:`cnnviz.run.masks`). The maps are recomputed for the k images shown
            with ``model`` (default: the run's model, reloaded; needs torch).

    Returns:
        A ``Figure`` whose axes are the tiles in rank order (titles ``#rank``).
    """
    plt = _plt()
    criterion = "min" if bottom else rank_by
    with reading(run) as r:
        layer = r.resolve_layer(layer)
        r.check_channels(layer, channel)
        grp = r.ranking(layer, criterion)
        patches = grp[fmt.PATCHES][channel]
        acts = grp[fmt.ACTIVATION][channel]
        ids = grp[fmt.IMAGE_ID][channel]
        paths = r.paths
        title = channel_title(r, layer, channel)
        masks = _patch_masks(r, run, layer, channel, grp, model, device) if mask else None
    valid = ids >= 0
    k = int(valid.sum())
    cols = columns or min(8, max(1, k))
    rows_per = 2 if extra is not None else 1
    rows = math.ceil(max(k, 1) / cols) * rows_per
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * (tile_inches + 0.35) + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r in range(k):
        row, col = divmod(r, cols)
        ax = axes[row * rows_per, col]
        ax.imshow(patches[r], interpolation="nearest")
        if masks is not None and masks[r] is not None and masks[r].any():
            ax.contour(masks[r].astype(np.float32), levels=[0.5], colors=[MASK_COLOUR], linewidths=0.9)
        ax.set_title(f"#{r + 1}", fontsize=7, pad=2)
        name = Path(str(paths[ids[r]])).name
        ax.text(0.5, -0.04, f"{acts[r]:.3g}\n{name[:22]}", transform=ax.transAxes, ha="center",
                va="top", fontsize=5.5)
        if extra is not None:
            axes[row * rows_per + 1, col].imshow(extra[r], interpolation="nearest")
            axes[row * rows_per + 1, col].set_title(extra_label, fontsize=5.5, pad=1)
    what = {"max": f"top {k}", "mean": f"top {k} by spatial mean", "min": f"most negative {k}"}[criterion]
    fig.suptitle(f"{title}: {what}" + (", masks at the top-0.5 % level" if mask else ""), fontsize=9)
    fig.tight_layout(pad=0.4, h_pad=1.6, rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return fig


#: The outline of a threshold mask.
MASK_COLOUR = "#00ffff"


def _patch_masks(r: RunReader, run, layer: str, channel: int, grp, model, device: str) -> list:
    """Per filled slot of a ranking, the channel's threshold mask on its patch (``None`` where
    the image cannot be read again)."""
    from ..analysis.unitmaps import unit_maps
    from ..run.geometry import LayerGeometry
    from ..run.masks import threshold_mask

    level = float(r.mask_levels(layer)[channel])
    ids = grp[fmt.IMAGE_ID][channel]
    boxes = grp[fmt.PATCH_BOX][channel]
    geometry = LayerGeometry(r.layer(layer).attrs, r.preprocessing["crop"], int(r.attrs[fmt.ATTR_PATCH_SIZE]))
    maps = unit_maps(run, layer, [int(i) for i in ids[ids >= 0]], model, device=device)
    return [None if maps.get(int(i)) is None else
            threshold_mask(maps[int(i)][channel], level, geometry, boxes[j], geometry.patch_factor)
            for j, i in enumerate(ids[ids >= 0])]


def layer_overview(run: str | Path, layer: str, channels=None, *, per_channel: int = 4,
                   columns: int = 8, tile_inches: float = 1.1):
    """An overview sheet: for each channel (default: all, at most 64) a 2x2 mosaic of its best
    patches, titled with the channel index."""
    plt = _plt()
    with reading(run) as r:
        layer = r.resolve_layer(layer)
        g = r.layer(layer)
        n_ch = g.attrs[fmt.LAYER_CHANNELS]
        channels = list(range(min(64, n_ch))) if channels is None else list(channels)
        r.check_channels(layer, channels, "channels")
        patches = g[fmt.TOPK_PATCHES]
        mosaics = [_mosaic(patches[c][:per_channel]) for c in channels]
        names = r.channel_names(layer)
    cols = min(columns, len(channels))
    rows = math.ceil(len(channels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * tile_inches + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c, m in zip(axes.flat, channels, mosaics, strict=False):
        ax.imshow(m, interpolation="nearest")
        ax.set_title(str(c) if names is None else f"{c} {_short(str(names[c]), 14)}", fontsize=7, pad=2)
    fig.suptitle(f"{layer}: best {per_channel} patches of {len(channels)} channels", fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def channel_title(reader: RunReader, layer: str, channel: int) -> str:
    """``features.12 channel 467``; a logits layer's channel with its class: ``classifier.3 channel 1
    · goldfish``."""
    names = reader.channel_names(layer)
    return f"{layer} channel {channel}" + ("" if names is None else f" · {names[channel]}")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def image_grid(images: np.ndarray, columns: int, gutter: int = 1) -> np.ndarray:
    """uint8 ``(n, h, w, 3)`` images in rows of ``columns``, separated by white gutters."""
    n, h, w, c = images.shape
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gutter), cols * (w + gutter), c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (h + gutter): r * (h + gutter) + h, q * (w + gutter): q * (w + gutter) + w] = img
    return out


def captioned_grid(images: np.ndarray, captions: list[list[str]], columns: int, gutter: int = 2,
                   font_size: int = 12) -> np.ndarray:
    """:func:`image_grid` with lines of text under each image (white band, black text; a line
    longer than the image is cut with an ellipsis)."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = images.shape
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: the small bitmap font
        font = ImageFont.load_default()
    lines = max((len(c) for c in captions), default=0)
    band = lines * (font_size + 3) + 4
    tiles = np.full((n, h + band, w, 3), 255, np.uint8)
    tiles[:, :h] = images
    for tile, caption in zip(tiles, captions, strict=True):
        canvas = Image.fromarray(tile)
        draw = ImageDraw.Draw(canvas)
        for j, line in enumerate(caption):
            y = h + 2 + j * (font_size + 3)
            draw.text((3, y), _fit(draw, line, font, w - 6), fill=(0, 0, 0), font=font)
        tile[:] = np.asarray(canvas)
    return image_grid(tiles, columns, gutter)


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _mosaic(patches: np.ndarray) -> np.ndarray:
    return image_grid(patches, math.ceil(math.sqrt(len(patches))))


def maxima_distribution(run: str | Path, layer: str, channel: int, bins: int = 50):
    """Histogram of a channel's per-image maxima with the top-k marked."""
    plt = _plt()
    with reading(run) as r:
        layer = r.resolve_layer(layer)
        r.check_channels(layer, channel)
        values = r.maxima_columns(layer, [channel])[:, 0]
        top = r.layer(layer)[fmt.TOPK_ACTIVATION][channel]
        title = channel_title(r, layer, channel)
    values = values[~np.isnan(values)]
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.hist(values, bins=bins, color="#7aa6c2")
    for v in top[~np.isnan(top)]:
        ax.axvline(v, color="#c0392b", lw=0.8, alpha=0.8)
    ax.set_xlabel("spatial maximum per image")
    ax.set_ylabel("images")
    ax.set_title(f"{title}: {len(values)} images, top-{len(top)} in red", fontsize=9)
    fig.tight_layout()
    return fig


def check_figure_path(path: str | Path, param: str = "out") -> None:
    """Refuse a file name whose suffix names no format matplotlib writes (before drawing)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from ..errors import UsageError

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UsageError(f"`{param}` {path}: {'.' + suffix if suffix else 'no suffix'} is not an image "
                         f"format matplotlib writes; end the name with one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save and close a figure (format from the suffix: .png, .svg, .pdf...; another suffix is
    refused before anything is written)."""
    plt = _plt()
    path = Path(path)
    check_figure_path(path, "path")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written file on a full disk
        raise
    finally:
        plt.close(fig)
    return path
