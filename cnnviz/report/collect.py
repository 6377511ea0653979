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

from ..errors import UsageError
from ..run import format as fmt
from ..run.reader import RunReader
from ..run.tables import SILENT_SHARE, channel_stats

__all__ = ["RunInfo", "LayerInfo", "ChannelInfo", "Ranking", "Order", "ORDERS", "STATISTICS", "RANKINGS",
           "IMAGE_RANKINGS", "run_info", "layer_info", "layer_stats", "channels_of", "stat_rows", "safe_name",
           "ranking_meaning", "shown_rankings", "ClassBar", "class_charts", "Similar", "similar_of"]


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


# What each statistic of channel_stats means, one line each: (label, definition)
STATISTICS = {
    "top_label": ("top class", "the most frequent label among the channel's top-k images (how many of them)"),
    "selectivity": ("class selectivity", "(μ best class − μ other classes) / (μ best + μ others) of the "
                    "per-class means of the per-image maxima: 0 = every class alike, 1 = one class "
                    "only (Morcos et al. 2018)"),
    "mean_max": ("mean max", "mean over the images of the channel's maximum in each (its strongest unit "
                 "there): how strongly it responds to a typical image"),
    "max_max": ("max max", "the largest per-image maximum: the top-1 activation"),
    "std_max": ("std max", "standard deviation of the per-image maxima"),
    "fire_rate": ("fire rate", "share of the images where the channel's maximum is above 0"),
    "mean_activation": ("mean activation", "mean over the images of the channel's average over its "
                        "whole map"),
    "count": ("images", "library images read"),
}

# index orders besides channel order: (file stem, title, statistic); highest first
ORDERS = (("by-selectivity", "class selectivity", "selectivity"), ("by-fire-rate", "fire rate", "fire_rate"),
          ("by-strength", "strength (mean max)", "mean_max"))


@dataclass
class Order:
    """One page of a layer's channels ordered by a statistic, highest first."""

    stem: str  # its file: <stem>.html
    title: str
    definition: str
    channels: list[int]
    values: dict[int, str]  # channel -> the statistic, formatted ('–' where undefined)


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
    orders: list[Order] = ()
    top_classes: dict[int, str] | None = None  # every channel -> its top class, 'armadillo (3 of 8)'
    silent: frozenset[int] = frozenset()  # nearly silent channels (tables.nearly_silent)
    logits: bool = False
    crop: tuple[int, int] = (0, 0)  # the network's input (the patches' boxes are inside or past it)
    patch_factor: int = 1
    rankings: list[str] = ("max",)  # the rankings its pages show (shown_rankings)
    mask_levels: np.ndarray | None = None  # per channel, its top-0.5 % level (None: no quantiles)

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

    def caption(self, channel: int) -> str:
        """A channel's name in a few words: a logits channel's class, else its top class (or
        that it is nearly silent)."""
        if self.channel_names:
            return self.channel_names[channel]
        if channel in self.silent:
            return "nearly silent"
        top = (self.top_classes or {}).get(channel, "")
        return top.split(" (", 1)[0]

    def tooltip(self, channel: int) -> str:
        if self.channel_names:
            return f"channel {channel}: {self.channel_names[channel]}"
        if channel in self.silent:
            return f"channel {channel} · nearly silent"
        top = (self.top_classes or {}).get(channel, "")
        return f"channel {channel}" + (f" · top class {top}" if top else "")


# What each ranking of a channel's images means: (its tab, the name of its value, one line). A
# ranking the run has and this table lacks is named from its key (ranking_meaning).
RANKINGS = {
    "max": ("by max", "max", "the images whose strongest unit responds most (their spatial maximum), "
            "strongest first: a small, strong part (a texture, a part of an object)"),
    "mean": ("by mean", "mean", "the images the channel covers most (the mean over its whole map), "
             "strongest first: whole objects; each patch is cut around the image's maximum, and its "
             "photo shows the whole map"),
    "min": ("most negative", "min", "the images with the most negative unit (their spatial minimum), most "
            "negative first: what a signed unit (a logit, a map before its ReLU) speaks against; each "
            "patch is cut around that unit, and its photo shows where the map is negative"),
    "relevance": ("by relevance", "relevance", "the images where the channel contributed most to the model's "
                  "decision (activation x gradient of the explained class's logit, summed over the map; "
                  "the class is the image's label, or the model's top-1 class: docs/relevance.md), most "
                  "relevant first; each patch is cut where that image's relevance peaks, and its photo "
                  "shows the activation map"),
}


