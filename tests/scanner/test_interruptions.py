"""Faults an overnight scan meets, made for real: two processes on one output, kill -9 at
several points, files that change under the scan, damaged checkpoints and run files, a full
disk (a small tmpfs where the test may mount one), and bad images of every kind.

Each test names the outcome a user must get: the run is never lost or silently wrong, and the
command line says in one line what happened and what to do (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import load_model, scan
from cnnviz.errors import RunFileError, ScanError
from cnnviz.images.decoding import MAX_PIXELS, decode_file
from cnnviz.images.library import ImageLibrary
from cnnviz.scanner import scan_shard

from ..conftest import IMAGEN, needs_shared
from .test_scan import _big_library, _checkpointed, _cli, _wait_for, assert_same_file

COMMON = ["--model", "resnet18", "--weights", "none", "--layers", "layer1.1,layer3.0", "--top-k", "3",
          "--batch-size", "2", "--workers", "0", "--no-progress"]
KW = dict(layers="layer1.1,layer3.0", top_k=3, batch_size=2, workers=0, progress=False)


def _one_line_error(text: str) -> None:
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1, text


# -- one writer per output ------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_scan_on_the_same_output_is_refused_and_the_first_is_unharmed(photo_dir, tmp_path):
    lib = _big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    a = _cli("scan", str(lib), *COMMON, "--out", str(out), "--checkpoint-images", "2")
    _wait_for(_checkpointed(tmp_path / "run.h5.work", 2), what="A's first checkpoints")
    os.kill(a.pid, signal.SIGSTOP)  # A holds its lock while stopped: B and C meet it for sure
    try:
        for extra in (["--resume"], ["--overwrite"], []):
            b = _cli("scan", str(lib), *COMMON, "--out", str(out), *extra)
            text = b.stdout.read()
            assert b.wait(timeout=120) == 2, text
            _one_line_error(text)
            assert f"another cnnviz process (pid {a.pid} on " in text, text
    finally:
        os.kill(a.pid, signal.SIGCONT)
    text = a.stdout.read()
    assert a.wait(timeout=600) == 0, text
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **KW)
    assert_same_file(ref, out)
    assert not (tmp_path / "run.h5.lock").exists()


# -- intent survives interruption -----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("again", [["--overwrite", "--resume"], ["--resume"]])
def test_an_interrupted_overwrite_resumes(photo_dir, tmp_path, again):
    lib = _big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    out.write_bytes(b"yesterday's run")
    proc = _cli("scan", str(lib), *COMMON, "--out", str(out), "--overwrite", "--checkpoint-images", "2")
    _wait_for(_checkpointed(tmp_path / "run.h5.work", 3), what="checkpoints")
    proc.send_signal(signal.SIGINT)
    text = proc.stdout.read()
    assert proc.wait() == 130 and "--resume" in text, text
    assert out.read_bytes() == b"yesterday's run"  # not replaced before the new run is whole
    resumed = _cli("scan", str(lib), *COMMON, "--out", str(out), *again)
    text = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, text
    assert "interrupted scan" not in text
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **KW)
    assert_same_file(ref, out)


# -- kill -9 during the final write; a library that changes between sessions ----------------

@pytest.mark.slow
def test_kill_during_assembly_then_resume_writes_the_same_file(photo_dir, tmp_path):
    lib = _big_library(photo_dir, tmp_path, copies=1)
    out = tmp_path / "run.h5"
    common = [*COMMON[:4], "--layers", "layer1.0,layer2.0,layer3.0,layer4.0", *COMMON[6:],
              "--patch-size", "128"]
    proc = _cli("scan", str(lib), *common, "--out", str(out))
    tmp = tmp_path / "run.h5.tmp"
    _wait_for(lambda: tmp.exists() or proc.poll() is not None, what="the run file being written")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run file was complete before the kill"
    assert (tmp_path / "run.h5.work" / "state.npz").exists()
    resumed = _cli("scan", str(lib), *common, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert not tmp.exists() and not (tmp_path / "run.h5.work").exists()
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5",
               layers="layer1.0,layer2.0,layer3.0,layer4.0", top_k=3, batch_size=2, workers=0,
               progress=False, patch_size=128)
    assert_same_file(ref, out)


@pytest.mark.slow
def test_images_removed_and_added_between_sessions(photo_dir, tmp_path):
    """kill -9 mid-scan; then a not-yet-scanned image is deleted and a new one added. The resumed
    scan keeps the listing it started with: the deleted image is a recorded failure, the new one
    is not part of this scan, and every other image has its exact results."""
    lib = _big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    proc = _cli("scan", str(lib), *COMMON, "--out", str(out), "--checkpoint-images", "2")
    _wait_for(_checkpointed(tmp_path / "run.h5.work", 2), what="checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listing = ImageLibrary.open(lib)
    victim = listing.relpaths[-2]
    (lib / victim).unlink()
    shutil.copy(photo_dir / "animals" / "chelsea.png", lib / "copy0" / "animals" / "zz-new.png")
    resumed = _cli("scan", str(lib), *COMMON, "--out", str(out), "--resume")
    text = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, text
    assert "1 images were added to and 1 removed" in text
    with h5py.File(out, "r") as f:
        paths = [p.decode() for p in f["images/path"][()]]
        failures = dict(zip(f["failures/path"].asstr()[()], f["failures/reason"].asstr()[()], strict=True))
    assert paths == listing.relpaths
    assert "FileNotFoundError" in failures[victim]
    # the same as a scan of the library with that one image unreadable from the start
    (lib / victim).write_bytes(b"gone")
    (lib / "copy0" / "animals" / "zz-new.png").unlink()
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **KW)
    with h5py.File(ref, "r") as f, h5py.File(out, "r") as g:
        for name in ("layer1.1", "layer3.0"):
            for key in ("topk/image_id", "topk/activation", "maxima", "topk/patches"):
                np.testing.assert_array_equal(f[f"layers/{name}/{key}"][()], g[f"layers/{name}/{key}"][()])


@pytest.mark.slow
def test_images_that_change_after_they_were_scanned_lose_their_patches_only(photo_dir, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(photo_dir, lib)
    model = load_model("resnet18", None)
    ref = scan(lib, model, tmp_path / "ref.h5", **KW)
    top = cnnviz.top_patches(ref, layer="layer3.0")
    counts = top.image_path.value_counts()
    vanished, garbage, replaced = list(counts.index[:3])
    out = tmp_path / "run.h5"
    scan_shard(lib, model, out, (0, 1), **KW)  # every image scanned; the run file not written yet
    (lib / vanished).unlink()
    (lib / garbage).write_bytes(b"\x89PNG not any more")
    other = next(p for p in counts.index[3:] if Path(p).suffix == Path(replaced).suffix)
    shutil.copy(lib / other, lib / replaced)
    scan(lib, model, out, resume=True, **KW)
    df = cnnviz.top_patches(out)
    reasons = df.groupby("image_path").patch_error.first()
    assert reasons[vanished] == "vanished after it was scanned"
    assert reasons[garbage].startswith("unreadable when its patches were cut")
    assert reasons[replaced] == "changed after it was scanned (its content differs)"
    assert (reasons.drop([vanished, garbage, replaced]) == "").all()
    with h5py.File(ref, "r") as f, h5py.File(out, "r") as g:
        assert g.attrs["n_patch_errors"] == 3
        for name in ("layer1.1", "layer3.0"):
            ids = g[f"layers/{name}/topk/image_id"][()]
            paths = g["images/path"].asstr()[()]
            lost = np.isin(paths[np.maximum(ids, 0)], [vanished, garbage, replaced]) & (ids >= 0)
            got, want = g[f"layers/{name}/topk/patches"][()], f[f"layers/{name}/topk/patches"][()]
            assert (got[lost] == 0).all() and lost.any()
            np.testing.assert_array_equal(got[~lost], want[~lost])
            np.testing.assert_array_equal(g[f"layers/{name}/maxima"][()], f[f"layers/{name}/maxima"][()])


@pytest.mark.slow
def test_resume_with_rewritten_weights_is_refused(photo_dir, tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(load_model("resnet18", None, seed=0).module.state_dict(), weights)
    lib = _big_library(photo_dir, tmp_path, copies=2)
    common = ["--weights", str(weights), *COMMON[4:]]
    out = tmp_path / "run.h5"
    proc = _cli("scan", str(lib), "--model", "resnet18", *common, "--out", str(out),
                "--checkpoint-images", "2")
    _wait_for(_checkpointed(tmp_path / "run.h5.work", 2), what="checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torch.save(load_model("resnet18", None, seed=1).module.state_dict(), weights)  # same path
    resumed = _cli("scan", str(lib), "--model", "resnet18", *common, "--out", str(out), "--resume")
    text = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 2, text
    _one_line_error(text)
    assert "not the same scan" in text and "weights_digest" in text


# -- damaged checkpoints and run files ------------------------------------------------------

def _interrupted_work(photo_dir, tmp_path) -> tuple[Path, Path, Path]:
    """A work folder with several checkpoints, as a crash leaves it."""
    lib = _big_library(photo_dir, tmp_path, copies=1)
    out = tmp_path / "run.h5"
    work = scan_shard(lib, load_model("resnet18", None), out, (0, 1), checkpoint_images=2, **KW)
    state = dict(np.load(work / "state.npz"))
    state["next_batch"] = np.int64(3)  # as if it had stopped after batch 2
    state["next_image"] = np.int64(3 * KW["batch_size"])
    np.savez(work / "state.npz", **state)
    return lib, out, work


@pytest.mark.slow
def test_a_truncated_state_falls_back_to_the_previous_checkpoint(photo_dir, tmp_path):
    lib, out, work = _interrupted_work(photo_dir, tmp_path)
    data = (work / "state.npz").read_bytes()
    (work / "state.npz").write_bytes(data[: len(data) // 2])
    scan(lib, load_model("resnet18", None), out, resume=True, **KW)
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **KW)
    assert_same_file(ref, out)


def test_the_state_file_is_never_missing_while_a_new_one_replaces_it(tmp_path, monkeypatch):
    """A reader (a monitor, a test polling it) or a crash between two renames must find a
    complete ``state.npz``; the one replaced is kept as ``state.prev.npz``."""
    import cnnviz.scanner.workdir as workdir

    work = workdir.WorkDir(tmp_path / "w")
    work.path.mkdir()
    work.save_state(next_batch=np.int64(1))
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(work.state_path.exists())
        real_replace(src, dst)
        seen.append(work.state_path.exists())

    monkeypatch.setattr(workdir.os, "replace", replace)
    for b in (2, 3):
        work.save_state(next_batch=np.int64(b))
    assert seen and all(seen)
    assert int(work.load_state()["next_batch"]) == 3
    assert int(np.load(work.prev_state_path)["next_batch"]) == 2
    assert sorted(p.name for p in work.path.iterdir()) == ["state.npz", "state.prev.npz"]


@pytest.mark.slow
def test_each_checkpoint_counts_exactly_the_batches_its_state_names(photo_dir, tmp_path, monkeypatch):
    """Checkpoints are written by a background thread while the next batches run; one written
    slowly must still hold the reducers as they were when it was taken (a state that counted a
    batch beyond its ``next_batch`` makes a resume count that batch twice: seen on a slow CI
    disk). The writer is slowed here so that every checkpoint overlaps the next batch."""
    from cnnviz.scanner.workdir import WorkDir

    written = []
    save_state = WorkDir.save_state

    def slow_save_state(self, **arrays):
        time.sleep(0.3)
        written.append({k: np.array(v, copy=True) for k, v in arrays.items()})
        save_state(self, **arrays)

    monkeypatch.setattr(WorkDir, "save_state", slow_save_state)
    lib = _big_library(photo_dir, tmp_path, copies=1)
    scan_shard(lib, load_model("resnet18", None), tmp_path / "run.h5", (0, 1), checkpoint_images=2, **KW)
    relpaths = ImageLibrary.open(lib).relpaths
    readable = np.array([not str(p).endswith("corrupt.jpg") for p in relpaths])
    assert len(written) >= len(relpaths) // 2 and not readable.all()
    for state in written:
        upto = int(state["next_batch"]) * KW["batch_size"]
        for layer in (0, 1):
            assert (state[f"l{layer}_stat_count"] == readable[:upto].sum()).all(), upto
        assert (state["l0_ids"] < upto).all()


@pytest.mark.slow
def test_damaged_checkpoints_are_named_before_scanning(photo_dir, tmp_path):
    lib, out, work = _interrupted_work(photo_dir, tmp_path)
    seg = sorted(work.glob("seg-*/l0_max.npy"))[0]
    seg.write_bytes(seg.read_bytes()[:-200])
    text = _run_cli("scan", str(lib), *COMMON, "--out", str(out), "--resume", code=2)
    assert f"checkpoint {seg} is damaged" in text and "--overwrite" in text
    (work / "meta.json").write_text('{"format": "cnnviz-scan-work", "mod')
    text = _run_cli("scan", str(lib), *COMMON, "--out", str(out), "--resume", code=2)
    assert f"{work / 'meta.json'} is damaged" in text and "--overwrite" in text


def _run_cli(*args, code: int) -> str:
    proc = _cli(*args)
    text = proc.stdout.read()
    assert proc.wait(timeout=300) == code, text
    if code == 2:
        _one_line_error(text)
    return text


@pytest.mark.slow
def test_a_damaged_run_file_is_reported_not_shown(photo_dir, tmp_path):
    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **KW)
    with h5py.File(run, "r") as f:
        info = f["layers/layer3.0/topk/patches"].id.get_chunk_info(5)
    with open(run, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(64))
    with pytest.raises(RunFileError, match="is damaged"):
        cnnviz.run.read_patches(run, "layer3.0", 5)
    text = _run_cli("report", str(run), "--out", str(tmp_path / "site"), "--no-progress", code=2)
    assert "run.h5 is damaged" in text
    assert "layer3.0" in _run_cli("top", str(run), "--max-rows", "3", code=0)  # the rest still reads


# -- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs, where the test may mount one (root on Linux); else skipped."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    free = shutil.disk_usage(disk).free
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_a_scan_that_cannot_fit_is_refused_before_any_work(photo_dir, small_disk):
    out = small_disk / "run.h5"
    text = _run_cli("scan", str(photo_dir), *COMMON[:4], "--layers", "layer1.0,layer2.0,layer3.0,layer4.0",
                    "--top-k", "8", "--patch-size", "128", "--workers", "0", "--no-progress",
                    "--out", str(out), code=2)
    assert f"the disk of {out} has" in text and "--maxima float16" in text
    assert list(small_disk.iterdir()) == []


_FULL_DURING = """
import sys
from pathlib import Path
import cnnviz.scanner.assemble as assemble
import cnnviz.scanner.loop as loop
from cnnviz import load_model, scan
from cnnviz.errors import ScanError
assemble.check_space = loop.check_space = lambda *a, **k: None   # as if it filled after the checks
try:
    scan(sys.argv[1], load_model("resnet18", None), sys.argv[2], resume=True, layers="layer1.1,layer3.0",
         top_k=3, batch_size=2, workers=0, progress=False)
