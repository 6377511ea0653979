"""Figures, attributions and the HTML report of a run."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import figures, load_model, scan, write_report
from cnnviz.analysis.attribution import neuron_attribution_maps, neuron_attributions

LAYERS = "layer1.1,layer3.0"


@pytest.fixture(scope="module")
def model():
    return load_model("resnet18", None, seed=2)


@pytest.fixture(scope="module")
def run(photo_dir, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run.h5"
    return scan(photo_dir, model, out, layers=LAYERS, top_k=4, batch_size=8, workers=0,
                progress=False)


def test_montage_tiles_show_the_stored_patches_in_rank_order(run):
    fig = figures.patch_montage(run, "layer3.0", 5)
    with h5py.File(run, "r") as f:
        patches = f["layers/layer3.0/topk/patches"][5]
        names = [Path(f["images/path"][i].decode()).name for i in f["layers/layer3.0/topk/image_id"][5]]
    tiles = sorted((ax for ax in fig.axes if ax.images),
                   key=lambda ax: (-round(ax.get_position().y0, 3), ax.get_position().x0))
    assert len(tiles) == 4
    for ax, patch, name in zip(tiles, patches, names, strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), patch)
        assert name[:22] in ax.texts[0].get_text()
    sheet = figures.layer_overview(run, "layer1.1", channels=[3, 1, 2])
    assert [ax.get_title() for ax in sheet.axes if ax.images] == ["3", "1", "2"]
    dist = figures.maxima_distribution(run, "layer1.1", 0)
    assert len(dist.axes[0].lines) == 4  # one mark per top-k entry


@pytest.mark.slow
def test_attribution_lies_inside_the_receptive_field(run, model):
    df = cnnviz.top_patches(run, layer="layer3.0", channel=7)
    maps = neuron_attribution_maps(model, run, "layer3.0", 7)
    for (_, row), m in zip(df.iterrows(), maps, strict=True):
        support = np.abs(m).sum(-1) > 0
        assert support.any()
        ys, xs = np.nonzero(support)
        assert ys.min() >= max(row.rf_y0, 0) and ys.max() < row.rf_y1
        assert xs.min() >= max(row.rf_x0, 0) and xs.max() < row.rf_x1
    crops = neuron_attributions(model, run, "layer3.0", 7, method="deconvolution")
    with h5py.File(run, "r") as f:
        assert crops.shape == f["layers/layer3.0/topk/patches"].shape[1:]
    with pytest.raises(ValueError, match="`method`"):
        neuron_attributions(model, run, "layer3.0", 7, method="lrp")


@pytest.mark.slow
def test_attributions_follow_edited_weights(run):
    """Attributions are computed from the model as it is now, not from a copy cached before the
    caller changed its weights."""
    model = load_model("resnet18", None, seed=2)
    before = neuron_attributions(model, run, "layer3.0", 7)
    with torch.no_grad():
        model.module.layer3[0].conv1.weight.mul_(-1)
    after = neuron_attributions(model, run, "layer3.0", 7)
    fresh = load_model("resnet18", None, seed=2)
    with torch.no_grad():
        fresh.module.layer3[0].conv1.weight.mul_(-1)
    np.testing.assert_array_equal(after, neuron_attributions(fresh, run, "layer3.0", 7))
    assert not np.array_equal(before, after)


@pytest.mark.slow
def test_report_reads_each_layers_maxima_in_row_blocks(run, tmp_path, monkeypatch):
    """The report reads a layer's images x channels maxima as whole rows (a few large reads),
    never one column per channel."""
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name.endswith("/maxima"):
            reads.append((self.name, key))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    write_report(run, tmp_path / "site", channels=16, progress=False)
    assert reads, "the report shows distributions of the maxima"
    for name, key in reads:
        assert isinstance(key, slice) and key.step is None, (name, key)
    # row blocks: here one per layer for each of selectivity, the histograms, the class charts
    # and the similar channels
    assert len(reads) <= 4 * len(LAYERS.split(","))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# A harness page loads the page under test in an iframe (same origin: both are files), records
# its script errors, and checks that every <img> and every CSS background image decoded.
_HARNESS = """<!DOCTYPE html><html><body><pre id="result">PENDING</pre>
<iframe id="f" width="1200" height="900"></iframe>
<script>
const errors = [];
const f = document.getElementById("f");
f.addEventListener("load", async () => {
  const w = f.contentWindow, d = f.contentDocument;
  w.addEventListener("error", e => errors.push("error: " + e.message));
  const broken = [];
  for (const img of d.images) {
    if (!img.complete || img.naturalWidth === 0) broken.push(img.getAttribute("src"));
  }
  const urls = new Set();
  for (const el of d.querySelectorAll("*")) {
    const m = w.getComputedStyle(el).backgroundImage.match(/url\\("?(.*?)"?\\)/);
    if (m) urls.add(m[1]);
  }
  await Promise.all([...urls].map(u => new Promise(res => {
    const i = new Image(); i.onload = () => res(); i.onerror = () => { broken.push(u); res(); };
    i.src = u; })));
  document.getElementById("result").textContent =
    "RESULT " + JSON.stringify({broken, errors, images: d.images.length, backgrounds: urls.size});
});
f.src = PAGE;
</script></body></html>"""


def _check_in_chromium(page: Path, screenshot: Path, profile: Path) -> dict:
    """Open a page from the file system in headless Chromium: take a screenshot of it, and
    return what the harness found (broken images, script errors) and Chromium's own log."""
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={profile}", "--allow-file-access-from-files",
              "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    shot = subprocess.run(common + ["--window-size=1200,900", f"--screenshot={screenshot}",
                                    page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    harness = page.parent / "_harness.html"
    harness.write_text(_HARNESS.replace("PAGE", json.dumps(page.name)))
    res = subprocess.run(common + ["--dump-dom", harness.resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)
    harness.unlink()
    found = re.search(r"RESULT (\{.*?\})</pre>", res.stdout)
    assert found, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    result["log_errors"] = [line for line in (shot.stderr + res.stderr).splitlines()
                            if re.search(r"Uncaught|CONSOLE.*[Ee]rror", line)]
    return result


def _problems(result: dict) -> list[str]:
    return result["broken"] + result["errors"] + result["log_errors"]


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium_without_errors(run, model, tmp_path):
    index = write_report(run, tmp_path / "site", channels=6, attributions={"layer3.0": [0]},
                         model=model, progress=False)
    site = index.parent
    # every file a page refers to exists (relative links only, nothing from the network)
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text
        for ref in re.findall(r'(?:href|src)="([^"#]+)"|url\(\'([^\']+)\'\)', text):
            target = ref[0] or ref[1]
            assert (page.parent / target).exists(), (page, target)
    assert (site / "layer3.0" / "c0-attr.png").exists()
    # negative control: the detector sees a broken image
    broken = site / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><img src="missing.png"></body></html>')
    assert _problems(_check_in_chromium(broken, tmp_path / "b.png", tmp_path / "p0")) == ["missing.png"]
    # the index: 6 thumbnails of 2 layers; a channel page: per ranking (by max, by mean) its
    # context, activation-map and mask strips, the attribution strip, each photo its patches are
    # cut from (and enlarged on a click) and the thumbnails of its similar channels; a layer
    # ordered by fire rate: its 6 thumbnails
    ranked = [cnnviz.top_patches(run, rank_by=key).query("channel < 6") for key in ("max", "mean")]
    assert sorted(p.name for p in (site / "photos").iterdir()) == sorted(
        f"{i}.jpg" for i in set(ranked[0].image_id) | set(ranked[1].image_id))
    first = [df.query("layer == 'layer3.0' and channel == 0") for df in ranked]
    photos = len(set(first[0].image_id) | set(first[1].image_id))
    similar = len(cnnviz.similar_channels(run, "layer3.0", 0, n=8))
    masks = len(list((site / "layer3.0").glob("c0*-masks.png")))
    for page, shot, sprites in ((index, "index.png", 12),
                                (site / "layer3.0" / "c0.html", "channel.png",
                                 2 * 2 + masks + 1 + photos + similar),
                                (site / "layer3.0" / "by-fire-rate.html", "order.png", 6)):
        result = _check_in_chromium(page, tmp_path / shot, tmp_path / f"profile-{shot}")
        assert not _problems(result), result
        assert result["backgrounds"] == sprites
        img = np.asarray(Image.open(tmp_path / shot).convert("RGB"))
        assert img.shape[0] > 100 and img.std() > 5  # something was drawn
        shutil.copy(tmp_path / shot, site / shot)


@pytest.mark.slow
def test_cli_top_and_report(run, tmp_path, capsys):
    from cnnviz.cli import main

    assert main(["top", str(run), "--layer", "layer3.0", "--channel", "2"]) == 0
    out = capsys.readouterr().out
    df = cnnviz.top_patches(run, layer="layer3.0", channel=2)
    for path in df.image_path:
        assert path in out
    assert main(["top", str(run), "--layer", "nope"]) == 2
    assert "layers are: layer1.1, layer3.0" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--channels", "2",
                 "--no-progress"]) == 0
    assert (tmp_path / "r" / "layer1.1" / "c1.html").exists()
    assert not (tmp_path / "r" / "layer1.1" / "c2.html").exists()
    assert main(["plot", "montage", str(run), "--layer", "layer1.1", "--channel", "1",
                 "--out", str(tmp_path / "m.png")]) == 0
    assert Image.open(tmp_path / "m.png").size[0] > 100


