"""What a scan is asked to do, checked before any work: its options, its output (never
overwritten silently), its library (a list file, labelled in part), its layers (one without a
receptive field, one named twice); the caller's model is left as it was."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import cnnviz
from cnnviz import ImageLibrary, load_model, scan
from cnnviz.errors import ScanError, UsageError
from cnnviz.scanner import scan_shard

from ..conftest import run_cli


def test_existing_output_is_never_overwritten_silently(photo_dir, tiny_model, tmp_path):
    out = tmp_path / "run.h5"
    scan(photo_dir, tiny_model, out, top_k=2, workers=0, progress=False)
    before = out.stat().st_mtime_ns
    with pytest.raises(ScanError, match="overwrite=True"):
        scan(photo_dir, tiny_model, out, top_k=2, workers=0, progress=False)
    assert out.stat().st_mtime_ns == before
    scan(photo_dir, tiny_model, out, top_k=3, workers=0, progress=False, overwrite=True)
    with h5py.File(out, "r") as f:
        assert f.attrs["top_k"] == 3


def test_float16_maxima_and_list_file_library(photo_dir, tiny_model, tmp_path):
    lst = tmp_path / "list.csv"
    rows = ["path,label"] + [f"{photo_dir}/animals/chelsea.png,cat",
                             f"{photo_dir}/things/coffee.png,cup",
                             f"{photo_dir}/things/missing.png,ghost"]
    lst.write_text("\n".join(rows) + "\n")
    lib = ImageLibrary.open(lst)
    assert len(lib) == 3 and lib.labels == ["cat", "cup", "ghost"]
    run = scan(lst, tiny_model, tmp_path / "r.h5", top_k=2, workers=0, progress=False,
               maxima_dtype="float16")
    with h5py.File(run, "r") as f:
        assert f["layers/3/maxima"].dtype == np.float16
        assert "FileNotFoundError" in f["failures/reason"][0].decode()
    df = cnnviz.top_patches(run, layer="3")
    assert set(df.label) <= {"cat", "cup"}


def test_unlabelled_images_count_in_no_class(photo_dir, tiny_model, tmp_path):
    """A list file may label some lines only: the unlabelled images are no class of their own in
    the top label, its share (of the whole top-k) or the selectivity (pandas over the matrix)."""
    files = sorted(p for p in photo_dir.rglob("*") if p.is_file() and p.name != "corrupt.jpg")
    labels = [p.parent.name if p.parent.name == "animals" or n % 2 else "" for n, p in enumerate(files)]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p},{lab}\n" if lab else f"{p}\n" for p, lab in zip(files, labels, strict=True)))
    run = scan(lst, tiny_model, tmp_path / "r.h5", top_k=4, workers=0, progress=False)
    with cnnviz.RunReader(run) as reader:
        layer = reader.layers[-1]
        assert list(reader.labels) == labels  # the list file's labels, in its order
    stats = cnnviz.channel_stats(run, layer).set_index("channel")
    maxima = cnnviz.channel_maxima(run, layer)
    label_of = pd.Series(labels, index=maxima.index)
    named = maxima[label_of != ""]
    per_label = named.groupby(label_of[label_of != ""]).mean()
    best, rest = per_label.max(), (per_label.sum() - per_label.max()) / (len(per_label) - 1)
    np.testing.assert_allclose(stats["selectivity"], ((best - rest) / (best + rest)).to_numpy(), rtol=1e-6)
    top = cnnviz.top_patches(run, layer=layer)
    assert (top.label == "").any()
    for c in stats.index:
        counts = top[(top.channel == c) & (top.label != "")].label.value_counts()
        if counts.empty:
            assert stats.loc[c, "top_label"] == "" and np.isnan(stats.loc[c, "top_label_share"])
            continue
        assert counts[stats.loc[c, "top_label"]] == counts.iloc[0]
        assert stats.loc[c, "top_label_share"] == counts.iloc[0] / 4


def test_a_layer_without_receptive_field_is_refused_before_any_work(photo_dir, tmp_path):
    """An adaptive pool to a size that does not divide its input has no single field: refused at
    the start, leaving nothing behind, instead of failing when the run file is written."""
    from cnnviz import Preprocessing, from_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(5), torch.nn.Flatten(),
                              torch.nn.Linear(100, 3))
    model = from_module(net, Preprocessing(resize=64, crop=(64, 64)), name="odd")
    out = tmp_path / "run.h5"
    with pytest.raises(UsageError, match=r"1 \(AdaptiveAvgPool2d, 5x5\) has no receptive field"):
        scan(photo_dir, model, out, layers="0,1", top_k=2, workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_an_existing_run_file_is_refused_before_any_shard_scans(photo_dir, tiny_model, tmp_path, shard):
    """A sharded (or torchrun) scan checks the output like a plain one, before scanning."""
    from cnnviz.scanner import scan_shard

    out = tmp_path / "run.h5"
    out.write_bytes(b"a finished run")
    with pytest.raises(ScanError, match="overwrite=True"):
        scan_shard(photo_dir, tiny_model, out, shard, top_k=2, workers=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]
    assert out.read_bytes() == b"a finished run"


def test_bad_options_are_refused_before_any_work(photo_dir, tiny_model, tmp_path):
    out = tmp_path / "run.h5"
    for options, match in [({"top_k": 0}, "`top_k` 0"), ({"patch_size": -5}, "`patch_size` -5"),
                           ({"workers": -3}, "`workers` -3"), ({"device": "cuda:7"}, "`device`"),
                           ({"maxima_dtype": "int8"}, "`maxima_dtype`"),
                           ({"topk": 3}, "unknown scan option")]:
        with pytest.raises(UsageError, match=match):
            scan(photo_dir, tiny_model, out, progress=False, **options)
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        scan(photo_dir, tiny_model, tmp_path / "dir.h5", progress=False, overwrite=True)
    for shard in ((0, 1), (1, 2)):  # named before a lock file is made beside the run file
        with pytest.raises(UsageError, match=f"folder {tmp_path / 'nope'} does not exist"):
            scan_shard(photo_dir, tiny_model, tmp_path / "nope" / "run.h5", shard, progress=False)
    with pytest.raises(UsageError, match=f"folder {tmp_path / 'nope'} does not exist"):
        scan(photo_dir, tiny_model, tmp_path / "nope" / "run.h5", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.h5"]


@pytest.mark.slow
def test_a_layer_named_twice_is_scanned_once_and_said(photo_dir, tmp_path):
    from cnnviz.errors import CnnvizWarning

    said = r"layer layer2.0 is named 2 times \(layer2.0, layer2\[0\]\); it is tapped once"
    with pytest.warns(CnnvizWarning, match=said):
        run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5",
                   layers="layer2.0,layer2[0],layer1.0", top_k=2, workers=0, progress=False)
    assert cnnviz.run.run_layers(run) == ["layer2.0", "layer1.0"]
    text = run_cli("top", str(tmp_path), code=2)
    assert "is a folder" in text


@pytest.mark.slow
def test_the_callers_model_is_left_as_it_was(photo_dir, tmp_path):
    """The scan runs the caller's module where it already is, and changes none of it."""
    model = load_model("resnet18", None)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    hooks_before = sum(len(m._forward_hooks) for m in model.module.modules())
    scan(photo_dir, model, tmp_path / "r.h5", layers="layer2.0", top_k=2, workers=0, progress=False)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in model.module.parameters())
    assert sum(len(m._forward_hooks) for m in model.module.modules()) == hooks_before == 0
    assert not model.module.training and torch.is_grad_enabled()
