"""Interruptions an overnight scan meets, made for real: two processes on one output, kill -9,
Ctrl-C and SIGTERM at several points, files that change between sessions, damaged checkpoints.

Each test names the outcome a user must get: the run is never lost or silently wrong, and the
command line says in one line what happened and what to do (exit 2), never a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cnnviz
from cnnviz import load_model, scan
from cnnviz.images.library import ImageLibrary
from cnnviz.scanner import scan_shard

from ..conftest import (
    RESNET_ARGS,
    RESNET_KW,
    assert_same_file,
    big_library,
    checkpointed,
    one_line_error,
    run_cli,
    start_cli,
    wait_for,
)

# -- one writer per output ------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_scan_on_the_same_output_is_refused_and_the_first_is_unharmed(photo_dir, tmp_path):
    lib = big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    a = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--checkpoint-images", "2")
    wait_for(checkpointed(tmp_path / "run.h5.work", 2), what="A's first checkpoints")
    os.kill(a.pid, signal.SIGSTOP)  # A holds its lock while stopped: B and C meet it for sure
    try:
        for extra in (["--resume"], ["--overwrite"], []):
            b = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), *extra)
            text = b.stdout.read()
            assert b.wait(timeout=120) == 2, text
            one_line_error(text)
            assert f"another cnnviz process (pid {a.pid} on " in text, text
    finally:
        os.kill(a.pid, signal.SIGCONT)
    text = a.stdout.read()
    assert a.wait(timeout=600) == 0, text
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW)
    assert_same_file(ref, out)
    assert not (tmp_path / "run.h5.lock").exists()


# -- kill -9, Ctrl-C and SIGTERM; --resume finishes -----------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_file(photo_dir, tmp_path):
    lib = big_library(photo_dir, tmp_path)
    common = ["--model", "resnet18", "--weights", "none", "--layers", "layer1.1,layer3.0",
              "--top-k", "4", "--batch-size", "2", "--workers", "0", "--no-progress"]
    ref = start_cli("scan", str(lib), *common, "--out", str(tmp_path / "ref.h5"))
    assert ref.wait(timeout=600) == 0, ref.stdout.read()

    out = tmp_path / "run.h5"
    state = tmp_path / "run.h5.work" / "state.npz"
    proc = start_cli("scan", str(lib), *common, "--out", str(out), "--checkpoint-images", "2")
    wait_for(checkpointed(state.parent, 5), what="5 batches checkpointed")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists(), "the scan finished before it could be killed"

    again = start_cli("scan", str(lib), *common, "--out", str(out))
    assert again.wait(timeout=120) == 2  # refuses: an interrupted scan is there
    assert "--resume" in again.stdout.read()
    resumed = start_cli("scan", str(lib), *common, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert not (tmp_path / "run.h5.work").exists()
    assert_same_file(tmp_path / "ref.h5", out)


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_resumes(photo_dir, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group, decoding workers
    included, without a progress bar. One message, and the count it reports is the count the
    checkpoint holds."""
    lib = big_library(photo_dir, tmp_path)
    common = ["--model", "resnet18", "--weights", "none", "--layers", "layer2.0", "--top-k", "3",
              "--batch-size", "2", "--workers", "2", "--no-progress"]
    out = tmp_path / "run.h5"
    proc = start_cli("scan", str(lib), *common, "--out", str(out), "--checkpoint-images", "4",
                start_new_session=True)
    work = tmp_path / "run.h5.work"
    wait_for(checkpointed(work, 4), what="4 batches checkpointed")
    os.killpg(proc.pid, signal.SIGINT)
    text = proc.stdout.read()
    assert proc.wait() == 130, text
    assert "--resume" in text and "Traceback" not in text
    assert text.count("interrupt: finishing this batch") == 1, text
    with np.load(work / "state.npz") as z:
        next_batch = int(z["next_batch"])
    n_images = len(ImageLibrary.open(lib))
    assert 4 <= next_batch < n_images // 2  # checkpointed at the interrupt, not at the end
    assert f"after {next_batch * 2} of {n_images} images" in text, text
    resumed = start_cli("scan", str(lib), *common, "--out", str(out), "--resume", "--checkpoint-images", "4")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", layers="layer2.0", top_k=3,
               batch_size=2, workers=0, progress=False)
    assert_same_file(ref, out)


