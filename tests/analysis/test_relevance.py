"""Channel relevance (activation x gradient of the target logit, summed over positions) against
Captum's LayerGradientXActivation, and explain_prediction's table against that computation."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation

import cnnviz
from cnnviz import Preprocessing, from_module, scan
from cnnviz.analysis.relevance import explain_prediction, layer_relevance
from cnnviz.errors import UsageError
from cnnviz.images.decoding import load_rgb

from ..conftest import (
    StopsOnce,
    assert_equal_runs,
    assert_ranking,
    assert_same_file,
    make_tiny_model,
    tiny_cnn,
)

LAYERS = ["3", "6"]


def _captum(net: torch.nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor) -> torch.Tensor:
    """Captum's LayerGradientXActivation summed over positions, on a copy without in-place ops."""
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    attribution = LayerGradientXActivation(plain, plain.get_submodule(layer))
    return attribution.attribute(x, target=targets).sum((2, 3))


def test_relevance_equals_captums_gradient_times_activation_for_every_layer_at_once():
    net = tiny_cnn(seed=3).eval()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 3, 9, 1])
    rel = layer_relevance(net, x, LAYERS, targets)
    assert rel.targets.tolist() == targets.tolist()
    for layer in LAYERS:
        want = _captum(net, x, layer, targets)
        torch.testing.assert_close(rel.sums[layer], want, rtol=1e-4, atol=1e-6)
    top1 = layer_relevance(net, x, LAYERS)  # no target: the model's own top-1 class
    assert top1.targets.tolist() == net(x).argmax(1).tolist()


def test_a_tap_changed_in_place_afterwards_is_refused():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):
            out = self.conv(x)
            out += x  # changes the conv's output after its hook saw it
            return self.head(out.mean((2, 3)))

    with pytest.raises(UsageError, match="changes this output in place"):
        layer_relevance(Residual(), torch.randn(2, 3, 8, 8), ["conv"])


def test_explain_prediction_ranks_the_channels_of_each_layer_by_their_relevance(photo_dir, tmp_path):
    pre = Preprocessing(resize=72, crop=(64, 64))
    model = make_tiny_model(seed=1)
    run = scan(photo_dir, model, tmp_path / "run.h5", layers=LAYERS, top_k=3, batch_size=4, workers=0,
               progress=False)
    image = photo_dir / "animals" / "chelsea.png"
    table = explain_prediction(image, run, model=model, top=50)
    x = pre(load_rgb(image))
    predicted = int(model.module(x).argmax())
    for layer in LAYERS:
        rows = table[table.layer == layer]
        want = _captum(model.module, x, layer, torch.tensor([predicted]))[0].detach().numpy()
        want = want.astype(np.float64)
        order = sorted(range(len(want)), key=lambda c: (-want[c], c))
        assert rows.channel.tolist() == order
        np.testing.assert_allclose(rows.relevance, want[order], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rows.share, want[order] / np.abs(want).sum(), rtol=1e-4, atol=1e-7)
        assert (rows.target == predicted).all() and (rows.predicted == predicted).all()
        assert all(len(e) == 3 for e in rows.examples)  # the run's top-k images of each channel
    chosen = explain_prediction(image, run, model=model, target="c7", top=3)
    assert (chosen.target == 7).all() and (chosen.target_name == "c7").all()


# -- rank_by relevance in the scan -------------------------------------------------------------

def _labelled_list(photo_dir, tmp_path):
    """A list file labelling some photos with a class index of the tiny model, others with a
    name that is no class (their target is the model's top-1 class)."""
    from cnnviz import ImageLibrary

    lib = ImageLibrary.open(photo_dir)
    lines = ["path,label"] + [f"{lib.path(i)},{(i * 3) % 10 if i % 3 else 'cat'}" for i in range(len(lib))]
    lst = tmp_path / "labelled.csv"
    lst.write_text("\n".join(lines) + "\n")
    return lst


def _brute_relevance(library, model, layers):
    """Per readable image, each layer's relevance per channel (Captum, summed over positions)
    and the position where the product peaks, for the image's label class or top-1 class."""
    from cnnviz import ImageLibrary
    from cnnviz.images.dataset import LibraryDataset
    from cnnviz.labels import label_class

    lib = ImageLibrary.open(library)
    ds = LibraryDataset(lib, model.preprocessing)
    sums, peaks = {}, {}
    for i in range(len(lib)):
        _, crop, _, _, error = ds[i]
        if error:
            continue
        x = model.preprocessing.normalize(crop[None])
        target = label_class(lib.labels[i], model.class_names)
        if target < 0:
            target = int(model.module(x).argmax())
        sums[i], peaks[i] = {}, {}
        for layer in layers:
            plain = copy.deepcopy(model.module)
            for m in plain.modules():
                if hasattr(m, "inplace"):
                    m.inplace = False
            a = LayerGradientXActivation(plain, plain.get_submodule(layer)).attribute(x, target=target)[0]
            flat = (a if a.dim() == 3 else a[:, None, None]).flatten(1).detach()
            sums[i][layer], peaks[i][layer] = flat.sum(1).numpy(), flat.argmax(1).numpy()
    return sums, peaks


