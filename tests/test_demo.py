"""The demo's manifest (data/demo_photos.tsv): photos that exist, each with a licence and a label
that names a class or none."""

from __future__ import annotations

from cnnviz.labels import label_name


def test_demo_manifest_names_photos_that_exist():
    from cnnviz.demo import demo_manifest, package_folder

    entries = demo_manifest()
    assert {e["file"] for e in entries} >= {"chelsea.png", "grace_hopper.jpg"}
    for e in entries:
        assert e["licence"]
        assert e["label"] == "" or label_name(e["label"]) is not None, e
        folder = package_folder(e["package"])
        assert folder is None or (folder / e["file"]).is_file(), e
