"""Masks of a channel on its patches against the tiny network's activations: the mask level,
the map on the pixels, threshold_mask, and the outlines patch_montage draws."""

from __future__ import annotations

import numpy as np

import cnnviz

from ..conftest import activations, make_tiny_model


def test_masks_threshold_the_map_at_the_mask_level(photo_dir, views_run):
    """The mask level is the 0.995 quantile; on the unit centres the mask is the map's units
    above it, between them the bilinear interpolation of the map; patch_montage outlines a
    mask on each patch whose map passes the level."""
    from cnnviz.run.geometry import LayerGeometry
    from cnnviz.run.masks import map_on_pixels, threshold_mask
    from cnnviz.viz import figures

    model = make_tiny_model()
    q = cnnviz.channel_quantiles(views_run, "3")
    with cnnviz.RunReader(views_run) as r:
        levels = r.mask_levels("3")
        geo = LayerGeometry(r.layer("3").attrs, r.preprocessing["crop"], int(r.attrs["patch_size"]))
        ids = r.layer("3")["topk/image_id"][()]
        boxes = r.layer("3")["topk/patch_box"][()]
    np.testing.assert_array_equal(levels, q[0.995].to_numpy())
    acts = activations(photo_dir, model, ["3"])
    amap = acts[int(ids[2, 0])]["3"][2]
    ys, xs = geo.unit_centres()  # field 17 px, stride 4, offset -6: centres 2.5, 6.5, ... 62.5
    assert ys.tolist() == xs.tolist() == (2.5 + 4 * np.arange(16)).tolist()
    on = map_on_pixels(amap, geo, (2, 2, 66, 66))  # pixel (r, c) centred at (2.5 + r, 2.5 + c)
    np.testing.assert_allclose(on[::4, ::4], amap, rtol=1e-6)  # on the unit centres: the map
    quarter = map_on_pixels(amap, geo, (3, 2, 4, 3))  # centre y 3.5: a quarter of the way to row 1
    np.testing.assert_allclose(quarter[0, 0], amap[0, 0] * 0.75 + amap[1, 0] * 0.25, rtol=1e-6)
    mask = threshold_mask(amap, levels[2], geo, boxes[2, 0], geo.patch_factor)
    assert mask.shape == tuple(geo.patch_shape) and mask.any()
    fig = figures.patch_montage(views_run, "3", 2, mask=True, model=model)
    outlined = [ax for ax in fig.axes if ax.collections]
    assert len(outlined) == sum(acts[int(i)]["3"][2].max() > levels[2] for i in ids[2])
