"""Streaming reductions of a layer's activations: per-image maxima (means, minima), exact top-k,
statistics, histograms over positions.

State is O(channels x k) whatever the number of images. A top-k holds, for each channel, the
``k`` images with the largest value (spatial maximum, spatial mean, or negated minimum for a
bottom-k), one entry per image; ties are broken by the smaller image id, so the result equals a
brute-force sort of the whole library by ``(-value, image_id)``. A NaN or -inf value never
enters a top-k. A histogram counts activations in the fixed buckets of
:data:`cnnviz.run.quantiles.SCALE`: merged by addition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..run.quantiles import SCALE, BucketScale

__all__ = ["histogram_numpy", "histogram_torch", "spatial_max", "spatial_min", "TopK", "ChannelStats",
           "RunningStats", "merge_topk", "Reduced", "TapReducer", "bucket_keys", "sample_positions",
           "position_histogram", "PositionHistogram"]


def spatial_max(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and channel: maximum over positions, its flat index ``y*W + x`` and the mean.

    The index is that of the first maximum in row-major order. Computed in float32, in the
    layout the network produced, without copying a float32 activation:

    * channels_last on the CPU: ATen's global max and average pools (``adaptive_max_pool2d``
      with indices, ``adaptive_avg_pool2d``), whose channels-last kernels are vectorized over
      channels: 5x faster than ``max`` over an ``(N, HW, C)`` view (ResNet50's 16 blocks, batch
      16, 2 cores: 13 ms against 79 ms per batch), same values and indices;
    * channels_last on a GPU: ``max`` over the positions of an ``(N, HW, C)`` view;
    * contiguous on the CPU: ``amax`` and numpy's ``argmax`` over the last axis (3x faster than
      torch's there; the pools are not faster in this layout);
    * otherwise (a GPU): ``torch.max``, values and indices at once.

    A 2-D output (``N x C``, a whole-image unit) is a 1x1 map: its maximum is its value.
    """
    n, c = act.shape[:2]
    if act.dim() == 2:  # a whole-image unit (Linear output): a 1x1 map
        act = act[:, :, None, None]
    channels_last = (act.dim() == 4 and not act.is_contiguous()
                     and act.is_contiguous(memory_format=torch.channels_last))
    if channels_last and act.device.type == "cpu":
        act = act.float()
        values, index = F.adaptive_max_pool2d(act, 1, return_indices=True)
        return values.view(n, c), index.view(n, c), F.adaptive_avg_pool2d(act, 1).view(n, c)
    if channels_last:
        rows = act.permute(0, 2, 3, 1).reshape(n, -1, c).float()
        values, index = rows.max(dim=1)
        return values, index, rows.mean(dim=1)
    flat = act.flatten(2).float()
    if flat.device.type == "cpu":
        values = flat.amax(dim=2)
        index = np.argmax(flat.detach().contiguous().reshape(n * c, -1).numpy(), axis=1)
        index = torch.from_numpy(index.reshape(n, c).astype(np.int64))
    else:
        values, index = flat.max(dim=2)
    return values, index, flat.mean(dim=2)


