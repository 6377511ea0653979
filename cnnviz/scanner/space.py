"""Disk space: what a scan will write, checked against what its disk has before any work, and
again before the run file is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import ScanError
from ..images.patches import patch_shape
from ..run.format import position_dtype
from ..run.quantiles import SCALE

__all__ = ["estimate_bytes", "run_file_bytes", "check_space"]

_TOPK_ENTRY_BYTES = 4 + 8 + 4 + 4 + 16 + 16 + 16  # activation, id, y, x, three boxes


def run_file_bytes(taps, n_images: int, top_k: int, maxima_dtype: str, patch_size: int,
                   input_size: tuple[int, int], kept: set[str] | None = None, rankings: int = 1,
                   bottom: tuple[int, set[str]] = (0, set()), means: set[str] = frozenset(),
                   quantiles: bool = False) -> int:
    """About the size of the run file: the per-image maxima and positions (of the ``kept``
    layers; default all) and means (of the ``means`` layers), the records and patches of
    ``rankings`` top-k per channel and of the bottom-k ``bottom = (k, layers)`` (uncompressed),
    the quantile histograms, plus the per-image records."""
    total = n_images * (6 * 4 + 3 * 8 + 256)  # geometry, identity, path strings (generous)
    for tap in taps:
        c = tap.channels
        value = 0 if maxima_dtype == "none" else np.dtype(maxima_dtype).itemsize
        if value and (kept is None or tap.name in kept):
            total += n_images * c * (value + np.dtype(position_dtype(*tap.shape[1:])).itemsize)
            total += n_images * c * value * (tap.name in means)
        ph, pw = patch_shape(tap.rf, input_size, patch_size)
        entries = top_k * rankings + (bottom[0] if tap.name in bottom[1] else 0)
        total += c * entries * (_TOPK_ENTRY_BYTES + ph * pw * 3)
        total += c * SCALE.n_buckets * 8 * quantiles
    return int(total * 1.05) + (1 << 20)


def estimate_bytes(taps, n_images: int, config, input_size: tuple[int, int],
                   bottom: set[str] = frozenset()) -> int:
    """A whole scan's need at its peak, while the run file is written: the work folder's
    checkpoints (per-image rows), the decoded top-k images the patches are cut from (at most
    one per top-k entry) and the run file side by side."""
    kept, means = config.kept_maxima(taps), config.kept_means(taps)
    if "relevance" in config.rankings:  # its per-image rows take what means do (about)
        means = means | kept
    value = 0 if config.maxima_dtype == "none" else np.dtype(config.maxima_dtype).itemsize
    rows = sum(tap.channels * (value + 4 + value * (tap.name in means)) for tap in taps if tap.name in kept)
    rankings = len(config.rankings)
    entries = sum(t.channels * (config.top_k * rankings + config.bottom_k * (t.name in bottom)) for t in taps)
    crops = min(n_images, entries) * 3 * input_size[0] * input_size[1]
    return rows * n_images + crops + run_file_bytes(
        taps, n_images, config.top_k, config.maxima_dtype, config.patch_size, input_size, kept, rankings,
        (config.bottom_k, bottom), means, config.quantiles)


def check_space(out: Path, need: int, already: int = 0) -> None:
    """Refuse to start (or to write the run file) when the disk of ``out`` cannot hold ``need``
    bytes, of which ``already`` are written (a resumed scan's work folder)."""
    free = shutil.disk_usage(Path(out).parent).free
    need -= already
    if need > free:
        raise ScanError(f"the disk of {out} has {_size(free)} free, and this needs about {_size(need)} "
                        "more: free some space, choose another `out`, or write less (`maxima_dtype=float16`, "
                        "fewer `layers`, a smaller `patch_size` or `top_k`)")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"