except ScanError as exc:
    print("ScanError:", exc)
    sys.exit(2)
"""


@pytest.mark.slow
def test_a_disk_that_fills_while_the_run_file_is_written(photo_dir, small_disk, tmp_path):
    """No segfault, no traceback, no .tmp left behind; the scan is kept and resumes."""
    out = small_disk / "run.h5"
    work = scan_shard(photo_dir, load_model("resnet18", None), out, (0, 1), **KW)
    filler = _fill(small_disk, leave=200_000)
    res = subprocess.run([sys.executable, "-c", _FULL_DURING, str(photo_dir), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "filled up while the run file was written" in res.stdout and "resume=True" in res.stdout
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert not Path(str(out) + ".tmp").exists() and (work / "state.npz").exists()
    filler.unlink()
    scan(photo_dir, load_model("resnet18", None), out, resume=True, **KW)
    assert_same_file(scan(photo_dir, load_model("resnet18", None), tmp_path / "ref.h5", **KW), out)


@pytest.mark.slow
def test_a_report_on_a_full_disk_blames_the_disk_not_the_run_file(photo_dir, small_disk, tmp_path):
    """Writing the pages fails, the run file is fine: saying it is damaged would send a user to
    delete a night's work."""
    import hashlib

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **KW)
    digest = hashlib.sha256(run.read_bytes()).hexdigest()
    filler = _fill(small_disk, leave=60_000)
    site = small_disk / "site"
    text = _run_cli("report", str(run), "--out", str(site), "--no-context", "--no-progress", code=2)
    assert f"the disk holding {site} is full" in text and "damaged" not in text, text
    assert hashlib.sha256(run.read_bytes()).hexdigest() == digest
    filler.unlink()
    _run_cli("report", str(run), "--out", str(site), "--no-context", "--no-progress", code=0)
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
    shutil.copy(scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", rank_by="max", **KW), run)
    before = _digest(run)
    filler = _fill(small_disk, leave=run.stat().st_size // 2)
    assert main(["channel-vis", "--model", "resnet18", "--weights", "none", "--layer", "layer3.0",
                 "--channels", "0-1", "--steps", "1", "--run", str(run), "--out", str(tmp_path / "ch"),
                 "--no-progress"]) == 2
    text = capsys.readouterr()
    _one_line_error(text.err)
    assert f"the disk holding {run} has" in text.err and "free some space first" in text.err
    assert "render" not in text.out and not (tmp_path / "ch").exists()  # refused before the work
    filler.unlink()
    # the disk fills after that check passed, while HDF5 writes the images into the copy
    monkeypatch.setattr(update, "check_update_space", lambda *a, **k: None)
    filler = _fill(small_disk, leave=run.stat().st_size + 200_000)
    images = torch.rand(64, 3, 224, 224)  # 9.6 MB
    with pytest.raises(OutputError, match="filled up while the optimized images were written; run.h5 is "):
        store_in_run(run, "layer3.0", list(range(64)), images, "modern")
    assert _digest(run) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "run.h5"]  # no copy, no lock
    filler.unlink()
    _run_cli("report", str(run), "--out", str(tmp_path / "site"), "--no-context", "--no-progress", code=0)
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

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **KW)
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

    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **KW)
    for exc in (OSError(errno.ENOSPC, "No space left on device"),
                PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out.png")),
                OSError(errno.EIO, "Input/output error", str(tmp_path / "photo.jpg"))):
        with pytest.raises(type(exc)), RunReader(run):
            raise exc
    for exc in (OSError("Can't read data (wrong B-tree signature)"),
                OSError(errno.EIO, "Input/output error", str(run))):
        with pytest.raises(RunFileError, match="is damaged"), RunReader(run):
            raise exc


