"""The report's views of a channel, each against the tables that compute it independently: every
ranking's images in order (``top_patches(..., rank_by=...)``), mask outlines on the boundary of
``threshold_mask`` (and only with quantiles), the class chart (``class_table``), similar
channels (``similar_channels``); older runs render as before."""

from __future__ import annotations

import html
import re
import shutil
import warnings

import h5py
import numpy as np
import pytest
from PIL import Image

import cnnviz
from cnnviz import write_report
from cnnviz.errors import CnnvizWarning
from cnnviz.run.geometry import LayerGeometry
from cnnviz.run.masks import threshold_mask

from ..conftest import make_tiny_model, scan_every_view

# a signed map (before an in-place ReLU: a bottom-k), a map after one, the logits (whole-image units)
LAYERS = "0,3,9"


def _scan(library, out, **kw):
    return scan_every_view(library, out, **{"layers": LAYERS, "maxima_means": False, **kw})


@pytest.fixture(scope="module")
def views(photo_dir, tmp_path_factory):
    """A run with every view, and its report with photos, maps and masks."""
    folder = tmp_path_factory.mktemp("report-views")
    run = _scan(photo_dir, folder / "run.h5")
    index = write_report(run, folder / "site", model=make_tiny_model(), progress=False)
    return run, index.parent


def _panel_html(page: str) -> dict[str, str]:
    """Per ranking panel of a channel page (its id prefix: ``max-``, ``mean-``...), its HTML."""
    out = {}
    for chunk in page.split('<div class="panel" id="')[1:]:
        anchor, body = chunk.split('panel">', 1)
        out[anchor] = re.split(r"<h2>|<div class=\"side-by-side\">", body, maxsplit=1)[0]
    return out


def _panels(page: str) -> dict[str, list[tuple[int | None, str, str, str]]]:
    """Per ranking panel of a channel page, its cards as ``(photo id, value name, activation,
    image name)``."""
    out = {}
    for anchor, body in _panel_html(page).items():
        cards = []
        for card in re.findall(r'<figure class="card".*?</figure>', body, re.S):
            photo = re.search(r"url\('\.\./photos/(\d+)\.jpg'\)", card)
            cap = re.search(r"<figcaption>#\d+ · (?:(\w+) )?<b>([^<]+)</b><br>(.*?)(?:<br>|</figcaption>)",
                            card)
            cards.append((int(photo.group(1)) if photo else None, cap.group(1) or "", cap.group(2),
                          html.unescape(cap.group(3).replace("<wbr>", ""))))
        out[anchor] = cards
    return out


def _expected(run, layer: str, channel: int, key: str):
    df = cnnviz.top_patches(run, layer, channel, rank_by="max" if key == "min" else key, bottom=key == "min")
    return df.sort_values("rank")


def test_each_ranking_shows_its_images_in_order(views):
    run, site = views
    # per layer its rankings and their tabs (a whole-image unit's mean is its max: not shown twice)
    shown = {"0": {"max": "by max", "mean": "by mean", "min": "most negative"},
             "3": {"max": "by max", "mean": "by mean"}, "9": {"max": "by max", "min": "most negative"}}
    for layer, rankings in shown.items():
        for channel in range(3):
            page = (site / layer / f"c{channel}.html").read_text()
            tabs = re.findall(r'<label for="[\w.-]+ranking"[^>]*>([^<]+) <span', page)
            assert tabs == list(rankings.values())
            panels = _panels(page)
            assert list(panels) == [f"{key}-" for key in rankings]
            for key in rankings:
                cards = panels[f"{key}-"]
                want = _expected(run, layer, channel, key)
                assert [c[0] for c in cards] == want.image_id.tolist(), (layer, channel, key)
                assert [c[2] for c in cards] == [f"{v:.3g}" for v in want.activation]
                assert [c[3] for c in cards] == [p.split("/")[-1] for p in want.image_path]
                assert {c[1] for c in cards} == ({""} if key == "max" else {key})
                strip = Image.open(site / layer / f"c{channel}{'' if key == 'max' else '-' + key}.png")
                assert strip.width == len(want) * strip.height  # one tile per image (square patches)
    # the photo of each ranking's image is the one of its id
    page = (site / "0" / "c1.html").read_text()
    for photo, *_ in _panels(page)["mean-"]:
        assert (site / "photos" / f"{photo}.jpg").is_file()
    # each ranking says what it means, in one line
    assert "the mean over its whole map" in page and "spatial minimum" in page


