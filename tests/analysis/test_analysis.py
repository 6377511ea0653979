"""explain (images against a run) and compare (two runs), against independent ground truth."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cnnviz import load_model, scan
from cnnviz.analysis import compare_runs, explain
from cnnviz.analysis.explanation import explain_images
from cnnviz.errors import UsageError
from cnnviz.images import load_rgb
from cnnviz.model.taps import capture

LAYERS = "layer2.0,layer4.1,logits"


@pytest.fixture(scope="module")
def model():
    return load_model("resnet18", None, seed=3)


@pytest.fixture(scope="module")
def run(photo_dir, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("an") / "run.h5"
    return scan(photo_dir, model, out, layers=LAYERS, top_k=3, batch_size=4, workers=0, progress=False)


def _stored(run, layer):
    with h5py.File(run, "r") as f:
        paths = [p.decode() for p in f["images/path"][()]]
        return paths, f[f"layers/{layer}/maxima"][()], f[f"layers/{layer}/topk/patches"][()], \
            f[f"layers/{layer}/topk/image_id"][()]


def test_a_library_image_comes_out_at_its_exact_rank(photo_dir, run, model):
    images = [photo_dir / "animals" / "chelsea.png", photo_dir / "things" / "coffee.png"]
    df = explain(images, run, model=model)
    for layer in ("layer2.0", "layer4.1", "fc"):
        paths, maxima, patches, topk_ids = _stored(run, layer)
        ok = ~np.isnan(maxima).any(axis=1)
        for image in images:
            i = paths.index(str(image.relative_to(photo_dir)))
            rows = df[(df.layer == layer) & (df.image == str(image))].sort_values("channel")
            assert (rows.library_id == i).all()
            np.testing.assert_array_equal(rows.value.to_numpy(np.float32), maxima[i])
            rank = 1 + (maxima[ok] > maxima[i]).sum(axis=0)
            np.testing.assert_array_equal(rows["rank"].to_numpy(), rank)
            # mid-rank: the images below, and half of those equal (itself included)
            below, equal = (maxima[ok] < maxima[i]).sum(0), (maxima[ok] == maxima[i]).sum(0)
            np.testing.assert_allclose(rows.percentile, 100 * (below + equal / 2) / ok.sum())
            np.testing.assert_array_equal(rows.ties, equal - 1)
            np.testing.assert_array_equal(rows.responds, maxima[i] > np.min(maxima[ok], axis=0))
        # rows come best first: the logits by value; elsewhere the channels where the image
        # responds, by percentile, then those where it does not
        for _, rows in df[df.layer == layer].groupby("image"):
            if layer == "fc":
                assert (np.diff(rows.value.to_numpy()) <= 0).all()
                continue
            n = int(rows.responds.sum())
            assert rows.responds.to_numpy()[:n].all()
            assert (np.diff(rows.percentile.to_numpy()[:n]) <= 0).all()
    # where the image is the channel's best, its own patch is the run's top-1 patch, pixel by pixel
    result = explain_images(images[:1], run, ["layer4.1"], model=model)
    paths, _, patches, topk_ids = _stored(run, "layer4.1")
    from cnnviz.analysis.explanation import own_patch
    from cnnviz.run.reader import RunReader

    t = result.table
    best = t[(t["rank"] == 1) & (t.value > 0)]
    assert len(best) > 0
    with RunReader(run) as reader:
        for row in best.head(5).itertuples():
            assert row.library_id in topk_ids[row.channel]  # at the top (first, unless tied)
            if topk_ids[row.channel, 0] != row.library_id:
                continue
            patch = own_patch(reader, "layer4.1", result.crops[0], row.y, row.x)
            np.testing.assert_array_equal(patch, patches[row.channel, 0])


def test_a_new_image_is_ranked_against_the_library_maxima(photo_dir, run, model, tmp_path):
    """A mirrored photo is not in the library: its values are those of a forward pass of it
    alone, and its rank counts the library maxima above them."""
    new = tmp_path / "mirrored.png"
    Image.open(photo_dir / "things" / "rocket.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(new)
    df = explain([new], run, model=model)
    with capture(model.module, ["layer4.1", "fc"]) as cap, torch.no_grad():
        cap.forward(model.preprocessing(load_rgb(new)))
    alone = {"layer4.1": cap.outputs["layer4.1"][0].flatten(1).max(1).values.numpy(),
             "fc": cap.outputs["fc"][0].numpy()}
    for layer, values in alone.items():
        rows = df[df.layer == layer].sort_values("channel")
        assert (rows.library_id == -1).all()
        np.testing.assert_allclose(rows.value, values, rtol=1e-4, atol=1e-5)
        _, maxima, _, _ = _stored(run, layer)
        maxima = maxima[~np.isnan(maxima).any(axis=1)]
        rank = 1 + (maxima > rows.value.to_numpy(np.float32)).sum(axis=0)
        np.testing.assert_array_equal(rows["rank"], rank)
    assert set(df[df.layer == "fc"].channel_name) <= set(model.class_names)


def test_explain_refuses_what_it_cannot_read(photo_dir, run, model, tmp_path):
    with pytest.raises(UsageError, match="corrupt.jpg"):
        explain([photo_dir / "things" / "corrupt.jpg"], run, model=model)
    with pytest.raises(UsageError, match="`layers` 'nope'"):
        explain([photo_dir / "things" / "coffee.png"], run, ["nope"], model=model)


def _shuffled_copy(src: Path, dst: Path) -> Path:
    """The same photos under other names, so that they are listed in another order."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    random.Random(4).shuffle(files)
    dst.mkdir()
    for i, p in enumerate(files):
        shutil.copy(p, dst / f"{i:02d}-{p.name}")
    return dst


