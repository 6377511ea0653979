"""Receptive fields against ground truth: the input gradient of one unit.

Construction that rules out accidental zeros: every convolution averages its inputs (weights
1/fan_in, no bias), batch norms are identities, max pools become average pools of the same
geometry (a max pool's gradient reaches one input only), and global pools feeding
squeeze-and-excitation gates are detached (the documented convention: channel gates carry no
spatial information). With a small constant positive input every activation is then positive
and well below ReLU6's ceiling, so the gradient of a unit is positive exactly on the pixels it depends on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnviz.model.receptive_field import AxisField, ReceptiveField, trace_fields

from ..conftest import SQUEEZENET_WEIGHTS, needs_shared

MODELS = ["resnet50", "vgg16", "squeezenet1_1", "mobilenet_v2", "densenet121", "googlenet",
          "efficientnet_b0", "efficientnet_lite0"]


def _averaging(model: nn.Module) -> nn.Module:
    for m in list(model.modules()):
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                    ceil_mode=child.ceil_mode))
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                child.register_forward_hook(lambda mod, inp, out: out.detach())
    return model.double().eval()


def _gradient_support(model, layers, size):
    """{layer: (mask of input pixels with non-zero gradient, unit)} for the centre position,
    summed over channels: a layer's field is the union over its channels (a concatenation of
    1x1 and 3x3 branches has the 3x3 branch's field)."""
    captured = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: captured.__setitem__(n, out.clone())) for n in layers]
    # small: residual sums double the scale per block, and ReLU6 must not saturate
    x = torch.full((1, 3, *size), 1e-3, dtype=torch.float64, requires_grad=True)
    model(x)
    for h in handles:
        h.remove()
    out = {}
    for n in layers:
        act = captured[n]
        y, xx = act.shape[2] // 2, act.shape[3] // 2
        (g,) = torch.autograd.grad(act[0, :, y, xx].sum(), x, retain_graph=True)
        out[n] = (g[0].abs().sum(0) > 0, (y, xx))
    return out


def _check_support(mask: torch.Tensor, rf: ReceptiveField, unit, name):
    h, w = mask.shape
    y0, x0, y1, x1 = rf.box(*unit)
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    assert len(rows), f"{name}: the unit depends on no input pixel"
    # non-zero only inside the computed box ...
    assert rows.min() >= max(y0, 0) and rows.max() < min(y1, h), (name, rows.min(), rows.max(), (y0, y1))
    assert cols.min() >= max(x0, 0) and cols.max() < min(x1, w), (name, cols.min(), cols.max(), (x0, x1))
    # ... and touching each edge of the box that lies inside the image
    if y0 >= 0:
        assert rows.min() == y0, (name, "top", rows.min(), y0)
    if y1 <= h:
        assert rows.max() == y1 - 1, (name, "bottom", rows.max(), y1)
    if x0 >= 0:
        assert cols.min() == x0, (name, "left", cols.min(), x0)
    if x1 <= w:
        assert cols.max() == x1 - 1, (name, "right", cols.max(), x1)


def _model(name):
    if name == "efficientnet_lite0":  # not torchvision: TF "same" padding through ZeroPad2d
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0")
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_field_matches_input_gradient(name):
    from cnnviz.model.taps import default_layers

    model = _averaging(_model(name))
    size = (160, 160)
    traced = trace_fields(model, size)
    layers = [t.name for t in default_layers(model)]
    # every layer with a conv directly under it too, for stems and branches
    layers += [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:6]
    layers = [n for n in dict.fromkeys(layers) if traced[n].field is not None]
    assert len(layers) >= 4
    for layer, (mask, unit) in _gradient_support(model, layers, size).items():
        _check_support(mask, traced[layer].field, unit, f"{name}:{layer}")


@needs_shared
def test_field_of_real_squeezenet_weights():
    """The real ImageNet weights leave the computed field unchanged, and the gradient of a unit
    of the real network never leaves it."""
    model = torchvision.models.squeezenet1_1(weights=None)
    model.load_state_dict(torch.load(SQUEEZENET_WEIGHTS, weights_only=True))
    real = trace_fields(model.eval(), (224, 224))
    avg = trace_fields(_averaging(torchvision.models.squeezenet1_1(weights=None)), (224, 224))
    names = [n for n, r in real.items() if r.field is not None]
    assert names and all(real[n].field == avg[n].field for n in names)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    captured = {}
    model.features[7].register_forward_hook(lambda m, i, o: captured.setdefault("a", o.clone()))
    model(x)
    act = captured["a"]
    ch = int(act[0, :, 6, 6].argmax())
    (g,) = torch.autograd.grad(act[0, ch, 6, 6], x)
    rows = torch.nonzero(g[0].abs().sum(0).any(1)).flatten()
    y0, _, y1, _ = real["features.7"].field.box(6, 6)
    assert rows.min() >= max(0, y0) and rows.max() < y1


def test_hand_computed_values():
    """conv k3 s2 p1 -> ceil-mode max pool k3 s2 -> F.pad(left 1, top 2) -> concat with a
    1x1 branch: exact numbers worked out by hand."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            self.branch_a = nn.Conv2d(4, 2, 1)
            self.branch_b = nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            x = self.pool(torch.relu_(self.conv(x)))
            x = F.pad(x, (1, 0, 2, 0))
            return torch.cat([self.branch_a(x), self.branch_b(x)], 1)

    rec = trace_fields(Net(), (33, 33))
    assert rec["conv"].field == ReceptiveField(AxisField(3, 2, -1), AxisField(3, 2, -1))
    # pool: size 3 + 2*2 = 7, stride 4, offset -1 (ceil mode changes the count, not the map)
    assert rec["pool"].field == ReceptiveField(AxisField(7, 4, -1), AxisField(7, 4, -1))
    assert rec["pool"].shape == (1, 4, 8, 8)
    # pad: top 2 rows and left 1 column move the offset by 2*4 and 1*4
    assert rec["branch_a"].field == ReceptiveField(AxisField(7, 4, -9), AxisField(7, 4, -5))
    # 3x3 branch: +2*4 in size, -4 in offset
    assert rec["branch_b"].field == ReceptiveField(AxisField(15, 4, -13), AxisField(15, 4, -9))
    assert rec["branch_b"].field.box(1, 2) == (-9, -1, 6, 14)


def test_residual_union_and_global_gate():
    """A residual sum takes the union of both paths; a squeeze-excitation gate adds nothing."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 5, padding=2)
            self.b = nn.Conv2d(3, 3, 1)
            self.out = nn.Identity()

        def forward(self, x):
            gate = torch.sigmoid(x.mean((2, 3), keepdim=True))
            return self.out(self.a(x) * gate + self.b(x))

    rec = trace_fields(Net(), (16, 16))
    assert rec["out"].field == ReceptiveField(AxisField(5, 1, -2), AxisField(5, 1, -2))


def test_tracing_removes_its_hooks_when_registering_one_fails():
    """A module whose hook cannot be registered stops the trace; the hooks already on the
    others go with it (the caller's model keeps none)."""

    class Unhookable(nn.Module):
        def forward(self, x):
            return x

        def register_forward_hook(self, *args, **kwargs):
            raise RuntimeError("no hooks here")

    net = nn.Sequential(nn.Conv2d(3, 4, 3), Unhookable())
    with pytest.raises(RuntimeError, match="no hooks here"):
        trace_fields(net, (16, 16))
    assert not net[0]._forward_hooks