@pytest.mark.slow
def test_a_disk_that_fills_while_checkpointing(photo_dir, small_disk, tmp_path):
    """The disk fills after the scan started (its up-front check passed): the checkpoint that
    meets the full disk is abandoned cleanly, the last good one kept, and --resume finishes."""
    lib = _big_library(photo_dir, tmp_path, copies=2)
    out = small_disk / "run.h5"
    common = [*COMMON, "--patch-size", "16", "--top-k", "2"]
    proc = _cli("scan", str(lib), *common, "--out", str(out), "--checkpoint-images", "2")
    _wait_for(_checkpointed(small_disk / "run.h5.work", 2), what="checkpoints")
    os.kill(proc.pid, signal.SIGSTOP)
    filler = _fill(small_disk, leave=0)
    os.kill(proc.pid, signal.SIGCONT)
    text = proc.stdout.read()
    assert proc.wait(timeout=300) == 2, text
    _one_line_error(text)
    assert "is full" in text and "the last complete checkpoint is kept" in text and "--resume" in text
    assert not list(small_disk.glob("run.h5.work/*.tmp")) and not list(small_disk.glob("run.h5.work/*next*"))
    filler.unlink()
    resumed = _cli("scan", str(lib), *common, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **{**KW, "top_k": 2}, patch_size=16)
    assert_same_file(ref, out)


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(photo_dir, tmp_path, monkeypatch):
    """The same, simulated where no filesystem can be mounted: ENOSPC from the checkpoint write."""
    import errno

    import cnnviz.scanner.workdir as workdir

    calls = {"n": 0}
    real = np.savez

    def savez(f, **arrays):
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(workdir.np, "savez", savez)
    lib = _big_library(photo_dir, tmp_path, copies=1)
    out = tmp_path / "run.h5"
    with pytest.raises(ScanError, match="the last complete checkpoint is kept"):
        scan(lib, load_model("resnet18", None), out, checkpoint_images=2, **KW)
    work = tmp_path / "run.h5.work"
    assert not list(work.glob("*.tmp")) and not list(work.glob("state.next.npz"))
    monkeypatch.setattr(workdir.np, "savez", real)
    scan(lib, load_model("resnet18", None), out, resume=True, **KW)
    assert_same_file(scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **KW), out)