def test_a_ranking_the_report_does_not_know_gets_its_tab(views, tmp_path, monkeypatch):
    """A newer scan's ranking (here a copy of the max ranking stored as ``topk_sharpness``) is
    named from its key, with its images, without changes to the report; a known one (relevance)
    gets its own definition."""
    from cnnviz.run import format as fmt

    run, _ = views
    path = tmp_path / "newer.h5"
    shutil.copy(run, path)
    with h5py.File(path, "r+") as f:
        f.copy(f["layers/3/topk"], f["layers/3"], name="topk_sharpness")
        f.copy(f["layers/3/topk"], f["layers/3"], name="topk_relevance")
    monkeypatch.setitem(fmt.RANKING_GROUPS, "sharpness", "topk_sharpness")
    index = write_report(path, tmp_path / "site", layers=["3"], channels=2, context=False, progress=False)
    page = (index.parent / "3" / "c1.html").read_text()
    tabs = re.findall(r'<label for="[\w.-]+ranking"[^>]*>([^<]+) <span', page)
    assert sorted(tabs) == ["by max", "by mean", "by relevance", "by sharpness"] and tabs[0] == "by max"
    assert ("<b>by sharpness</b>: the images ranked by their sharpness as the scan kept them, highest first"
            in page)
    assert "<b>by relevance</b>: the images where the channel contributed most to the model" in page
    want = cnnviz.top_patches(path, "3", 1, rank_by="sharpness")
    assert 'id="sharpness-panel"' in page and (index.parent / "3" / "c1-sharpness.png").is_file()
    body = page.split('id="sharpness-panel"')[1]
    values = re.findall(r"#\d+ · sharpness <b>([^<]+)</b>", body)
    assert values == [f"{v:.3g}" for v in want.activation]


def _masks_of(site, layer: str, channel: int, suffix: str = "") -> np.ndarray | None:
    path = site / layer / f"c{channel}{suffix}-masks.png"
    return np.asarray(Image.open(path)) if path.exists() else None


def test_mask_outlines_lie_on_the_threshold_masks_boundary(views):
    """Each outlined pixel of a patch tile is where ``threshold_mask`` (of the channel's map from
    a forward pass, at its top-0.5 % level) changes; photos of images whose map stays under the
    level get none."""
    from cnnviz.analysis.unitmaps import unit_maps
    from cnnviz.report.views import PAGE_TILE

    run, site = views
    model = make_tiny_model()
    with cnnviz.RunReader(run) as r:
        levels = r.mask_levels("3")
        geo = LayerGeometry(r.layer("3").attrs, r.preprocessing["crop"], int(r.attrs["patch_size"]))
    checked = 0
    for channel in range(4):
        lines = _masks_of(site, "3", channel)
        want = _expected(run, "3", channel, "max")
        maps = unit_maps(run, "3", want.image_id.tolist(), model)
        page = (site / "3" / f"c{channel}.html").read_text()
        places = re.findall(r'<span class="ptile".*?style="background-image[^"]*?left:([\d.]+)px;'
                            r'top:([\d.]+)px;width:([\d.]+)px;height:([\d.]+)px', _panel_html(page)["max-"])
        for rank, row in enumerate(want.itertuples()):
            box = (max(row.patch_y0, 0), max(row.patch_x0, 0), min(row.patch_y1, 64), min(row.patch_x1, 64))
            truth = threshold_mask(maps[row.image_id][channel], levels[channel], geo, box)
            tile = None if lines is None else lines[:, rank * PAGE_TILE: (rank + 1) * PAGE_TILE, 3] > 0
            if not truth.any() or truth.all():
                assert tile is None or not tile.any(), (channel, rank)
                continue
            assert tile is not None and tile.any(), (channel, rank)
            left, top, w, h = (float(v) for v in places[rank])
            ys, xs = np.nonzero(tile)
            # back to input pixels: next to each line pixel the mask has both values...
            py = np.clip(((ys - top + 0.5) / h * truth.shape[0]).astype(int), 0, truth.shape[0] - 1)
            px = np.clip(((xs - left + 0.5) / w * truth.shape[1]).astype(int), 0, truth.shape[1] - 1)
            padded = np.pad(truth, 1, mode="edge")
            for y, x in zip(py, px, strict=True):
                near = padded[y: y + 3, x: x + 3]
                assert near.any() and not near.all(), (channel, rank, y, x)
            # ... and the line passes next to each input pixel where the mask changes
            edge = np.zeros_like(truth)
            edge[:-1] |= truth[:-1] != truth[1:]
            edge[:, :-1] |= truth[:, :-1] != truth[:, 1:]
            hit = np.zeros((truth.shape[0] + 2, truth.shape[1] + 2), bool)
            hit[py + 1, px + 1] = True
            for y, x in zip(*np.nonzero(edge), strict=True):
                assert hit[y: y + 3, x: x + 3].any(), (channel, rank, y, x)
            checked += 1
    assert checked >= 3
    # the legend gives the level, the photos have outlines
    page = (site / "3" / "c0.html").read_text()
    assert f"green outline: where the channel exceeds {levels[0]:.3g}, its top-0.5 % level" in page


