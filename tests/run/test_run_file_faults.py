"""A damaged run file is named damaged (and what is intact still reads); faults that are not
the run file's (a full disk, another process holding it open, an error writing elsewhere) are
named as what they are, and storing optimized images on a full disk loses the copy, never the
run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

import cnnviz
from cnnviz import load_model, scan
from cnnviz.errors import RunFileError

from ..conftest import RESNET_KW, fill_disk, one_line_error, run_cli


@pytest.mark.slow
def test_a_damaged_run_file_is_reported_not_shown(photo_dir, tmp_path):
    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **RESNET_KW)
    with h5py.File(run, "r") as f:
        info = f["layers/layer3.0/topk/patches"].id.get_chunk_info(5)
    with open(run, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(64))
    with pytest.raises(RunFileError, match="is damaged"):
        cnnviz.run.read_patches(run, "layer3.0", 5)
    text = run_cli("report", str(run), "--out", str(tmp_path / "site"), "--no-progress", code=2)
    assert "run.h5 is damaged" in text
    assert "layer3.0" in run_cli("top", str(run), "--max-rows", "3", code=0)  # the rest still reads


@pytest.mark.slow
def test_a_report_on_a_full_disk_blames_the_disk_not_the_run_file(photo_dir, small_disk, tmp_path):
    """Writing the pages fails, the run file is fine: saying it is damaged would send a user to
    delete a night's work."""
    import hashlib

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **RESNET_KW)
    digest = hashlib.sha256(run.read_bytes()).hexdigest()
    filler = fill_disk(small_disk, leave=60_000)
    site = small_disk / "site"
    text = run_cli("report", str(run), "--out", str(site), "--no-context", "--no-progress", code=2)
    assert f"the disk holding {site} is full" in text and "damaged" not in text, text
    assert hashlib.sha256(run.read_bytes()).hexdigest() == digest
    filler.unlink()
    run_cli("report", str(run), "--out", str(site), "--no-context", "--no-progress", code=0)
    assert (site / "index.html").exists()


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_storing_images_on_a_full_disk_leaves_the_run_file_as_it_was(photo_dir, small_disk, tmp_path,
                                                                      capsys, monkeypatch):
    """channel-vis --run on a full disk printed 1,429 lines of HDF5 errors, segfaulted, and left
    the run unreadable. Now: refused before the optimization when the copy cannot fit; a disk
    that fills while the images are written loses the copy, never the run."""
    import cnnviz.run.update as update
    from cnnviz.cli import main
    from cnnviz.errors import OutputError
    from cnnviz.optim import store_in_run

    run = small_disk / "run.h5"
    # one ranking: the run file and its copy fit the 24 MB disk together (two would not)
    shutil.copy(scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", rank_by="max",
                     **RESNET_KW), run)
    before = _digest(run)
    filler = fill_disk(small_disk, leave=run.stat().st_size // 2)
    assert main(["channel-vis", "--model", "resnet18", "--weights", "none", "--layer", "layer3.0",
                 "--channels", "0-1", "--steps", "1", "--run", str(run), "--out", str(tmp_path / "ch"),
                 "--no-progress"]) == 2
    text = capsys.readouterr()
    one_line_error(text.err)
    assert f"the disk holding {run} has" in text.err and "free some space first" in text.err
    assert "render" not in text.out and not (tmp_path / "ch").exists()  # refused before the work
    filler.unlink()
    # the disk fills after that check passed, while HDF5 writes the images into the copy
    monkeypatch.setattr(update, "check_update_space", lambda *a, **k: None)
    filler = fill_disk(small_disk, leave=run.stat().st_size + 200_000)
    images = torch.rand(64, 3, 224, 224)  # 9.6 MB
    with pytest.raises(OutputError, match="filled up while the optimized images were written; run.h5 is "):
        store_in_run(run, "layer3.0", list(range(64)), images, "modern")
    assert _digest(run) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "run.h5"]  # no copy, no lock
    filler.unlink()
    run_cli("report", str(run), "--out", str(tmp_path / "site"), "--no-context", "--no-progress", code=0)
    store_in_run(run, "layer3.0", list(range(64)), images, "modern")
    with h5py.File(run, "r") as f:
        assert f["layers/layer3.0/optimized/done"][()].sum() == 64


_HOLD = """
import sys, time, h5py
f = h5py.File(sys.argv[1], sys.argv[2])
print("open", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_run_file_another_process_holds_open_is_named_busy_not_broken(photo_dir, tmp_path):
    """HDF5 locks an open file: reading one a notebook writes, or storing optimized images into
    one a notebook writes, says so, not that the file is no HDF5 file. A process that only reads
    it does not stop a store (which writes a copy and swaps it in)."""
    from cnnviz.optim import store_in_run

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **RESNET_KW)
    for attempt in (lambda: cnnviz.top_patches(run, layer="layer3.0"),
                    lambda: store_in_run(run, "layer3.0", [0], torch.rand(1, 3, 8, 8), "modern")):
        holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run), "r+"], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout.readline().strip() == "open"
            try:
                attempt()
            except RunFileError as exc:
                assert "is open for writing in another process" in str(exc), exc
                assert "HDF5 file" not in str(exc).split("(")[0], exc
            else:
                pytest.skip("HDF5 file locking is off here (HDF5_USE_FILE_LOCKING=FALSE?)")
        finally:
            holder.kill()
            holder.wait()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run), "r"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        store_in_run(run, "layer3.0", [0], torch.rand(1, 3, 8, 8), "modern")
    finally:
        holder.kill()
        holder.wait()
    with h5py.File(run, "r") as f:
        assert f["layers/layer3.0/optimized/done"][()].nonzero()[0].tolist() == [0]
    assert len(cnnviz.top_patches(run, layer="layer3.0"))  # unharmed once the other process is gone


@pytest.mark.slow
def test_an_error_writing_elsewhere_is_not_a_damaged_run_file(photo_dir, tmp_path):
    """Only errors reading the run file itself say that it is damaged."""
    import errno

    from cnnviz.run.reader import RunReader

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **RESNET_KW)
    for exc in (OSError(errno.ENOSPC, "No space left on device"),
                PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out.png")),
                OSError(errno.EIO, "Input/output error", str(tmp_path / "photo.jpg"))):
        with pytest.raises(type(exc)), RunReader(run):
            raise exc
    for exc in (OSError("Can't read data (wrong B-tree signature)"),
                OSError(errno.EIO, "Input/output error", str(run))):
        with pytest.raises(RunFileError, match="is damaged"), RunReader(run):
            raise exc