def test_synthetic_runs_have_the_format_of_real_ones(run, model, tmp_path):
    """The benchmark's synthetic run file has every dataset and attribute a real scan writes,
    with the same dtypes and per-layer shapes, and every reader works on it."""
    from cnnviz.model import resolve_layers
    from cnnviz.scanner.synthetic import write_synthetic_run

    taps = resolve_layers(model, LAYERS)
    syn = write_synthetic_run(tmp_path / "syn.h5", taps, n_images=300, top_k=4, block_rows=64)

    def layout(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(
                name, (obj.dtype.kind, obj.shape[1:] if name.startswith(("images", "layers")) and
                       not name.endswith(("topk/activation", "topk/image_id", "topk/y", "topk/x"))
                       else None) if isinstance(obj, h5py.Dataset) else sorted(obj.attrs)))
            out["/"] = sorted(f.attrs)
        return out

    real, fake = layout(run), layout(syn)
    # (no network, so no weights spec and no class names)
    assert set(fake["/"]) == set(real["/"]) - {"weights_spec"} | {"synthetic"}
    del real["/"], fake["/"]
    real.pop("class_names")
    assert fake == real
    df = cnnviz.top_patches(syn, layer="layer3.0")
    assert len(df) == 256 * 4
    assert df.groupby("channel").activation.apply(lambda a: a.is_monotonic_decreasing).all()
    with h5py.File(syn, "r") as f:
        maxima = f["layers/layer3.0/maxima"][()]
        top = f["layers/layer3.0/topk/image_id"][()]
    brute = np.argsort(-maxima, axis=0, kind="stable")[:4].T  # exact top-k of the stored values
    np.testing.assert_array_equal(top, brute)
    stats = cnnviz.channel_stats(syn)
    np.testing.assert_allclose(stats[stats.layer == "layer3.0"].mean_max, maxima.mean(0), rtol=1e-6)
    write_report(syn, tmp_path / "site", channels=2, progress=False)