# the same for a whole-image unit (one value per image: no map, no position)
IMAGE_RANKINGS = {
    "max": ("by max", "max", "the images where the unit is highest, highest first"),
    "min": ("most negative", "min", "the images where the unit is most negative, most negative first: what "
            "it speaks against (a logit's counter-examples)"),
    "relevance": ("by relevance", "relevance", "the images where the unit contributed most to the model's "
                  "decision (its value x the gradient of the explained class's logit; for a logit: its "
                  "value on the images explained as its class, 0 on the others), most relevant first"),
}


def ranking_meaning(key: str, activations: np.ndarray, unit: str = "map") -> tuple[str, str, str]:
    """``(tab, value name, one-line definition)`` of a ranking of a layer of ``unit`` (``map``
    or ``image``); one this report does not know (a newer scan's) is named from its key, its
    order read from its values."""
    if unit == "image" and key in IMAGE_RANKINGS:
        return IMAGE_RANKINGS[key]
    if key in RANKINGS:
        return RANKINGS[key]
    words = key.replace("_", " ")
    values = activations[~np.isnan(activations)]
    rising = len(values) > 1 and bool(np.all(np.diff(values) >= 0)) and values[-1] > values[0]
    return (f"by {words}", words, f"the images ranked by their {words} as the scan kept them, "
            f"{'lowest' if rising else 'highest'} first")


def shown_rankings(reader: RunReader, layer: str) -> list[str]:
    """The rankings of ``layer`` a page shows: every one the run kept (``max`` first), except the
    mean of a whole-image unit (one value per image: its mean is its max)."""
    keys = reader.rankings(layer)
    if reader.unit(layer) == "image":
        keys = [k for k in keys if k != "mean"]
    return keys


@dataclass
class Ranking:
    """One ranking of a channel's images (its filled slots, best first)."""

    key: str  # max, mean, min, or a newer scan's
    title: str  # its tab: "by max", "most negative"...
    value: str  # what its activations are: "max", "mean", "min"...
    definition: str
    activations: np.ndarray  # (k,)
    image_ids: np.ndarray  # (k,) their images
    orig_boxes: np.ndarray  # (k, 4) each patch's box in its photo, original pixels
    patch_boxes: np.ndarray  # (k, 4) each patch's box in the network's input
    image_names: list[str]
    labels: list[str] | None  # label, with its class name when it is a class index or WordNet id
    patch_errors: list[str]  # why a patch is missing ('' when it is there)
    patches: np.ndarray  # uint8 (k, h, w, 3)

    @property
    def k(self) -> int:
        return len(self.activations)

    @property
    def suffix(self) -> str:
        """Its files' suffix (``c12-mean.png``); the max ranking's files keep their names."""
        return "" if self.key == "max" else f"-{safe_name(self.key)}"

    @property
    def negative(self) -> bool:
        """Its images are the most negative: their photos show where the map is below 0."""
        return self.key == "min"


@dataclass
class ChannelInfo:
    layer: str
    channel: int
    name: str  # class name of a logits layer's channel, else ''
    rankings: list[Ranking]  # by max first
    stats: pd.Series
    maxima: np.ndarray | None  # float64 (images,), NaN for unreadable images; None: not kept
    optimized: np.ndarray | None
    optimized_recipe: str | None

    @property
    def top(self) -> Ranking:
        """The ranking by max (its top-k: thumbnails, attributions, the histogram's marks)."""
        return self.rankings[0]

    @property
    def activations(self) -> np.ndarray:
        return self.top.activations

    @property
    def image_ids(self) -> np.ndarray:
        return self.top.image_ids

    @property
    def k(self) -> int:
        return self.top.k


