"""Names that survive the scan (the `logits` alias, class names where people read), pages that
replace their folder whole, and the command line's small manners."""

from __future__ import annotations

import html
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import figures, load_model, scan, write_report
from cnnviz.errors import UsageError


@pytest.fixture(scope="module")
def squeezenet():
    return load_model("squeezenet1_1", None, seed=1)


@pytest.fixture(scope="module")
def labelled(photo_dir, squeezenet, tmp_path_factory):
    """A run of features.3 and the logits (stored as classifier.3) over photos labelled with a
    WordNet id, a class index and a plain word."""
    root = tmp_path_factory.mktemp("named")
    lib = root / "lib.txt"
    lib.write_text(f"{photo_dir / 'animals' / 'chelsea.png'}\tn02123045\n"
                   f"{photo_dir / 'animals' / 'horse.png'}\tn02123045\n"
                   f"{photo_dir / 'things' / 'coffee.png'}\t968\n"
                   f"{photo_dir / 'things' / 'rocket.jpg'}\trocket\n")
    return scan(lib, squeezenet, root / "run.h5", layers="features.3,logits", top_k=3, workers=0,
                progress=False)


def test_logits_names_the_logits_layer_everywhere(labelled, photo_dir, tmp_path, cli):
    run = labelled
    with h5py.File(run, "r") as f:
        assert "classifier.3" in f["layers"] and "logits" not in f["layers"]
    # Python
    for spelled in ("logits", "classifier[3]"):
        assert cnnviz.top_patches(run, layer=spelled).equals(cnnviz.top_patches(run, layer="classifier.3"))
        assert cnnviz.channel_stats(run, spelled).equals(cnnviz.channel_stats(run, "classifier.3"))
        assert cnnviz.channel_maxima(run, spelled).equals(cnnviz.channel_maxima(run, "classifier.3"))
    np.testing.assert_array_equal(cnnviz.run.read_patches(run, "logits", 1),
                                  cnnviz.run.read_patches(run, "classifier.3", 1))
    assert cnnviz.analysis.compare_runs(run, run, ["logits"]).layer.unique().tolist() == ["classifier.3"]
    # every command that names a run's layer
    out = cli("top", run, "--layer", "logits", "--channel", "1", code=0)
    assert "classifier.3" in out and "goldfish" in out
    assert "classifier.3" in cli("top", run, "--layer", "features[3]", "--channel", "0", code=0).replace(
        "features.3", "classifier.3")
    for kind, extra in (("montage", ["--channel", "1"]), ("distribution", ["--channel", "1"]),
                        ("overview", ["--channels", "0-3"])):
        cli("plot", kind, run, "--layer", "logits", *extra, "--out", tmp_path / f"{kind}.png", code=0)
        assert Image.open(tmp_path / f"{kind}.png").size[0] > 100
    cli("report", run, "--out", tmp_path / "site", "--layers", "logits", "--channels", "2", "--no-context",
        "--attributions", "logits:0", "--no-progress", code=0)
    assert sorted(p.name for p in (tmp_path / "site").iterdir() if p.is_dir()) == ["classifier.3"]
    assert (tmp_path / "site" / "classifier.3" / "c0-attr.png").exists()
    out = cli("explain", photo_dir / "things" / "coffee.png", "--run", run, "--layers", "logits",
              "--top", "2", code=0)
    assert "classifier.3" in out
    out = cli("compare", run, run, "--layers", "logits", "--top", "2", code=0)
    assert "classifier.3" in out
    cli("channel-vis", "--model", "squeezenet1_1", "--weights", "none", "--layer", "logits", "--channels",
        "1", "--steps", "1", "--run", run, "--out", tmp_path / "ch", "--no-progress", "--threads", "1",
        code=0)
    with h5py.File(run, "r") as f:
        assert f["layers/classifier.3/optimized/done"][()].nonzero()[0].tolist() == [1]
    # a run without logits says so
    plain = scan(photo_dir, load_model("squeezenet1_1", None), tmp_path / "plain.h5", layers="features.3",
                 top_k=1, workers=0, progress=False)
    assert "scanned no logits layer" in cli("top", plain, "--layer", "logits", code=2)