@pytest.mark.slow
def test_a_photo_changed_since_the_scan_is_not_shown_in_context(photo_dir, tmp_path):
    """Its box and map would describe another picture: the tile says why instead."""
    from cnnviz.report.context import TILE, context_strip, context_tile, gather_context
    from cnnviz.run.reader import RunReader

    lib = tmp_path / "lib"
    shutil.copytree(photo_dir, lib)
    model = load_model("resnet18", None, seed=2)
    run = scan(lib, model, tmp_path / "run.h5", layers="layer3.0", top_k=3, workers=0, progress=False)
    with RunReader(run) as reader:
        ids = reader.layer("layer3.0")["topk/image_id"][0]
        changed = reader.library_root / str(reader.paths[ids[0]])
        Image.open(changed).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(changed, format="PNG")
        ctx = gather_context(reader, {"layer3.0": [0]}, model, workers=0)
        strip = context_strip(ctx, reader, "layer3.0", 0)
    assert ctx.photos[int(ids[0])] is None and ctx.notes == {int(ids[0]): "changed since the scan"}
    assert all(ctx.photos[int(i)] is not None for i in ids[1:])
    assert ("layer3.0", 0, int(ids[0])) not in ctx.maps
    np.testing.assert_array_equal(strip[:, :TILE], context_tile(None, None, note="changed since the scan"))


