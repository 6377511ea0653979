"""The state of a running scan, and the one place that names its checkpoint arrays.

A scan's state is its reducers (per layer: exact top-k and statistics), the failures so far, its
progress and the list of sealed row segments; the per-image rows (maxima and their positions,
geometry, file identity) leave the main thread after every batch as :class:`Rows` and are
streamed to segment files by the checkpoint writer (:mod:`.checkpoint`).
:meth:`ScanState.to_arrays`/:meth:`ScanState.load` (``state.npz``), :meth:`ScanState.row_layout`
and :func:`segment_columns` (the files of a segment) are the only code that knows those keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.taps import LayerTap
from ..run.format import position_dtype
from .reducers import ChannelStats, RunningStats, TopK, merge_topk

__all__ = ["ScanState", "LayerReducer", "Rows", "HostCopy", "merge_states", "MergedLayer",
           "segment_columns", "progress_of"]


def _key(layer_index: int, name: str) -> str:
    return f"l{layer_index}_{name}"


@dataclass
class LayerReducer:
    """One layer's reducers."""

    tap: LayerTap
    topk: TopK
    stats: RunningStats


class HostCopy:
    """Tensors on their way to the host: copied asynchronously (into pinned memory) when they
    are on an accelerator, so the main thread never waits for the device; :meth:`arrays` (called
    by the writer thread) waits for the copy. On the CPU the tensors are used as they are."""

    def __init__(self, tensors: list[torch.Tensor]):
        device = tensors[0].device if tensors else torch.device("cpu")
        self._tensors = [t.to("cpu", non_blocking=True) for t in tensors]
        self._event = None
        if device.type == "cuda":  # scans run on cpu or cuda (ScanConfig.validate)
            self._event = torch.cuda.Event()
            self._event.record()

    def arrays(self) -> list[np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return [t.numpy() for t in self._tensors]


@dataclass
class Rows:
    """One batch's per-image rows for the writer: ids, geometry and file identity of every image
    of the batch, and per kept layer (maxima, flat positions); ``columns()`` gives them under the
    segment's file keys, in their stored dtypes."""

    ids: np.ndarray
    geometry: np.ndarray
    identity: np.ndarray
    keys: list[tuple[str, str]] = field(default_factory=list)  # (maxima key, position key) per kept layer
    position_dtypes: list = field(default_factory=list)
    host: HostCopy | None = None

    def columns(self) -> dict[str, np.ndarray]:
        cols = {"ids": self.ids, "geometry": self.geometry, "identity": self.identity}
        arrays = self.host.arrays() if self.host is not None else []
        for (mkey, pkey), dtype, maxima, pos in zip(self.keys, self.position_dtypes, arrays[0::2],
                                                   arrays[1::2], strict=True):
            cols[mkey] = maxima
            cols[pkey] = pos.astype(dtype)
        return cols

    @property
    def first(self) -> int:
        return int(self.ids[0])

    @property
    def end(self) -> int:
        return int(self.ids[-1]) + 1


class ScanState:
    """Reducers, failures and progress of one scan (or one shard of a distributed one).

    The reducers live on the device of the activations; :meth:`add_batch` folds a batch in
    without waiting for the device (no host copy, no data-dependent shape on an accelerator)
    and returns the batch's rows, on their way to the host."""

    def __init__(self, taps: list[LayerTap], top_k: int, device, maxima_dtype: str,
                 kept: set[str] | None = None):
        self.device = torch.device(device)
        self.layers = [LayerReducer(t, TopK(t.channels, top_k, self.device),
                                    RunningStats(t.channels, self.device)) for t in taps]
        self.maxima_dtype = maxima_dtype
        self.kept = {t.name for t in taps} if kept is None else set(kept)  # layers keeping maxima
        self.next_batch = 0  # batches of the plan done (a shard's progress)
        self.next_image = 0  # images [0, next_image) done (a single process's progress)
        self.elapsed_seconds = 0.0
        self.wait_data_seconds = 0.0  # the scan waited for decoded images
        self.wait_disk_seconds = 0.0  # the scan waited for the writer of the rows
        self.failures: list[tuple[int, str]] = []
        self.segments: list[dict] = []  # sealed row segments (their files and CRCs)

    def add_batch(self, batch_index: int, ids: torch.Tensor, geometry: torch.Tensor,
                  identity: torch.Tensor, errors: list[str], reduced: dict) -> Rows:
        """Fold one batch in: ``reduced[layer name]`` is the readable images' ``spatial_max``;
        ``identity`` the files' ``(size, mtime_ns, digest)`` as they were read."""
        ok = np.array([e == "" for e in errors])
        self.failures += [(i, e) for i, e in zip(ids.tolist(), errors, strict=True) if e]
        readable = None if ok.all() else torch.from_numpy(np.flatnonzero(ok)).to(self.device)
        ok_ids = (ids if readable is None else ids[torch.from_numpy(ok)]).to(self.device, non_blocking=True)
        kept = []
        for layer in self.layers:
            if layer.tap.name in reduced:
                values, index, mean = reduced[layer.tap.name]
                best = values.amax(dim=0)
                layer.topk.update(values, index, ok_ids, best)
                layer.stats.update(values, mean, best)
            if layer.tap.name in self.kept:
                kept += self._rows(layer, reduced.get(layer.tap.name), len(errors), readable)
        self.next_batch = batch_index + 1
        self.next_image = int(ids[-1]) + 1
        keys, dtypes = self.row_layout()
        return Rows(ids.numpy().copy(), geometry.numpy().copy(), identity.numpy().copy(), keys, dtypes,
                    HostCopy(kept) if kept else None)

    def _rows(self, layer: LayerReducer, reduced, n: int, readable: torch.Tensor | None):
        """A batch's maxima (NaN for unreadable images) and positions, on the device."""
        dtype = getattr(torch, self.maxima_dtype)
        if reduced is not None and readable is None:
            return [reduced[0].to(dtype), reduced[1]]
        c = layer.tap.channels
        maxima = torch.full((n, c), float("nan"), dtype=dtype, device=self.device)
        pos = torch.zeros((n, c), dtype=torch.int64, device=self.device)
        if reduced is not None:
            maxima.index_copy_(0, readable, reduced[0].to(dtype))
            pos.index_copy_(0, readable, reduced[1])
        return [maxima, pos]

    def row_layout(self) -> tuple[list[tuple[str, str]], list]:
        """Per kept layer, the segment keys of its (maxima, positions) and the positions' dtype."""
        kept = [(i, la) for i, la in enumerate(self.layers) if la.tap.name in self.kept]
        return ([(_key(i, "max"), _key(i, "pos")) for i, _ in kept],
                [position_dtype(*la.tap.shape[1:]) for _, la in kept])

    def column_dtypes(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Every segment file's dtype and row shape."""
        cols = {"ids": (np.dtype(np.int64), ()), "geometry": (np.dtype(np.int64), (6,)),
                "identity": (np.dtype(np.int64), (3,))}
        for i, layer in enumerate(self.layers):
            if layer.tap.name in self.kept:
                c = layer.tap.channels
                cols[_key(i, "max")] = (np.dtype(self.maxima_dtype), (c,))
                cols[_key(i, "pos")] = (np.dtype(position_dtype(*layer.tap.shape[1:])), (c,))
        return cols

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything but the rows, as the arrays of ``state.npz`` (copies: the reducers go on
        changing while a checkpoint is written)."""
        arrays = {"next_batch": np.int64(self.next_batch), "next_image": np.int64(self.next_image),
                  "elapsed_seconds": np.float64(self.elapsed_seconds),
                  "wait_data_seconds": np.float64(self.wait_data_seconds),
                  "wait_disk_seconds": np.float64(self.wait_disk_seconds),
                  "failure_ids": np.array([f[0] for f in self.failures], dtype=np.int64),
                  "failure_reasons": np.array([f[1] for f in self.failures], dtype=str),
                  "segments": np.array(json.dumps(self.segments))}
        for i, layer in enumerate(self.layers):
            for k, v in layer.topk.state().items():
                arrays[_key(i, k)] = v
            for k, v in layer.stats.to_stats().state().items():
                arrays[_key(i, "stat_" + k)] = v
        return arrays

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`to_arrays`' output (a resumed scan)."""
        self.next_batch = int(arrays["next_batch"])
        self.next_image = int(arrays["next_image"])
        self.elapsed_seconds = float(arrays["elapsed_seconds"])
        self.wait_data_seconds = float(arrays["wait_data_seconds"])
        self.wait_disk_seconds = float(arrays["wait_disk_seconds"])
        self.failures = list(zip(arrays["failure_ids"].tolist(), arrays["failure_reasons"].tolist(),
                                 strict=True))
        self.segments = segments_of(arrays)
        for i, layer in enumerate(self.layers):
            layer.topk.load({k: arrays[_key(i, k)] for k in ("values", "ids", "index")})
            layer.stats = RunningStats.from_stats(_stats(arrays, i), self.device)


def segments_of(arrays: dict[str, np.ndarray]) -> list[dict]:
    """The sealed segments a state lists: ``{"name", "first", "end", "rows", "crc": {key: crc}}``."""
    return json.loads(str(arrays["segments"]))


def progress_of(arrays: dict[str, np.ndarray], world: int, batch_size: int) -> int:
    """Images before which every row of this scan (or shard) is written: a segment ending past
    it was never counted by the state."""
    if world == 1:
        return int(arrays["next_image"])
    return int(arrays["next_batch"]) * batch_size


def _stats(arrays, i: int) -> ChannelStats:
    return ChannelStats.from_state({k: arrays[_key(i, "stat_" + k)]
                                    for k in ChannelStats.__dataclass_fields__})


def segment_columns(n_layers: int) -> list[tuple[str, str] | None]:
    """Per layer, the segment keys of its (maxima, positions), for a reader that checks which
    are there (a layer whose maxima are not kept has none)."""
    return [(_key(i, "max"), _key(i, "pos")) for i in range(n_layers)]


@dataclass
class MergedLayer:
    values: np.ndarray
    ids: np.ndarray
    index: np.ndarray
    stats: ChannelStats


def merge_states(states: list[dict[str, np.ndarray]], n_layers: int, top_k: int):
    """Top-k, statistics and failures of several shards' states merged (order-independent).

    Returns ``(layers, failure_ids, failure_reasons, scan_seconds)``: one :class:`MergedLayer`
    per layer, failures sorted by image id, and the slowest shard's scanning time."""
    layers = []
    for i in range(n_layers):
        cat = {k: np.concatenate([s[_key(i, k)] for s in states], axis=1) for k in ("values", "ids", "index")}
        v, d, x = merge_topk(cat["values"], cat["ids"], top_k, cat["index"])
        stats = _stats(states[0], i)
        for s in states[1:]:
            stats = stats.merged(_stats(s, i))
        layers.append(MergedLayer(v, d, x, stats))
    fids = np.concatenate([s["failure_ids"] for s in states]).astype(np.int64)
    freasons = np.concatenate([s["failure_reasons"].astype(str) for s in states])
    order = np.argsort(fids, kind="stable")
    scan_seconds = max(float(s["elapsed_seconds"]) for s in states)
    return layers, fids[order], freasons[order], scan_seconds