def test_class_names_in_the_terminal_table_montages_and_tooltips(labelled, squeezenet, tmp_path, cli):
    run = labelled
    table = cnnviz.top_patches(run, "features.3")
    out = cli("top", run, "--layer", "features.3", code=0)
    assert {"label", "label_name"} <= set(out.splitlines()[0].split())
    for name in set(table.label_name) - {""}:  # the WordNet id's and the index's class names
        assert name in out
    assert {"tabby", "cup"} <= set(table.label_name)
    out = cli("top", run, "--layer", "logits", "--max-rows", "8", code=0)  # channels 0, 1 first
    assert "channel_name" in out.splitlines()[0].split()
    for c in range(2):
        assert squeezenet.class_names[c] in out
    fig = figures.patch_montage(run, "logits", 1)
    assert fig._suptitle.get_text().startswith("classifier.3 channel 1 · goldfish")
    sheet = figures.layer_overview(run, "logits", [0, 1])
    assert [ax.get_title() for ax in sheet.axes if ax.images] == ["0 tench", "1 goldfish"]
    # a map layer's order pages: each thumbnail's tooltip and caption name its top class (when a
    # label comes at least twice among its top-k), its value under it
    site = write_report(run, tmp_path / "site", layers=["features.3"], channels=16, context=False,
                        progress=False).parent
    stats = cnnviz.channel_stats(run, "features.3").set_index("channel")
    page = html.unescape((site / "features.3" / "by-fire-rate.html").read_text())
    thumbs = re.findall(r'<a class="thumb"[^>]*href="c(\d+)\.html" title="([^"]*)">.*?<b>\d+</b> · ([^<]*)'
                        r'(?:<br><span class="name">([^<]*)</span>)?</a>', page)
    assert [int(c) for c, *_ in thumbs] == sorted(range(16), key=lambda c: (-stats.fire_rate[c], c))
    filled = table.groupby("channel").size()
    captioned = 0
    for c, title, value, caption in thumbs:
        row = stats.loc[int(c)]
        name = row.top_label_name or row.top_label
        assert value == f"{row.fire_rate:.3g}" and f"fire rate {value}" in title
        count = round(row.top_label_share * filled[int(c)])
        if row.nearly_silent:
            assert caption == "nearly silent"
        elif count >= 2:
            assert caption == name and f"top class {name} ({count} of {filled[int(c)]})" in title
            captioned += 1
        else:
            assert not caption and "top class" not in title
    assert captioned


def test_file_names_break_between_words_not_inside_them(labelled, tmp_path):
    from cnnviz.report.templating import breakable

    assert str(breakable("n04317175_8152_stethoscope.jpg")) == "n04317175_<wbr>8152_<wbr>stethoscope.<wbr>jpg"
    assert str(breakable("<b>_x")) == "&lt;b&gt;_<wbr>x"  # escaped first
    site = write_report(labelled, tmp_path / "site", layers=["features.3"], channels=1, context=False,
                        progress=False).parent
    assert re.search(r"<br>\w+\.<wbr>(png|jpg)<br>", (site / "features.3" / "c0.html").read_text())
    assert "anywhere" not in (site / "style.css").read_text()  # overflow-wrap: anywhere broke words


