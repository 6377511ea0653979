"""pandas views of a run file: top patches, per-image maxima, per-channel statistics.

Columns hold only numbers and strings (no Python objects), so every table goes to CSV or
parquet as it is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import label_names
from . import format as fmt
from .reader import RunReader

__all__ = ["top_patches", "channel_maxima", "channel_stats", "run_layers", "read_patches", "failures",
           "failure_kinds", "nearly_silent", "SILENT_SHARE"]


def run_layers(run: str | Path) -> list[str]:
    """Names of the layers a run scanned, in order."""
    with RunReader(run) as r:
        return r.layers


def top_patches(run: str | Path, layer: str | None = None, channel: int | None = None) -> pd.DataFrame:
    """One row per (layer, channel, rank) of the top-k.

    Columns: ``layer, channel, rank, activation, image_id, image_path, label, y, x`` (unit
    position in the layer's map), ``rf_y0, rf_x0, rf_y1, rf_x1`` (receptive field, network-input
    pixels, half-open), ``patch_y0 ... patch_x1`` (the stored patch's box) and ``orig_y0 ...
    orig_x1`` (the patch box inside the image, in original-photo pixels). Empty slots (fewer
    readable images than k) are left out. ``label`` is empty when the library has no labels;
    ``label_name`` is its class name when the label is a class index or WordNet id (else
    empty); ``channel_name`` is the class name of a logits layer's channel (else empty);
    ``unit`` is ``map`` or ``image`` (a whole-image unit: its patch is a thumbnail of the
    network's input, ``y = x = 0``); ``patch_error`` says why a patch is missing (black): its
    image changed or vanished after it was scanned (empty when the patch is there).

    Example:
        >>> df = top_patches("run.h5", layer="layer3.1")           # doctest: +SKIP
        >>> df[df.channel == 12].head()                            # doctest: +SKIP
    """
    frames = []
    with RunReader(run) as r:
        paths, labels, patch_errors = r.paths, r.labels, r.patch_errors
        names = r.label_names()
        for name in r.check_layer(layer):
            if channel is not None:
                r.check_channels(name, channel)
            g = r.layer(name)
            ids = g[fmt.TOPK_IMAGE_ID][()]
            c_n, k = ids.shape
            chan = np.repeat(np.arange(c_n), k)
            rank = np.tile(np.arange(k), c_n)
            flat_ids = ids.reshape(-1)
            cols = {
                "layer": np.full(c_n * k, name, dtype=object), "channel": chan, "rank": rank,
                "activation": g[fmt.TOPK_ACTIVATION][()].reshape(-1), "image_id": flat_ids,
                "image_path": np.where(flat_ids >= 0, paths[np.maximum(flat_ids, 0)], ""),
                "label": _per_image(labels, flat_ids),
                "label_name": _per_image(names, flat_ids),
                "channel_name": _per_channel(r.channel_names(name), chan),
                "unit": np.full(c_n * k, r.unit(name), dtype=object),
                "y": g[fmt.TOPK_Y][()].reshape(-1), "x": g[fmt.TOPK_X][()].reshape(-1),
                "patch_error": _per_image(patch_errors, flat_ids),
            }
            for prefix, key in (("rf", fmt.TOPK_RF_BOX), ("patch", fmt.TOPK_PATCH_BOX),
                                ("orig", fmt.TOPK_ORIG_BOX)):
                box = g[key][()].reshape(-1, 4)
                for j, side in enumerate(("y0", "x0", "y1", "x1")):
                    cols[f"{prefix}_{side}"] = box[:, j]
            df = pd.DataFrame(cols)
            df = df[df.image_id >= 0]
            if channel is not None:
                df = df[df.channel == channel]
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for col in ("layer", "image_path", "label", "label_name", "channel_name", "unit", "patch_error"):
        out[col] = out[col].astype(str)
    out.attrs["run"] = str(Path(run).resolve())  # for cnnviz.show(df): where the patches are
    return out


def _per_image(values: np.ndarray | None, ids: np.ndarray) -> np.ndarray:
    """``values[id]`` for each id ('' for empty slots, or everywhere when ``values`` is None)."""
    if values is None:
        return np.full(len(ids), "", dtype=object)
    return np.where(ids >= 0, values[np.maximum(ids, 0)], "")


def _per_channel(names: np.ndarray | None, channels: np.ndarray) -> np.ndarray:
    return np.full(len(channels), "", dtype=object) if names is None else names[channels]


def channel_maxima(run: str | Path, layer: str, positions: bool = False) -> pd.DataFrame:
    """The images x channels matrix of spatial maxima of ``layer``, indexed by image path.

    Unreadable images are rows of NaN. With ``positions=True`` returns instead the ``y*W + x``
    position of each maximum.
    """
    with RunReader(run) as r:
        data = r.maxima_dataset(layer, positions)[()]
        index = pd.Index(r.paths.astype(str), name="image_path")
    # copy=False: the array was just read and is ours; pandas would otherwise copy it transposed
    return pd.DataFrame(data, index=index, columns=pd.RangeIndex(data.shape[1], name="channel"), copy=False)


def channel_stats(run: str | Path, layer: str | None = None) -> pd.DataFrame:
    """Per-channel statistics: one row per (layer, channel).

    Columns: ``count`` (images read), ``mean_max``, ``std_max``, ``max_max`` (of the per-image
    maxima; ``max_max`` is also the channel's top-1 activation), ``fire_rate`` (fraction of
    images whose maximum is > 0; 1 - sparsity), ``mean_activation`` (mean over images of the
    spatial mean), ``nearly_silent`` (the mean of the channel's top-k activations is under 2 %
    of its layer's median channel's: see :data:`SILENT_SHARE`), ``channel_name`` (a logits layer's class
    name, else empty), and where labels are known ``top_label``/``top_label_name``/
    ``top_label_share`` (most frequent label among the top-k, its class name when it is a class
    index or WordNet id, and its share of the top-k) and ``selectivity``.

    ``selectivity`` is the class-selectivity index (mu_max - mu_rest) / (mu_max + mu_rest) of the
    per-label means of the maxima (Morcos et al. 2018): 0 when every class drives the channel
    alike, 1 when one class alone does. It is NaN where it would measure noise: for a nearly
    silent channel (the index divides tiny per-class means by each other, and a handful of weak
    responses in one class push it towards 1: a dead channel would rank as the most selective
    of its layer), and for a channel with a negative per-class mean (logits of most classifiers,
    pre-ReLU outputs: the index assumes responses >= 0, and its denominator can cross 0).
    Unlabelled images (label ``""``) count in no class.
    """
    frames = []
    with RunReader(run) as r:
        labels = r.labels
        for name in r.check_layer(layer):
            g = r.layer(name)
            df = pd.DataFrame({k: g[fmt.STATS][k][()] for k in g[fmt.STATS]})
            df.insert(0, "channel", np.arange(len(df)))
            df.insert(0, "layer", name)
            df["nearly_silent"] = nearly_silent(g[fmt.TOPK_ACTIVATION][()])
            df["channel_name"] = _per_channel(r.channel_names(name), df["channel"].to_numpy()).astype(str)
            if labels is not None:
                maxima = r.maxima_blocks(name, dtype=np.float32) if r.has_maxima(name) else None
                _label_columns(df, labels, g[fmt.TOPK_IMAGE_ID][()], maxima, name)
                df.insert(df.columns.get_loc("top_label") + 1, "top_label_name",
                          [n or "" for n in label_names(df["top_label"], r.class_names)])
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


#: A channel is nearly silent when the mean of its top-k activations (its strongest responses
#: over the library) is under this share of its layer's median channel's. Strong responses on
#: the images it prefers are what a selective channel has, however few those images are (one
#: class of 1,000 is 0.1 % of a library: a floor on the mean over all images would call such a
#: channel silent). On 1,000 ImageNet photos, SqueezeNet's features.3 channel 45 (fire rate
#: 0.078, top-1 0.10) is at 0.4 % and would otherwise have the highest selectivity of its layer
#: (0.88); the weakest live channels of SqueezeNet's layers are at 3.7 % or more.
SILENT_SHARE = 0.02


def nearly_silent(top_activations: np.ndarray) -> np.ndarray:
    """Per channel of one layer (rows of its ``(channels, k)`` top-k activations, NaN in empty
    slots), whether it is nearly silent (:data:`SILENT_SHARE`); a channel with no response above
    0 is."""
    filled = ~np.isnan(top_activations)
    top = np.where(filled, top_activations, 0.0).sum(axis=1) / np.maximum(filled.sum(axis=1), 1)
    floor = SILENT_SHARE * max(float(np.median(top)), 0.0) if len(top) else 0.0
    return ~(top > max(floor, 0.0))


def _label_columns(df: pd.DataFrame, labels: np.ndarray, topk_ids: np.ndarray, maxima_blocks, layer: str):
    # an unlabelled image (label "", e.g. a list file that labels some lines) is in no class
    labels = labels.astype(str)
    top_label, share = [], []
    for row in topk_ids:
        row = row[row >= 0]
        named = labels[row][labels[row] != ""]
        if len(named) == 0:
            top_label.append("")
            share.append(np.nan)
            continue
        values, counts = np.unique(named, return_counts=True)
        top_label.append(str(values[counts.argmax()]))
        share.append(counts.max() / len(row))
    df["top_label"] = top_label
    df["top_label_share"] = share
    if maxima_blocks is None:
        warnings.warn(f"selectivity of {layer} is NaN: the run did not keep its per-image maxima",
                      stacklevel=3)
        df["selectivity"] = np.nan
        return
    codes, uniques = pd.factorize(pd.Series(labels))
    codes[labels == ""] = -1
    # per-label mean of the maxima, streamed over rows (the matrix can be larger than memory)
    sums = np.zeros((len(uniques), len(df)))
    counts = np.zeros(len(uniques))
    start = 0
    for m in maxima_blocks:
        block_codes = codes[start: start + len(m)]
        start += len(m)
        ok = ~np.isnan(m).any(axis=1) & (block_codes >= 0)
        _add_by_label(sums, counts, block_codes[ok], m[ok])
    present = counts > 0
    if present.sum() < 2:
        df["selectivity"] = np.nan
        return
    per_class = sums[present] / counts[present, None]  # (labels, C)
    best = per_class.max(axis=0)
    n_cls = per_class.shape[0]
    rest = (per_class.sum(axis=0) - best) / max(1, n_cls - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        index = (best - rest) / (best + rest)
    undefined = df["nearly_silent"].to_numpy() | (per_class.min(axis=0) < 0)
    df["selectivity"] = np.where(undefined, np.nan, index)


def _add_by_label(sums: np.ndarray, counts: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> None:
    """``sums[code] += row`` for every row, ``counts[code] += 1``: rows sorted by label and
    summed per run (``np.add.at`` is ten times slower at this)."""
    if len(codes) == 0:
        return
    if not (np.diff(codes) >= 0).all():  # libraries in class folders come sorted: no copy then
        order = np.argsort(codes, kind="stable")
        codes, rows = codes[order], rows[order]
    labels, starts = np.unique(codes, return_index=True)
    sums[labels] += np.add.reduceat(rows, starts, axis=0, dtype=np.float64)
    counts[labels] += np.diff(np.append(starts, len(codes)))


def read_patches(run: str | Path, layer: str, channel: int) -> np.ndarray:
    """The stored top-k patches of one channel: uint8 ``(k, h, w, 3)`` (empty slots are black)."""
    with RunReader(run) as r:
        r.check_channels(layer, channel)
        return r.layer(layer)[fmt.TOPK_PATCHES][channel]


def failures(run: str | Path) -> pd.DataFrame:
    """The images the scan could not read, one row each: ``image_id``, ``path`` (relative to the
    library), ``kind`` (the exception type: ``UnidentifiedImageError``, ``FileNotFoundError``...)
    and ``reason`` (type and message). Empty when every image was read."""
    with RunReader(run) as r:
        ids = r.file[fmt.FAILURE_ID][()] if fmt.FAILURE_ID in r.file else np.zeros(0, np.int64)
        paths = r.strings(fmt.FAILURE_PATH)
        reasons = r.strings(fmt.FAILURE_REASON)
    paths = paths if paths is not None else np.zeros(0, object)
    reasons = reasons if reasons is not None else np.zeros(0, object)
    return pd.DataFrame({"image_id": ids.astype(np.int64), "path": paths.astype(str),
                         "kind": [str(x).split(":", 1)[0] for x in reasons], "reason": reasons.astype(str)})


def failure_kinds(table: pd.DataFrame) -> pd.Series:
    """Images per kind of failure in a :func:`failures` table, most frequent first."""
    return table.groupby("kind", sort=False).size().sort_values(ascending=False, kind="stable")
