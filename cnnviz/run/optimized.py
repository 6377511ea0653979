"""Optimized images stored in a run file (``layers/<name>/optimized``), written as every change
to a finished run is: into a copy, swapped in when complete (:mod:`.update`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import format as fmt
from .reader import reading
from .update import update_run

__all__ = ["store_optimized"]


def store_optimized(run: str | Path, layer: str, channels: Sequence[int], images: np.ndarray,
                    recipe: str) -> None:
    """Add optimized images of some channels to a run file (``layers/<layer>/optimized``), so
    the report shows each beside its dataset examples. ``images``: uint8 ``(n, H, W, 3)``, one
    per channel. Images of another size than those the layer holds replace them all.

    The run file is never damaged: the images are written into a copy (by a separate process)
    that replaces it once complete (:func:`cnnviz.run.update.update_run`); a full disk leaves it
    as it was."""
    with reading(run) as r:  # format and version check
        layer = r.resolve_layer(layer)
        r.check_channels(layer, list(channels), "channels")
    arr = np.asarray(images, dtype=np.uint8)

    def write(f) -> None:
        g = f[fmt.layer_group(layer)]
        n_ch = int(g.attrs[fmt.LAYER_CHANNELS])
        if fmt.OPTIMIZED_IMAGES in g and g[fmt.OPTIMIZED_IMAGES].shape[1:] != arr.shape[1:]:
            del g[fmt.OPTIMIZED]
        if fmt.OPTIMIZED_IMAGES not in g:
            # explicit fill values: without one HDF5 leaves new space as it finds it, and space
            # freed by replaced images would read as `done` flags
            g.create_dataset(fmt.OPTIMIZED_IMAGES, shape=(n_ch, *arr.shape[1:]), dtype=np.uint8,
                             chunks=(1, *arr.shape[1:]), fillvalue=0)
            g.create_dataset(fmt.OPTIMIZED_DONE, shape=(n_ch,), dtype=bool, fillvalue=False)
        for c, a in zip(channels, arr, strict=True):
            g[fmt.OPTIMIZED_IMAGES][c] = a
            g[fmt.OPTIMIZED_DONE][c] = True
        g[fmt.OPTIMIZED].attrs[fmt.OPTIMIZED_RECIPE] = recipe

    update_run(run, write, extra_bytes=arr.nbytes, what="the optimized images")
