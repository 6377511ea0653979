"""Run files from someone else are data, not instructions. Each test crafts a file the way a
hostile (or merely broken) writer would and checks that cnnviz refuses it in one line, or reads
it without writing outside ``--out``, loading a pickle, allocating what its attributes claim, or
reading a local file the run does not own."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz.errors import CnnvizWarning, RunFileError
from cnnviz.report import write_report

from ..conftest import Payload, one_line_error


@pytest.fixture
def crafted(resnet_run, tmp_path):
    """A copy of a genuine run, to edit."""
    path = tmp_path / "crafted.h5"
    shutil.copy(resnet_run, path)
    return path


def _refused(cli, run: Path, *commands) -> None:
    """Every command that reads ``run`` says in one line that it is damaged (exit 2)."""
    for cmd in commands or (["top", str(run)], ["report", str(run), "--out", str(run.parent / "site"),
                                                "--no-context", "--no-progress"]):
        text = cli(*cmd, code=2)
        assert "is damaged or was not written by cnnviz" in text, text
    assert not (run.parent / "site").exists()


def test_a_layer_named_dot_dot_writes_inside_out(crafted, tmp_path):
    """A layer group `..` made the report write 1,028 files into the parent of --out."""
    with h5py.File(crafted, "r+") as f:
        f.move("layers/layer3.0", "layers/..")
        f.attrs["layers"] = json.dumps(["layer1.1", ".."])
    parent = tmp_path / "parent"
    site = parent / "site"
    parent.mkdir()
    index = write_report(crafted, site, channels=2, progress=False, context=False)
    assert sorted(p.name for p in parent.iterdir()) == ["site"]
    folders = sorted(p.name for p in site.iterdir() if p.is_dir())
    assert len(folders) == 2 and "layer1.1" in folders and ".." not in folders
    odd = next(f for f in folders if f != "layer1.1")
    assert odd.startswith("_..-") and (site / odd / "c1.html").exists()
    assert f'href="{odd}/index.html"' in index.read_text()


@pytest.mark.parametrize("bad_id", [-7, 10_000])
def test_a_top_k_id_that_is_not_an_image_is_refused(cli, crafted, bad_id):
    """A -7 in a middle slot made the report show the wrong photo (numpy wraps), silently."""
    with h5py.File(crafted, "r+") as f:
        ids = f["layers/layer3.0/topk/image_id"]
        row = ids[4]
        row[1] = bad_id
        ids[4] = row
    with pytest.raises(RunFileError, match=f"layer3.0: top-k id {bad_id} is not an image"):
        cnnviz.top_patches(crafted)
    image = str(crafted.parent / "x.png")
    _refused(cli, crafted, ["top", str(crafted)], ["explain", image, "--run", str(crafted)])


@pytest.mark.parametrize("edit", ["short paths", "top-k shape", "patch shape", "empty slot first",
                                  "position outside the map", "failure id"])
def test_shapes_and_ids_are_checked_on_open(crafted, edit, cli):
    with h5py.File(crafted, "r+") as f:
        g = f["layers/layer3.0"]
        if edit == "short paths":
            paths = f["images/path"][()][:-2]
            del f["images/path"]
            f.create_dataset("images/path", data=paths, dtype=h5py.string_dtype())
        elif edit == "top-k shape":
            data = g["topk/activation"][()][:, :2]
            del g["topk/activation"]
            g.create_dataset("topk/activation", data=data)
        elif edit == "patch shape":
            data = g["topk/patches"][()][:, :, :5]
            del g["topk/patches"]
            g.create_dataset("topk/patches", data=data)
        elif edit == "empty slot first":
            ids = g["topk/image_id"][()]
            ids[3, 0] = -1
            g["topk/image_id"][...] = ids
        elif edit == "position outside the map":
            y = g["topk/y"][()]
            y[2, 1] = int(g.attrs["height"])
            g["topk/y"][...] = y
        else:
            ids = f["failures/image_id"][()]
            ids[0] = int(f.attrs["n_images"])
            f["failures/image_id"][...] = ids
    _refused(cli, crafted)


def _limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GB of address space


@pytest.mark.parametrize("edit", ["channels", "crop", "dataset shape"])
def test_attributes_that_claim_huge_sizes_are_refused_before_allocating(crafted, edit):
    """channels=10^9 grew the report to 23 GB, crop=[100000,100000] to 16 GB. Here the report
    runs with 2 GB of address space: refused in one line, not a MemoryError (nor the OOM killer)."""
    with h5py.File(crafted, "r+") as f:
        if edit == "channels":
            f["layers/layer3.0"].attrs["channels"] = 10**9
        elif edit == "crop":
            pre = json.loads(f.attrs["preprocessing"])
            pre["crop"] = [100000, 100000]
            f.attrs["preprocessing"] = json.dumps(pre)
        else:  # an HDF5 dataset may declare any shape and hold nothing
            g = f["layers/layer3.0"]
            del g["stats/mean_max"]
            g.create_dataset("stats/mean_max", shape=(10**10,), dtype=np.float64, chunks=(1024,))
            g.attrs["channels"] = 10**10
    res = subprocess.run([sys.executable, "-m", "cnnviz", "report", str(crafted), "--out",
                          str(crafted.parent / "site"), "--no-context", "--no-progress"],
                         capture_output=True, text=True, timeout=300, preexec_fn=_limited_memory)
    assert res.returncode == 2, res.stderr
    one_line_error(res.stderr)
    assert "is damaged or was not written by cnnviz" in res.stderr


def _magenta_pixels(path: Path) -> int:
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return int(((r > 100) & (b > 100) & (g < 0.4 * np.minimum(r, b))).sum())  # dimmed or tinted too


def _set_path(run: Path, image_id: int, value: str) -> None:
    with h5py.File(run, "r+") as f:
        paths = f["images/path"].asstr()[()].astype(object)
        paths[image_id] = value
        del f["images/path"]
        f.create_dataset("images/path", data=paths, dtype=h5py.string_dtype())


@pytest.mark.slow
def test_a_run_without_identities_shows_no_local_file_unless_given_its_library(crafted, photo_dir, tmp_path,
                                                                               cli):
    """Files older than 0.2 record no identity: an absolute images/path made the report read
    and embed any local image. Now no photos without --library, and with it only files inside."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (300, 200), (255, 0, 255)).save(secret)
    with h5py.File(crafted, "r+") as f:
        del f["images/identity"]
        first = int(f["layers/layer3.0/topk/image_id"][0, 0])
    _set_path(crafted, first, str(secret))
    with pytest.warns(CnnvizWarning, match="records no image identities .* give `library`"):
        index = write_report(crafted, tmp_path / "site", layers=["layer3.0"], channels=1, progress=False)
    assert not list(index.parent.rglob("*-context.jpg"))
    index = write_report(crafted, tmp_path / "site2", layers=["layer3.0"], channels=1, progress=False,
                         library=photo_dir)
    strip = index.parent / "layer3.0" / "c0-context.jpg"
    assert strip.exists() and _magenta_pixels(strip) == 0  # not read, not shown
    # ground truth: inside the library the user names, the same file is shown (and detected)
    _set_path(crafted, first, "secret.png")
    index = write_report(crafted, tmp_path / "site3", layers=["layer3.0"], channels=1, progress=False,
                         library=tmp_path)
    assert _magenta_pixels(index.parent / "layer3.0" / "c0-context.jpg") > 1000
    text = cli("report", str(crafted), "--out", str(tmp_path / "site4"), "--layers", "layer3.0",
                    "--channels", "1", "--attributions", "layer3.0:0", "--no-progress", code=2)
    assert "records no image identities" in text and "--library" in text