def test_the_batched_masks_equal_threshold_mask(views):
    from cnnviz.analysis.unitmaps import unit_maps
    from cnnviz.report.outlines import LayerMasks

    run, _ = views
    for layer in ("0", "3"):
        with cnnviz.RunReader(run) as r:
            geo = LayerGeometry(r.layer(layer).attrs, r.preprocessing["crop"], int(r.attrs["patch_size"]))
            level = float(r.mask_levels(layer)[2])
        maps = unit_maps(run, layer, list(range(6)), make_tiny_model())
        channel = {i: m[2] for i, m in maps.items() if m is not None}
        fields = LayerMasks(geo).fields(channel, level)
        assert fields, layer
        for i, m in channel.items():
            truth = threshold_mask(m, level, geo)
            got = fields[i] > level if i in fields else np.zeros_like(truth)
            near = np.abs(fields[i] - level) < 1e-5 if i in fields else np.zeros_like(truth)
            assert ((got == truth) | near).all(), (layer, i)


def test_no_mask_outlines_without_quantiles(photo_dir, tmp_path):
    run = _scan(photo_dir, tmp_path / "run.h5", layers="3", bottom_k=0, quantiles=False)
    index = write_report(run, tmp_path / "site", model=make_tiny_model(), channels=3, progress=False)
    assert not list(index.parent.rglob("*-masks.png"))
    page = (index.parent / "3" / "c0.html").read_text()
    assert "green outline" not in page and 'class="mask"' not in page
    assert "c0-mean-context.jpg" in page  # the rankings are there all the same


def test_the_class_chart_equals_class_table(views):
    run, site = views
    for layer, channel in (("3", 0), ("3", 5), ("9", 1)):
        page = (site / layer / f"c{channel}.html").read_text()
        rows = re.findall(r'<tr(?: class="own")?><td title="([^"]*)">([^<]*)</td><td class="num">([^<]+)</td>'
                          r'<td><span class="bar"[^>]*></span></td><td class="num">(\d+)</td>', page)
        want = cnnviz.class_table(run, layer, channel=channel).head(10)
        assert [r[0] for r in rows] == want.label.tolist()
        assert [r[1] for r in rows] == [n or lab for n, lab in zip(want.label_name, want.label, strict=True)]
        assert [r[2] for r in rows] == [f"{v:.3g}" for v in want.mean_max]
        assert [int(r[3]) for r in rows] == want["count"].tolist()
    # the fire rate where it means something: not for logits
    assert "fire rate</th>" in (site / "3" / "c0.html").read_text()
    assert "fire rate</th>" not in (site / "9" / "c0.html").read_text()


def test_classes_and_similar_channels_say_why_a_run_has_none(photo_dir, tmp_path):
    files = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    unlabelled = tmp_path / "list.txt"
    unlabelled.write_text("".join(f"{p}\n" for p in files))
    hostile = tmp_path / "hostile.csv"
    hostile.write_text("".join(f"{p},<b>x{n % 2}</b>\n" for n, p in enumerate(files)))
    for lib, options, line in ((unlabelled, {}, "the library has no labels"),
                               (photo_dir, {"maxima_dtype": "none"}, "not kept in this run"),
                               (hostile, {}, None)):
        run = _scan(lib, tmp_path / f"{lib.stem}-{len(options)}.h5", layers="3", bottom_k=0, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CnnvizWarning)  # "kept no per-image maxima"
            index = write_report(run, tmp_path / f"site-{lib.stem}-{len(options)}", channels=2, context=False,
                                 progress=False)
        page = (index.parent / "3" / "c0.html").read_text()
        classes = page.split("Top classes", 1)[1].split("Similar channels", 1)[0]
        if line is None:  # labels from a run file are text, never markup
            assert "&lt;b&gt;x0&lt;/b&gt;" in classes and "<b>x0" not in classes
            continue
        assert line in classes
        if "maxima_dtype" in options:
            assert "not kept in this run" in page.split("Similar channels", 1)[1]


