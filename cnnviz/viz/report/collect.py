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

from ...run import format as fmt
from ...run.reader import RunReader
from ...run.tables import channel_stats

__all__ = ["RunInfo", "LayerInfo", "ChannelInfo", "run_info", "layer_info", "channels_of"]


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


@dataclass
class LayerInfo:
    name: str
    n_channels: int
    shown: list[int]
    rf_size: tuple[int, int]
    rf_stride: tuple[int, int]
    patch_shape: tuple[int, int]
    scale: int  # on-screen magnification of its patches

    @property
    def tile_h(self) -> int:
        return self.patch_shape[0] * self.scale

    @property
    def tile_w(self) -> int:
        return self.patch_shape[1] * self.scale

    @property
    def folder(self) -> str:
        """The layer's folder in the report: its name with only file-name-safe characters."""
        return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in self.name)


@dataclass
class ChannelInfo:
    layer: str
    channel: int
    activations: np.ndarray  # (k,) of the filled slots, best first
    image_names: list[str]
    labels: list[str] | None
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
                   int(a["n_failed"]), int(a["top_k"]), str(a["library"]), chosen)


def _chosen(channels, n_channels: int) -> list[int]:
    if channels is None:
        return list(range(n_channels))
    if isinstance(channels, int):
        return list(range(min(channels, n_channels)))
    return [c for c in channels if 0 <= c < n_channels]


def layer_info(reader: RunReader, layer: str, channels, min_scale: int) -> LayerInfo:
    g = reader.layer(layer)
    n_ch = int(g.attrs["channels"])
    patch_shape = tuple(int(v) for v in g.attrs["patch_shape"])
    # small patches (early layers) are magnified to at least 48 px on screen
    scale = min(16, max(min_scale, math.ceil(48 / max(patch_shape))))
    return LayerInfo(layer, n_ch, _chosen(channels, n_ch), tuple(int(v) for v in g.attrs["rf_size"]),
                     tuple(int(v) for v in g.attrs["rf_stride"]), patch_shape, scale)


def channels_of(reader: RunReader, layer: LayerInfo) -> Iterator[ChannelInfo]:
    """The shown channels of a layer, in order."""
    g = reader.layer(layer.name)
    stats = channel_stats(reader.path, layer.name).set_index("channel")
    maxima = reader.maxima_columns(layer.name, layer.shown) if reader.has_maxima(layer.name) else None
    paths, labels, errors = reader.paths, reader.labels, reader.patch_errors
    done = g[fmt.OPTIMIZED_DONE][()] if fmt.OPTIMIZED_DONE in g else None
    for j, c in enumerate(layer.shown):
        ids = g[fmt.TOPK_IMAGE_ID][c]
        k = int((ids >= 0).sum())
        ids = ids[:k]
        optimized = g[fmt.OPTIMIZED_IMAGES][c] if done is not None and done[c] else None
        yield ChannelInfo(
            layer.name, c, g[fmt.TOPK_ACTIVATION][c][:k], [Path(str(paths[i])).name for i in ids],
            [str(labels[i]) for i in ids] if labels is not None else None,
            [str(errors[i]) if errors is not None else "" for i in ids],
            g[fmt.TOPK_PATCHES][c][:k], stats.loc[c], None if maxima is None else maxima[:, j], optimized,
            str(g[fmt.OPTIMIZED].attrs["recipe"]) if optimized is not None else None)
