"""Feature-map grids: a layer's activation for one image against the module's own output, and
its tiles in the order asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import load_model
from cnnviz.errors import UsageError
from cnnviz.model.taps import capture


@pytest.mark.slow
def test_feature_map_grid_uses_captum_and_keeps_order():
    import matplotlib

    matplotlib.use("Agg")
    from cnnviz.channels import parse_channels

    model = load_model("resnet18", None)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 260, 3), dtype=np.uint8))
    act = cnnviz.layer_activation(model, img, "layer2.0")
    with capture(model.module, ["layer2.0"]) as rec:
        model.module(model.preprocessing(img))
    assert torch.allclose(act, rec.outputs["layer2.0"][0])
    fig = cnnviz.feature_map_grid(act)
    _assert_tiles_show(fig, act, list(range(64)))
    chosen = parse_channels("5,1,10-12", act.shape[0])
    assert chosen == [5, 1, 10, 11, 12]
    fig = cnnviz.feature_map_grid(act, chosen, shared_scale=True)
    _assert_tiles_show(fig, act, chosen)
    clims = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert clims == {(float(act[chosen].min()), float(act[chosen].max()))}
    with pytest.raises(UsageError, match="`channels`"):
        parse_channels("0-200", act.shape[0])
    with pytest.raises(UsageError, match="numbers and ranges"):
        parse_channels("3,x", act.shape[0])


def _assert_tiles_show(fig, act, channels):
    """Tiles in axes order (rows first) hold exactly the maps of ``channels``, in that order."""
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == len(channels)
    rows = sorted(tiles, key=lambda ax: (-round(ax.get_position().y0, 3), ax.get_position().x0))
    for ax, c in zip(rows, channels, strict=True):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), act[c].numpy())
