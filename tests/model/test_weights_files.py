"""Weights files as people save them: the common checkpoint layouts load as the weights they
hold; files that cannot be used are refused in one line that says why, and none is unpickled."""

from __future__ import annotations

import pytest
import torch

from cnnviz import load_model

from ..conftest import Payload, one_line_error


@pytest.mark.slow
def test_common_checkpoint_layouts_load_as_the_weights_they_hold(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18().state_dict()
    layouts = {
        "dataparallel": {f"module.{k}": v for k, v in ref.items()},
        "lightning": {"epoch": 3, "global_step": 10, "state_dict": {f"model.{k}": v for k, v in ref.items()}},
        "training script": {"model": ref, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        "compiled": {f"_orig_mod.{k}": v for k, v in ref.items()},
        "older pytorch": {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")},
        "float16": {k: v.half() if v.is_floating_point() else v for k, v in ref.items()},
    }
    for name, obj in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        got = load_model("resnet18", str(path)).module.state_dict()
        for k, v in ref.items():
            if k.endswith("num_batches_tracked"):
                continue
            want = v.half().float() if name == "float16" and v.is_floating_point() else v
            assert torch.equal(got[k], want), (name, k)


def test_weights_that_cannot_be_used_are_refused_in_one_line(tmp_path, capsys):
    import torchvision

    from cnnviz.cli import main

    marker = tmp_path / "the-payload-ran"
    files = {
        "resnet18.pt": torchvision.models.resnet18().state_dict(),
        "squeezenet.pt": torchvision.models.squeezenet1_1().state_dict(),
        "finetuned.pt": torchvision.models.resnet18(num_classes=10).state_dict(),
        "whole-model.pt": torchvision.models.squeezenet1_1(),
        "payload.pt": {"conv1.weight": torch.zeros(1), "x": Payload(marker)},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "resnet18.pt").read_bytes()[:100_000])
    (tmp_path / "a-folder.pt").mkdir()
    expected = {
        ("resnet34", "resnet18.pt"): ["does not fit the 'resnet34' architecture: 80 keys missing (layer1.2.",
                                      "It fits resnet18: use --model resnet18."],
        ("resnet18", "squeezenet.pt"): ["102 keys missing (conv1.weight", "52 unexpected (features.0.weight",
                                        "It fits squeezenet1_1: use --model squeezenet1_1."],
        ("resnet18", "finetuned.pt"): ["2 of another shape (e.g. fc.weight: [10, 512] in the file",
                                       "a classifier of 10 outputs (fine-tuned?)"],
        ("resnet18", "whole-model.pt"): ["it holds a pickled torchvision.models.squeezenet.SqueezeNet",
                                         "torch.save(model.state_dict(), FILE)"],
        ("resnet18", "payload.pt"): ["it holds a pickled io.open"],
        ("resnet18", "cut.pt"): ["cut.pt: cannot read it as a PyTorch state_dict", "is the file complete?"],
        ("resnet18", "a-folder.pt"): ["a-folder.pt: a folder, not a weights file"],
    }
    for (model, name), parts in expected.items():
        assert main(["layers", "--model", model, "--weights", str(tmp_path / name)]) == 2
        text = capsys.readouterr().err
        one_line_error(text)
        assert "\x1b[" not in text and "--weights" in text, text
        for part in parts:
            assert part in text, (name, text)
        assert "is; " not in text and "the; " not in text, text  # torch's words end on a sentence
    assert not marker.exists()
