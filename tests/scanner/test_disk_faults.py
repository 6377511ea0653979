"""A disk that fills under a scan (a small tmpfs where the test may mount one, else ENOSPC
simulated): a scan that cannot fit is refused before any work; one that meets the full disk
while writing its run file or a checkpoint keeps the last complete checkpoint, and --resume
finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnviz import load_model, scan
from cnnviz.errors import ScanError
from cnnviz.scanner import scan_shard

from ..conftest import (
    RESNET_ARGS,
    RESNET_KW,
    assert_same_file,
    big_library,
    checkpointed,
    fill_disk,
    one_line_error,
    run_cli,
    start_cli,
    wait_for,
)


@pytest.mark.slow
def test_a_scan_that_cannot_fit_is_refused_before_any_work(photo_dir, small_disk):
    out = small_disk / "run.h5"
    text = run_cli("scan", str(photo_dir), *RESNET_ARGS[:4], "--layers",
                   "layer1.0,layer2.0,layer3.0,layer4.0", "--top-k", "8", "--patch-size", "128",
                   "--workers", "0", "--no-progress", "--out", str(out), code=2)
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
    work = scan_shard(photo_dir, load_model("resnet18", None), out, (0, 1), **RESNET_KW)
    filler = fill_disk(small_disk, leave=200_000)
    res = subprocess.run([sys.executable, "-c", _FULL_DURING, str(photo_dir), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "filled up while the run file was written" in res.stdout and "resume=True" in res.stdout
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert not Path(str(out) + ".tmp").exists() and (work / "state.npz").exists()
    filler.unlink()
    scan(photo_dir, load_model("resnet18", None), out, resume=True, **RESNET_KW)
    assert_same_file(scan(photo_dir, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW), out)


@pytest.mark.slow
def test_a_disk_that_fills_while_checkpointing(photo_dir, small_disk, tmp_path):
    """The disk fills after the scan started (its up-front check passed): the checkpoint that
    meets the full disk is abandoned cleanly, the last good one kept, and --resume finishes."""
    lib = big_library(photo_dir, tmp_path, copies=2)
    out = small_disk / "run.h5"
    common = [*RESNET_ARGS, "--patch-size", "16", "--top-k", "2"]
    proc = start_cli("scan", str(lib), *common, "--out", str(out), "--checkpoint-images", "2")
    wait_for(checkpointed(small_disk / "run.h5.work", 2), what="checkpoints")
    os.kill(proc.pid, signal.SIGSTOP)
    filler = fill_disk(small_disk, leave=0)
    os.kill(proc.pid, signal.SIGCONT)
    text = proc.stdout.read()
    assert proc.wait(timeout=300) == 2, text
    one_line_error(text)
    assert "is full" in text and "the last complete checkpoint is kept" in text and "--resume" in text
    assert not list(small_disk.glob("run.h5.work/*.tmp")) and not list(small_disk.glob("run.h5.work/*next*"))
    filler.unlink()
    resumed = start_cli("scan", str(lib), *common, "--out", str(out), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    ref = scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **{**RESNET_KW, "top_k": 2},
               patch_size=16)
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
    lib = big_library(photo_dir, tmp_path, copies=1)
    out = tmp_path / "run.h5"
    with pytest.raises(ScanError, match="the last complete checkpoint is kept"):
        scan(lib, load_model("resnet18", None), out, checkpoint_images=2, **RESNET_KW)
    work = tmp_path / "run.h5.work"
    assert not list(work.glob("*.tmp")) and not list(work.glob("state.next.npz"))
    monkeypatch.setattr(workdir.np, "savez", real)
    scan(lib, load_model("resnet18", None), out, resume=True, **RESNET_KW)
    assert_same_file(scan(lib, load_model("resnet18", None), tmp_path / "ref.h5", **RESNET_KW), out)
