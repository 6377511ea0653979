"""Commands on the wrong machine, with the wrong names or where they cannot write: each is
refused in one line (exit 2) before any work, and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from cnnviz import load_model, scan

from ..conftest import RESNET_ARGS, RESNET_KW, fill_disk, run_cli


@pytest.mark.slow
def test_cli_turns_machine_errors_into_one_line(photo_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "run.h5.work").write_text("a file where the work folder should go")
    text = run_cli("scan", str(photo_dir), *RESNET_ARGS, "--out", str(ro / "run.h5"), code=2)
    assert "run.h5.work" in text
    assert json.loads(json.dumps(text))  # printable


@pytest.mark.slow
@pytest.mark.parametrize("make", ["image", "binary"])
def test_a_library_that_is_not_a_library(photo_dir, tmp_path, make):
    target = tmp_path / ("photo.png" if make == "image" else "blob.bin")
    if make == "image":
        shutil.copy(photo_dir / "animals" / "chelsea.png", target)
    else:
        target.write_bytes(bytes(range(256)) * 4)
    text = run_cli("scan", str(target), *RESNET_ARGS, "--out", str(tmp_path / "r.h5"), code=2)
    assert "LIBRARY" in text and ("is an image" in text or "not a UTF-8 text file" in text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_that_is_not_here_is_one_line_for_every_command(resnet_run, photo_dir, tmp_path, cli):
    """explain and report with --explain/--attributions/--model raised torch's RuntimeError; a
    report with photos only ran on the CPU, silently."""
    image = photo_dir / "animals" / "chelsea.png"
    site = tmp_path / "site"
    report = ["report", resnet_run, "--out", site, "--no-progress"]
    for cmd in (["explain", image, "--run", resnet_run, "--device", "cuda"],
                [*report, "--explain", image, "--device", "cuda"],
                [*report, "--attributions", "layer3.0:0", "--device", "cuda"],
                [*report, "--model", "resnet18", "--weights", "none", "--device", "cuda"],
                [*report, "--device", "cuda"],
                [*report, "--device", "cuda:x"]):
        text = cli(*cmd, code=2)
        assert "--device" in text and ("no CUDA GPU" in text or "not a device" in text), text
    assert not site.exists()


def test_plot_refuses_a_format_it_cannot_write_before_drawing(resnet_run, tmp_path, cli, monkeypatch):
    import cnnviz.viz.figures as figures

    monkeypatch.setattr(figures, "patch_montage", lambda *a, **k: pytest.fail("drawn before the check"))
    text = cli("plot", "montage", resnet_run, "--layer", "layer3.0", "--out", tmp_path / "p.xyz", code=2)
    assert "--out" in text and ".xyz is not an image format" in text and ".png" in text
    assert list(tmp_path.iterdir()) == []


def test_report_channels_beyond_a_layer_are_refused_not_cut(resnet_run, tmp_path, cli):
    site = tmp_path / "site"
    text = cli("report", resnet_run, "--out", site, "--channels", "0-99999", "--no-context", "--no-progress",
               code=2)
    assert "--channels" in text and "layer1.1 has channels 0-63" in text
    assert not site.exists()  # refused before anything is written: no folder, no style.css
    text = cli("report", resnet_run, "--out", site, "--channels", "0-999999999999", "--no-context",
               "--no-progress", code=2)  # refused as written, not first built as a list
    text = cli("report", resnet_run, "--out", site, "--layers", "layer9", "--no-context", code=2)
    assert "--layers 'layer9' is not in run.h5" in text and not site.exists()


@pytest.mark.slow
def test_a_run_without_maxima_is_one_note_per_layer_and_flags_are_spelled(photo_dir, tmp_path, cli):
    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5",
               **{**RESNET_KW, "maxima_dtype": "none"})
    text = cli("report", run, "--out", tmp_path / "site", "--channels", "2", "--no-context", "--no-progress",
               code=0)
    assert "UserWarning" not in text and "warnings.warn" not in text and "maxima_dtype" not in text
    notes = [line for line in text.splitlines() if line.startswith("cnnviz report: note: ")]
    assert len(notes) == 2 and all("--maxima none" in n for n in notes), text
    text = cli("plot", "distribution", run, "--layer", "layer3.0", "--out", tmp_path / "d.png", code=2)
    assert "scanned with --maxima none or other --maxima-layers" in text


def test_an_unwritable_out_is_refused_before_the_optimization(resnet_run, small_disk, tmp_path, cli,
                                                             monkeypatch):
    """class-vis and channel-vis found out after minutes of optimizing; the work was lost."""
    import cnnviz.optim

    monkeypatch.setattr(cnnviz.optim, "render", lambda *a, **k: pytest.fail("optimized before the check"))
    monkeypatch.setattr(cnnviz.optim, "cs231n_class_visualization",
                        lambda *a, **k: pytest.fail("optimized before the check"))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    common = ["--model", "resnet18", "--weights", "none", "--no-progress"]
    for out, why in ((a_file / "x.png", "is a file, not a folder"), (a_file, "is a file; name a folder"),
                     (small_disk / "grid.png", "cannot be written here"),
                     (small_disk / "new" / "folder", "cannot be written here")):
        text = cli("class-vis", *common, "--target", "1", "--out", out, code=2)
        assert f"--out {out}" in text and why in text, text
        text = cli("channel-vis", *common, "--layer", "layer3.0", "--channels", "0", "--out", out,
                   "--run", resnet_run, code=2)
        assert f"--out {out}" in text and why in text, text


def test_refused_and_full_disk_commands_leave_nothing_behind(resnet_run, small_disk, photo_dir, tmp_path,
                                                              cli):
    """No style.css, 0-byte PNG or .lock after a command that failed."""
    filler = fill_disk(small_disk, leave=0)
    # a scan whose lock cannot even be signed on a full disk
    cli("scan", photo_dir, *RESNET_ARGS, "--out", small_disk / "run.h5", code=2)
    # a report that runs out of space: the folder it created goes; a folder that was there stays
    # as it was (a report is written beside it and swapped in only when complete)
    text = cli("report", resnet_run, "--out", small_disk / "site", "--no-context", "--no-progress", code=2)
    assert "is full" in text
    text = cli("explain", photo_dir / "animals" / "chelsea.png", "--run", resnet_run, "--out",
               small_disk / "explained", code=2)
    assert "is full" in text
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    (small_disk / "kept").mkdir()
    filler.unlink()
    filler = fill_disk(small_disk, leave=150_000)
    cli("report", resnet_run, "--out", small_disk / "kept", "--no-context", "--no-progress", code=2)
    assert not list((small_disk / "kept").iterdir())
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "kept"]  # no partial folder
    # optimized images to a full disk: none left half-written
    filler.unlink()
    filler = fill_disk(small_disk, leave=0)
    cli("channel-vis", "--model", "resnet18", "--weights", "none", "--layer", "layer3.0", "--channels", "0-1",
        "--steps", "1", "--out", small_disk / "ch", "--no-progress", code=2)
    assert all(p.stat().st_size > 0 for p in small_disk.rglob("*.png"))
    assert not list(small_disk.rglob("*.lock"))
    assert not (small_disk / "ch").exists()  # the folder this command made goes with its images
    # room for some images but not all: none is left (a half set looks like a result)
    filler.unlink()
    filler = fill_disk(small_disk, leave=250_000)
    targets = ",".join(map(str, range(12)))
    cli("class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", targets, "--steps", "1",
        "--out", small_disk / "classes", "--no-progress", code=2)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "kept"]
    # into a folder holding an earlier set: that set stays whole, none of it half replaced
    earlier = small_disk / "kept"
    for i in range(3):
        (earlier / f"class{i}.png").write_bytes(b"earlier %d" % i)
    cli("class-vis", "--model", "squeezenet1_1", "--weights", "none", "--target", targets, "--steps", "1",
        "--out", earlier, "--no-progress", code=2)
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == {f"class{i}.png": b"earlier %d" % i
                                                                  for i in range(3)}


def test_weights_without_model_are_refused_where_the_run_names_its_model(resnet_run, photo_dir, cli,
                                                                         tmp_path):
    """report and explain reload the run's own model; --weights alone was silently ignored."""
    text = cli("report", resnet_run, "--weights", "none", "--out", tmp_path / "site", code=2)
    assert "--weights goes with --model" in text
    text = cli("explain", photo_dir / "animals" / "chelsea.png", "--run", resnet_run, "--weights", "none",
               code=2)
    assert "--weights goes with --model" in text
    assert not (tmp_path / "site").exists()

