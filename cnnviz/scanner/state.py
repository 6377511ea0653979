"""The state of a running scan, and the one place that names its checkpoint arrays.

A scan's state is its reducers (per layer: an exact top-k per ranking (by max, by mean, the
bottom-k), statistics and the quantile histogram), the failures so far, its progress and the list
of sealed row segments; the per-image rows (maxima, their positions and means, geometry, file
identity) leave the main thread after every batch as :class:`Rows` and are
streamed to segment files by the checkpoint writer (:mod:`.checkpoint`).
:meth:`ScanState.to_arrays`/:meth:`ScanState.load` (``state.npz``), :meth:`ScanState.row_layout`
and :func:`segment_columns` (the files of a segment) are the only code that knows those keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.receptive_field import AxisField, ReceptiveField
from ..model.taps import LayerTap
from ..run.format import position_dtype
from .reducers import ChannelStats, PositionHistogram, Reduced, RunningStats, TopK, merge_topk

__all__ = ["ScanState", "LayerReducer", "Rows", "HostCopy", "merge_states", "MergedLayer",
           "segment_columns", "progress_of", "RANKINGS", "tap_record", "tap_from_record"]

#: The rankings a layer may keep, and the prefix of their checkpoint keys: images by their
#: spatial maximum (always), by their spatial mean, and the bottom-k by their spatial minimum
#: (held as a top-k of the negated minima).
RANKINGS = {"max": "", "mean": "mean_", "relevance": "rel_", "min": "min_"}


def _key(layer_index: int, name: str) -> str:
    return f"l{layer_index}_{name}"


@dataclass
class LayerReducer:
    """One layer's reducers: a top-k per ranking (``rankings["max"]`` always; ``"mean"`` and
    the bottom-k ``"min"`` when asked for), the statistics, and the histogram over positions
    (``None`` without quantiles)."""

    tap: LayerTap
    rankings: dict[str, TopK]
    stats: RunningStats
    histogram: PositionHistogram | None = None

    @property
    def topk(self) -> TopK:
        return self.rankings["max"]

    def update(self, r: Reduced, ids: torch.Tensor) -> None:
        best = r.values.amax(dim=0)
        self.topk.update(r.values, r.index, ids, best)
        self.stats.update(r.values, r.mean, best)
        if "mean" in self.rankings:  # the patch of a mean-ranked image is cut around its maximum
            self.rankings["mean"].update(r.mean, r.index, ids)
        if "min" in self.rankings:
            self.rankings["min"].update(-r.min, r.min_index, ids)
        if "relevance" in self.rankings:  # its patch is cut where the relevance peaks
            self.rankings["relevance"].update(r.relevance, r.relevance_index, ids)
        if self.histogram is not None and r.histogram is not None:
            self.histogram.update(r.histogram)


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
    of the batch, and per kept layer its maxima, their flat positions and (when kept) the spatial
    means; ``columns()`` gives them under the segment's file keys, in their stored dtypes."""

    ids: np.ndarray
    geometry: np.ndarray
    identity: np.ndarray
    layout: list[tuple[str, np.dtype]] = field(default_factory=list)  # (key, dtype) of each host array
    host: HostCopy | None = None

    def columns(self) -> dict[str, np.ndarray]:
        cols = {"ids": self.ids, "geometry": self.geometry, "identity": self.identity}
        arrays = self.host.arrays() if self.host is not None else []
        for (key, dtype), array in zip(self.layout, arrays, strict=True):
            cols[key] = array.astype(dtype, copy=False)
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
                 kept: set[str] | None = None, rank_by: tuple[str, ...] = ("max",), bottom_k: int = 0,
                 bottom_layers: set[str] | None = None, quantiles: bool = False,
                 means: set[str] | None = None):
        self.device = torch.device(device)
        bottom = set() if bottom_layers is None or bottom_k < 1 else set(bottom_layers)
        self.layers = [LayerReducer(t, self._rankings(t, top_k, rank_by, bottom_k if t.name in bottom else 0),
                                    RunningStats(t.channels, self.device),
                                    PositionHistogram(t.channels, self.device) if quantiles else None)
                       for t in taps]
        self.maxima_dtype = maxima_dtype
        self.kept = {t.name for t in taps} if kept is None else set(kept)  # layers keeping maxima
        self.means = set() if means is None else set(means) & self.kept  # ... and their means
        self.relevance = self.kept if "relevance" in rank_by else set()  # ... and their relevance
        self.next_batch = 0  # batches of the plan done (a shard's progress)
        self.next_image = 0  # images [0, next_image) done (a single process's progress)
        self.elapsed_seconds = 0.0
        self.wait_data_seconds = 0.0  # the scan waited for decoded images
        self.wait_disk_seconds = 0.0  # the scan waited for the writer of the rows
        self.failures: list[tuple[int, str]] = []
        self.segments: list[dict] = []  # sealed row segments (their files and CRCs)

    def _rankings(self, tap: LayerTap, k: int, rank_by, bottom_k: int) -> dict[str, TopK]:
        out = {r: TopK(tap.channels, k, self.device) for r in ("max", "mean", "relevance")
               if r in rank_by or r == "max"}
        if bottom_k:
            out["min"] = TopK(tap.channels, bottom_k, self.device)
        return out

    def add_batch(self, batch_index: int, ids: torch.Tensor, geometry: torch.Tensor,
                  identity: torch.Tensor, errors: list[str], reduced: dict) -> Rows:
        """Fold one batch in: ``reduced[layer name]`` is the readable images'
        :class:`~.reducers.Reduced`; ``identity`` the files' ``(size, mtime_ns, digest)`` as
        they were read."""
        ok = np.array([e == "" for e in errors])
        self.failures += [(i, e) for i, e in zip(ids.tolist(), errors, strict=True) if e]
        readable = None if ok.all() else torch.from_numpy(np.flatnonzero(ok)).to(self.device)
        ok_ids = (ids if readable is None else ids[torch.from_numpy(ok)]).to(self.device, non_blocking=True)
        kept = []
        for layer in self.layers:
            if layer.tap.name in reduced:
                layer.update(reduced[layer.tap.name], ok_ids)
            if layer.tap.name in self.kept:
                kept += self._rows(layer, reduced.get(layer.tap.name), len(errors), readable)
        self.next_batch = batch_index + 1
        self.next_image = int(ids[-1]) + 1
        return Rows(ids.numpy().copy(), geometry.numpy().copy(), identity.numpy().copy(), self.row_layout(),
                    HostCopy(kept) if kept else None)

    def _rows(self, layer: LayerReducer, reduced: Reduced | None, n: int, readable: torch.Tensor | None):
        """A batch's maxima (NaN for unreadable images), positions and means (when kept), on
        the device."""
        dtype = getattr(torch, self.maxima_dtype)
        r = reduced
        wanted = [(r and r.values, dtype), (r and r.index, torch.int64)]
        if layer.tap.name in self.means:
            wanted.append((r and r.mean, dtype))
        if layer.tap.name in self.relevance:
            wanted.append((r and r.relevance, dtype))
        if reduced is not None and readable is None:
            return [value.to(d) for value, d in wanted]
        c, out = layer.tap.channels, []
        for value, d in wanted:
            row = torch.full((n, c), 0 if d == torch.int64 else float("nan"), dtype=d, device=self.device)
            if value is not None:
                row.index_copy_(0, readable, value.to(d))
            out.append(row)
        return out

    def row_layout(self) -> list[tuple[str, np.dtype]]:
        """The segment key and stored dtype of each per-layer row array, in the order
        :meth:`add_batch` hands them over: per kept layer its maxima, positions and means."""
        return [(key, dtype) for key, dtype, _ in self._row_arrays()]

    def _row_arrays(self) -> list[tuple[str, np.dtype, int]]:
        out = []
        for layer, keys in zip(self.layers, segment_columns(len(self.layers)), strict=True):
            if layer.tap.name not in self.kept:
                continue
            c, value = layer.tap.channels, np.dtype(self.maxima_dtype)
            out += [(keys["max"], value, c), (keys["pos"], np.dtype(position_dtype(*layer.tap.shape[1:])), c)]
            if layer.tap.name in self.means:
                out.append((keys["mean"], value, c))
            if layer.tap.name in self.relevance:
                out.append((keys["rel"], value, c))
        return out

    def column_dtypes(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Every segment file's dtype and row shape."""
        cols = {"ids": (np.dtype(np.int64), ()), "geometry": (np.dtype(np.int64), (6,)),
                "identity": (np.dtype(np.int64), (3,))}
        cols.update({key: (dtype, (c,)) for key, dtype, c in self._row_arrays()})
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
            for ranking, topk in layer.rankings.items():
                for k, v in topk.state().items():
                    arrays[_key(i, RANKINGS[ranking] + k)] = v
            for k, v in layer.stats.to_stats().state().items():
                arrays[_key(i, "stat_" + k)] = v
            if layer.histogram is not None:
                arrays[_key(i, "hist")] = layer.histogram.state()
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
            for ranking, topk in layer.rankings.items():
                topk.load({k: arrays[_key(i, RANKINGS[ranking] + k)] for k in ("values", "ids", "index")})
            layer.stats = RunningStats.from_stats(_stats(arrays, i), self.device)
            if layer.histogram is not None:
                layer.histogram.load(arrays[_key(i, "hist")])


def segments_of(arrays: dict[str, np.ndarray]) -> list[dict]:
    """The sealed segments a state lists: ``{"name", "first", "end", "rows", "crc": {key: crc}}``."""
    return json.loads(str(arrays["segments"]))


def set_segments(arrays: dict[str, np.ndarray], segments: list[dict]) -> None:
    """Make ``arrays`` (a state's) list ``segments``, the only ones it counts."""
    arrays["segments"] = np.array(json.dumps(segments))


def progress_of(arrays: dict[str, np.ndarray], world: int, batch_size: int) -> int:
    """Images before which every row of this scan (or shard) is written: a segment ending past
    it was never counted by the state."""
    if world == 1:
        return int(arrays["next_image"])
    return int(arrays["next_batch"]) * batch_size


def _stats(arrays, i: int) -> ChannelStats:
    return ChannelStats.from_state({k: arrays[_key(i, "stat_" + k)]
                                    for k in ChannelStats.__dataclass_fields__})


def segment_columns(n_layers: int) -> list[dict[str, str]]:
    """Per layer, the segment keys of its ``max`` (maxima), ``pos`` (positions) and ``mean``
    (spatial means) rows, for a reader that checks which are there (a layer whose maxima are not
    kept has none; means are kept on request)."""
    return [{"max": _key(i, "max"), "pos": _key(i, "pos"), "mean": _key(i, "mean"), "rel": _key(i, "rel")}
            for i in range(n_layers)]


@dataclass
class MergedLayer:
    """One layer's merged reducers: the top-k by maximum (``values``, ``ids``, ``index``),
    the statistics, the other rankings (``rankings["mean"]``; ``rankings["min"]``, the bottom-k,
    holds the signed minima, most negative first) and the histogram (``None`` when not kept)."""

    values: np.ndarray
    ids: np.ndarray
    index: np.ndarray
    stats: ChannelStats
    rankings: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    histogram: np.ndarray | None = None


def merge_states(states: list[dict[str, np.ndarray]], n_layers: int, top_k: int, bottom_k: int = 0):
    """Top-k, statistics, histograms and failures of several shards' states merged
    (order-independent).

    Returns ``(layers, failure_ids, failure_reasons, scan_seconds)``: one :class:`MergedLayer`
    per layer, failures sorted by image id, and the slowest shard's scanning time."""
    layers = []
    for i in range(n_layers):
        rankings = {}
        for ranking, prefix in RANKINGS.items():
            if _key(i, prefix + "values") not in states[0]:
                continue
            cat = {k: np.concatenate([s[_key(i, prefix + k)] for s in states], axis=1)
                   for k in ("values", "ids", "index")}
            k = bottom_k if ranking == "min" else top_k
            v, d, x = merge_topk(cat["values"], cat["ids"], k, cat["index"])
            rankings[ranking] = (-v if ranking == "min" else v, d, x)
        stats = _stats(states[0], i)
        for s in states[1:]:
            stats = stats.merged(_stats(s, i))
        hist = None
        if _key(i, "hist") in states[0]:
            hist = np.sum([s[_key(i, "hist")] for s in states], axis=0, dtype=np.int64)
        layers.append(MergedLayer(*rankings.pop("max"), stats, rankings, hist))
    fids = np.concatenate([s["failure_ids"] for s in states]).astype(np.int64)
    freasons = np.concatenate([s["failure_reasons"].astype(str) for s in states])
    order = np.argsort(fids, kind="stable")
    scan_seconds = max(float(s["elapsed_seconds"]) for s in states)
    return layers, fids[order], freasons[order], scan_seconds


def tap_record(tap: LayerTap) -> dict:
    """A tap's geometry as JSON-ready data (recorded in a work folder's meta)."""
    rf = tap.rf
    record = {"name": tap.name, "type": tap.type, "shape": list(tap.shape),
              "rf_size": list(rf.size), "rf_stride": list(rf.stride), "rf_offset": list(rf.offset)}
    if tap.whole_image:  # only then: a map layer's record stays what older work folders hold
        record.update(unit=tap.unit, logits=tap.logits)
    return record


def tap_from_record(rec: dict) -> LayerTap:
    rf = ReceptiveField(*(AxisField(rec["rf_size"][i], rec["rf_stride"][i], rec["rf_offset"][i])
                          for i in (0, 1)))
    return LayerTap(rec["name"], rec["type"], tuple(rec["shape"]), rf, 1,
                    unit=rec.get("unit", "map"), logits=rec.get("logits", False))
