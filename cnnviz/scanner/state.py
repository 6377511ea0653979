"""The state of a running scan, and the one place that names its checkpoint arrays.

A scan's state is its reducers (per layer: exact top-k and statistics), the failures so far and
the next batch to scan; the per-image rows (maxima and their positions) are buffered between
checkpoints and written as a *segment*. :meth:`ScanState.to_arrays`/:meth:`ScanState.load`
and :meth:`ScanState.take_segment`/:func:`read_segment` are the only code that knows the keys
inside ``state.npz`` and ``seg-*.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.taps import LayerTap
from ..run.format import position_dtype
from .reducers import ChannelStats, RunningStats, TopK, merge_topk

__all__ = ["ScanState", "LayerReducer", "read_segment", "merge_states", "MergedLayer"]


def _key(layer_index: int, name: str) -> str:
    return f"l{layer_index}_{name}"


@dataclass
class LayerReducer:
    """One layer's reducers, and its per-image rows buffered until the next checkpoint."""

    tap: LayerTap
    topk: TopK
    stats: RunningStats
    maxima: list[np.ndarray] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)


class ScanState:
    """Reducers, failures and progress of one scan (or one shard of a distributed one).

    The reducers live on the device of the activations; per batch, the rows of every layer go
    to the host in one copy (maxima already in their stored dtype)."""

    def __init__(self, taps: list[LayerTap], top_k: int, device, maxima_dtype: str,
                 kept: set[str] | None = None):
        self.device = torch.device(device)
        self.layers = [LayerReducer(t, TopK(t.channels, top_k, self.device),
                                    RunningStats(t.channels, self.device)) for t in taps]
        self.maxima_dtype = maxima_dtype
        self.kept = {t.name for t in taps} if kept is None else set(kept)  # layers keeping maxima
        self.next_batch = 0
        self.elapsed_seconds = 0.0
        self.failures: list[tuple[int, str]] = []
        self._ids: list[np.ndarray] = []
        self._geometry: list[np.ndarray] = []
        self._identity: list[np.ndarray] = []

    def add_batch(self, batch_index: int, ids: torch.Tensor, geometry: torch.Tensor,
                  identity: torch.Tensor, errors: list[str], reduced: dict) -> None:
        """Fold one batch in: ``reduced[layer name]`` is the readable images' ``spatial_max``;
        ``identity`` the files' ``(size, mtime_ns, digest)`` as they were read."""
        ok = torch.tensor([e == "" for e in errors])
        self.failures += [(i, e) for i, e in zip(ids.tolist(), errors, strict=True) if e]
        ok_dev = ok.to(self.device)
        ok_ids = ids[ok].to(self.device)
        rows, where = [], []
        for layer in self.layers:
            if layer.tap.name in reduced:
                values, index, mean = reduced[layer.tap.name]
                layer.topk.update(values, index, ok_ids)
                layer.stats.update(values, mean)
            if layer.tap.name in self.kept:
                maxima, pos = self._rows(layer, reduced.get(layer.tap.name), ok_dev)
                rows.append(maxima)
                where.append(pos)
        if rows:
            self._buffer_rows(torch.cat(rows, dim=1).cpu().numpy(), torch.cat(where, dim=1).cpu().numpy())
        self._ids.append(ids.numpy())
        self._geometry.append(geometry.numpy())
        self._identity.append(identity.numpy())
        self.next_batch = batch_index + 1

    def _rows(self, layer: LayerReducer, reduced, ok: torch.Tensor):
        """A batch's rows of maxima (NaN for unreadable images) and positions, on the device."""
        n, c = len(ok), layer.tap.channels
        maxima = torch.full((n, c), float("nan"), dtype=getattr(torch, self.maxima_dtype), device=self.device)
        pos = torch.zeros((n, c), dtype=torch.int32, device=self.device)
        if reduced is not None:
            values, index, _ = reduced
            maxima[ok] = values.to(maxima.dtype)
            pos[ok] = index.to(torch.int32)
        return maxima, pos

    def _buffer_rows(self, maxima: np.ndarray, positions: np.ndarray) -> None:
        start = 0
        for layer in (la for la in self.layers if la.tap.name in self.kept):
            end = start + layer.tap.channels
            layer.maxima.append(maxima[:, start:end])
            layer.positions.append(positions[:, start:end].astype(position_dtype(*layer.tap.shape[1:])))
            start = end

    def take_segment(self) -> dict[str, np.ndarray] | None:
        """The rows buffered since the last checkpoint as segment arrays (buffers emptied), or
        ``None`` when there are none."""
        if not self._ids:
            return None
        arrays = {"ids": np.concatenate(self._ids), "geometry": np.concatenate(self._geometry),
                  "identity": np.concatenate(self._identity)}
        for i, layer in enumerate(self.layers):
            if layer.tap.name not in self.kept:
                continue
            arrays[_key(i, "max")] = np.concatenate(layer.maxima)
            arrays[_key(i, "pos")] = np.concatenate(layer.positions)
            layer.maxima.clear()
            layer.positions.clear()
        self._ids, self._geometry, self._identity = [], [], []
        return arrays

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything but the buffered rows, as the arrays of ``state.npz``."""
        arrays = {"next_batch": np.int64(self.next_batch),
                  "elapsed_seconds": np.float64(self.elapsed_seconds),
                  "failure_ids": np.array([f[0] for f in self.failures], dtype=np.int64),
                  "failure_reasons": np.array([f[1] for f in self.failures], dtype=str)}
        for i, layer in enumerate(self.layers):
            for k, v in layer.topk.state().items():
                arrays[_key(i, k)] = v
            for k, v in layer.stats.to_stats().state().items():
                arrays[_key(i, "stat_" + k)] = v
        return arrays

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`to_arrays`' output (a resumed scan)."""
        self.next_batch = int(arrays["next_batch"])
        self.elapsed_seconds = float(arrays["elapsed_seconds"])
        self.failures = list(zip(arrays["failure_ids"].tolist(), arrays["failure_reasons"].tolist(),
                                 strict=True))
        for i, layer in enumerate(self.layers):
            layer.topk.load({k: arrays[_key(i, k)] for k in ("values", "ids", "index")})
            layer.stats = RunningStats.from_stats(_stats(arrays, i), self.device)


def _stats(arrays, i: int) -> ChannelStats:
    return ChannelStats.from_state({k: arrays[_key(i, "stat_" + k)]
                                    for k in ChannelStats.__dataclass_fields__})


def read_segment(arrays, n_layers: int):
    """``(ids, geometry, identity, [(maxima, positions) or None per layer])`` of a segment
    file's arrays (``None`` for a layer whose maxima are not kept)."""
    return (arrays["ids"], arrays["geometry"], arrays["identity"],
            [(arrays[_key(i, "max")], arrays[_key(i, "pos")]) if _key(i, "max") in arrays else None
             for i in range(n_layers)])


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
