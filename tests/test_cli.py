"""The command line: output of `layers`, `featuremaps`, `classify`, and errors that name the flag."""

from __future__ import annotations

from PIL import Image

from cnnviz.cli import main


def test_layers_lists_fields_and_refuses_nothing_silently(capsys):
    assert main(["layers", "--model", "resnet50", "--weights", "none"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("layer4.2 "))
    assert "2048" in row and "7x7" in row and "427x427" in row and "default" in row
    assert main(["layers", "--model", "resnet50", "--weights", "none", "--all"]) == 0
    out = capsys.readouterr().out
    relu = next(line for line in out.splitlines() if line.startswith("layer1.0.relu "))
    assert "not tappable" in relu


def test_featuremaps_and_classify(photo_dir, tmp_path, capsys):
    img = str(photo_dir / "animals" / "chelsea.png")
    out = tmp_path / "grid.png"
    assert main(["featuremaps", img, "--model", "resnet18", "--weights", "none", "--layer",
                 "layer2[0].conv2", "--channels", "0-15", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 300
    assert main(["classify", img, "--model", "squeezenet1_1", "--weights", "none", "--top", "3"]) == 0
    assert capsys.readouterr().out.count("(class ") == 3


def test_errors_name_the_flag(photo_dir, tmp_path, capsys):
    img = str(photo_dir / "animals" / "chelsea.png")
    assert main(["featuremaps", img, "--model", "resnet18", "--weights", "none", "--layer", "layer9",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "layer 'layer9'" in capsys.readouterr().err
    assert main(["scan", str(tmp_path / "nowhere"), "--model", "resnet18", "--weights", "none",
                 "--out", str(tmp_path / "r.h5")]) == 2
    assert "LIBRARY" in capsys.readouterr().err
    assert main(["scan", str(photo_dir), "--model", "resnet18", "--weights", "none", "--shard", "x",
                 "--out", str(tmp_path / "r.h5")]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["class-vis", "--model", "resnet18", "--weights", "none", "--target", "5000",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert "--target" in capsys.readouterr().err
