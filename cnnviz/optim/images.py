"""What optimization produces, as images: uint8 arrays, PNG files, the model's view of them, and
optimized images stored in a run file for its report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..model.precision import precision_scope

__all__ = ["to_uint8", "save_png", "class_probabilities", "store_in_run"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """RGB in [0, 1], ``(batch, 3, H, W)`` -> uint8 ``(batch, H, W, 3)``."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(images: torch.Tensor, paths: Sequence[str | Path]) -> list[Path]:
    """Write each image of the batch as an 8-bit PNG."""
    from PIL import Image

    out = []
    for arr, p in zip(to_uint8(images), paths, strict=True):
        p = Path(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            Image.fromarray(arr).save(p)
        except BaseException:
            p.unlink(missing_ok=True)  # a full disk leaves no 0-byte image behind
            raise
        out.append(p)
    return out


@torch.no_grad()
def class_probabilities(model, images_uint8: np.ndarray) -> torch.Tensor:
    """Softmax of the model for uint8 ``(batch, H, W, 3)`` images fed as they are (no resize)."""
    x = model.preprocessing.normalize(torch.from_numpy(images_uint8).to(model.device))
    with precision_scope("fp32", model.device):
        return model.module(x).softmax(dim=1)


def store_in_run(run: str | Path, layer: str, channels: Sequence[int], images: torch.Tensor,
                 recipe: str) -> None:
    """Add optimized images of some channels to a run file (``layers/<layer>/optimized``), so
    the report shows each beside its dataset examples (:func:`cnnviz.run.optimized.store_optimized`:
    written into a copy that replaces the run file when complete; a failure leaves it as it was)."""
    from ..run.optimized import store_optimized

    store_optimized(run, layer, channels, to_uint8(images), recipe)