def run_info(reader: RunReader, layers: Sequence[str] | None) -> RunInfo:
    h = reader.header
    chosen = reader.layers if layers is None else [reader.resolve_layer(n, "layers") for n in layers]
    chosen = list(dict.fromkeys(chosen))  # `logits` and its module's name are one layer
    return RunInfo(reader.path.name, h.model, h.weights_origin, h.n_images, h.n_failed, h.top_k, h.library,
                   chosen, reader.precision)


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
    meta = reader.layer_meta(layer)
    n_ch, patch_shape = meta.channels, meta.patch_shape
    # small patches (early layers) are magnified to at least 64 px on screen
    scale = min(16, max(min_scale, math.ceil(64 / max(patch_shape))))
    shown = _chosen(channels, n_ch, layer)
    names = reader.channel_names(layer)
    logits = meta.logits
    hidden = hidden_statistics(reader.unit(layer), logits)
    filled = (g[fmt.TOPK_IMAGE_ID][()] >= 0).sum(axis=1)
    return LayerInfo(layer, n_ch, shown, meta.rf_size, meta.rf_stride, patch_shape, scale, reader.unit(layer),
                     None if names is None else [str(n) for n in names],
                     _orders(stats.drop(columns=[c for c in hidden if c in stats]), shown),
                     _top_classes(stats, list(range(n_ch)), filled), _silent(stats), logits,
                     tuple(int(v) for v in reader.preprocessing["crop"]), meta.patch_factor,
                     shown_rankings(reader, layer),
                     reader.mask_levels(layer) if reader.has_quantiles(layer) else None)


def hidden_statistics(unit: str, logits: bool) -> set[str]:
    """Statistics that say nothing about such a unit: the mean activation of a whole-image unit
    is its mean max (one value per image); the fire rate of a logits layer is 1 after a ReLU and
    the share of positive logits otherwise, neither of which describes a class."""
    hidden = set()
    if unit == "image":
        hidden.add("mean_activation")
    if logits:
        hidden.add("fire_rate")
    return hidden


def _top_classes(stats: pd.DataFrame, shown: list[int], filled: np.ndarray) -> dict[int, str] | None:
    """Per channel of ``shown``, its top class as ``armadillo (3 of 8)``; '' when no label comes twice
    among its top-k (the first of eight labels seen once says nothing) or it is nearly silent
    (its top-k are its few weak responses, or ties at 0). ``filled``: per channel, its filled
    top-k slots."""
    if "top_label" not in stats:
        return None
    rows = stats.set_index("channel").reindex(shown)
    out = {}
    for c, row in zip(shown, rows.itertuples(), strict=True):
        name = getattr(row, "top_label_name", "") or row.top_label
        count = 0 if pd.isna(row.top_label_share) else round(row.top_label_share * int(filled[c]))
        silent = bool(getattr(row, "nearly_silent", False))
        out[c] = f"{name} ({count} of {int(filled[c])})" if name and count >= 2 and not silent else ""
    return out


def _silent(stats: pd.DataFrame) -> frozenset[int]:
    if "nearly_silent" not in stats:
        return frozenset()
    return frozenset(int(c) for c in stats.loc[stats["nearly_silent"], "channel"])


def _orders(stats: pd.DataFrame, shown: list[int]) -> list[Order]:
    """The shown channels ordered by each statistic the run has (highest first, ties by index;
    an undefined value, e.g. the selectivity of a nearly silent channel, last)."""
    orders = []
    for stem, title, column in ORDERS:
        if column not in stats or stats[column].isna().all():
            continue
        values = stats.set_index("channel")[column].reindex(shown).to_numpy(np.float64)
        order = np.lexsort((np.asarray(shown), -np.nan_to_num(values, nan=-np.inf)))
        formatted = {c: "–" if np.isnan(v) else f"{v:.3g}" for c, v in zip(shown, values, strict=True)}
        orders.append(Order(stem, title, STATISTICS[column][1], [shown[j] for j in order], formatted))
    return orders