def spatial_min(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: minimum over positions and its flat index (the first minimum in
    row-major order), by the layouts' paths of :func:`spatial_max` (on the CPU in channels_last,
    ATen's max pool of the negated map: there is no min pool)."""
    n, c = act.shape[:2]
    if act.dim() == 2:
        act = act[:, :, None, None]
    channels_last = not act.is_contiguous() and act.is_contiguous(memory_format=torch.channels_last)
    if channels_last and act.device.type == "cpu":
        values, index = F.adaptive_max_pool2d(act.float().neg(), 1, return_indices=True)
        return values.view(n, c).neg(), index.view(n, c)
    if channels_last:
        return act.permute(0, 2, 3, 1).reshape(n, -1, c).float().min(dim=1)
    flat = act.flatten(2).float()
    if flat.device.type == "cpu":
        index = np.argmin(flat.detach().contiguous().reshape(n * c, -1).numpy(), axis=1)
        return flat.amin(dim=2), torch.from_numpy(index.reshape(n, c).astype(np.int64))
    return flat.min(dim=2)


class Reduced(NamedTuple):
    """What a tap's hook keeps of one batch (the map itself is not kept): per readable image and
    channel the spatial maximum, its flat position and the spatial mean; for a layer with a
    bottom-k the minimum and its position; with quantiles, the batch's counts per bucket of
    :data:`cnnviz.run.quantiles.SCALE` over the sampled positions (``(C, buckets)`` int64)."""

    values: torch.Tensor
    index: torch.Tensor
    mean: torch.Tensor
    min: torch.Tensor | None = None
    min_index: torch.Tensor | None = None
    histogram: torch.Tensor | None = None
    relevance: torch.Tensor | None = None  # (B, C) with rank_by relevance
    relevance_index: torch.Tensor | None = None  # where each channel's relevance map peaks


def bucket_keys(values: torch.Tensor, scale: BucketScale = SCALE) -> torch.Tensor:
    """The bucket of each float32 value (int32; ``scale.n_buckets`` for NaN), from its bits:
    a shift and a clamp, exact and the same on every device
    (:meth:`cnnviz.run.quantiles.BucketScale.bucket_of` is the numpy twin)."""
    bits = values.float().view(torch.int32)
    mag = bits & 0x7FFFFFFF
    e = (mag >> (23 - scale.mantissa_bits)).sub_((127 + scale.min_exponent) << scale.mantissa_bits)
    e.clamp_(-1, scale.per_sign)
    key = torch.where(bits < 0, scale.per_sign - e, e.add_(scale.per_sign + 2))
    return key.masked_fill_(mag > 0x7F800000, scale.n_buckets)


def sample_positions(ids: torch.Tensor, hw: int, positions: int) -> torch.Tensor | None:
    """The flat positions ``(N, positions)`` sampled from each image's ``hw`` positions, or
    ``None`` (all of them) when ``positions`` is 0 or ``hw <= positions``.

    A systematic sample with a start drawn per image: ``(start(id) + j * step) % hw`` for ``j <
    positions``, ``step`` the integer nearest ``hw / positions`` that is coprime with ``hw`` (the
    next one up), so the positions are distinct and spread over the map; ``start`` a 32-bit hash
    of the image id. It depends on the image alone (not on its batch), so shards and resumed
    scans count the same positions; every position of a map is sampled with the same
    probability over images whose starts are uniform."""
    if positions <= 0 or hw <= positions:
        return None
    x = ids.to(torch.int64) & 0xFFFFFFFF
    for _ in range(2):  # a 32-bit integer hash (products stay below 2**59)
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    start = ((x >> 16) ^ x) % hw
    step = max(1, round(hw / positions))
    while math.gcd(step, hw) != 1:
        step += 1
    return (start[:, None] + step * torch.arange(positions, device=ids.device)) % hw


def position_histogram(act: torch.Tensor, ids: torch.Tensor, positions: int,
                       scale: BucketScale = SCALE) -> torch.Tensor:
    """One batch's counts per channel and bucket (``(C, n_buckets)`` int64, on the device of
    ``act``) over the sampled positions (:func:`sample_positions`) of every image.

    On a GPU: the buckets by integer arithmetic and one ``scatter_add_`` into a tensor of fixed
    size (no host sync, no data-dependent shape). On the CPU numpy's ``bincount`` (3x faster
    than torch's there)."""
    n, c = act.shape[:2]
    if act.dim() == 2:
        act = act[:, :, None, None]
    hw = act.shape[2] * act.shape[3]
    if act.is_contiguous(memory_format=torch.channels_last) and not act.is_contiguous():
        rows = act.permute(0, 2, 3, 1).reshape(n, hw, c)  # a view
    else:
        rows = act.reshape(n, c, hw).transpose(1, 2)
    idx = sample_positions(ids, hw, positions)
    width = scale.n_buckets + 1  # the last column takes NaN and is dropped
    if act.device.type == "cpu":  # numpy's gather and integer arithmetic: 10x torch's on 2 busy cores
        rows = rows.float().numpy()
        if idx is not None:
            rows = rows[np.arange(n)[:, None], idx.numpy()]
        return torch.from_numpy(histogram_numpy(rows, scale, width))
    if idx is not None:
        rows = rows[torch.arange(n, device=act.device)[:, None], idx]  # (n, positions, c)
    return histogram_torch(rows, scale, width)


def histogram_torch(rows: torch.Tensor, scale: BucketScale, width: int) -> torch.Tensor:
    """The counts of ``(..., C)`` rows on any device, in fixed shapes: :func:`bucket_keys` offset
    by channel (int32: no int64 copy of a batch's keys) and one ``index_add_`` of ones into a
    zeroed ``C x width`` tensor."""
    c = rows.shape[-1]
    keys = bucket_keys(rows).add_(torch.arange(c, dtype=torch.int32, device=rows.device) * width)
    keys = keys.reshape(-1)
    counts = torch.zeros(c * width, dtype=torch.int64, device=rows.device)
    counts.index_add_(0, keys, torch.ones(1, dtype=torch.int64, device=rows.device).expand(len(keys)))
    return counts.view(c, width)[:, :-1]


def histogram_numpy(rows: np.ndarray, scale: BucketScale, width: int) -> np.ndarray:
    """:func:`bucket_keys` and the counts in numpy, for ``(..., C)`` float32 rows on the CPU
    (``bincount`` is 3x faster than torch's); the sign and NaN are handled only where the rows
    hold any (a map after a ReLU holds neither)."""
    c = rows.shape[-1]
    bits = np.ascontiguousarray(rows).view(np.int32)
    signed = bool(bits.min() < 0)
    mag = bits & 0x7FFFFFFF if signed else bits
    key = mag >> (23 - scale.mantissa_bits)
    key -= (127 + scale.min_exponent) << scale.mantissa_bits
    np.clip(key, -1, scale.per_sign, out=key)
    if signed:
        key = np.where(bits < 0, scale.per_sign - key, key + (scale.per_sign + 2))
    else:
        key += scale.per_sign + 2
    if mag.max() > 0x7F800000:
        key[mag > 0x7F800000] = scale.n_buckets
    key += np.arange(c, dtype=np.int32) * width
    counts = np.bincount(key.ravel(), minlength=c * width).reshape(c, width)
    return counts[:, :-1]


class TapReducer:
    """The reduce step of the scan's hooks (``capture(reduce=...)``): what is kept of each tapped
    output, computed where the activations are, so that the map itself is not kept.

    Args:
        minima: taps whose spatial minimum is needed (a bottom-k).
        positions: ``None`` for no histogram; else the positions per image counted in the
            quantile histogram (:func:`sample_positions`; 0: every position).

    Set :attr:`ids` (the image ids of the batch's rows, on the device) before each forward
    pass: the sampled positions depend on the image."""

    def __init__(self, minima=frozenset(), positions: int | None = None):
        self.minima = set(minima)
        self.positions = positions
        self.ids: torch.Tensor | None = None

    def __call__(self, name: str, output: torch.Tensor) -> Reduced:
        act = output.detach()
        values, index, mean = spatial_max(act)
        low, low_index = spatial_min(act) if name in self.minima else (None, None)
        hist = None
        if self.positions is not None and self.ids is not None:
            hist = position_histogram(act, self.ids, self.positions)
        return Reduced(values, index, mean, low, low_index, hist)


class PositionHistogram:
    """Per channel, counts of activations per bucket over every batch (int64, on the device of
    the activations); merged across shards by addition."""

    def __init__(self, channels: int, device, scale: BucketScale = SCALE):
        self.counts = torch.zeros((channels, scale.n_buckets), dtype=torch.int64, device=device)

    def update(self, batch_counts: torch.Tensor) -> None:
        self.counts += batch_counts

    def state(self) -> np.ndarray:
        return _snapshot(self.counts)

    def load(self, counts: np.ndarray) -> None:
        self.counts = torch.as_tensor(np.asarray(counts, dtype=np.int64), device=self.counts.device).clone()


def _snapshot(t: torch.Tensor) -> np.ndarray:
    """A host copy of ``t`` that later in-place updates cannot reach: a checkpoint is written by
    a background thread while the next batch updates the reducers (``.cpu().numpy()`` of a CPU
    tensor shares its memory, and a state could count a batch its ``next_batch`` did not)."""
    return t.detach().cpu().numpy().copy()


def merge_topk(values: np.ndarray, ids: np.ndarray, k: int, *extra: np.ndarray):
    """Exact top-k along axis 1 of ``(C, n)`` candidates by ``(-value, id)``; ``id < 0`` is empty,
    and so is a NaN or -inf value (as in :class:`TopK`).

    Returns the selected ``values, ids, *extra`` as ``(C, k)`` arrays. Order-independent: any
    split of the candidates merges to the same result (used to merge shards).
    """
    empty = (ids < 0) | ~(values > -np.inf)
    v = np.where(empty, -np.inf, values)
    id_key = np.where(empty, np.iinfo(np.int64).max, ids)
    order = np.lexsort((id_key, -v), axis=1)[:, :k]
    pick = [np.take_along_axis(a, order, axis=1) for a in (values, ids, *extra)]
    return tuple(pick)


_EMPTY = torch.iinfo(torch.int64).min
_ID_SPAN = 1 << 32  # image ids below 2**32 (4 billion images)


def order_keys(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys whose descending order is the top-k order: larger value first, then smaller id.

    The float32 value's bits, turned into an integer of the same order, fill the high 32 bits,
    ``2**32 - 1 - id`` the low ones: one integer comparison settles ties exactly, so an unstable
    ``topk`` gives the exact result. ``-0.0`` counts as ``0.0``; NaN and -inf get the empty key
    (they never enter a top-k). ``ids`` broadcasts against ``values``."""
    v = values.float() + 0.0
    bits = v.view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    keys = ordered.to(torch.int64) * _ID_SPAN + (_ID_SPAN - 1 - ids)
    return torch.where(v > float("-inf"), keys, _EMPTY)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, ids)`` of :func:`order_keys` keys; empty keys give ``(-inf, -1)``."""
    ordered = torch.div(keys, _ID_SPAN, rounding_mode="floor")
    ids = _ID_SPAN - 1 - (keys - ordered * _ID_SPAN)
    o32 = ordered.to(torch.int32)
    values = (o32 ^ ((o32 >> 31) & 0x7FFFFFFF)).view(torch.float32)
    empty = keys == _EMPTY
    return values.masked_fill(empty, float("-inf")), ids.masked_fill(empty, -1)


class TopK:
    """Running top-k per channel, kept on the device of the activations.

    Entries are :func:`order_keys` keys (value and id in one integer) and the flat positions of
    the maxima, sorted best first. On a GPU every batch is merged whole (cheap there, and no
    transfer to the host). On the CPU a batch is compared with each channel's k-th value when
    the entries were last merged and only the values above it are kept as candidates; the
    candidates are merged once they number ``4 * channels * k`` (and before a checkpoint). A
    stale k-th value is never above the current one, so no image that belongs is left out, and
    after the first batches a batch leaves a handful of candidates per channel.

    Attributes (views decoded on demand):
        values: ``(C, k)`` float32, ``-inf`` where empty.
        ids: ``(C, k)`` int64 image ids, ``-1`` where empty.
        index: ``(C, k)`` int64 flat position ``y*W + x`` of the maximum, ``-1`` where empty.
    """

    def __init__(self, channels: int, k: int, device="cpu", sparse: bool | None = None):
        device = torch.device(device)
        self.k = k
        self.keys = torch.full((channels, k), _EMPTY, dtype=torch.int64, device=device)
        self.index = torch.full((channels, k), -1, dtype=torch.int64, device=device)
        self.threshold = torch.full((channels,), float("-inf"), device=device)  # the k-th value
        self.sparse = device.type == "cpu" if sparse is None else sparse
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_n = 0
        self._limit = 4 * channels * k
        self._full = False  # every channel holds k entries (until then batches merge whole)

    @property
    def values(self) -> torch.Tensor:
        self.flush()
        return decode_keys(self.keys)[0]

    @property
    def ids(self) -> torch.Tensor:
        self.flush()
        return decode_keys(self.keys)[1]

    def update(self, values: torch.Tensor, index: torch.Tensor, ids: torch.Tensor,
               batch_max: torch.Tensor | None = None) -> None:
        """Add a batch: ``values``/``index`` ``(B, C)``, ``ids`` ``(B,)`` on the same device;
        ``batch_max``: ``values.amax(0)``, when already computed."""
        if not self.sparse or not self._full:
            self._merge(None, order_keys(values.t(), ids), index.t())
            self._full = self.sparse and bool((self.threshold > float("-inf")).all())
            return
        best = values.amax(dim=0) if batch_max is None else batch_max
        rows = torch.nonzero((best > self.threshold) | best.isnan()).flatten()  # NaN hides the rest
        if len(rows) == 0:
            return
        if 4 * len(rows) > len(best):  # most channels: compare the whole batch
            b, c = torch.nonzero(values > self.threshold, as_tuple=True)  # NaN is never above
        else:
            b, r = torch.nonzero(values.index_select(1, rows) > self.threshold[rows], as_tuple=True)
            c = rows[r]
        if len(b) == 0:
            return
        self._pending.append((c, order_keys(values[b, c], ids[b]), index[b, c]))
        self._pending_n += len(b)
        if self._pending_n > self._limit:
            self.flush()

    def flush(self) -> None:
        """Merge the pending candidates."""
        if not self._pending:
            return
        c, keys, index = (torch.cat(parts) for parts in zip(*self._pending, strict=True))
        self._pending, self._pending_n = [], 0
        order = torch.argsort(c, stable=True)
        rows, counts = torch.unique_consecutive(c[order], return_counts=True)
        self._merge(rows, *_grid(counts, keys[order], index[order]))

    def _merge(self, rows: torch.Tensor | None, keys: torch.Tensor, index: torch.Tensor) -> None:
        """Merge candidate ``keys``/``index`` ``(R, m)`` into ``rows`` (``None``: every row)."""
        old_keys = self.keys if rows is None else self.keys[rows]
        old_index = self.index if rows is None else self.index[rows]
        top, order = torch.cat([old_keys, keys], 1).topk(self.k, dim=1)
        where = torch.cat([old_index, index], 1).gather(1, order).masked_fill(top == _EMPTY, -1)
        kth = decode_keys(top[:, -1])[0]
        if rows is None:
            self.keys, self.index, self.threshold = top, where, kth
        else:
            self.keys[rows], self.index[rows], self.threshold[rows] = top, where, kth

    def state(self) -> dict[str, np.ndarray]:
        self.flush()
        values, ids = decode_keys(self.keys)
        return {"values": _snapshot(values), "ids": _snapshot(ids), "index": _snapshot(self.index)}

    def load(self, state: dict[str, np.ndarray]) -> None:
        dev = self.keys.device
        values = torch.from_numpy(np.asarray(state["values"], dtype=np.float32)).to(dev)
        ids = torch.from_numpy(np.asarray(state["ids"], dtype=np.int64)).to(dev)
        keys = order_keys(values, ids).masked_fill(ids < 0, _EMPTY)
        self.keys, order = keys.sort(dim=1, descending=True)
        index = torch.from_numpy(np.asarray(state["index"], dtype=np.int64)).to(dev)
        self.index = index.gather(1, order).masked_fill(self.keys == _EMPTY, -1)
        self.threshold = decode_keys(self.keys[:, -1])[0]
        self._pending, self._pending_n = [], 0
        self._full = self.sparse and bool((self.threshold > float("-inf")).all())


def _grid(counts: torch.Tensor, keys: torch.Tensor, index: torch.Tensor):
    """Candidates grouped by row (``counts[r]`` of them for row ``r``, in order) as ``(rows, m)``
    grids, ``m`` the most candidates of a row; empty cells hold the empty key."""
    dev = keys.device
    row = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(len(keys), device=dev) - first
    grid_keys = torch.full((len(counts), int(counts.max())), _EMPTY, dtype=torch.int64, device=dev)
    grid_index = torch.full_like(grid_keys, -1)
    grid_keys[row, rank] = keys
    grid_index[row, rank] = index
    return grid_keys, grid_index


@dataclass
class ChannelStats:
    """Sums from which per-channel statistics follow; float64, mergeable by addition.

    ``count`` images; ``sum``/``sumsq`` of maxima; ``max`` of maxima; ``fires`` images whose
    maximum is > 0; ``sum_mean`` of spatial means.
    """

    count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    max: np.ndarray
    fires: np.ndarray
    sum_mean: np.ndarray

    @classmethod
    def zeros(cls, channels: int) -> ChannelStats:
        z = np.zeros(channels, dtype=np.float64)
        return cls(np.zeros(channels, np.int64), z.copy(), z.copy(), np.full(channels, -np.inf),
                   np.zeros(channels, np.int64), z.copy())

    def update(self, maxima: np.ndarray, means: np.ndarray) -> None:
        """``maxima``/``means``: ``(B, C)`` for the readable images of a batch."""
        if maxima.shape[0] == 0:
            return
        m = maxima.astype(np.float64)
        self.count += m.shape[0]
        self.sum += m.sum(axis=0)
        self.sumsq += (m * m).sum(axis=0)
        self.max = np.maximum(self.max, m.max(axis=0))
        self.fires += (m > 0).sum(axis=0)
        self.sum_mean += means.astype(np.float64).sum(axis=0)

    def merged(self, other: ChannelStats) -> ChannelStats:
        return ChannelStats(self.count + other.count, self.sum + other.sum,
                            self.sumsq + other.sumsq, np.maximum(self.max, other.max),
                            self.fires + other.fires, self.sum_mean + other.sum_mean)

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state) -> ChannelStats:
        return cls(**{k: np.asarray(state[k]) for k in cls.__dataclass_fields__})

    def summary(self) -> dict[str, np.ndarray]:
        """Derived statistics per channel (NaN where no image was read)."""
        n = np.where(self.count > 0, self.count, np.nan)
        mean = self.sum / n
        var = np.maximum(self.sumsq / n - mean * mean, 0.0)
        return {"count": self.count, "mean_max": mean, "std_max": np.sqrt(var),
                "max_max": np.where(self.count > 0, self.max, np.nan),
                "fire_rate": self.fires / n, "mean_activation": self.sum_mean / n}


class RunningStats:
    """:class:`ChannelStats` accumulated where the activations are (a GPU keeps them there:
    no per-batch copy to the host), in float64; :meth:`to_stats` for checkpoints and merging."""

    def __init__(self, channels: int, device):
        f64 = {"dtype": torch.float64, "device": device}
        self.count = torch.zeros(channels, dtype=torch.int64, device=device)
        self.sum = torch.zeros(channels, **f64)
        self.sumsq = torch.zeros(channels, **f64)
        self.max = torch.full((channels,), float("-inf"), **f64)
        self.fires = torch.zeros(channels, dtype=torch.int64, device=device)
        self.sum_mean = torch.zeros(channels, **f64)

    def update(self, maxima: torch.Tensor, means: torch.Tensor,
               batch_max: torch.Tensor | None = None) -> None:
        """``maxima``/``means``: ``(B, C)`` float32 for the readable images of a batch. A batch's
        sums are taken in float32 (pairwise: relative error about 1e-7) and accumulated over
        batches in float64; a float64 copy of the batch would cost more than the rest."""
        if maxima.shape[0] == 0:
            return
        f64 = torch.float64
        self.count += maxima.shape[0]
        self.sum += maxima.sum(dim=0).to(f64)
        self.sumsq += (maxima * maxima).sum(dim=0).to(f64)
        best = maxima.amax(dim=0) if batch_max is None else batch_max
        self.max = torch.maximum(self.max, best.to(f64))
        self.fires += torch.sum((maxima > 0).view(torch.uint8), 0, dtype=torch.int32)
        self.sum_mean += means.sum(dim=0).to(f64)

    def to_stats(self) -> ChannelStats:
        return ChannelStats(**{k: _snapshot(getattr(self, k)) for k in ChannelStats.__dataclass_fields__})

    @classmethod
    def from_stats(cls, stats: ChannelStats, device) -> RunningStats:
        out = cls(len(stats.sum), device)
        for k in ChannelStats.__dataclass_fields__:
            setattr(out, k, torch.as_tensor(np.asarray(getattr(stats, k)), device=device).clone())
        return out
