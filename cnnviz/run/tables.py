"""pandas views of a run file: top patches, per-image maxima, per-channel statistics.

Columns hold only numbers and strings (no Python objects), so every table goes to CSV or
parquet as it is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CnnvizWarning, UsageError, user_level
from ..images.patches import boxes_to_original
from ..labels import label_names
from ..types import RunSpec
from . import format as fmt
from .geometry import LayerGeometry
from .quantiles import BucketScale, quantiles_from_histogram
from .reader import RunReader, reading

__all__ = ["top_patches", "channel_maxima", "channel_stats", "run_layers", "read_patches", "failures",
           "failure_kinds", "nearly_silent", "SILENT_SHARE", "class_table", "channel_quantiles",
           "channel_histogram", "similar_channels"]


def run_layers(run: str | Path) -> list[str]:
    """Names of the layers a run scanned, in order."""
    with reading(run) as r:
        return r.layers


def top_patches(run: RunSpec, layer: str | None = None, channel: int | None = None, *,
                rank_by: str = "max", bottom: bool = False, label: str | None = None) -> pd.DataFrame:
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
    ``rank_by`` says which ranking the row is from (``max``, ``mean``, or ``min`` for the
    bottom-k) and ``patch_rank`` where its patch is stored in that ranking (-1: not stored).

    Args:
        rank_by: ``"max"`` (images by their spatial maximum) or ``"mean"`` (by their spatial
            mean, when the scan kept that ranking; ``activation`` is then the mean, and the patch
            is cut around the image's maximum, ``y, x``).
        bottom: the bottom-k instead: the most negative images by their spatial minimum, rank 0
            the most negative, ``activation`` the signed minimum, ``y, x`` where it is.
        label: the top-k among the images of one class only (a label of the library, such as
            ``n02123045``, or its class name), ranked by max from the per-image maxima (the run
            must have kept them); a row whose image is also in the channel's stored top-k has
            its ``patch_rank`` there, the others have no stored patch.

    Example:
        >>> df = top_patches("run.h5", layer="layer3.1")           # doctest: +SKIP
        >>> df[df.channel == 12].head()                            # doctest: +SKIP
    """
    criterion = "min" if bottom else rank_by
    frames = []
    with reading(run) as r:
        where = str(r.path.resolve())
        members = None if label is None else _class_members(r, label)
        for name in r.check_layer(layer):
            if channel is not None:
                r.check_channels(name, channel)
            rows = _class_rows(r, name, members) if members is not None else _stored_rows(r, name, criterion)
            df = _rows_frame(r, name, rows, "max" if members is not None else criterion)
            df = df[df.image_id >= 0]
            if channel is not None:
                df = df[df.channel == channel]
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for col in ("layer", "image_path", "label", "label_name", "channel_name", "unit", "patch_error",
                "rank_by"):
        out[col] = out[col].astype(str)
    out.attrs["run"] = where  # for cnnviz.show(df): where the patches are
    return out


def _rows_frame(r: RunReader, name: str, rows: dict[str, np.ndarray], rank_by: str) -> pd.DataFrame:
    """One layer's ranking datasets ``(C, k)`` as a table of one row per slot."""
    ids = rows["image_id"]
    c_n, k = ids.shape
    chan = np.repeat(np.arange(c_n), k)
    flat_ids = ids.reshape(-1)
    cols = {
        "layer": np.full(c_n * k, name, dtype=object), "channel": chan, "rank": np.tile(np.arange(k), c_n),
        "activation": rows["activation"].reshape(-1), "image_id": flat_ids,
        "image_path": np.where(flat_ids >= 0, r.paths[np.maximum(flat_ids, 0)], ""),
        "label": _per_image(r.labels, flat_ids),
        "label_name": _per_image(r.label_names(), flat_ids),
        "channel_name": _per_channel(r.channel_names(name), chan),
        "unit": np.full(c_n * k, r.unit(name), dtype=object),
        "y": rows["y"].reshape(-1), "x": rows["x"].reshape(-1),
        "patch_error": _per_image(r.patch_errors, flat_ids),
        "rank_by": np.full(c_n * k, rank_by, dtype=object),
        "patch_rank": rows["patch_rank"].reshape(-1),
    }
    for prefix, key in (("rf", fmt.RF_BOX), ("patch", fmt.PATCH_BOX), ("orig", fmt.ORIG_BOX)):
        box = rows[key].reshape(-1, 4)
        for j, side in enumerate(("y0", "x0", "y1", "x1")):
            cols[f"{prefix}_{side}"] = box[:, j]
    return pd.DataFrame(cols)


