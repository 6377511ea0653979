"""Shared fixtures. Tests that need ../shared (real weights and photos) skip without it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")  # no display in CI; the library leaves backends alone
SHARED = Path(os.environ.get("CNNVIZ_SHARED", REPO.parent / "shared"))
SQUEEZENET_WEIGHTS = SHARED / "weights" / "squeezenet1_1-imagenet.pt"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pt"
IMAGEN = SHARED / "images" / "imagen"

needs_shared = pytest.mark.skipif(
    not SQUEEZENET_WEIGHTS.is_file() or not IMAGEN.is_dir(),
    reason="../shared (real ImageNet weights and photos) is not present",
)


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Real photos shipped with scikit-image/matplotlib, in two class folders, plus variety:
    a grayscale PNG, an RGBA PNG, a tiny image and a corrupt file."""
    from cnnviz.demo import demo_photos

    root = tmp_path_factory.mktemp("library")
    photos = demo_photos(root / "_src")
    (root / "animals").mkdir()
    (root / "things").mkdir()
    animals = {"chelsea.png", "horse.png", "astronaut.png"}
    for p in photos:
        shutil.copy(p, root / ("animals" if p.name in animals else "things") / p.name)
    shutil.rmtree(root / "_src")
    gray = np.asarray(Image.open(root / "animals" / "chelsea.png").convert("L"))
    Image.fromarray(gray).save(root / "things" / "gray.png")
    rgba = np.dstack([np.asarray(Image.open(root / "things" / "coffee.png").convert("RGB")),
                      np.full((400, 600), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "things" / "rgba.png")
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(root / "things" / "tiny.jpg")
    (root / "things" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    """A small CNN with in-place ReLUs, a residual sum and ceil-mode pooling."""

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
            self.relu = torch.nn.ReLU(inplace=True)

        def forward(self, x):
            out = self.conv(x)
            out += x
            return self.relu(out)

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=2, padding=2),
        torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Block(8),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(inplace=True),
        Block(16),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )


@pytest.fixture
def tiny_model():
    from cnnviz import Preprocessing, from_module

    return from_module(tiny_cnn(), Preprocessing(resize=72, crop=(64, 64)),
                       class_names=[f"c{i}" for i in range(10)], name="tiny")


@pytest.fixture
def cli(capsys):
    """A command run in this process (no interpreter start): its output (stdout and stderr),
    its exit code checked; a refusal (exit 2) is one line without a traceback."""
    from cnnviz.cli import main

    def run(*args, code: int) -> str:
        assert main([str(a) for a in args]) == code
        out = capsys.readouterr()
        if code == 2:
            assert "Traceback" not in out.err, out.err
            assert len([line for line in out.err.splitlines() if "error:" in line]) == 1, out.err
        return out.out + out.err
    return run