# -- bad images -----------------------------------------------------------------------------

def test_decoding_rules_against_known_pixels(tmp_path):
    ramp = np.tile(np.arange(0, 65536, 257, dtype=np.uint16)[None, :], (8, 1))  # 0..65535 in 256 steps
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = np.asarray(decode_file(tmp_path / "g16.png").image)
    np.testing.assert_array_equal(got[..., 0], np.tile(np.arange(256, dtype=np.uint8), (8, 1)))
    assert (got[..., 0] == got[..., 2]).all()

    floats = np.linspace(0, 1, 256, dtype=np.float32)[None, :].repeat(4, 0)
    Image.fromarray(floats, "F").save(tmp_path / "f32.tiff")
    np.testing.assert_array_equal(np.asarray(decode_file(tmp_path / "f32.tiff").image)[..., 1],
                                  np.round(floats * 255).astype(np.uint8))

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)  # landscape, stored as is
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
    decoded = decode_file(tmp_path / "phone.png")
    np.testing.assert_array_equal(np.asarray(decoded.image), np.rot90(pixels, k=-1))
    assert decoded.original_size == (20, 30)  # upright: 20 wide, 30 high


def test_a_big_jpeg_is_decoded_at_reduced_scale_with_the_original_geometry(tmp_path):
    Image.new("RGB", (6000, 4000), (200, 30, 40)).save(tmp_path / "big.jpg", quality=90)
    decoded = decode_file(tmp_path / "big.jpg", min_side=256)
    assert decoded.original_size == (6000, 4000)
    assert min(decoded.image.size) >= 512 and decoded.image.size[0] < 6000
    from cnnviz.model import Preprocessing

    pre = Preprocessing(resize=256, crop=(224, 224))
    crop, geometry = pre.crop_uint8(decoded.image, decoded.original_size)
    box = geometry.to_original((0, 0, 224, 224))  # the whole crop, in the photo's pixels
    # resized to 384x256 (scale 15.625), crop offset (16, 80): the box in the photo is exact
    assert box == pytest.approx((16 * 15.625, 80 * 15.625, 240 * 15.625, 304 * 15.625), abs=1)