def _stored_rows(r: RunReader, layer: str, rank_by: str) -> dict[str, np.ndarray]:
    """The datasets of one stored ranking (``topk/``, ``topk_mean/``, ``bottomk/``)."""
    grp = r.ranking(layer, rank_by)
    rows = {key: grp[key][()] for key in (fmt.IMAGE_ID, fmt.ACTIVATION, fmt.Y, fmt.X, fmt.RF_BOX,
                                          fmt.PATCH_BOX, fmt.ORIG_BOX)}
    k = rows[fmt.IMAGE_ID].shape[1]
    rows["patch_rank"] = np.where(rows[fmt.IMAGE_ID] >= 0, np.arange(k)[None, :], -1)
    return rows


def _class_members(r: RunReader, label: str) -> np.ndarray:
    """The ids of the images labelled ``label`` (a label of the library, or its class name)."""
    labels = r.labels
    if labels is None:
        raise UsageError(f"`label` {label!r}: the images of {r.path.name} have no labels")
    labels = labels.astype(str)
    names = r.label_names()
    hit = labels == label
    if not hit.any() and names is not None:
        hit = np.char.lower(names.astype(str)) == label.strip().lower()
    if not hit.any():
        known = ", ".join(sorted(set(labels[labels != ""]))[:8])
        raise UsageError(f"`label` {label!r}: no image of {r.path.name} has that label or class name "
                         f"(its labels include {known})")
    return np.flatnonzero(hit)


