"""What the report shows, read from a run file: plain data, no HTML and no file writes.

Each layer's per-image maxima are read once, in row blocks, for all the channels shown (one
column at a time would cost about the whole matrix per channel).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import UsageError
from ...run import format as fmt
from ...run.reader import RunReader
from ...run.tables import channel_stats

__all__ = ["RunInfo", "LayerInfo", "ChannelInfo", "ORDERS", "run_info", "layer_info", "layer_stats",
           "channels_of", "safe_name"]


def safe_name(name: str) -> str:
    """A name from a run file (a layer's) as one file name that stays inside the report's
    folder: letters, digits and ``._-`` kept, anything else ``_``; never empty, ``.`` or ``..``
    nor hidden (a leading ``.`` becomes ``_``), at most 100 characters. A name that had to
    change gets a digest of the original, so two layers never share a folder."""
    import hashlib

    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in name)
    if not safe or safe.startswith("."):
        safe = "_" + safe
    if safe == name and len(safe) <= 100:
        return safe
    return f"{safe[:100]}-{hashlib.blake2b(name.encode('utf-8', 'surrogatepass'), digest_size=4).hexdigest()}"


@dataclass
class RunInfo:
    name: str
    model: str
    weights_origin: str
    n_images: int
    n_failed: int
    top_k: int
    library: str
    layers: list[str]
    precision: str = "fp32"


# index orders besides channel order: (file stem, title, statistic); highest first
ORDERS = (("by-selectivity", "selectivity", "selectivity"), ("by-fire-rate", "fire rate", "fire_rate"),
          ("by-strength", "strength (mean of the per-image maxima)", "mean_max"))


@dataclass
class LayerInfo:
    name: str
    n_channels: int
    shown: list[int]
    rf_size: tuple[int, int]
    rf_stride: tuple[int, int]
    patch_shape: tuple[int, int]
    scale: int  # on-screen magnification of its patches
    unit: str = "map"  # or "image": a whole-image unit (thumbnails)
    channel_names: list[str] | None = None  # class names of a logits layer's channels
    orders: list[tuple[str, str, list[int]]] = ()  # (file stem, title, shown channels in that order)

    @property
    def tile_h(self) -> int:
        return self.patch_shape[0] * self.scale

    @property
    def tile_w(self) -> int:
        return self.patch_shape[1] * self.scale

    @property
    def folder(self) -> str:
        """The layer's folder in the report: :func:`safe_name` of its name."""
        return safe_name(self.name)


@dataclass
class ChannelInfo:
    layer: str
    channel: int
    name: str  # class name of a logits layer's channel, else ''
    activations: np.ndarray  # (k,) of the filled slots, best first
    image_names: list[str]
    labels: list[str] | None  # label, with its class name when it is a class index or WordNet id
    patch_errors: list[str]  # why a patch is missing ('' when it is there)
    patches: np.ndarray  # uint8 (k, h, w, 3)
    stats: pd.Series
    maxima: np.ndarray | None  # float64 (images,), NaN for unreadable images; None: not kept
    optimized: np.ndarray | None
    optimized_recipe: str | None

    @property
    def k(self) -> int:
        return len(self.activations)


def run_info(reader: RunReader, layers: Sequence[str] | None) -> RunInfo:
    a = reader.attrs
    chosen = reader.layers if layers is None else list(layers)
    for name in chosen:
        reader.check_layer(name, "layers")
    return RunInfo(reader.path.name, str(a["model"]), str(a["weights_origin"]), int(a["n_images"]),
                   int(a["n_failed"]), int(a["top_k"]), str(a["library"]), chosen, reader.precision)


def _chosen(channels, n_channels: int, layer: str) -> list[int]:
    """The channels of a layer to show: all, the first ``n`` (``n`` an int), or a list whose
    every index must be one of the layer's (other commands refuse one too; cutting it
    silently would show less than asked)."""
    if channels is None:
        return list(range(n_channels))
    if isinstance(channels, int):
        return list(range(min(channels, n_channels)))
    bad = [c for c in channels if not 0 <= c < n_channels]
    if bad:
        raise UsageError(f"`channels` {bad[:5]}: {layer} has channels 0-{n_channels - 1}; give fewer, or "
                         "a number N for the first N channels of each layer")
    return list(dict.fromkeys(channels))


def layer_info(reader: RunReader, layer: str, channels, min_scale: int, stats: pd.DataFrame) -> LayerInfo:
    """``stats``: the layer's :func:`channel_stats` (for the index orders)."""
    g = reader.layer(layer)
    n_ch = int(g.attrs["channels"])
    patch_shape = tuple(int(v) for v in g.attrs["patch_shape"])
    # small patches (early layers) are magnified to at least 48 px on screen
    scale = min(16, max(min_scale, math.ceil(48 / max(patch_shape))))
    shown = _chosen(channels, n_ch, layer)
    names = reader.channel_names(layer)
    return LayerInfo(layer, n_ch, shown, tuple(int(v) for v in g.attrs["rf_size"]),
                     tuple(int(v) for v in g.attrs["rf_stride"]), patch_shape, scale, reader.unit(layer),
                     None if names is None else [str(n) for n in names], _orders(stats, shown))


def _orders(stats: pd.DataFrame, shown: list[int]) -> list[tuple[str, str, list[int]]]:
    """The shown channels ordered by each statistic the run has (highest first, ties by index)."""
    orders = []
    for stem, title, column in ORDERS:
        if column not in stats or stats[column].isna().all():
            continue
        values = stats.set_index("channel")[column].reindex(shown).to_numpy(np.float64)
        order = np.lexsort((np.asarray(shown), -np.nan_to_num(values, nan=-np.inf)))
        orders.append((stem, title, [shown[j] for j in order]))
    return orders


def channels_of(reader: RunReader, layer: LayerInfo, stats: pd.DataFrame) -> Iterator[ChannelInfo]:
    """The shown channels of a layer, in order; ``stats`` is the layer's :func:`channel_stats`."""
    g = reader.layer(layer.name)
    stats = stats.set_index("channel")
    # what a reader needs beside the patches: statistics that repeat nothing shown elsewhere
    stats = stats.drop(columns=[c for c in ("layer", "channel_name") if c in stats])
    maxima = reader.maxima_columns(layer.name, layer.shown) if reader.has_maxima(layer.name) else None
    paths, errors = reader.paths, reader.patch_errors
    labels = _named_labels(reader)
    done = g[fmt.OPTIMIZED_DONE][()] if fmt.OPTIMIZED_DONE in g else None
    for j, c in enumerate(layer.shown):
        ids = g[fmt.TOPK_IMAGE_ID][c]
        k = int((ids >= 0).sum())
        ids = ids[:k]
        optimized = g[fmt.OPTIMIZED_IMAGES][c] if done is not None and done[c] else None
        yield ChannelInfo(
            layer.name, c, layer.channel_names[c] if layer.channel_names else "",
            g[fmt.TOPK_ACTIVATION][c][:k], [Path(str(paths[i])).name for i in ids],
            [str(labels[i]) for i in ids] if labels is not None else None,
            [str(errors[i]) if errors is not None else "" for i in ids],
            g[fmt.TOPK_PATCHES][c][:k], stats.loc[c], None if maxima is None else maxima[:, j], optimized,
            str(g[fmt.OPTIMIZED].attrs.get("recipe", "?")) if optimized is not None else None)


def _named_labels(reader: RunReader) -> np.ndarray | None:
    """Per image, its label followed by its class name where that says more (``n01440764 ·
    tench``, ``468 · cab``)."""
    labels, names = reader.labels, reader.label_names()
    if labels is None:
        return None
    return np.array([f"{lab} · {name}" if name and name != lab else str(lab)
                     for lab, name in zip(labels, names, strict=True)], dtype=object)


def layer_stats(reader: RunReader, layer: str) -> pd.DataFrame:
    """The layer's :func:`channel_stats`, read once for its index orders and channel pages."""
    return channel_stats(reader.path, layer)
