"""Compare two runs channel by channel: one model before and after fine-tuning, or one model on
two datasets.

Images are matched by their bytes (size and BLAKE2b digest recorded at scan time), so two scans
of one library agree whatever the files are called or the order they were listed in; files
written before cnnviz 0.2 (no digests) are matched by relative path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..run import format as fmt
from ..run.reader import RunReader, reading

__all__ = ["compare_runs", "STATS"]

STATS = ("mean_max", "std_max", "max_max", "fire_rate", "mean_activation")


def compare_runs(run_a: str | Path, run_b: str | Path, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per channel, what changed from ``run_a`` to ``run_b``, most changed first.

    The runs must share the compared layers with the same channel counts.

    Returns:
        One row per (layer, channel). Columns: ``layer``, ``channel``, ``channel_name``;
        for each statistic ``s`` of :func:`cnnviz.channel_stats` (``mean_max``, ``std_max``,
        ``max_max``, ``fire_rate``, ``mean_activation``): ``s_a``, ``s_b`` and ``d_s = s_b - s_a``;
        ``topk_overlap`` (share of A's top-k images that are among B's top-k, counting ties
        at B's k-th value as in when B kept its per-image maxima; NaN when the runs share no
        image), ``rank_corr`` (Spearman correlation of the per-image maxima over the
        images both runs read; NaN when either run did not keep them or a channel is constant in
        one of them), ``shared_images`` (images both runs read) and ``change`` (``1 - rank_corr``
        where known, else ``1 - topk_overlap``: 0 for no change, up to 2).
    """
    with reading(run_a) as a, reading(run_b) as b:
        names = _layers(a, b, layers)
        keys_a, keys_b = _image_keys(a), _image_keys(b)
        rows_a, rows_b = _shared(keys_a, keys_b, a, b)
        frames = []
        for name in names:
            df = _stat_columns(a, b, name)
            # each run's per-image maxima read once per layer, for the overlap and the correlation
            maxima_a = a.maxima_dataset(name)[()] if a.has_maxima(name) else None
            maxima_b = b.maxima_dataset(name)[()] if b.has_maxima(name) else None
            df["topk_overlap"] = (_topk_overlap(a, b, name, keys_a, keys_b, rows_a, rows_b, maxima_b)
                                  if len(rows_a) else np.nan)
            df["rank_corr"] = _rank_corr(maxima_a, maxima_b, rows_a, rows_b, len(df))
            df["shared_images"] = len(rows_a)
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["change"] = (1 - out["rank_corr"]).fillna(1 - out["topk_overlap"])
    return out.sort_values(["change", "layer", "channel"], ascending=[False, True, True],
                           na_position="last", kind="stable").reset_index(drop=True)


def _layers(a: RunReader, b: RunReader, layers) -> list[str]:
    names = ([n for n in a.layers if n in set(b.layers)] if layers is None
             else list(dict.fromkeys(a.resolve_layer(n, "layers") for n in layers)))
    if not names:
        raise UsageError(f"`run_b`: {b.path.name} shares no layer with {a.path.name} "
                         f"({', '.join(a.layers)} vs {', '.join(b.layers)})")
    for name in names:
        b.check_layer(name, "layers")
        ca, cb = int(a.layer(name).attrs[fmt.LAYER_CHANNELS]), int(b.layer(name).attrs[fmt.LAYER_CHANNELS])
        if ca != cb:
            raise UsageError(f"`layers`: {name} has {ca} channels in {a.path.name} and {cb} in "
                             f"{b.path.name}: only layers of one architecture can be compared")
    return names


def _image_keys(r: RunReader) -> np.ndarray:
    """Per image, what identifies it across runs: ``size:digest`` of its bytes ('' when
    unreadable), or its relative path in files without digests."""
    ok = r.file[fmt.IMAGE_OK][()]
    if fmt.IMAGE_IDENTITY in r.file:
        ident = r.file[fmt.IMAGE_IDENTITY][()]
        keys = np.array([f"{s}:{d}" for s, _, d in ident], dtype=object)
    else:
        keys = r.paths.astype(object).copy()
    keys[~ok] = ""
    return keys


