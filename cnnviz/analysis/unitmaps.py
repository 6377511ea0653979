"""A layer's activation maps for some of a run's images, recomputed with the run's model: what
a threshold mask (:mod:`cnnviz.run.masks`) is drawn from, since a run stores each channel's
mask level but not the maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..images.decoding import decode_file
from ..model.copying import inference_copy
from ..model.precision import precision_scope
from ..model.taps import capture, forward_crops
from ..run.reader import RunReader, reading

__all__ = ["unit_maps"]


def unit_maps(run: str | Path, layer: str, image_ids, model=None, *, device: str = "cpu",
              library: str | Path | None = None) -> dict[int, np.ndarray | None]:
    """Per image id, the layer's activation maps ``(C, H', W')`` float32 as the scan computed
    them (the run's preprocessing and precision, its model reloaded when ``model`` is
    ``None``); ``None`` for an image whose file is gone, unreadable or changed since the scan
    (the run vouches for the bytes it scanned only)."""
    from ..model.loading import check_model_fits, model_of_run

    with reading(run) as reader:
        reader.check_layer(layer)
        model = model if model is not None else model_of_run(reader, device)
        check_model_fits(model, reader, [layer])
        precision = reader.precision
        crops = {int(i): _crop(reader, int(i), model.preprocessing, library) for i in image_ids}
    out: dict[int, np.ndarray | None] = {i: None for i in crops}
    shown = [(i, c) for i, c in crops.items() if c is not None]
    if not shown:
        return out
    device = torch.device(device)
    module = inference_copy(model.module, device)
    x = torch.from_numpy(np.stack([c for _, c in shown])).to(device)
    with precision_scope(precision, device), capture(module, [layer], stop_early=True) as cap:
        act = forward_crops(cap, x, model.preprocessing)[layer].float()
    if act.dim() == 2:  # a whole-image unit: a 1x1 map
        act = act[:, :, None, None]
    for row, (i, _) in enumerate(shown):
        out[i] = act[row].cpu().numpy().copy()
    return out


def _crop(reader: RunReader, image_id: int, preprocessing, library) -> np.ndarray | None:
    path = reader.image_file(image_id, library)
    if path is None:
        return None
    try:
        decoded = decode_file(path, preprocessing.resize)
    except Exception:  # noqa: BLE001 - an image that cannot be read now gets no mask
        return None
    if not reader.identity_matches(image_id, decoded.identity):
        return None
    return preprocessing.crop_uint8(decoded.image, decoded.original_size)[0]