@pytest.mark.slow
def test_every_listed_file_is_scanned_or_recorded(photo_dir, tmp_path, recwarn):
    lib = tmp_path / "lib"
    (lib / "things").mkdir(parents=True)
    elsewhere = tmp_path / "cats-elsewhere"
    elsewhere.mkdir()
    for name in ("chelsea.png", "horse.png"):
        shutil.copy(photo_dir / "animals" / name, elsewhere / name)
    (lib / "cats").symlink_to(elsewhere, target_is_directory=True)  # a symlinked class folder
    (lib / "things" / "loop").symlink_to(lib, target_is_directory=True)  # a link loop
    (lib / "things" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    shutil.copy(photo_dir / "things" / "coffee.png", lib / "things" / "coffee.png")
    Image.open(photo_dir / "things" / "coffee.png").convert("RGB").save(lib / "things" / "coffee.avif")
    bomb = Image.new("1", (20000, MAX_PIXELS // 20000 + 1000))
    bomb.save(lib / "things" / "bomb.png")
    assert (lib / "things" / "bomb.png").stat().st_size < 1_000_000
    listing = ImageLibrary.open(lib)
    assert sorted(listing.relpaths) == ["cats/chelsea.png", "cats/horse.png", "things/bomb.png",
                                        "things/broken.jpg", "things/coffee.avif", "things/coffee.png"]
    run = scan(lib, load_model("resnet18", None), tmp_path / "run.h5", layers="layer2.0", top_k=2,
               workers=0, progress=False)
    with h5py.File(run, "r") as f:
        failed = dict(zip(f["failures/path"].asstr()[()], f["failures/reason"].asstr()[()], strict=True))
        ok = dict(zip(f["images/path"].asstr()[()], f["images/ok"][()], strict=True))
    assert set(failed) == {"things/bomb.png", "things/broken.jpg"}
    assert "over the limit" in failed["things/bomb.png"]
    assert "FileNotFoundError" in failed["things/broken.jpg"]
    assert ok["cats/chelsea.png"] and ok["things/coffee.avif"]
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


@pytest.mark.slow
def test_cli_turns_machine_errors_into_one_line(photo_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "run.h5.work").write_text("a file where the work folder should go")
    text = _run_cli("scan", str(photo_dir), *COMMON, "--out", str(ro / "run.h5"), code=2)
    assert "run.h5.work" in text
    assert json.loads(json.dumps(text))  # printable


def test_hostile_files_in_a_library(photo_dir, tmp_path):
    """A FIFO named like a photo (would block a reader forever), an empty file, a truncated
    JPEG and a file name that is not UTF-8: all listed, the bad ones recorded, the scan whole."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(photo_dir / "animals" / "chelsea.png", lib / "chelsea.png")
    os.mkfifo(lib / "pipe.jpg")
    (lib / "empty.png").write_bytes(b"")
    data = (photo_dir / "things" / "coffee.png").read_bytes()
    Image.open(photo_dir / "things" / "coffee.png").convert("RGB").save(lib / "cut.jpg")
    (lib / "cut.jpg").write_bytes((lib / "cut.jpg").read_bytes()[:2000])
    odd = os.fsencode(str(lib)) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(data)
    run = scan(lib, load_model("resnet18", None), tmp_path / "run.h5", layers="layer2.0", top_k=2,
               workers=1, progress=False)
    with h5py.File(run, "r") as f:
        failed = dict(zip(f["failures/path"].asstr()[()], f["failures/reason"].asstr()[()], strict=True))
        paths = list(f["images/path"].asstr()[()])
        ok = dict(zip(paths, f["images/ok"][()], strict=True))
    assert set(failed) == {"pipe.jpg", "empty.png", "cut.jpg"}
    assert "not a regular file" in failed["pipe.jpg"]
    assert ok["chelsea.png"] and ok["caf\ufffd.png"]


@pytest.mark.slow
@pytest.mark.parametrize("make", ["image", "binary"])
def test_a_library_that_is_not_a_library(photo_dir, tmp_path, make):
    target = tmp_path / ("photo.png" if make == "image" else "blob.bin")
    if make == "image":
        shutil.copy(photo_dir / "animals" / "chelsea.png", target)
    else:
        target.write_bytes(bytes(range(256)) * 4)
    text = _run_cli("scan", str(target), *COMMON, "--out", str(tmp_path / "r.h5"), code=2)
    assert "LIBRARY" in text and ("is an image" in text or "not a UTF-8 text file" in text)


@pytest.mark.slow
def test_sigterm_checkpoints_like_ctrl_c(photo_dir, tmp_path):
    """What Slurm sends at the time limit: the batch is finished, checkpointed, and resumable."""
    lib = _big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    proc = _cli("scan", str(lib), *COMMON, "--out", str(out), "--checkpoint-images", "2")
    _wait_for(_checkpointed(tmp_path / "run.h5.work", 3), what="checkpoints")
    proc.send_signal(signal.SIGTERM)
    text = proc.stdout.read()
    assert proc.wait() == 130, text
    assert "checkpoint saved" in text and "--resume" in text and "Traceback" not in text
    resumed = _cli("scan", str(lib), *COMMON, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert_same_file(scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **KW), out)


@pytest.mark.slow
def test_a_layer_named_twice_is_scanned_once_and_said(photo_dir, tmp_path):
    from cnnviz.errors import CnnvizWarning

    said = r"layer layer2.0 is named 2 times \(layer2.0, layer2\[0\]\); it is tapped once"
    with pytest.warns(CnnvizWarning, match=said):
        run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5",
                   layers="layer2.0,layer2[0],layer1.0", top_k=2, workers=0, progress=False)
    assert cnnviz.run.run_layers(run) == ["layer2.0", "layer1.0"]
    text = _run_cli("top", str(tmp_path), code=2)
    assert "is a folder" in text


# -- any image shape, bounded memory --------------------------------------------------------

_PEAK = """
import resource, sys
from pathlib import Path
from cnnviz.images.dataset import LibraryDataset
from cnnviz.images.library import ImageLibrary
from cnnviz.model import Preprocessing

data = LibraryDataset(ImageLibrary.open(sys.argv[1]), Preprocessing(resize=232, crop=(224, 224)))
names = data.library.relpaths
before = None
for i, name in enumerate(names):   # the ordinary photo first: its peak is the baseline
    _, crop, _, _, error = data[i]
    assert not error and tuple(crop.shape) == (224, 224, 3), (name, error)
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
def test_memory_per_image_does_not_depend_on_its_shape(photo_dir, tmp_path):
    """A 1 x 6000 or 6000 x 1 PNG is a few kB decoded; resized whole to a shorter side of 232 it
    was 1 GB (a 1 x 20000 one took a scan to 5.8 GB). Only the part the crop keeps is
    resampled now: the peak grows by no more than a few network inputs."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(photo_dir / "animals" / "chelsea.png", lib / "a-ordinary.png")
    ramp = np.arange(6000, dtype=np.uint8)
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp // 2], -1)[None]).save(lib / "b-wide.png")
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp // 2], -1)[:, None]).save(lib / "c-tall.png")
    res = subprocess.run([sys.executable, "-c", _PEAK, str(lib)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grown_mb = int(res.stdout.strip())
    assert grown_mb < 64, f"the peak grew by {grown_mb} MB for two thin images"


@pytest.mark.slow
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_ordinary_photos_are_cut_exactly_as_torchvision_does_and_thin_ones_nearly(photo_dir, interpolation):
    from torchvision import transforms as T

    from cnnviz.model import Preprocessing
    from cnnviz.model.preprocessing import FULL_RESIZE_LIMIT

    mode = T.InterpolationMode(interpolation)
    photos = [p for p in sorted(photo_dir.rglob("*.*")) if p.name != "corrupt.jpg"]
    for resize, crop in ((232, 224), (256, 224), (342, 299), (None, 64)):
        pre = Preprocessing(resize=resize, crop=(crop, crop), interpolation=interpolation)
        steps = [T.Resize(resize, interpolation=mode)] if resize else []
        reference = T.Compose([*steps, T.CenterCrop(crop)])
        for p in photos:
            image = decode_file(p).image
            ours, geometry = pre.crop_uint8(image)
            np.testing.assert_array_equal(ours, np.asarray(reference(image)), err_msg=str(p))
    pre = Preprocessing(resize=232, crop=(224, 224), interpolation=interpolation)
    reference = T.Compose([T.Resize(232, interpolation=mode), T.CenterCrop(224)])
    photo = decode_file(photo_dir / "animals" / "chelsea.png").image
    for size in ((30, 3000), (3000, 30), (7, 900), (1, 2000), (2000, 1), (30, 100)):
        thin = photo.resize(size, Image.BILINEAR)
        rw, rh = pre.resized_size(*size)
        assert (rw, rh) == T.Resize(232)(thin).size
        ours, geometry = pre.crop_uint8(thin)
        assert (geometry.resized_width, geometry.resized_height) == (rw, rh)
        theirs = np.asarray(reference(thin)).astype(int)
        if rw * rh <= FULL_RESIZE_LIMIT * 224 * 224:
            np.testing.assert_array_equal(ours, theirs)
        else:  # resampled in the kept region only: the same filter taps, float rounding aside
            assert np.abs(ours - theirs).max() <= 2 and np.abs(ours - theirs).mean() < 0.2, size


@needs_shared
def test_real_photos_are_cut_exactly_as_torchvision_does():
    from torchvision import transforms as T

    from cnnviz.model import Preprocessing

    photos = sorted(IMAGEN.rglob("*.*"))[::10]
    for interpolation in ("bilinear", "bicubic"):
        pre = Preprocessing(resize=232, crop=(224, 224), interpolation=interpolation)
        reference = T.Compose([T.Resize(232, interpolation=T.InterpolationMode(interpolation)),
                               T.CenterCrop(224)])
        for p in photos:
            image = decode_file(p, min_side=232).image
            np.testing.assert_array_equal(pre.crop_uint8(image)[0], np.asarray(reference(image)), str(p))


# -- weights files as people save them ------------------------------------------------------

class _Payload:
    """Unpickling this creates a file: proof that a weights file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.slow
def test_common_checkpoint_layouts_load_as_the_weights_they_hold(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18().state_dict()
    layouts = {
        "dataparallel": {f"module.{k}": v for k, v in ref.items()},
        "lightning": {"epoch": 3, "global_step": 10, "state_dict": {f"model.{k}": v for k, v in ref.items()}},
        "training script": {"model": ref, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        "compiled": {f"_orig_mod.{k}": v for k, v in ref.items()},
        "older pytorch": {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")},
        "float16": {k: v.half() if v.is_floating_point() else v for k, v in ref.items()},
    }
    for name, obj in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        got = load_model("resnet18", str(path)).module.state_dict()
        for k, v in ref.items():
            if k.endswith("num_batches_tracked"):
                continue
            want = v.half().float() if name == "float16" and v.is_floating_point() else v
            assert torch.equal(got[k], want), (name, k)


def test_weights_that_cannot_be_used_are_refused_in_one_line(tmp_path, capsys):
    import torchvision

    from cnnviz.cli import main

    marker = tmp_path / "the-payload-ran"
    files = {
        "resnet18.pt": torchvision.models.resnet18().state_dict(),
        "squeezenet.pt": torchvision.models.squeezenet1_1().state_dict(),
        "finetuned.pt": torchvision.models.resnet18(num_classes=10).state_dict(),
        "whole-model.pt": torchvision.models.squeezenet1_1(),
        "payload.pt": {"conv1.weight": torch.zeros(1), "x": _Payload(marker)},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "resnet18.pt").read_bytes()[:100_000])
    expected = {
        ("resnet34", "resnet18.pt"): ["does not fit the 'resnet34' architecture: 80 keys missing (layer1.2.",
                                      "It fits resnet18: use --model resnet18."],
        ("resnet18", "squeezenet.pt"): ["102 keys missing (conv1.weight", "52 unexpected (features.0.weight",
                                        "It fits squeezenet1_1: use --model squeezenet1_1."],
        ("resnet18", "finetuned.pt"): ["2 of another shape (e.g. fc.weight: [10, 512] in the file",
                                       "a classifier of 10 outputs (fine-tuned?)"],
        ("resnet18", "whole-model.pt"): ["it holds a pickled torchvision.models.squeezenet.SqueezeNet",
                                         "torch.save(model.state_dict(), FILE)"],
        ("resnet18", "payload.pt"): ["it holds a pickled io.open"],
        ("resnet18", "cut.pt"): ["cut.pt: cannot read it as a PyTorch state_dict", "is the file complete?"],
    }
    for (model, name), parts in expected.items():
        assert main(["layers", "--model", model, "--weights", str(tmp_path / name)]) == 2
        text = capsys.readouterr().err
        _one_line_error(text)
        assert "\x1b[" not in text and "--weights" in text, text
        for part in parts:
            assert part in text, (name, text)
    assert not marker.exists()



# -- commands on the wrong machine or with the wrong names: one line each -------------------

@pytest.fixture(scope="module")
def small_run(photo_dir, tmp_path_factory) -> Path:
    return scan(photo_dir, load_model("resnet18", None), tmp_path_factory.mktemp("small") / "run.h5", **KW)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_that_is_not_here_is_one_line_for_every_command(small_run, photo_dir, tmp_path, cli):
    """explain and report with --explain/--attributions/--model raised torch's RuntimeError; a
    report with photos only ran on the CPU, silently."""
    image = photo_dir / "animals" / "chelsea.png"
    site = tmp_path / "site"
    report = ["report", small_run, "--out", site, "--no-progress"]
    for cmd in (["explain", image, "--run", small_run, "--device", "cuda"],
                [*report, "--explain", image, "--device", "cuda"],
                [*report, "--attributions", "layer3.0:0", "--device", "cuda"],
                [*report, "--model", "resnet18", "--weights", "none", "--device", "cuda"],
                [*report, "--device", "cuda"],
                [*report, "--device", "cuda:x"]):
        text = cli(*cmd, code=2)
        assert "--device" in text and ("no CUDA GPU" in text or "not a device" in text), text
    assert not site.exists()


def test_plot_refuses_a_format_it_cannot_write_before_drawing(small_run, tmp_path, cli, monkeypatch):
    import cnnviz.viz.figures as figures

    monkeypatch.setattr(figures, "patch_montage", lambda *a, **k: pytest.fail("drawn before the check"))
    text = cli("plot", "montage", small_run, "--layer", "layer3.0", "--out", tmp_path / "p.xyz", code=2)
    assert "--out" in text and ".xyz is not an image format" in text and ".png" in text
    assert list(tmp_path.iterdir()) == []


def test_report_channels_beyond_a_layer_are_refused_not_cut(small_run, tmp_path, cli):
    site = tmp_path / "site"
    text = cli("report", small_run, "--out", site, "--channels", "0-99999", "--no-context", "--no-progress",
               code=2)
    assert "--channels" in text and "layer1.1 has channels 0-63" in text
    assert not site.exists()  # refused before anything is written: no folder, no style.css
    text = cli("report", small_run, "--out", site, "--channels", "0-999999999999", "--no-context",
               "--no-progress", code=2)  # refused as written, not first built as a list
    text = cli("report", small_run, "--out", site, "--layers", "layer9", "--no-context", code=2)
    assert "--layers 'layer9' is not in run.h5" in text and not site.exists()


@pytest.mark.slow
def test_a_run_without_maxima_is_one_note_per_layer_and_flags_are_spelled(photo_dir, tmp_path, cli):
    run = scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", **{**KW, "maxima_dtype": "none"})
    text = cli("report", run, "--out", tmp_path / "site", "--channels", "2", "--no-context", "--no-progress",
               code=0)
    assert "UserWarning" not in text and "warnings.warn" not in text and "maxima_dtype" not in text
    notes = [line for line in text.splitlines() if line.startswith("cnnviz report: note: ")]
    assert len(notes) == 2 and all("--maxima none" in n for n in notes), text
    text = cli("plot", "distribution", run, "--layer", "layer3.0", "--out", tmp_path / "d.png", code=2)
    assert "scanned with --maxima none or other --maxima-layers" in text


def test_an_unwritable_out_is_refused_before_the_optimization(small_run, small_disk, tmp_path, cli,
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
                   "--run", small_run, code=2)
        assert f"--out {out}" in text and why in text, text


def test_refused_and_full_disk_commands_leave_nothing_behind(small_run, small_disk, photo_dir, tmp_path, cli):
    """No style.css, 0-byte PNG or .lock after a command that failed."""
    filler = _fill(small_disk, leave=0)
    # a scan whose lock cannot even be signed on a full disk
    cli("scan", photo_dir, *COMMON, "--out", small_disk / "run.h5", code=2)
    # a report that runs out of space: the folder it created goes; a folder that was there stays
    # as it was (a report is written beside it and swapped in only when complete)
    text = cli("report", small_run, "--out", small_disk / "site", "--no-context", "--no-progress", code=2)
    assert "is full" in text
    text = cli("explain", photo_dir / "animals" / "chelsea.png", "--run", small_run, "--out",
               small_disk / "explained", code=2)
    assert "is full" in text
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    (small_disk / "kept").mkdir()
    filler.unlink()
    filler = _fill(small_disk, leave=150_000)
    cli("report", small_run, "--out", small_disk / "kept", "--no-context", "--no-progress", code=2)
    assert not list((small_disk / "kept").iterdir())
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "kept"]  # no partial folder
    # optimized images to a full disk: none left half-written
    filler.unlink()
    filler = _fill(small_disk, leave=0)
    cli("channel-vis", "--model", "resnet18", "--weights", "none", "--layer", "layer3.0", "--channels", "0-1",
        "--steps", "1", "--out", small_disk / "ch", "--no-progress", code=2)
    assert all(p.stat().st_size > 0 for p in small_disk.rglob("*.png"))
    assert not list(small_disk.rglob("*.lock"))


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_decoding_workers_die_with_the_scan(photo_dir, tmp_path):
    """kill -9 of the scan's main process alone: its decoding workers lived on for seconds
    holding the run's lock, so an immediate --resume was refused naming the dead process. The
    workers are stopped here first (SIGSTOP), so PyTorch's own 5-second watchdog cannot end
    them: only dying with their parent can."""
    lib = _big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    common = [*COMMON[:-3], "--workers", "2", "--no-progress"]
    proc = _cli("scan", str(lib), *common, "--out", str(out), "--checkpoint-images", "2")
    _wait_for(_checkpointed(tmp_path / "run.h5.work", 2), what="checkpoints")
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    try:
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: not any(_alive(w) for w in workers), timeout=60, what="the workers to die")
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    resumed = _cli("scan", str(lib), *common, "--out", str(out), "--resume")
    text = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, text
