"""The command line: output of `layers`, `featuremaps`, `classify`, and errors that name the flag."""

from __future__ import annotations

import pytest
from PIL import Image

from cnnviz.cli import main


@pytest.mark.slow
def test_layers_lists_fields_and_refuses_nothing_silently(capsys):
    assert main(["layers", "--model", "resnet50", "--weights", "none"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("layer4.2 "))
    assert "2048" in row and "7x7" in row and "427x427" in row and "default" in row
    fc = next(line for line in out.splitlines() if line.startswith("fc "))
    assert "1000" in fc and "whole image; class logits (--layers logits)" in fc
    assert main(["layers", "--model", "resnet50", "--weights", "none", "--all"]) == 0
    out = capsys.readouterr().out
    relu = next(line for line in out.splitlines() if line.startswith("layer1.0.relu "))
    assert "not tappable" in relu


@pytest.mark.slow
def test_featuremaps_and_classify(photo_dir, tmp_path, capsys):
    img = str(photo_dir / "animals" / "chelsea.png")
    out = tmp_path / "grid.png"
    assert main(["featuremaps", img, "--model", "resnet18", "--weights", "none", "--layer",
                 "layer2[0].conv2", "--channels", "0-15", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 300
    assert main(["classify", img, "--model", "squeezenet1_1", "--weights", "none", "--top", "3"]) == 0
    assert capsys.readouterr().out.count("(class ") == 3


def test_errors_name_the_flag(photo_dir, tmp_path, capsys):
    img = str(photo_dir / "animals" / "chelsea.png")
    assert main(["featuremaps", img, "--model", "resnet18", "--weights", "none", "--layer", "layer9",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "layer 'layer9'" in capsys.readouterr().err
    assert main(["scan", str(tmp_path / "nowhere"), "--model", "resnet18", "--weights", "none",
                 "--out", str(tmp_path / "r.h5")]) == 2
    assert "LIBRARY" in capsys.readouterr().err
    assert main(["scan", str(photo_dir), "--model", "resnet18", "--weights", "none", "--shard", "x",
                 "--out", str(tmp_path / "r.h5")]) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["class-vis", "--model", "resnet18", "--weights", "none", "--target", "5000",
                 "--out", str(tmp_path / "c.png")]) == 2
    assert "--target" in capsys.readouterr().err


def test_class_vis_and_channel_vis_commands(photo_dir, tmp_path, capsys):
    import h5py

    out = tmp_path / "classes.png"
    assert main(["class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", "1,2",
                 "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "class 1 (goldfish): p = " in text and "class 2 " in text
    width, height = Image.open(out).size
    assert width == 2 * 226 and height > 226  # two 224 px tiles with a 2 px gutter, captions under them
    assert main(["class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", "7",
                 "--recipe", "modern", "--steps", "2", "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert (tmp_path / "m" / "class7.png").exists()
    run = tmp_path / "run.h5"
    assert main(["scan", str(photo_dir), "--model", "squeezenet1_1", "--weights", "none", "--layers",
                 "features.3", "--top-k", "2", "--workers", "0", "--out", str(run), "--no-progress"]) == 0
    assert main(["channel-vis", "--model", "squeezenet1_1", "--weights", "none", "--layer", "features.3",
                 "--channels", "4-6", "--steps", "2", "--run", str(run), "--out", str(tmp_path / "ch"),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "ch").iterdir()) == [
        "features.3-c4.png", "features.3-c5.png", "features.3-c6.png"]
    with h5py.File(run, "r") as f:
        assert f["layers/features.3/optimized/done"][()].nonzero()[0].tolist() == [4, 5, 6]
    # a --run that cannot take the images is refused before any optimization
    capsys.readouterr()
    for bad, message in ((tmp_path / "nope.h5", "does not exist"),
                         (run, "--layer 'features.4' is not in run.h5")):
        assert main(["channel-vis", "--model", "squeezenet1_1", "--weights", "none", "--layer",
                     "features.4" if bad == run else "features.3", "--channels", "0", "--steps", "2",
                     "--run", str(bad), "--out", str(tmp_path / "never"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "never").exists()


@pytest.mark.slow
def test_channel_vis_keeps_finished_images_when_storing_fails(tmp_path, capsys, monkeypatch):
    """The run file refuses the images (another process opened it meanwhile): the images are
    written all the same, and the error is one line. They are stored once, at the end (each
    store writes a copy of the run file)."""
    import cnnviz.optim
    from cnnviz import load_model, scan
    from cnnviz.errors import RunFileError

    calls = []

    def store(run, layer, channels, images, recipe):
        calls.append(list(channels))
        raise RunFileError(f"{run} is open in another process")

    monkeypatch.setattr(cnnviz.optim, "store_in_run", store)
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 90, 20)).save(lib / f"{i}.png")
    run = scan(lib, load_model("squeezenet1_1", None), tmp_path / "run.h5", layers="features.3", top_k=1,
               workers=0, progress=False)
    assert main(["channel-vis", "--model", "squeezenet1_1", "--weights", "none", "--layer", "features.3",
                 "--channels", "0-3", "--batch-size", "2", "--steps", "2", "--run", str(run),
                 "--out", str(tmp_path / "ch"), "--no-progress"]) == 2
    assert "is open in another process" in capsys.readouterr().err
    assert calls == [[0, 1, 2, 3]]
    assert sorted(p.name for p in (tmp_path / "ch").iterdir()) == [
        "features.3-c0.png", "features.3-c1.png", "features.3-c2.png", "features.3-c3.png"]


def test_library_errors_are_spelled_as_flags_and_bugs_keep_their_traceback(
        photo_dir, tmp_path, capsys, monkeypatch):
    """A CnnvizError is one line naming the flag (the library names its parameter, the CLI
    spells it); anything else is a bug: traceback plus one sentence, exit 1."""
    out = tmp_path / "r.h5"
    out.write_bytes(b"")
    assert main(["scan", str(photo_dir), "--model", "resnet18", "--weights", "none",
                 "--out", str(out), "--top-k", "2", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} exists; pass --overwrite" in err
    assert "overwrite=True" not in err and "Traceback" not in err
    assert main(["scan", str(photo_dir), "--model", "resnet18", "--weights", "none",
                 "--out", str(tmp_path / "s.h5"), "--top-k", "0"]) == 2
    assert "error: --top-k 0: must be" in capsys.readouterr().err

    import cnnviz.model.loading as loading

    def broken(*args, **kwargs):
        raise KeyError("an internal slip")

    monkeypatch.setattr(loading, "available_models", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'an internal slip'" in err and "this is a bug in cnnviz" in err


@pytest.mark.slow
def test_reading_results_and_help_do_not_import_torch(photo_dir, tmp_path):
    """`cnnviz --help` and `cnnviz top` (reading results in the morning) load neither torch nor
    captum: what made them take 9 s. (Their times are printed by scripts/bench_startup.py.)"""
    import json
    import subprocess
    import sys

    from cnnviz import load_model, scan

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "r.h5", layers="layer2.0",
               top_k=2, workers=0, progress=False)
    code = ("import sys, json\nfrom cnnviz.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'captum') if m in sys.modules)))")
    for argv in (["--help"], ["compare", str(run), str(run)],
                 ["report", str(run), "--out", str(tmp_path / "site"), "--no-context", "--no-progress"],
                 ["failures", str(run)], ["top", str(run), "--max-rows", "3"]):
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                             check=True)
        assert json.loads(res.stdout.strip().splitlines()[-1]) == [], argv
    assert "layer2.0" in res.stdout


@pytest.mark.slow
def test_misused_commands_answer_in_one_line(photo_dir, tmp_path, capsys):
    """Every way of naming something that is not in a run is one line naming the flag."""
    from cnnviz import load_model, scan

    run = str(scan(photo_dir, load_model("squeezenet1_1", None), tmp_path / "r.h5", layers="features.3",
                   top_k=2, workers=0, progress=False))
    cases = [
        (["plot", "montage", run, "--layer", "features.3", "--channel", "999", "--out", "x.png"],
         "--channel [999]"),
        (["plot", "overview", run, "--layer", "features.3", "--channels", "500", "--out", "x.png"],
         "--channels [500]"),
        (["plot", "distribution", run, "--layer", "nope", "--out", "x.png"], "--layer 'nope'"),
        (["top", run, "--channel", "-1"], "--channel [-1]"),
        (["report", run, "--out", str(tmp_path / "rep"), "--layers", "nope"], "--layers 'nope'"),
        (["report", run, "--out", run], "is a file; a report is a folder of pages"),
        (["class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", "zebraa",
          "--out", "x.png"],
         "--target 'zebraa' is not a class of this model; did you mean 'zebra'?"),
        (["report", run, "--out", str(tmp_path / "rep"), "--attributions", "features.3:999",
          "--model", "squeezenet1_1", "--weights", "none"], "[999]"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and err.count("\n") == 1, (argv, err)


@pytest.mark.slow
def test_unreadable_images_are_counted_by_kind_and_listed(tmp_path, capsys):
    """The scan's last lines say what could not be read and how to see every one; ``failures``
    lists them (text or CSV, equal to ``cnnviz.failures``); the report has a page for them; a
    library of which nothing could be read gets a note."""
    import io

    import pandas as pd

    import cnnviz

    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(lib / "good.png")
    for name in ("bad1.jpg", "bad2.jpg"):
        (lib / name).write_bytes(b"not an image")
    (lib / "gone.png").symlink_to(tmp_path / "nowhere.png")
    run = tmp_path / "run.h5"
    common = ["--model", "squeezenet1_1", "--weights", "none", "--layers", "features.3", "--top-k", "1",
              "--workers", "0", "--no-progress"]
    assert main(["scan", str(lib), *common, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run}: 4 images, 3 unreadable" in out and f"cnnviz failures {run}" in out
    assert "       2 x UnidentifiedImageError (e.g. bad1.jpg: " in out and "1 x FileNotFoundError" in out
    expected = cnnviz.failures(run)
    assert sorted(expected.path) == ["bad1.jpg", "bad2.jpg", "gone.png"]
    assert main(["failures", str(run), "--csv"]) == 0
    listed = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    pd.testing.assert_frame_equal(listed, expected, check_dtype=False)
    assert main(["failures", str(run)]) == 0
    text = capsys.readouterr().out
    assert all(f"{row.path}\t{row.reason}" in text for row in expected.itertuples())
    assert main(["report", str(run), "--out", str(tmp_path / "site"), "--no-context", "--no-progress"]) == 0
    page = (tmp_path / "site" / "failures.html").read_text()
    assert all(path in page for path in expected.path) and "failures.html" in (
        tmp_path / "site" / "index.html").read_text()
    (lib / "good.png").unlink()
    assert main(["scan", str(lib), *common, "--out", str(tmp_path / "none.h5")]) == 0
    assert "none of the 3 images could be read" in capsys.readouterr().err