@pytest.mark.slow
def test_sigterm_checkpoints_like_ctrl_c(photo_dir, tmp_path):
    """What Slurm sends at the time limit: the batch is finished, checkpointed, and resumable."""
    lib = big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    proc = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--checkpoint-images", "2")
    wait_for(checkpointed(tmp_path / "run.h5.work", 3), what="checkpoints")
    proc.send_signal(signal.SIGTERM)
    text = proc.stdout.read()
    assert proc.wait() == 130, text
    assert "checkpoint saved" in text and "--resume" in text and "Traceback" not in text
    resumed = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert_same_file(scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW), out)


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
    lib = big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    common = [*RESNET_ARGS[:-3], "--workers", "2", "--no-progress"]
    proc = start_cli("scan", str(lib), *common, "--out", str(out), "--checkpoint-images", "2")
    wait_for(checkpointed(tmp_path / "run.h5.work", 2), what="checkpoints")
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    try:
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not any(_alive(w) for w in workers), timeout=60, what="the workers to die")
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    resumed = start_cli("scan", str(lib), *common, "--out", str(out), "--resume")
    text = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, text


# -- intent survives interruption -----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("again", [["--overwrite", "--resume"], ["--resume"]])
def test_an_interrupted_overwrite_resumes(photo_dir, tmp_path, again):
    lib = big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    out.write_bytes(b"yesterday's run")
    proc = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--overwrite",
                     "--checkpoint-images", "2")
    wait_for(checkpointed(tmp_path / "run.h5.work", 3), what="checkpoints")
    proc.send_signal(signal.SIGINT)
    text = proc.stdout.read()
    assert proc.wait() == 130 and "--resume" in text, text
    assert out.read_bytes() == b"yesterday's run"  # not replaced before the new run is whole
    resumed = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), *again)
    text = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, text
    assert "interrupted scan" not in text
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW)
    assert_same_file(ref, out)


# -- kill -9 during the final write; a library that changes between sessions ----------------

@pytest.mark.slow
def test_kill_during_assembly_then_resume_writes_the_same_file(photo_dir, tmp_path):
    lib = big_library(photo_dir, tmp_path, copies=1)
    out = tmp_path / "run.h5"
    common = [*RESNET_ARGS[:4], "--layers", "layer1.0,layer2.0,layer3.0,layer4.0", *RESNET_ARGS[6:],
              "--patch-size", "128"]
    proc = start_cli("scan", str(lib), *common, "--out", str(out))
    tmp = tmp_path / "run.h5.tmp"
    wait_for(lambda: tmp.exists() or proc.poll() is not None, what="the run file being written")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run file was complete before the kill"
    assert (tmp_path / "run.h5.work" / "state.npz").exists()
    resumed = start_cli("scan", str(lib), *common, "--out", str(out), "--resume")
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
    lib = big_library(photo_dir, tmp_path, copies=2)
    out = tmp_path / "run.h5"
    proc = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--checkpoint-images", "2")
    wait_for(checkpointed(tmp_path / "run.h5.work", 2), what="checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listing = ImageLibrary.open(lib)
    victim = listing.relpaths[-2]
    (lib / victim).unlink()
    shutil.copy(photo_dir / "animals" / "chelsea.png", lib / "copy0" / "animals" / "zz-new.png")
    resumed = start_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--resume")
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
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW)
    with h5py.File(ref, "r") as f, h5py.File(out, "r") as g:
        for name in ("layer1.1", "layer3.0"):
            for key in ("topk/image_id", "topk/activation", "maxima", "topk/patches"):
                np.testing.assert_array_equal(f[f"layers/{name}/{key}"][()], g[f"layers/{name}/{key}"][()])


