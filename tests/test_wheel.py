"""A wheel carries the data/ folder and every package, and reads its data installed away from
the repository."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_a_wheel_carries_the_data_and_every_package(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (needed to build the wheel offline)")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("cnnviz-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "cnnviz").rglob("__init__.py")}
    for package in packages | {"cnnviz/data"}:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel (pyproject packages)"
    assert {"cnnviz/data/imagenet_classes.tsv", "cnnviz/data/demo_photos.tsv",
            "cnnviz/report/templates/index.html"} <= names
    # installed on its own (away from the repository), it reads its data
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import cnnviz, sys; from cnnviz.labels import imagenet_classes; "
            "from cnnviz.demo import demo_manifest; "
            f"assert cnnviz.__file__.startswith({str(target)!r}), cnnviz.__file__; "
            "print(len(imagenet_classes()), len(demo_manifest()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1000", "11"]