def test_compare_a_run_with_itself_and_with_a_shuffled_copy(photo_dir, run, model, tmp_path):
    same = compare_runs(run, run)
    assert (same.change == 0).all() and (same.topk_overlap == 1).all()
    assert (same.filter(regex="^d_") == 0).all().all()
    copy = _shuffled_copy(photo_dir, tmp_path / "copy")
    other = scan(copy, model, tmp_path / "copy.h5", layers="layer2.0,layer4.1", top_k=3, batch_size=4,
                 workers=0, progress=False)
    shuffled = compare_runs(run, other)
    assert set(shuffled.layer) == {"layer2.0", "layer4.1"}  # the layers both runs have
    with h5py.File(run, "r") as f:
        readable = int(f["images/ok"][()].sum())
    assert (shuffled.shared_images == readable).all()  # every readable photo, matched by its bytes
    for s in ("mean_max", "std_max", "max_max", "fire_rate", "mean_activation"):
        np.testing.assert_allclose(shuffled[f"{s}_a"], shuffled[f"{s}_b"], rtol=1e-6, atol=1e-9)
    assert (shuffled.topk_overlap == 1).all()
    assert np.nanmin(shuffled.rank_corr) > 0.999


@pytest.mark.slow
def test_compare_two_models_against_independent_statistics(photo_dir, run, tmp_path):
    other_model = load_model("resnet18", None, seed=5)
    other = scan(photo_dir, other_model, tmp_path / "b.h5", layers=LAYERS, top_k=3, batch_size=4,
                 workers=0, progress=False)
    table = compare_runs(run, other, ["layer4.1"]).sort_values("channel")
    _, ma, _, ids_a = _stored(run, "layer4.1")
    _, mb, _, ids_b = _stored(other, "layer4.1")
    ok = ~np.isnan(ma).any(axis=1)
    expected = pd.DataFrame(ma[ok]).corrwith(pd.DataFrame(mb[ok]), method="spearman")
    np.testing.assert_allclose(table.rank_corr, expected, rtol=1e-9, atol=1e-12)
    # A's top-3 images reaching B's third best value (B's top-3 up to ties)
    overlap = [(mb[a, c] >= np.sort(mb[ok, c])[-3]).sum() / 3 for c, a in enumerate(ids_a)]
    np.testing.assert_allclose(table.topk_overlap, overlap)
    np.testing.assert_allclose(table.d_mean_max, np.nanmean(mb, 0) - np.nanmean(ma, 0), rtol=1e-4, atol=1e-6)
    assert table.change.max() > 0.5
    ranked = compare_runs(run, other, ["layer4.1"])
    assert (np.diff(ranked.change.to_numpy()) <= 0).all()  # most changed first


def test_compare_refuses_runs_of_other_shapes(photo_dir, run, tmp_path, tiny_model):
    other = scan(photo_dir, tiny_model, tmp_path / "t.h5", layers="3", top_k=2, workers=0, progress=False)
    with pytest.raises(UsageError, match="shares no layer"):
        compare_runs(run, other)


@pytest.mark.slow
def test_cli_explain_and_compare_write_pages(photo_dir, run, tmp_path, capsys):
    from cnnviz.cli import main

    image = photo_dir / "animals" / "chelsea.png"
    assert main(["explain", str(image), "--run", str(run), "--out", str(tmp_path / "ex"), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "(in the library)" in out and "explain page:" in out
    page = (tmp_path / "ex" / "index.html").read_text()
    assert page.count('<td class="own">') == 2 * 3  # 2 channels x 3 layers
    for src in ("img0.png", "explain-0.png"):
        assert (tmp_path / "ex" / src).exists()
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "cmp"), "--top", "3"]) == 0
    with h5py.File(run, "r") as f:
        readable = int(f["images/ok"][()].sum())
    assert f"{readable} images read by both runs" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "index.html").read_text().count("<img") == 6  # 3 channels x (A, B)
    assert main(["explain", str(image), "--run", str(tmp_path / "none.h5")]) == 2