def _shared(keys_a: np.ndarray, keys_b: np.ndarray, a: RunReader, b: RunReader):
    """Row indices ``(rows_a, rows_b)`` of the images both runs read, aligned (in A's order)."""
    where_b = {k: i for i, k in enumerate(keys_b) if k}
    pairs = [(i, where_b[k]) for i, k in enumerate(keys_a) if k and k in where_b]
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.array(pairs, dtype=np.int64)
    return rows[:, 0], rows[:, 1]


def _stat_columns(a: RunReader, b: RunReader, layer: str) -> pd.DataFrame:
    """The stored statistics of both runs (read from their ``stats`` groups: the per-image
    maxima that :func:`channel_stats` reads for class selectivity are not needed here)."""
    ga, gb = a.layer(layer)[fmt.STATS], b.layer(layer)[fmt.STATS]
    n = int(a.layer(layer).attrs[fmt.LAYER_CHANNELS])
    names = a.channel_names(layer)
    cols = {"layer": layer, "channel": np.arange(n),
            "channel_name": names.astype(str) if names is not None else ""}
    for s in STATS:
        cols[f"{s}_a"], cols[f"{s}_b"] = ga[s][()], gb[s][()]
        cols[f"d_{s}"] = cols[f"{s}_b"] - cols[f"{s}_a"]
    return pd.DataFrame(cols)


def _topk_overlap(a: RunReader, b: RunReader, layer: str, keys_a: np.ndarray, keys_b: np.ndarray,
                  rows_a: np.ndarray, rows_b: np.ndarray, maxima_b: np.ndarray | None) -> np.ndarray:
    ids_a = a.layer(layer)[fmt.TOPK_IMAGE_ID][()]
    if maxima_b is not None:
        kth = np.nanmin(b.layer(layer)[fmt.TOPK_ACTIVATION][()], axis=1)
        return _overlap_with_ties(ids_a, maxima_b, kth, rows_a, rows_b)
    ids_b = b.layer(layer)[fmt.TOPK_IMAGE_ID][()]
    out = np.full(len(ids_a), np.nan)
    for c, (ra, rb) in enumerate(zip(ids_a, ids_b, strict=True)):
        set_a = {keys_a[i] for i in ra if i >= 0}
        if set_a:
            out[c] = len(set_a & {keys_b[i] for i in rb if i >= 0}) / len(set_a)
    return out


def _overlap_with_ties(ids_a: np.ndarray, maxima_b: np.ndarray, kth: np.ndarray, rows_a: np.ndarray,
                       rows_b: np.ndarray) -> np.ndarray:
    """Share of A's top-k images whose maximum in B reaches B's k-th value: B's top-k up to how
    ties were broken (ties go to the smaller id, and ids differ between two listings of one
    library; a channel that is 0 on most images ties at 0)."""
    b_row = np.full(int(ids_a.max(initial=-1)) + 1, -1, np.int64)
    keep = rows_a < len(b_row)
    b_row[rows_a[keep]] = rows_b[keep]
    out = np.full(len(ids_a), np.nan)
    for c, row in enumerate(ids_a):
        row = row[row >= 0]
        if len(row):
            in_b = b_row[row]
            values = np.where(in_b >= 0, maxima_b[np.maximum(in_b, 0), c], -np.inf)
            out[c] = float((values >= kth[c]).sum()) / len(row)
    return out


def _rank_corr(maxima_a: np.ndarray | None, maxima_b: np.ndarray | None, rows_a: np.ndarray,
               rows_b: np.ndarray, n_ch: int) -> np.ndarray:
    if len(rows_a) < 3 or maxima_a is None or maxima_b is None:
        return np.full(n_ch, np.nan)
    # average ranks: after a ReLU many maxima tie at 0, and ordinal ranks would invent an order
    ranks_a = pd.DataFrame(maxima_a[rows_a]).rank(method="average").to_numpy(copy=True)
    ranks_b = pd.DataFrame(maxima_b[rows_b]).rank(method="average").to_numpy(copy=True)
    ranks_a -= ranks_a.mean(axis=0)
    ranks_b -= ranks_b.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt((ranks_a ** 2).sum(axis=0) * (ranks_b ** 2).sum(axis=0))
        corr = (ranks_a * ranks_b).sum(axis=0) / norm
    return np.clip(corr, -1.0, 1.0)
