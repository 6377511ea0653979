"""The scan's host work, measurable without a GPU (``scripts/bench_scan.py --host-only``).

A GPU scan is fast only if the work the CPU does per batch (folding the reduced taps into the
reducers, handing the rows to the writer, checkpointing) takes less time than the GPU's forward
pass: at 11,000 img/s that leaves 90 µs per image. :func:`host_only_scan` runs the scan's own
loop (:func:`~cnnviz.scanner.loop._run_batches`, the state, the writer thread, checkpoints)
with the network replaced by :class:`StandInTaps` and the decoding by pre-made batches, both of
which cost nothing: what is left is the host work, measured on any machine.

The stand-in hands the scan reduced outputs of the real shapes (per tap, ``(B, C)`` maxima,
positions and means) drawn in advance, every image different (a ReLU-like distribution per
channel), so the top-k admits new images as often as a real library's would.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..model.taps import LayerTap
from .checkpoint import CheckpointWriter
from .config import ScanConfig
from .reducers import Reduced
from .state import ScanState
from .workdir import WorkDir

__all__ = ["StandInTaps", "host_only_scan"]


class StandInTaps:
    """Same interface as the scan's taps: ``forward(x)`` fills ``outputs[tap name]`` with the
    next batch's ``(max, flat position, mean)`` for ``x.shape[0]`` images, read from a pool of
    ``pool`` images drawn once (seeded)."""

    def __init__(self, taps: list[LayerTap], pool: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.pool, self.cursor, self.outputs = pool, 0, {}
        self.data = {}
        for tap in taps:
            c, hw = tap.channels, tap.shape[1] * tap.shape[2]
            scale = torch.rand(c, generator=gen) * 3.5 + 0.5
            values = (torch.randn(pool, c, generator=gen) * scale + scale * 0.5).clamp_min_(0)
            index = torch.randint(0, hw, (pool, c), generator=gen)
            self.data[tap.name] = (values, index, values * 0.3)

    def forward(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        start = self.cursor % self.pool
        stop = min(start + n, self.pool)
        self.outputs = {k: Reduced(*(t[start:stop] for t in v)) for k, v in self.data.items()}
        self.cursor += stop - start


def _batches(n_images: int, batch_size: int):
    """Decoded batches as the scan's loader yields them, with 1x1 crops (normalizing them costs
    nothing; on a GPU that is device work anyway)."""
    crops = torch.zeros((batch_size, 1, 1, 3), dtype=torch.uint8)
    geometry = torch.tensor([[375, 500, 232, 309, 4, 42]] * batch_size, dtype=torch.int64)
    identity = torch.zeros((batch_size, 3), dtype=torch.int64)
    for start in range(0, n_images, batch_size):
        n = min(batch_size, n_images - start)
        yield torch.arange(start, start + n), crops[:n], geometry[:n], identity[:n], [""] * n


def host_only_scan(taps: list[LayerTap], n_images: int, folder: Path, batch_size: int = 256,
                   top_k: int = 16, maxima_dtype: str = "none", pool: int | None = None,
                   checkpoint_seconds: float = 60.0, rank_by: tuple[str, ...] = ("max", "mean")) -> dict:
    """Run the scan's loop over ``n_images`` stand-in images into the work folder ``folder``.

    Returns ``{"seconds", "reduce_seconds", "images", "wait_disk_seconds", "row_bytes"}``: the
    loop's wall time (the last checkpoint included), the part of it spent in the reducers' own
    arithmetic (top-k merge and statistics, which a GPU scan runs on the GPU), what it waited for
    the writer, and the bytes of per-image maxima each image makes."""
    from ..model.preprocessing import Preprocessing
    from .loop import _row_bytes, _run_batches

    config = ScanConfig(top_k=top_k, batch_size=batch_size, maxima_dtype=maxima_dtype, progress=False,
                        checkpoint_seconds=checkpoint_seconds)
    kept = set() if maxima_dtype == "none" else {t.name for t in taps}
    state = ScanState(taps, top_k, "cpu", maxima_dtype if kept else "float32", kept, rank_by)
    work = WorkDir(folder)
    work.create({"shard": [0, 1], "batch_size": batch_size, "n_images": n_images}, {})
    cap = StandInTaps(taps, min(n_images, pool or n_images))
    preprocessing = Preprocessing(resize=1, crop=(1, 1))
    plan = ([(b, list(range(s, min(s + batch_size, n_images))))
             for b, s in enumerate(range(0, n_images, batch_size))], 0, n_images)
    row_bytes = _row_bytes(state)
    timer = _ReducerTimer(state)
    started = time.perf_counter()
    writer = CheckpointWriter(work, state, checkpoint_seconds, None, row_bytes=batch_size * row_bytes)
    try:
        _run_batches(cap, _batches(n_images, batch_size), preprocessing, plan, state, writer, config, folder)
        writer.checkpoint(wait=True)
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "reduce_seconds": timer.seconds, "images": n_images,
            "wait_disk_seconds": state.wait_disk_seconds,
            "row_bytes": row_bytes - 80}  # less ids, geometry and identity (the maxima alone)


class _ReducerTimer:
    """Times every call of the layers' reducers (the arithmetic a GPU takes over)."""

    def __init__(self, state: ScanState):
        self.seconds = 0.0
        for layer in state.layers:
            for reducer in (*layer.rankings.values(), layer.stats):
                reducer.update = self._timed(reducer.update)

    def _timed(self, fn):
        def call(*args, **kw):
            started = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - started
        return call