@pytest.mark.slow
def test_images_that_change_after_they_were_scanned_lose_their_patches_only(photo_dir, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(photo_dir, lib)
    model = load_model("resnet18", None)
    ref = scan(lib, model, tmp_path / "ref.h5", **RESNET_KW)
    top = cnnviz.top_patches(ref, layer="layer3.0")
    counts = top.image_path.value_counts()
    vanished, garbage, replaced = list(counts.index[:3])
    out = tmp_path / "run.h5"
    scan_shard(lib, model, out, (0, 1), **RESNET_KW)  # every image scanned; the run file not written yet
    (lib / vanished).unlink()
    (lib / garbage).write_bytes(b"\x89PNG not any more")
    other = next(p for p in counts.index[3:] if Path(p).suffix == Path(replaced).suffix)
    shutil.copy(lib / other, lib / replaced)
    scan(lib, model, out, resume=True, **RESNET_KW)
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
    lib = big_library(photo_dir, tmp_path, copies=2)
    common = ["--weights", str(weights), *RESNET_ARGS[4:]]
    out = tmp_path / "run.h5"
    proc = start_cli("scan", str(lib), "--model", "resnet18", *common, "--out", str(out),
                "--checkpoint-images", "2")
    wait_for(checkpointed(tmp_path / "run.h5.work", 2), what="checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torch.save(load_model("resnet18", None, seed=1).module.state_dict(), weights)  # same path
    resumed = start_cli("scan", str(lib), "--model", "resnet18", *common, "--out", str(out), "--resume")
    text = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 2, text
    one_line_error(text)
    assert "not the same scan" in text and "weights_digest" in text


# -- damaged checkpoints --------------------------------------------------------------------

def _interrupted_work(photo_dir, tmp_path) -> tuple[Path, Path, Path]:
    """A work folder with several checkpoints, as a crash leaves it."""
    lib = big_library(photo_dir, tmp_path, copies=1)
    out = tmp_path / "run.h5"
    work = scan_shard(lib, load_model("resnet18", None), out, (0, 1), checkpoint_images=2, **RESNET_KW)
    state = dict(np.load(work / "state.npz"))
    state["next_batch"] = np.int64(3)  # as if it had stopped after batch 2
    state["next_image"] = np.int64(3 * RESNET_KW["batch_size"])
    np.savez(work / "state.npz", **state)
    return lib, out, work


@pytest.mark.slow
def test_a_truncated_state_falls_back_to_the_previous_checkpoint(photo_dir, tmp_path):
    lib, out, work = _interrupted_work(photo_dir, tmp_path)
    data = (work / "state.npz").read_bytes()
    (work / "state.npz").write_bytes(data[: len(data) // 2])
    scan(lib, load_model("resnet18", None), out, resume=True, **RESNET_KW)
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW)
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
    lib = big_library(photo_dir, tmp_path, copies=1)
    scan_shard(lib, load_model("resnet18", None), tmp_path / "run.h5", (0, 1), checkpoint_images=2,
               **RESNET_KW)
    relpaths = ImageLibrary.open(lib).relpaths
    readable = np.array([not str(p).endswith("corrupt.jpg") for p in relpaths])
    assert len(written) >= len(relpaths) // 2 and not readable.all()
    for state in written:
        upto = int(state["next_batch"]) * RESNET_KW["batch_size"]
        for layer in (0, 1):
            assert (state[f"l{layer}_stat_count"] == readable[:upto].sum()).all(), upto
        assert (state["l0_ids"] < upto).all()


@pytest.mark.slow
def test_damaged_checkpoints_are_named_before_scanning(photo_dir, tmp_path):
    lib, out, work = _interrupted_work(photo_dir, tmp_path)
    seg = sorted(work.glob("seg-*/l0_max.npy"))[0]
    seg.write_bytes(seg.read_bytes()[:-200])
    text = run_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--resume", code=2)
    assert f"checkpoint {seg} is damaged" in text and "--overwrite" in text
    (work / "meta.json").write_text('{"format": "cnnviz-scan-work", "mod')
    text = run_cli("scan", str(lib), *RESNET_ARGS, "--out", str(out), "--resume", code=2)
    assert f"{work / 'meta.json'} is damaged" in text and "--overwrite" in text


@pytest.mark.slow
def test_resume_discards_a_segment_written_without_its_state(photo_dir, tmp_path):
    """A crash between a segment and the state that counts it leaves an orphan segment: resume
    must redo those images, not trust the orphan (here filled with garbage to make it visible)."""
    from cnnviz.scanner import scan_shard
    from cnnviz.scanner.workdir import work_path

    model = load_model("resnet18", None)
    kw = dict(layers="layer2.0", top_k=3, batch_size=4, workers=0, progress=False)
    ref = scan(photo_dir, model, tmp_path / "ref.h5", **kw)
    # the checkpoint of a scan that has done batch 0 only: that of a scan of the first 4 images
    first4 = ImageLibrary.open(photo_dir)
    first4.relpaths = first4.relpaths[:4]
    w4 = scan_shard(first4, model, tmp_path / "first4.h5", (0, 1), **kw)
    out = tmp_path / "run.h5"
    work = scan_shard(photo_dir, model, out, (0, 1), checkpoint_images=4, **kw)
    assert work == work_path(out)
    (w4 / "state.npz").replace(work / "state.npz")
    for seg in work.glob("seg-*.npz"):
        if int(seg.name.split("-")[1]) >= 4:
            seg.unlink()
    np.savez(work / "seg-0000000004-0000000012.npz", ids=np.arange(4, 12),
             geometry=np.zeros((8, 6), np.int64), l0_max=np.full((8, 128), 1e9, np.float32),
             l0_pos=np.zeros((8, 128), np.uint16))
    # resumed checkpoints every batch: seg 4-8 sorts before the orphan 4-12, so an orphan left
    # in place would overwrite images 4..8
    scan(photo_dir, model, out, resume=True, checkpoint_images=4, **kw)
    assert_same_file(ref, out)
