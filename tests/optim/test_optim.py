"""Feature visualization by optimization, on tiny networks with constructed weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import Preprocessing, from_module
from cnnviz.optim import (
    class_probabilities,
    cs231n_class_visualization,
    objectives,
    render,
    store_in_run,
    to_uint8,
)
from cnnviz.optim.transforms import gaussian_blur, roll

PRE = Preprocessing(resize=None, crop=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def colour_net():
    """conv '0' channel 0 fires on red, channel 1 on blue (1x1 weights on normalized pixels),
    then a global pool and a linear layer whose class 0 is 'red', class 1 'blue'."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]).view(2, 3, 1, 1))
        conv.bias.zero_()
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(2))
        fc.bias.zero_()
    net = nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    return from_module(net, PRE, class_names=["red", "blue"], name="colour")


@pytest.mark.slow
def test_channel_vis_finds_the_colour_each_channel_detects():
    model = colour_net()
    res = render(model, objectives.channels("0", [0, 1]), batch=2, steps=150, lr=0.2, progress=False)
    img = res.images
    red, blue = img[0].mean(dim=(1, 2)), img[1].mean(dim=(1, 2))
    assert red[0] > 0.6 and red[1] < 0.15 and red[2] < 0.15
    assert blue[2] > 0.6 and blue[0] < 0.15 and blue[1] < 0.15
    assert res.history.shape == (150, 2)
    assert (res.history[-1] > res.history[0]).all()


def test_same_seed_same_image_other_seed_other_image():
    model = colour_net()
    obj = objectives.channel("0", 0) + 0.5 * objectives.layer_energy("0")
    a = render(model, obj, steps=5, seed=3, progress=False).images
    b = render(model, obj, steps=5, seed=3, progress=False).images
    c = render(model, obj, steps=5, seed=4, progress=False).images
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = cs231n_class_visualization(model, 1, steps=5, seed=1, progress=False).images
    y = cs231n_class_visualization(model, 1, steps=5, seed=1, progress=False).images
    assert torch.equal(x, y)


def test_cs231n_recipe_reaches_the_class_and_keeps_pixels_valid():
    model = colour_net()
    # the recipe's defaults, but a weaker L2 decay: this net's logits top out at 6, which the
    # default penalty (1e-3 * ||I||^2, about 12 for a saturated 32x32 image) would outweigh
    res = cs231n_class_visualization(model, [0, 1], l2_reg=1e-4, progress=False)
    assert res.images.min() >= 0 and res.images.max() <= 1
    probs = class_probabilities(model, to_uint8(res.images))
    assert probs[0, 0] > 0.95 and probs[1, 1] > 0.95
    assert res.history[-1, 0] > res.history[0, 0]
    assert [s for s, _ in res.snapshots] == [25, 50, 75, 100]


def test_blur_matches_scipy_and_jitter_is_undone():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 3, 17, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = gaussian_blur(x, 0.5).numpy()
    ref = scipy_ndimage.gaussian_filter1d(x.numpy(), 0.5, axis=2)
    ref = scipy_ndimage.gaussian_filter1d(ref, 0.5, axis=3)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert torch.equal(roll(roll(x, 5, 3), -5, -3), x)


def test_objective_arithmetic_on_known_activations():
    acts = {"a": torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)}
    logits = torch.tensor([[1.0, 5.0], [7.0, 2.0]])
    image = torch.ones(2, 3, 2, 2)
    ch = objectives.channel("a", 1)(acts, logits, image)
    assert torch.equal(ch, torch.tensor([5.5, 17.5]))
    obj = objectives.channel("a", 1) + 2 * objectives.neuron("a", 2, 0, 1) - objectives.l2()
    assert torch.equal(obj(acts, logits, image), ch + 2 * torch.tensor([9.0, 21.0]) - 12)
    assert torch.equal(objectives.channels("a", [2, 0])(acts, logits, image), torch.tensor([9.5, 13.5]))
    assert torch.equal(objectives.class_logits([1, 0])(acts, logits, image), torch.tensor([5.0, 7.0]))
    d = objectives.direction("a", [1.0, 0.0, -1.0])(acts, logits, image)
    assert torch.allclose(d, torch.tensor([-8.0, -8.0]))
    div = objectives.diversity("a")
    same = {"a": acts["a"][:1].expand(2, 3, 2, 2)}
    assert torch.allclose(div(same, logits, image), torch.tensor([-1.0, -1.0]))
    assert obj.layers == ("a",)


def test_store_in_run_and_report(photo_dir, tmp_path):
    from cnnviz import scan, write_report

    model = colour_net()
    run = scan(photo_dir, model, tmp_path / "run.h5", layers="0", top_k=2, workers=0, progress=False)
    res = render(model, objectives.channels("0", [1]), batch=1, steps=3, progress=False)
    store_in_run(run, "0", [1], res.images, "modern")
    import h5py

    with h5py.File(run, "r") as f:
        assert f["layers/0/optimized/done"][()].tolist() == [False, True]
        np.testing.assert_array_equal(f["layers/0/optimized/images"][1], to_uint8(res.images)[0])
    write_report(run, tmp_path / "site", progress=False)
    page = (tmp_path / "site" / "0" / "c1.html").read_text()
    assert 'src="c1-optimized.png"' in page
    assert "optimized" not in (tmp_path / "site" / "0" / "c0.html").read_text()


