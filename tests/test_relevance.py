"""Channel relevance (activation x gradient of the target logit, summed over positions) against
Captum's LayerGradientXActivation, and explain_prediction's table against that computation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation

from cnnviz import Preprocessing, from_module, scan
from cnnviz.analysis.relevance import explain_prediction, layer_relevance
from cnnviz.errors import UsageError
from cnnviz.images.decoding import load_rgb

from .conftest import tiny_cnn

LAYERS = ["3", "6"]


def _captum(net: torch.nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor) -> torch.Tensor:
    """Captum's LayerGradientXActivation summed over positions, on a copy without in-place ops."""
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    attribution = LayerGradientXActivation(plain, plain.get_submodule(layer))
    return attribution.attribute(x, target=targets).sum((2, 3))


def test_relevance_equals_captums_gradient_times_activation_for_every_layer_at_once():
    net = tiny_cnn(seed=3).eval()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 3, 9, 1])
    rel = layer_relevance(net, x, LAYERS, targets)
    assert rel.targets.tolist() == targets.tolist()
    for layer in LAYERS:
        want = _captum(net, x, layer, targets)
        torch.testing.assert_close(rel.sums[layer], want, rtol=1e-4, atol=1e-6)
    top1 = layer_relevance(net, x, LAYERS)  # no target: the model's own top-1 class
    assert top1.targets.tolist() == net(x).argmax(1).tolist()


def test_a_tap_changed_in_place_afterwards_is_refused():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):
            out = self.conv(x)
            out += x  # changes the conv's output after its hook saw it
            return self.head(out.mean((2, 3)))

    with pytest.raises(UsageError, match="changes this output in place"):
        layer_relevance(Residual(), torch.randn(2, 3, 8, 8), ["conv"])


def test_explain_prediction_ranks_the_channels_of_each_layer_by_their_relevance(photo_dir, tmp_path):
    pre = Preprocessing(resize=72, crop=(64, 64))
    model = from_module(tiny_cnn(seed=1), pre, class_names=[f"c{i}" for i in range(10)], name="tiny")
    run = scan(photo_dir, model, tmp_path / "run.h5", layers=LAYERS, top_k=3, batch_size=4, workers=0,
               progress=False)
    image = photo_dir / "animals" / "chelsea.png"
    table = explain_prediction(image, run, model=model, top=50)
    x = pre(load_rgb(image))
    predicted = int(model.module(x).argmax())
    for layer in LAYERS:
        rows = table[table.layer == layer]
        want = _captum(model.module, x, layer, torch.tensor([predicted]))[0].detach().numpy()
        want = want.astype(np.float64)
        order = sorted(range(len(want)), key=lambda c: (-want[c], c))
        assert rows.channel.tolist() == order
        np.testing.assert_allclose(rows.relevance, want[order], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rows.share, want[order] / np.abs(want).sum(), rtol=1e-4, atol=1e-7)
        assert (rows.target == predicted).all() and (rows.predicted == predicted).all()
        assert all(len(e) == 3 for e in rows.examples)  # the run's top-k images of each channel
    chosen = explain_prediction(image, run, model=model, target="c7", top=3)
    assert (chosen.target == 7).all() and (chosen.target_name == "c7").all()