def test_weights_a_run_names_are_never_unpickled(crafted, tmp_path, cli):
    marker = tmp_path / "the-payload-ran"
    payload = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, payload)
    with h5py.File(crafted, "r+") as f:
        f.attrs["weights_spec"] = json.dumps({"weights": str(payload), "seed": 0})
    for cmd in (["report", str(crafted), "--out", str(tmp_path / "site"), "--attributions", "layer3.0:0",
                 "--no-progress"],
                ["explain", str(tmp_path / "x.png"), "--run", str(crafted)]):
        text = cli(*cmd, code=2)
        assert "the model this run was made with cannot be loaded again" in text
        assert "does not unpickle" in text and "\x1b[" not in text
        assert "give the run's model with --model and --weights" in text
    assert not marker.exists() and not (tmp_path / "site").exists()


@pytest.mark.slow
def test_a_run_layer_the_model_does_not_have_is_one_line(crafted, photo_dir, tmp_path, cli):
    with h5py.File(crafted, "r+") as f:
        f.move("layers/layer3.0", "layers/layer9.0")
        f.attrs["layers"] = json.dumps(["layer1.1", "layer9.0"])
    image = str(photo_dir / "animals" / "chelsea.png")
    for cmd in (["explain", image, "--run", str(crafted)],
                ["report", str(crafted), "--out", str(tmp_path / "site"), "--attributions", "layer9.0:0",
                 "--no-progress"]):
        text = cli(*cmd, code=2)
        assert "the layer 'layer9.0' of crafted.h5 is not a layer of the model resnet18" in text, text
    # with photos only (no model needed), the maps are left out, with a note
    text = cli("report", str(crafted), "--out", str(tmp_path / "site"), "--channels", "1",
                    "--no-progress", code=0)
    assert "note: the report shows photos without activation maps" in text
    assert (tmp_path / "site" / "layer9.0" / "c0-context.jpg").exists()