def test_similar_channels_equal_similar_channels(views):
    from cnnviz.report.collect import similar_of

    run, site = views
    for layer, channel in (("0", 1), ("3", 2), ("9", 4)):
        page = (site / layer / f"c{channel}.html").read_text()
        section = page.split("Similar channels", 1)[1]
        shown = re.findall(r"<b>(\d+)</b> · ([-\d.]+)", section)
        want = cnnviz.similar_channels(run, layer, channel, n=8)
        assert [int(c) for c, _ in shown] == want.channel.tolist()
        assert [v for _, v in shown] == [f"{v:.2f}" for v in want.spearman]
        for c in want.channel:  # each with its thumbnail, linked to its page
            assert f'href="c{c}.html"' in section and (site / layer / f"c{c}.png").is_file()
    # all shown channels at once, to rounding
    with cnnviz.RunReader(run) as r:
        from cnnviz.report.collect import layer_info, layer_stats

        layer = layer_info(r, "3", None, 2, layer_stats(r, "3"))
        every = similar_of(r, layer, n=5)
    for c in layer.shown:
        want = cnnviz.similar_channels(run, "3", c, n=5)
        assert [s.channel for s in every[c]] == want.channel.tolist()
        np.testing.assert_allclose([s.spearman for s in every[c]], want.spearman, rtol=1e-12)


def test_a_similar_channel_outside_the_report_has_a_thumbnail_and_no_link(views, tmp_path):
    run, _ = views
    index = write_report(run, tmp_path / "site", layers=["3"], channels=[0], context=False, progress=False)
    section = (index.parent / "3" / "c0.html").read_text().split("Similar channels", 1)[1]
    for c in cnnviz.similar_channels(run, "3", 0, n=8).channel:
        assert f'href="c{c}.html"' not in section and f"url('c{c}.png')" in section
        assert (index.parent / "3" / f"c{c}.png").is_file()
        assert not (index.parent / "3" / f"c{c}.html").exists()


def test_older_runs_render_as_before(views, tmp_path):
    """A file without the rankings, bottom-k and quantiles of cnnviz 0.4: one ranking, no
    tabs, no masks, the pages' files as before."""
    run, _ = views
    path = tmp_path / "old.h5"
    shutil.copy(run, path)
    with h5py.File(path, "r+") as f:
        for key in ("rank_by", "bottom_k"):
            del f.attrs[key]
        for name in LAYERS.split(","):
            for sub in ("topk_mean", "bottomk", "quantiles"):
                if sub in f[f"layers/{name}"]:
                    del f[f"layers/{name}/{sub}"]
    index = write_report(path, tmp_path / "site", model=make_tiny_model(), progress=False)
    site = index.parent
    page = (site / "0" / "c1.html").read_text()
    assert 'type="radio"' not in page and "green outline" not in page and 'class="mask"' not in page
    assert "<h2>Top 3 receptive-field patches, each above its photo</h2>" in page
    assert sorted(p.name for p in site.joinpath("0").glob("c1[.-]*")) == ["c1-context.jpg", "c1-maps.png",
                                                                         "c1.html", "c1.png"]
    assert [c[0] for c in _panels(page)["max-"]] == _expected(path, "0", 1, "max").image_id.tolist()
    assert 'href="#r0"' in page and 'id="r0"' in page  # the click-to-enlarge ids of before


def test_the_maps_colours_are_matplotlibs_inferno():
    from matplotlib import colormaps

    from cnnviz.report.context import inferno

    levels = np.concatenate([np.linspace(0, 1, 10001), np.random.default_rng(0).random(1000)])
    for values in (levels, levels.astype(np.float32)):
        np.testing.assert_array_equal(inferno(values), colormaps["inferno"](values))