@pytest.mark.slow
def test_images_of_another_size_replace_the_stored_ones_cleanly(photo_dir, tmp_path):
    """Optimized images of a new size replace a layer's stored ones: the new ``done`` flags must
    not be read from the space the old images left (HDF5 writes no fill value by default)."""
    import h5py

    from cnnviz import load_model, scan

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", layers="layer3.0", top_k=2,
               workers=0, progress=False)
    big = torch.rand(64, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    store_in_run(run, "layer3.0", list(range(64)), big, "modern")
    small = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    store_in_run(run, "layer3.0", [5, 9], small, "cs231n")
    with h5py.File(run, "r") as f:
        g = f["layers/layer3.0/optimized"]
        assert np.flatnonzero(g["done"][()]).tolist() == [5, 9] and g.attrs["recipe"] == "cs231n"
        np.testing.assert_array_equal(g["images"][[5, 9]], to_uint8(small))
        assert not g["images"][0].any()


@pytest.mark.slow
def test_redirected_relu_reaches_a_channel_that_starts_silent():
    """Channel 0 needs red > 3 (normalized) before it fires: on the grey start its ReLU passes
    no gradient. Lucid's redirected ReLU lets the optimizer find it; a plain ReLU cannot."""
    model = colour_net()
    with torch.no_grad():
        model.module[0].bias[0] = -3.0
    obj = objectives.channel("1", 0)  # after the (in-place) ReLU module
    plain = render(model, obj, steps=40, lr=0.2, redirected_relu=False, progress=False)
    redirected = render(model, obj, steps=40, lr=0.2, progress=False)
    assert plain.history.max() == 0
    assert redirected.history[-1, 0] > 0.05 and redirected.history[-1, 0] > redirected.history[20, 0]
    assert type(model.module[1]).forward is nn.ReLU.forward and "forward" not in vars(model.module[1])


def test_render_leaves_the_callers_modules_alone_and_needs_no_grad_mode():
    """During and after a render with the redirected ReLU, the caller's modules keep their own
    ``forward`` and no hook; it works under ``torch.no_grad()`` and leaves that mode as it was."""
    model = colour_net()
    seen = []

    def probe(acts, logits, image):
        seen.append([("forward" in vars(m), len(m._forward_hooks)) for m in model.module.modules()])
        return acts["1"][:, 0].mean(dim=(1, 2))

    obj = objectives.Objective(probe, layers=("1",), name="probe")
    with torch.no_grad():
        res = render(model, obj, steps=3, lr=0.2, progress=False)
        assert not torch.is_grad_enabled()
    assert len(seen) == 3 and all(not patched and hooks == 0 for step in seen for patched, hooks in step)
    assert res.history.shape == (3, 1) and np.isfinite(res.history).all()
    assert all(not p.requires_grad for p in model.module.parameters())


def test_redirection_lasts_the_first_steps_and_the_network_sees_one_size():
    """``redirected_relu=N``: the first N steps are those of a fully redirected render (same
    seed), later steps use the plain ReLU; with ``fixed_size`` every forward pass gets the
    model's input size although the transforms vary it."""
    model = colour_net()
    with torch.no_grad():
        model.module[0].bias[0] = -3.0
    obj = objectives.channel("1", 0)
    full = render(model, obj, steps=12, lr=0.2, redirected_relu=True, progress=False)
    limited = render(model, obj, steps=12, lr=0.2, redirected_relu=8, progress=False)
    np.testing.assert_array_equal(limited.history[:9], full.history[:9])  # step 9 sees step 8's update
    sizes = []
    hook = model.module[0].register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    try:
        render(model, obj, steps=5, progress=False)
        free = list(sizes)
        sizes.clear()
        render(model, obj, steps=5, progress=False, fixed_size=False)
    finally:
        hook.remove()
    assert set(free) == {tuple(model.input_size)}
    assert len(set(sizes)) > 1  # the transforms alone vary it


def test_centre_fit_cuts_and_pads_about_the_centre():
    from cnnviz.optim.transforms import centre_fit

    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).view(2, 3, 7, 9)
    assert torch.equal(centre_fit(x, (5, 5)), x[..., 1:6, 2:7])
    padded = centre_fit(x, (9, 11))
    assert torch.equal(padded[..., 1:8, 1:10], x)
    assert (padded[..., 0, :] == 0.5).all() and (padded[..., :, 0] == 0.5).all()


def test_a_module_carrying_stateful_hooks_can_be_rendered_scanned_and_attributed(photo_dir, tmp_path):
    """Lucent leaves hooks that keep the last (non-leaf) output: ``copy.deepcopy`` refuses such
    a module. cnnviz's copies share the caller's hook functions instead: they keep firing, and
    the caller's hook tables are left as they were."""
    from cnnviz import scan
    from cnnviz.analysis.attribution import neuron_attributions

    model = colour_net()
    kept = {}

    def keep(module, inputs, output):
        kept["out"] = output * 1.0  # a non-leaf tensor held by the hook's closure
        kept["calls"] = kept.get("calls", 0) + 1

    model.module[0].register_forward_hook(keep)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    model.module(x)  # now the hook holds a tensor with a graph

    def hook_tables():
        return {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
                for n, m in model.module.named_modules()}

    before = hook_tables()
    res = render(model, objectives.channel("1", 1), steps=3, progress=False)
    assert np.isfinite(res.history).all() and kept["calls"] >= 1 + 3  # it fires on the copy too
    run = scan(photo_dir, model, tmp_path / "run.h5", layers="0", top_k=2, workers=0, progress=False)
    assert np.isfinite(neuron_attributions(model, run, "0", 1)).all()
    assert hook_tables() == before