def channels_of(reader: RunReader, layer: LayerInfo, stats: pd.DataFrame) -> Iterator[ChannelInfo]:
    """The shown channels of a layer, in order; ``stats`` is the layer's :func:`channel_stats`."""
    g = reader.layer(layer.name)
    stats = stats.set_index("channel")
    # what a reader needs beside the patches: statistics that repeat nothing shown elsewhere
    stats = stats.drop(columns=[c for c in ("layer", "channel_name") if c in stats])
    maxima = reader.maxima_columns(layer.name, layer.shown) if reader.has_maxima(layer.name) else None
    images = (reader.paths, _named_labels(reader), reader.patch_errors)
    groups = [(key, reader.ranking(layer.name, key)) for key in layer.rankings]
    images = (*images, layer.unit)
    done = g[fmt.OPTIMIZED_DONE][()] if fmt.OPTIMIZED_DONE in g else None
    for j, c in enumerate(layer.shown):
        optimized = g[fmt.OPTIMIZED_IMAGES][c] if done is not None and done[c] else None
        yield ChannelInfo(
            layer.name, c, layer.channel_names[c] if layer.channel_names else "",
            [_ranking(key, grp, c, images) for key, grp in groups], stats.loc[c],
            None if maxima is None else maxima[:, j], optimized,
            str(g[fmt.OPTIMIZED].attrs.get(fmt.OPTIMIZED_RECIPE, "?")) if optimized is not None else None)


def _ranking(key: str, grp, c: int, images: tuple) -> Ranking:
    """Channel ``c``'s filled slots of one ranking group; ``images``: per image its path, named
    label (or ``None``) and patch error (or ``None``), and the layer's kind of unit."""
    paths, labels, errors, unit = images
    ids = grp[fmt.IMAGE_ID][c]
    k = int((ids >= 0).sum())
    ids = ids[:k]
    activations = grp[fmt.ACTIVATION][c][:k]
    title, value, definition = ranking_meaning(key, activations, unit)
    return Ranking(key, title, value, definition, activations, ids, grp[fmt.ORIG_BOX][c][:k],
                   grp[fmt.PATCH_BOX][c][:k], [Path(str(paths[i])).name for i in ids],
                   [str(labels[i]) for i in ids] if labels is not None else None,
                   [str(errors[i]) if errors is not None else "" for i in ids], grp[fmt.PATCHES][c][:k])


def stat_rows(stats: pd.Series, layer: LayerInfo) -> list[tuple[str, str, str]]:
    """A channel's statistics as ``(label, value, one-line definition)``, those that mean
    something for its kind of unit only; an undefined selectivity says why."""
    hidden = hidden_statistics(layer.unit, layer.logits)
    rows = []
    for key, (label, definition) in STATISTICS.items():
        if key not in stats or key in hidden:
            continue
        if key == "top_label":
            top = (layer.top_classes or {}).get(int(stats.name), "")
            rows.append((label, top or "–", definition + ("" if top else "; – when no label comes twice "
                                                           "among them, or the channel is nearly silent")))
            continue
        if key == "selectivity" and pd.isna(stats[key]):
            rows.append((label, "–", _why_undefined(stats)))
            continue
        rows.append((label, _fmt(stats[key]), definition))
    known = set(STATISTICS) | {"top_label_name", "top_label_share", "nearly_silent"}
    rows += [(key.replace("_", " "), _fmt(stats[key]), "") for key in stats.index
             if key not in known and key not in hidden and _fmt(stats[key]) not in ("", "–")]
    return rows


