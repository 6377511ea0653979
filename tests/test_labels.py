"""The data/ folder: the ImageNet class index and the demo manifest, as package data that a
wheel carries."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

import pytest

from cnnviz.labels import imagenet_classes, label_name, label_names

from .conftest import REPO


def test_class_index_agrees_with_torchvision_and_wordnet_ids_are_unique():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    classes = imagenet_classes()
    assert [c.name for c in classes] == list(_IMAGENET_CATEGORIES)
    assert [c.index for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert all(c.wnid[0] == "n" and len(c.wnid) == 9 and c.wnid[1:].isdigit() for c in classes)
    # the three best-known rows, as in every published ImageNet class index
    assert (classes[0].wnid, classes[0].name) == ("n01440764", "tench")
    assert (classes[281].wnid, classes[281].name) == ("n02123045", "tabby")
    assert (classes[999].wnid, classes[999].name) == ("n15075141", "toilet tissue")


def test_label_names():
    names = [f"class {i}" for i in range(1000)]
    assert label_name("n02123045") == "tabby"
    assert label_name("n02123045_cats") == "tabby"  # a folder named after its WordNet id
    assert label_name("n02123045", names) == "class 281"  # the model's own name for that class
    assert label_name("3", names) == "class 3"
    assert label_name("3") is None and label_name("cat", names) is None and label_name("") is None
    assert label_name("n99999999") is None  # not an ImageNet-1k class
    assert label_names(["7", "n01440764", None], names) == ["class 7", "class 0", None]


def test_classes_named_as_people_name_them():
    """Every class of torchvision's ImageNet names by its own name (unless two classes share it)
    and by its WordNet id; numbers, ranges and names mix; a name that fits several classes or none
    is refused with the candidates."""
    from collections import Counter

    from torchvision.models._meta import _IMAGENET_CATEGORIES as names

    from cnnviz.errors import UsageError
    from cnnviz.labels import class_indices

    shared = {n for n, k in Counter(n.lower() for n in names).items() if k > 1}
    for i, (name, cls) in enumerate(zip(names, imagenet_classes(), strict=True)):
        assert class_indices(cls.wnid, names) == [i]
        if name.lower() not in shared:
            assert class_indices(name.upper(), names) == [i], name
    assert class_indices("76, 130-132,zebra", names) == [76, 130, 131, 132, 340]
    assert class_indices("tabby cat", names) == [281]  # a WordNet lemma of 281 'tabby'
    for spec, message in (("cat", "fits several classes: "), ("zebraa", "did you mean 'zebra'"),
                          (sorted(shared)[0], "fits several classes"), ("1000", "out of range"),
                          (" , ", "name at least one class")):
        with pytest.raises(UsageError, match=message):
            class_indices(spec, names)
    with pytest.raises(UsageError, match="no class names; give class indices"):
        class_indices("zebra", None)


def test_demo_manifest_names_photos_that_exist():
    from cnnviz.demo import demo_manifest, package_folder

    entries = demo_manifest()
    assert {e["file"] for e in entries} >= {"chelsea.png", "grace_hopper.jpg"}
    for e in entries:
        assert e["licence"]
        assert e["label"] == "" or label_name(e["label"]) is not None, e
        folder = package_folder(e["package"])
        assert folder is None or (folder / e["file"]).is_file(), e


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