def test_a_second_report_leaves_no_page_of_the_first(labelled, tmp_path, monkeypatch):
    out = tmp_path / "site"
    write_report(labelled, out, channels=3, context=False, progress=False)
    first = {p.relative_to(out) for p in out.rglob("*")}
    assert out.joinpath("features.3", "c2.html").exists()
    write_report(labelled, out, layers=["features.3"], channels=2, context=False, progress=False)
    second = {p.relative_to(out) for p in out.rglob("*")}
    assert not (out / "features.3" / "c2.html").exists() and not (out / "classifier.3").exists()
    assert second < first  # nothing but the second report's files
    # every page links only to what is there
    for page in out.rglob("*.html"):
        for target in re.findall(r'href="([^"#]+)"', page.read_text()):
            assert (page.parent / target).exists(), (page, target)
    # a failing report leaves the last one as it was; no partial folder is left
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="channels"):
        write_report(labelled, out, channels=[999], context=False, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    # a folder holding anything else is never replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not pages cnnviz wrote"):
        write_report(labelled, other, channels=1, context=False, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    # nor the folder one works in (replacing it would pull it from under the shell)
    monkeypatch.chdir(out)
    with pytest.raises(UsageError, match="holds the current folder"):
        write_report(labelled, ".", channels=1, context=False, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_explain_and_compare_pages_are_replaced_whole(labelled, photo_dir, tmp_path, cli):
    out = tmp_path / "cmp"
    cli("compare", labelled, labelled, "--out", out, "--top", "3", code=0)
    assert len(list(out.glob("a-*.png"))) == 3
    cli("compare", labelled, labelled, "--out", out, "--top", "1", code=0)
    assert len(list(out.glob("a-*.png"))) == 1
    ex = tmp_path / "ex"
    image = photo_dir / "things" / "coffee.png"
    cli("explain", image, photo_dir / "animals" / "chelsea.png", "--run", labelled, "--out", ex, code=0)
    assert (ex / "img1.png").exists()
    cli("explain", image, "--run", labelled, "--out", ex, code=0)
    assert not (ex / "img1.png").exists() and not (ex / "explain-1.png").exists()


def test_compare_page_lists_layers_in_network_order_with_readable_columns(labelled, tmp_path):
    from cnnviz.report.analysis_pages import write_compare_page

    table = cnnviz.analysis.compare_runs(labelled, labelled)
    table = table.sort_values("layer", ascending=False)  # classifier.3 first, as "most changed" could put it
    page = write_compare_page(table, labelled, labelled, tmp_path / "cmp").read_text()
    summary = page[page.index("<h2>Per layer"): page.index("<h2>The ")]
    assert summary.index("<td>features.3</td>") < summary.index("<td>classifier.3</td>")
    assert "mean Δ mean max" not in page and "strength change (mean)" in page


def test_the_command_line_survives_a_reader_that_stops(labelled):
    """`cnnviz top RUN | head`: the reader closes the pipe; no error, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnviz", "top", str(labelled)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_bad_numbers_are_refused_before_torch_loads(photo_dir, tmp_path):
    code = ("import sys; from cnnviz.cli import main; "
            f"rc = main(['scan', {str(photo_dir)!r}, '--model', 'resnet18', '--weights', 'none', "
            f"'--out', {str(tmp_path / 'r.h5')!r}, '--top-k', '0']); print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "False"], res.stdout + res.stderr
    assert "--top-k 0: must be" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_quiet_scan_says_each_checkpoint(photo_dir, tmp_path, cli):
    n = sum(1 for p in photo_dir.rglob("*") if p.is_file())
    args = ["scan", photo_dir, "--model", "squeezenet1_1", "--weights", "none", "--layers", "features.3",
            "--top-k", "1", "--workers", "0", "--batch-size", "4", "--checkpoint-images", "4"]
    out = cli(*args, "--out", tmp_path / "q.h5", "--no-progress", code=0)
    notes = [line for line in out.splitlines() if line.startswith("cnnviz scan: note: checkpoint: ")]
    assert len(notes) == n // 4 + 1  # one per 4 images, and the last one
    assert re.match(rf"cnnviz scan: note: checkpoint: {n} of {n} images \(100%\), [\d.]+ img/s$", notes[-1])
    assert "checkpoint:" not in cli(*args, "--out", tmp_path / "p.h5", code=0)  # the bar says it


def test_a_loaded_model_is_one_line_in_a_notebook(squeezenet):
    text = repr(squeezenet)
    assert "\n" not in text and len(text) < 160
    assert text == "LoadedModel(squeezenet1_1, random (seed 1), input 224x224, 1000 classes, on cpu)"


def test_class_vis_names_what_the_model_sees(tmp_path, cli):
    out = cli("class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", "1,2", "--steps", "2",
              "--out", tmp_path / "c.png", "--no-progress", "--threads", "1", code=0)
    grid = np.asarray(Image.open(tmp_path / "c.png"))
    assert grid.shape[1] == 2 * 226 and grid.shape[0] > 226  # two 224 px tiles, captions under them
    model = load_model("squeezenet1_1", None)
    for i, line in enumerate(out.splitlines()[:2]):
        tile = torch.from_numpy(grid[:224, i * 226: i * 226 + 224].copy())[None]
        with torch.no_grad():
            probs = model.module(model.preprocessing.normalize(tile)).softmax(1)[0]
        top = [model.class_names[j] for j in probs.topk(3).indices.tolist()]
        seen = line.split("the model sees ")[1]
        assert [re.sub(r" [\d.]+$", "", part) for part in seen.split(", ")] == top
        assert (grid[226:, i * 226: i * 226 + 224] < 100).any()  # text in the caption band


def test_optimization_threads(monkeypatch, tmp_path, cli):
    from cnnviz.optim import threads

    torch.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "free_cores", lambda: (2, 1.6))  # another process keeps a core busy
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "free_cores", lambda: (2, 0.1))
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "free_cores", lambda: (2, 7.0))
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's word stands
    assert threads.default_threads() == 2
    assert "--threads 0: must be at least 1" in cli(
        "class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", "1", "--threads", "0",
        "--out", tmp_path / "c.png", code=2)