def _why_undefined(stats: pd.Series) -> str:
    """Why a channel has no class selectivity, in one line."""
    if bool(stats.get("nearly_silent", False)):
        return (f"undefined: the channel is nearly silent (its top-k activations are under "
                f"{SILENT_SHARE:.0%} of its layer's median channel's), so the index would measure noise")
    return ("undefined: negative responses (the index assumes responses ≥ 0), fewer than two classes, or "
            "no per-image maxima kept")


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


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
    return channel_stats(reader, layer)


@dataclass
class ClassBar:
    """One class on a channel's chart (a row of :func:`class_table`)."""

    label: str
    name: str  # its class name ('' when the label is one)
    mean_max: float
    count: int
    fire_rate: float
    width: float = 0.0  # of its bar, 0-1 of the chart's
    own: bool = False  # the channel's own class (a logits layer)

    @property
    def shown_name(self) -> str:
        return self.name or self.label


def class_charts(reader: RunReader, layer: LayerInfo, n: int = 10) -> dict[int, list[ClassBar]] | str:
    """Per shown channel, its ``n`` best classes (:func:`class_table`: the mean of its per-image
    maxima over each class's images), or one line saying why the run has none."""
    from ..run.tables import class_table

    if reader.labels is None or not (reader.labels.astype(str) != "").any():
        return "the library has no labels (no class folders or label column): no classes to show"
    if not reader.has_maxima(layer.name):
        return "not kept in this run (scanned without per-image maxima): no classes to show"
    table = class_table(reader, layer.name)
    table = table[table["channel"].isin(layer.shown)]
    names = layer.channel_names
    out: dict[int, list[ClassBar]] = {c: [] for c in layer.shown}
    for c, rows in table.groupby("channel", sort=False):
        bars = [ClassBar(str(r.label), str(r.label_name), float(r.mean_max), int(r.count), float(r.fire_rate),
                         own=bool(names) and str(r.label_name or r.label) == names[int(c)])
                for r in rows.head(n).itertuples()]
        peak = max((b.mean_max for b in bars), default=0.0)
        for b in bars:
            b.width = max(b.mean_max, 0.0) / peak if peak > 0 else 0.0
        out[int(c)] = bars
    return out


@dataclass
class Similar:
    """A channel whose per-image maxima rise and fall with another's."""

    channel: int
    spearman: float


def similar_of(reader: RunReader, layer: LayerInfo, n: int = 8) -> dict[int, list[Similar]] | str:
    """Per shown channel, :func:`~cnnviz.run.tables.similar_channels` (Spearman over the per-image
    maxima, most similar first), for all of them at once: the layer's maxima ranked once, each
    shown channel's correlations one matrix product (a call per channel would rank them every
    time); or one line saying why the run has none."""
    if not reader.has_maxima(layer.name):
        return "not kept in this run (scanned without per-image maxima): no correlations to show"
    maxima = np.concatenate(list(reader.maxima_blocks(layer.name, dtype=np.float32)))
    maxima = maxima[~np.isnan(maxima).any(axis=1)]  # unreadable images: rows of NaN
    if len(maxima) < 3:
        return {c: [] for c in layer.shown}
    ranks = pd.DataFrame(maxima).rank(method="average").to_numpy(copy=True)
    del maxima
    ranks -= ranks.mean(axis=0)
    norms = np.sqrt((ranks ** 2).sum(axis=0))
    out = {}
    for start in range(0, len(layer.shown), 256):
        block = layer.shown[start: start + 256]
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.clip(ranks.T @ ranks[:, block] / (norms[:, None] * norms[block][None, :]), -1.0, 1.0)
        for j, c in enumerate(block):
            out[c] = _most_similar(corr[:, j], c, n)
    return out


def _most_similar(corr: np.ndarray, channel: int, n: int) -> list[Similar]:
    """The ``n`` highest correlations but the channel's own (stable: ties by index); a dead
    channel correlates with nothing (NaN)."""
    corr = corr.copy()
    corr[channel] = np.nan
    order = np.argsort(-np.nan_to_num(corr, nan=-np.inf), kind="stable")
    return [Similar(int(o), float(corr[o])) for o in order[:n] if not np.isnan(corr[o])]