def _class_rows(r: RunReader, layer: str, members: np.ndarray) -> dict[str, np.ndarray]:
    """The top-k of every channel among the images ``members``, ranked by (-maximum, id) from
    the per-image maxima, with the boxes the scan would have written."""
    g = r.layer(layer)
    k = int(r.attrs[fmt.ATTR_TOP_K])
    maxima = r.maxima_dataset(layer)[()][members].astype(np.float32)  # (M, C), rows in id order
    where = r.maxima_dataset(layer, positions=True)[()][members].astype(np.int64)
    key = np.where(np.isnan(maxima) | (maxima == -np.inf), np.inf, -maxima.astype(np.float64))
    order = np.argsort(key, axis=0, kind="stable")[:k]  # (k', C); stable: the smaller id first
    chan = np.arange(maxima.shape[1])[None, :]
    filled = np.isfinite(key[order, chan]).T
    pad = ((0, 0), (0, k - order.shape[0]))  # a class with fewer than k images
    ids = np.pad(np.where(filled, members[order].T, -1), pad, constant_values=-1)
    values = np.pad(np.where(filled, maxima[order, chan].T, np.nan), pad, constant_values=np.nan)
    pos = np.pad(np.where(filled, where[order, chan].T, 0), pad)
    filled = ids >= 0
    c_n = ids.shape[0]
    width = int(g.attrs[fmt.LAYER_WIDTH])
    y, x = np.where(filled, pos // width, -1), np.where(filled, pos % width, -1)
    geo = LayerGeometry(g.attrs, r.preprocessing["crop"], int(r.attrs[fmt.ATTR_PATCH_SIZE]))
    rf, patch = geo.boxes(y, x)
    geometry = r.file[fmt.IMAGE_GEOMETRY][()][np.maximum(ids, 0).reshape(-1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        clipped = np.clip(patch.reshape(-1, 4), 0, [*geo.crop, *geo.crop])
        orig = boxes_to_original(clipped, geometry).reshape(patch.shape)
    stored = g[fmt.TOPK_IMAGE_ID][()]
    patch_rank = np.array([[_index_of(stored[c], i) for i in ids[c]] for c in range(c_n)], dtype=np.int64)
    valid = filled[..., None]
    return {fmt.IMAGE_ID: ids, fmt.ACTIVATION: values,
            fmt.Y: y, fmt.X: x, fmt.RF_BOX: np.where(valid, rf, -1),
            fmt.PATCH_BOX: np.where(valid, patch, -1),
            fmt.ORIG_BOX: np.where(valid, orig, np.nan).astype(np.float32), "patch_rank": patch_rank}


def _index_of(row: np.ndarray, image_id: int) -> int:
    hit = np.flatnonzero(row == image_id) if image_id >= 0 else []
    return int(hit[0]) if len(hit) else -1


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
    with reading(run) as r:
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
    with reading(run) as r:
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
                      CnnvizWarning, stacklevel=user_level())
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


def class_table(run: str | Path, layer: str, channel: int | None = None) -> pd.DataFrame:
    """Per channel and class of the library, from the stored per-image maxima (no scan cost):
    one row per (channel, label), the channel's best classes first.

    Columns: ``layer, channel, channel_name, label, label_name`` (its class name when the label
    is a class index or WordNet id), ``count`` (images of the class whose maximum is a number),
    ``mean_max`` (mean of their maxima) and ``fire_rate`` (the share of them whose maximum is
    > 0). Unlabelled (label ``""``) and unreadable images count in no class.

    Example:
        >>> t = class_table("run.h5", "classifier.1", channel=281)      # doctest: +SKIP
        >>> t.head(5)  # the five classes that excite channel 281 most   # doctest: +SKIP
    """
    with reading(run) as r:
        r.check_layer(layer)
        if channel is not None:
            r.check_channels(layer, channel)
        if r.labels is None:
            raise UsageError(f"{r.path.name} has no labels (its library had no class folders or label "
                             "column): there are no classes to tabulate")
        labels = r.labels.astype(str)
        channels = None if channel is None else [channel]
        codes, uniques = pd.factorize(pd.Series(labels))
        codes[labels == ""] = -1
        n_c = len(channels) if channels else int(r.layer(layer).attrs[fmt.LAYER_CHANNELS])
        sums, fires, counts = (np.zeros((len(uniques), n_c)) for _ in range(3))
        start = 0
        for m in r.maxima_blocks(layer, channels, dtype=np.float64):
            block = codes[start: start + len(m)]
            start += len(m)
            named = block >= 0
            m, block = m[named], block[named]
            number = ~np.isnan(m)
            _add_by_label(sums, np.zeros(len(uniques)), block, np.where(number, m, 0.0))
            _add_by_label(fires, np.zeros(len(uniques)), block, (m > 0).astype(np.float64))
            _add_by_label(counts, np.zeros(len(uniques)), block, number.astype(np.float64))
        label_of = np.asarray(uniques, dtype=object)
        class_names = label_names(label_of, r.class_names) if len(label_of) else []
        chan_names = r.channel_names(layer)
    chans = np.asarray(channels if channels else np.arange(n_c))
    with np.errstate(invalid="ignore", divide="ignore"):
        table = pd.DataFrame({
            "layer": layer, "channel": np.tile(chans, len(uniques)),
            "label": np.repeat(label_of, n_c).astype(str),
            "label_name": np.repeat([n or "" for n in class_names], n_c).astype(str),
            "count": counts.reshape(-1).astype(np.int64), "mean_max": (sums / counts).reshape(-1),
            "fire_rate": (fires / counts).reshape(-1)})
    table.insert(2, "channel_name", _per_channel(chan_names, table["channel"].to_numpy()).astype(str))
    table = table[table["count"] > 0]
    return table.sort_values(["channel", "mean_max", "label"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)


def channel_quantiles(run: str | Path, layer: str, levels=None) -> pd.DataFrame:
    """The distribution of each channel's activations over all (sampled) positions of all images:
    one row per channel (indexed by ``channel``), one column per level named by the level as a
    float (``0.5, 0.9, 0.99, 0.995, 0.999``, or the ``levels`` asked for, read from the stored
    histogram). Each value is within 2**-(mantissa_bits + 1) (6.25 %) of the exact quantile of
    the counted positions (docs/run-file-format.md, *Quantiles*); NaN for a channel that counted
    nothing."""
    with reading(run) as r:
        q = r.quantile_group(layer)
        g = r.layer(layer)
        if levels is None:
            levels = [float(v) for v in q.attrs[fmt.QUANTILE_LEVELS]]
            values = g[fmt.QUANTILE_VALUE][()].astype(np.float64)
        else:
            levels = [float(v) for v in levels]
            if not all(0 <= v <= 1 for v in levels):
                raise UsageError(f"`levels` {levels}: each must be between 0 and 1")
            values = quantiles_from_histogram(g[fmt.QUANTILE_HISTOGRAM][()], levels,
                                              BucketScale.from_attrs(q.attrs))
    return pd.DataFrame(values, index=pd.RangeIndex(len(values), name="channel"),
                        columns=pd.Index(levels, dtype=np.float64))


def channel_histogram(run: str | Path, layer: str, channel: int) -> pd.DataFrame:
    """The counted distribution of one channel over positions: one row per bucket that counted
    anything, ascending, with its value range ``low, high`` and ``count`` (the bucket around 0
    spans +-2**min_exponent; overflow buckets reach +-inf)."""
    with reading(run) as r:
        r.check_channels(layer, channel)
        q = r.quantile_group(layer)
        counts = r.layer(layer)[fmt.QUANTILE_HISTOGRAM][channel]
        edges = BucketScale.from_attrs(q.attrs).edges()
    used = np.flatnonzero(counts)
    return pd.DataFrame({"low": edges[used], "high": edges[used + 1], "count": counts[used].astype(np.int64)})


def similar_channels(run: str | Path, layer: str, channel: int, n: int = 10) -> pd.DataFrame:
    """The ``n`` channels of ``layer`` whose per-image maxima rise and fall most with this
    channel's over the library: Spearman rank correlation (average ranks for ties, as the many
    zeros after a ReLU need), over the images read. Columns ``layer, channel, channel_name,
    spearman``, most similar first; a dead channel (one value for every image) correlates with
    nothing and gets an empty table."""
    with reading(run) as r:
        r.check_channels(layer, channel)
        if not isinstance(n, int) or n < 1:
            raise UsageError(f"`n` {n!r}: must be a whole number of at least 1")
        maxima = np.concatenate(list(r.maxima_blocks(layer, dtype=np.float32)))
        names = r.channel_names(layer)
    maxima = maxima[~np.isnan(maxima).any(axis=1)]  # unreadable images: rows of NaN
    corr = _spearman_with(maxima, channel)
    corr[channel] = np.nan
    ranked = np.argsort(-np.nan_to_num(corr, nan=-np.inf), kind="stable")
    order = np.asarray([c for c in ranked if not np.isnan(corr[c])][:n], dtype=np.int64)
    return pd.DataFrame({"layer": layer, "channel": order,
                         "channel_name": _per_channel(names, order).astype(str), "spearman": corr[order]})


def _spearman_with(maxima: np.ndarray, channel: int, block: int = 256) -> np.ndarray:
    """Spearman correlation of every column of ``maxima`` with column ``channel``."""
    n, c = maxima.shape
    out = np.full(c, np.nan)
    if n < 3:
        return out
    target = pd.Series(maxima[:, channel]).rank(method="average").to_numpy(copy=True)
    target -= target.mean()
    tnorm = np.sqrt((target ** 2).sum())
    for c0 in range(0, c, block):
        ranks = pd.DataFrame(maxima[:, c0: c0 + block]).rank(method="average").to_numpy(copy=True)
        ranks -= ranks.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.sqrt((ranks ** 2).sum(axis=0)) * tnorm
            out[c0: c0 + block] = (ranks * target[:, None]).sum(axis=0) / norm
    return np.clip(out, -1.0, 1.0)


def read_patches(run: str | Path, layer: str, channel: int) -> np.ndarray:
    """The stored top-k patches of one channel: uint8 ``(k, h, w, 3)`` (empty slots are black)."""
    with reading(run) as r:
        r.check_channels(layer, channel)
        return r.layer(layer)[fmt.TOPK_PATCHES][channel]


def failures(run: str | Path) -> pd.DataFrame:
    """The images the scan could not read, one row each: ``image_id``, ``path`` (relative to the
    library), ``kind`` (the exception type: ``UnidentifiedImageError``, ``FileNotFoundError``...)
    and ``reason`` (type and message). Empty when every image was read."""
    with reading(run) as r:
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