@pytest.mark.slow
def test_context_box_is_the_orig_box_and_the_map_is_a_forward_pass(run, model):
    """Each context tile draws ``topk/orig_box`` (found as the pixels the box changed) and lights
    the photo where the channel's recomputed map (equal to a forward pass of that photo) is high;
    each photo of either ranking (by max, by mean) goes through the network once (photos decoded
    by a worker process, batches of 3)."""
    from cnnviz.report.context import TILE, context_tile, gather_context
    from cnnviz.run.reader import RunReader

    calls = []
    handle = model.module.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        with RunReader(run) as reader:
            ctx = gather_context(reader, {"layer3.0": [0, 1, 2], "layer1.1": [0]}, model, workers=1,
                                 batch_size=3)
            ids = reader.layer("layer3.0")["topk/image_id"][()]
            boxes = reader.layer("layer3.0")["topk/orig_box"][()]
            first = reader.layer("layer1.1")["topk/image_id"][0]
            by_mean = reader.layer("layer3.0")["topk_mean/image_id"][:3].ravel()
            first_mean = reader.layer("layer1.1")["topk_mean/image_id"][0]
            unique = {int(i) for i in np.concatenate([ids[:3].ravel(), first, by_mean, first_mean]) if i >= 0}
            paths = reader.paths
            root = reader.library_root
    finally:
        handle.remove()
    assert sum(calls) == len(unique) and len(calls) == -(-len(unique) // 3)
    assert sorted(ctx.photos) == sorted(unique) and not ctx.notes
    for c in range(3):
        for r, i in enumerate(ids[c]):
            photo = ctx.photos[int(i)]
            plain = context_tile(photo, None).astype(int)
            boxed = context_tile(photo, tuple(boxes[c, r])).astype(int)
            ys, xs = np.nonzero((plain != boxed).any(axis=2))
            ph, pw = photo.pixels.shape[:2]
            oy, ox = (TILE - ph) // 2, (TILE - pw) // 2
            y0, x0, y1, x1 = boxes[c, r] * photo.scale
            assert abs(ys.min() - (oy + y0)) <= 1.01 and abs(xs.min() - (ox + x0)) <= 1.01, (c, r)
            assert abs(ys.max() + 1 - (oy + y1)) <= 1.01 and abs(xs.max() + 1 - (ox + x1)) <= 1.01, (c, r)
    # the map is a forward pass of the photo alone
    from cnnviz.images import load_rgb
    from cnnviz.model.taps import capture

    i = int(ids[1, 0])
    with capture(model.module, ["layer3.0"]) as cap, torch.no_grad():
        cap.forward(model.preprocessing(load_rgb(root / str(paths[i]))))
    expected = cap.outputs["layer3.0"][0, 1].numpy()
    np.testing.assert_allclose(ctx.maps[("layer3.0", 1, i)], expected, rtol=1e-4, atol=1e-5)
    # the spotlight: where the map peaks the photo keeps more of its brightness than on average
    photo = ctx.photos[i]
    lit = context_tile(photo, None, expected, float(expected.max())).astype(float) + 1
    ratio = lit.sum(axis=2) / (context_tile(photo, None).astype(float) + 1).sum(axis=2)
    y, x = np.unravel_index(expected.argmax(), expected.shape)
    cy0, cx0, cy1, cx1 = (v * photo.scale for v in photo.crop_box)
    ty = round((TILE - photo.pixels.shape[0]) // 2 + cy0 + (y + 0.5) / expected.shape[0] * (cy1 - cy0))
    tx = round((TILE - photo.pixels.shape[1]) // 2 + cx0 + (x + 0.5) / expected.shape[1] * (cx1 - cx0))
    assert ratio[ty, tx] > np.median(ratio) + 0.2


def test_index_orders_follow_the_statistics(run, tmp_path):
    index = write_report(run, tmp_path / "site", layers=["layer3.0"], channels=10, context=False,
                         progress=False)
    stats = cnnviz.channel_stats(run, "layer3.0").iloc[:10]
    for stem, column in (("by-fire-rate", "fire_rate"), ("by-strength", "mean_max"),
                         ("by-selectivity", "selectivity")):  # the library has labels (folders)
        page = (index.parent / "layer3.0" / f"{stem}.html").read_text()
        shown = [int(c) for c in re.findall(r'href="c(\d+)\.html"', page)]
        value = np.nan_to_num(stats[column].to_numpy(), nan=-np.inf)
        expected = sorted(range(10), key=lambda c: (-value[c], c))
        assert shown == expected, stem


def test_attribution_tiles_are_contrast_normalised():
    """One outlier pixel must not leave the rest of the tile grey (as scaling by the maximum did)."""
    from cnnviz.analysis.attribution import attribution_image

    rng = np.random.default_rng(0)
    attr = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
    attr[0, 5, 5, 0] = 1000.0
    shown = attribution_image(attr)[0]
    assert shown.min() >= 0 and shown.max() <= 1
    assert np.mean(np.abs(shown - 0.5) > 0.1) > 0.5  # most pixels visibly away from grey
    assert np.sign(shown[..., 1] - 0.5).tolist() == np.sign(np.round(attr[0, ..., 1], 6)).tolist()


def test_labels_and_logits_are_shown_with_class_names(photo_dir, tmp_path):
    """A list file whose labels are WordNet ids and class indices: tables and pages show the
    model's class names; the logits layer's channels are named after their classes."""
    lib = tmp_path / "lib.txt"
    lib.write_text(f"{photo_dir / 'animals' / 'chelsea.png'}\tn02123045\n"
                   f"{photo_dir / 'things' / 'coffee.png'}\t968\n"
                   f"{photo_dir / 'things' / 'rocket.jpg'}\trocket\n")
    model = load_model("resnet18", None, seed=0)
    out = scan(lib, model, tmp_path / "run.h5", layers="layer4.1,logits", top_k=3, workers=0, progress=False)
    df = cnnviz.top_patches(out, "fc")
    by_path = dict(zip(df.image_path.map(lambda p: Path(p).name), df.label_name, strict=False))
    assert by_path == {"chelsea.png": "tabby", "coffee.png": "cup", "rocket.jpg": ""}
    assert (df.channel_name == [model.class_names[c] for c in df.channel]).all()
    index = write_report(out, tmp_path / "site", channels=3, context=False, progress=False)
    page = (index.parent / "fc" / "c1.html").read_text()
    assert "channel 1 · goldfish" in page
    assert "n02123045 · tabby" in page and "968 · cup" in page
    assert "classes (logits)" in index.read_text()


def test_show_embeds_each_rows_stored_patch_and_leaves_the_table_alone(run):
    import base64
    import io

    import pandas as pd

    df = cnnviz.top_patches(run, layer="layer3.0")
    picked = df[df.channel.isin([3, 5])].sort_values("activation")
    before = picked.copy()
    table = cnnviz.show(picked)
    pd.testing.assert_frame_equal(picked, before)  # plain pandas use is untouched
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', table._repr_html_())
    assert len(images) == len(picked) == table.rows
    with h5py.File(run, "r") as f:
        for data, row in zip(images, picked.itertuples(), strict=True):
            shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
            np.testing.assert_array_equal(shown, f["layers/layer3.0/topk/patches"][row.channel, row.rank])
    # text is escaped, and a table without its run says how to give it
    odd = picked.assign(label="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in cnnviz.show(odd).html
    with pytest.raises(cnnviz.UsageError, match="cnnviz.show\\(df, run="):
        cnnviz.show(pd.DataFrame(picked.to_dict()))  # a new frame: no attrs


def test_a_report_far_from_its_library_leaves_the_photos_out(run, tmp_path):
    moved = tmp_path / "moved.h5"
    shutil.copy(run, moved)
    with h5py.File(moved, "r+") as f:
        f.attrs["library_root"] = str(tmp_path / "not-here")
    from cnnviz.errors import CnnvizWarning

    with pytest.warns(CnnvizWarning, match="library folder .*not-here is not here .*give `library`"):
        index = write_report(moved, tmp_path / "site", layers=["layer3.0"], channels=2, progress=False)
    assert not list(index.parent.rglob("*-context.*"))
    assert "c0-context.jpg" not in (index.parent / "layer3.0" / "c0.html").read_text()
    assert not (index.parent / "photos").exists()
    with h5py.File(run, "r") as f:  # where the images are now
        library = f.attrs["library_root"]
    index = write_report(moved, tmp_path / "site2", layers=["layer3.0"], channels=2, progress=False,
                         library=library)
    assert "c0-context.jpg" in (index.parent / "layer3.0" / "c0.html").read_text()
    assert list((index.parent / "photos").iterdir())