def test_the_relevance_ranking_equals_a_full_sort_of_captums_relevance(photo_dir, tmp_path):
    model = make_tiny_model(seed=2)
    lst = _labelled_list(photo_dir, tmp_path)
    run = scan(lst, model, tmp_path / "run.h5", layers=LAYERS, top_k=3, batch_size=4, workers=0,
               progress=False, rank_by="max,relevance")
    sums, peaks = _brute_relevance(lst, model, LAYERS)
    with h5py.File(run, "r") as f:
        assert "label's class" in f.attrs["relevance_target"]
        for layer in LAYERS:
            g = f[f"layers/{layer}"]
            assert_ranking(g["topk_relevance"], {i: s[layer] for i, s in sums.items()}, 3)
            stored = g["relevance"][()]
            for i, s in sums.items():
                np.testing.assert_allclose(stored[i], s[layer], rtol=1e-4, atol=1e-6)
            width = int(g.attrs["width"])
            ids, ys, xs = (g[f"topk_relevance/{k}"][()] for k in ("image_id", "y", "x"))
            for c in range(ids.shape[0]):  # each patch is cut where that image's relevance peaks
                for r, i in enumerate(ids[c]):
                    assert ys[c, r] * width + xs[c, r] == peaks[int(i)][layer][c]
    table = cnnviz.top_patches(run, layer="6", rank_by="relevance")
    assert (table.rank_by == "relevance").all()


def test_relevance_shards_merge_exactly_and_compile_is_refused(photo_dir, tmp_path):
    from cnnviz.scanner import merge, scan_shard
    from cnnviz.scanner.workdir import work_path

    model = from_module(tiny_cnn(seed=2), Preprocessing(resize=72, crop=(64, 64)), name="tiny")
    kw = dict(layers=LAYERS, top_k=3, batch_size=2, workers=0, progress=False, rank_by="max,relevance")
    single = scan(photo_dir, model, tmp_path / "single.h5", **kw)
    out = tmp_path / "run.h5"
    for rank in (1, 0):
        scan_shard(photo_dir, model, out, (rank, 2), **kw)
    merged = merge([work_path(out, r, 2) for r in (0, 1)], tmp_path / "merged.h5")
    assert_equal_runs(single, merged)
    with pytest.raises(UsageError, match="compile"):
        scan(photo_dir, model, tmp_path / "c.h5", compile=True, **kw)


def test_a_resumed_relevance_scan_equals_an_uninterrupted_one(photo_dir, tmp_path):
    from cnnviz.errors import ScanError

    model = from_module(StopsOnce(seed=2), Preprocessing(resize=72, crop=(64, 64)), name="stops")
    kw = dict(layers="net.3,net.6", top_k=3, batch_size=2, workers=0, progress=False,
              rank_by="max,relevance", checkpoint_images=2)
    cnnviz.list_layers(model)  # traced before the count starts
    StopsOnce.calls = 0
    out = tmp_path / "run.h5"
    with pytest.raises(ScanError, match="ran out of memory"):
        scan(photo_dir, model, out, **kw)
    scan(photo_dir, model, out, resume=True, **kw)
    StopsOnce.calls = -10 ** 6
    assert_same_file(scan(photo_dir, model, tmp_path / "ref.h5", **kw), out)


def test_explain_why_on_the_command_line_and_its_page(photo_dir, tmp_path, cli):
    import io

    import pandas as pd

    model = make_tiny_model(seed=1)
    run = scan(photo_dir, model, tmp_path / "run.h5", layers=LAYERS, top_k=3, batch_size=4, workers=0,
               progress=False, rank_by="max,relevance")
    image = photo_dir / "animals" / "chelsea.png"
    want = explain_prediction(image, run, model=model, top=2)
    weights = tmp_path / "tiny.pt"
    torch.save(model.module.state_dict(), weights)
    # (a run of a user module: the command line can only be refused here; the table and the page
    # are checked through Python, and a real run in ../shared's test below)
    cli("explain", image, "--run", run, "--target", "c3", code=2)
    text = cli("explain", image, "--run", run, "--why", "--csv", "--model", "resnet18", "--weights", "none",
               code=2)
    assert "is not a layer of the model resnet18" in text
    assert set(want.examples_by) == {"relevance"} and (want.groupby("layer").size() == 2).all()
    from cnnviz.analysis.relevance import explain_predictions
    from cnnviz.report.analysis_pages import write_why_page

    result = explain_predictions([image], run, layers=LAYERS, top=2, model=model)
    index = write_why_page(result, run, tmp_path / "why", top=2)
    html = index.read_text()
    for row in result.table.itertuples():
        assert f"channel {row.channel}" in html
    assert "Explained: <b>c" in html and len(list((tmp_path / "why").glob("img0-*.png"))) == 4
    csv = result.table.assign(examples=result.table.examples.str.join(";"))
    assert pd.read_csv(io.StringIO(csv.to_csv(index=False))).shape[0] == len(result.table)
