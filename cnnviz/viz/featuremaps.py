"""Feature-map grids: every channel of one layer for one image, as small tiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from captum.attr import LayerActivation
from PIL import Image

from ..channels import parse_channels
from ..model.precision import precision_scope
from ..model.taps import resolve_layer

__all__ = ["layer_activation", "feature_map_grid", "parse_channels"]


def layer_activation(model, image: Image.Image | torch.Tensor, layer: str) -> torch.Tensor:
    """The activation ``(C, H, W)`` of ``layer`` for one image, via Captum's ``LayerActivation``.

    Args:
        model: a :class:`~cnnviz.models.LoadedModel`.
        image: a PIL image (preprocessed with the model's preprocessing) or a ready
            ``(1, 3, H, W)`` input tensor.
        layer: tap name (``layer2.0.conv3``).
    """
    tap = resolve_layer(model, layer)
    module = model.module
    x = model.preprocessing(image) if isinstance(image, Image.Image) else image
    x = x.to(model.device)
    # Captum's hook clones the output, so later in-place ops (ResNet's residual add) cannot
    # change it; resolve_layer has checked that the module runs once per pass.
    with precision_scope("fp32", x.device):
        act = LayerActivation(module, module.get_submodule(tap.name)).attribute(x)
    return act[0].detach().clone()


def feature_map_grid(
    activation: torch.Tensor,
    channels: Sequence[int] | None = None,
    *,
    columns: int = 8,
    shared_scale: bool = False,
    cmap: str = "viridis",
    title: str | None = None,
    tile_inches: float = 1.1,
):
    """Draw channel maps as a grid (8 columns by default; 64 channels make an 8x8 grid).

    Args:
        activation: ``(C, H, W)`` tensor.
        channels: which channels, in order (default: the first 64).
        shared_scale: one colour scale for all tiles (compare magnitudes) instead of one per
            tile (see each map's pattern).
        title: figure title.

    Returns:
        A matplotlib ``Figure``; each tile is titled with its channel index.
    """
    import matplotlib.pyplot as plt

    act = activation.detach().float().cpu().numpy()
    channels = list(channels) if channels is not None else list(range(min(64, act.shape[0])))
    cols = max(1, min(columns, len(channels)))
    rows = math.ceil(len(channels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_inches, rows * tile_inches + 0.5),
                             squeeze=False)
    vmin, vmax = (float(act[channels].min()), float(act[channels].max())) if shared_scale else (None, None)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, channels, strict=False):
        ax.imshow(act[c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{c}", fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight() if title else 1))
    return fig
