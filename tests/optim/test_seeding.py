"""The optimization's random numbers: drawn in one place (cnnviz/optim/seeding.py), so the same
seed gives the same images whatever the device argument."""

from __future__ import annotations

import ast

import torch

from cnnviz import Preprocessing, from_module

from ..conftest import REPO, tiny_cnn


def test_optimization_draws_its_random_numbers_in_one_place():
    """Generators are made and used only in cnnviz/optim/seeding.py (always on the CPU, then
    moved): no other module of the package creates a generator, passes one to torch, or
    branches on CUDA for it."""
    offenders = []
    for path in (REPO / "cnnviz").rglob("*.py"):
        if path.name in ("seeding.py", "standin.py"):  # standin: the benchmark's data, CPU only
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Generator":
                offenders.append(f"{path.name}:{node.lineno} torch.Generator()")
            if isinstance(node, ast.keyword) and node.arg == "generator":
                offenders.append(f"{path.name}:{node.lineno} generator=")
    assert offenders == []


def test_the_same_seed_gives_the_same_images_whatever_the_device_argument():
    from cnnviz.optim import objectives as obj
    from cnnviz.optim import render

    model = from_module(tiny_cnn(), Preprocessing(resize=72, crop=(64, 64)), name="tiny")
    a = render(model, obj.channel("3", 1), steps=3, seed=5, progress=False, device="cpu")
    b = render(model, obj.channel("3", 1), steps=3, seed=5, progress=False, device=torch.device("cpu"))
    assert torch.equal(a.images, b.images)
