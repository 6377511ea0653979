"""The scan's pipeline for a GPU, checked on the CPU: the exact top-k without host syncs, the
streamed rows and their checkpoints, out-of-memory stops, resuming with another batch size,
the host-only benchmark's stand-in, and precision kept to the scan."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

import cnnviz
from cnnviz import Preprocessing, from_module, load_model, scan
from cnnviz.errors import ScanError, UsageError
from cnnviz.model.precision import precision_scope, tf32_switches
from cnnviz.model.taps import capture, resolve_layers
from cnnviz.scanner import scan_shard
from cnnviz.scanner.reducers import TapReducer, TopK
from cnnviz.scanner.standin import StandInTaps, host_only_scan
from cnnviz.scanner.workdir import WorkDir

from ..conftest import assert_same_file, big_library, tiny_cnn

# -- the top-k --------------------------------------------------------------------------------

def _brute_topk(values: torch.Tensor, k: int) -> list[list[int]]:
    """Per channel, the ids of the k best images by (-value, id); NaN and -inf never enter."""
    out = []
    for c in range(values.shape[1]):
        cand = sorted(((float(v) + 0.0, i) for i, v in enumerate(values[:, c].tolist())
                       if v > float("-inf")), key=lambda p: (-p[0], p[1]))[:k]
        out.append([i for _, i in cand] + [-1] * (k - len(cand)))
    return out


@pytest.mark.parametrize("sparse", [True, False], ids=["thresholded (CPU)", "whole batches (GPU)"])
def test_topk_equals_a_full_sort_with_ties_nan_and_signed_zeros(sparse):
    """Both ways of merging a batch (the CPU's candidates above the k-th, and the GPU's merge of
    whole batches) equal a brute-force sort, on values full of ties, NaN, -0.0 and -inf."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(25):
        channels, k, batch, batches = 6, 4, 1 + trial % 7, 9
        values = torch.randint(-3, 4, (batch * batches, channels), generator=gen).float()
        for special, share in ((float("nan"), 0.05), (-0.0, 0.08), (float("-inf"), 0.03)):
            values[torch.rand(values.shape, generator=gen) < share] = special
        index = torch.randint(0, 50, values.shape, generator=gen)
        top = TopK(channels, k, sparse=sparse)
        for b in range(batches):
            rows = slice(b * batch, (b + 1) * batch)
            top.update(values[rows], index[rows], torch.arange(b * batch, (b + 1) * batch))
        want = _brute_topk(values, k)
        assert top.ids.tolist() == want, trial
        assert top.index.tolist() == [[int(index[i, c]) if i >= 0 else -1 for i in row]
                                      for c, row in enumerate(want)]
        again = TopK(channels, k)
        again.load(top.state())
        assert torch.equal(again.ids, top.ids) and torch.equal(again.index, top.index)


# -- precision ---------------------------------------------------------------------------------

def _switches() -> list:
    return [getattr(owner, name) for owner, name, _ in tf32_switches()]


class _Recorder(torch.nn.Module):
    """Records torch's TF32 switches and autocast as the forward pass sees them; raises on the
    ``fail_at``-th call (counted across copies: the scan runs a copy)."""

    calls: list = []

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.net = tiny_cnn()
        self.fail_at = fail_at

    def forward(self, x):
        _Recorder.calls.append((_switches(), torch.is_autocast_enabled("cpu")))
        if self.fail_at is not None and len(_Recorder.calls) >= self.fail_at:
            raise RuntimeError("a bug in the user's network")
        return self.net(x)


def _recorder_model(fail_at=None):
    model = from_module(_Recorder(fail_at), Preprocessing(resize=72, crop=(64, 64)), name="recorder")
    cnnviz.list_layers(model)  # the receptive fields are traced (and cached) outside any scan
    _Recorder.calls = []
    return model


@pytest.mark.parametrize("precision,inside", [("fp32", "ieee"), ("tf32", "tf32"), ("amp", "ieee")])
def test_precision_is_the_scans_own_and_recorded(photo_dir, tmp_path, precision, inside):
    before = _switches()
    model = _recorder_model()
    out = scan(photo_dir, model, tmp_path / "run.h5", layers="net.3", top_k=2, batch_size=4, workers=0,
               progress=False, precision=precision)
    assert _switches() == before  # the caller's settings are as they were
    seen = {(tuple(s), a) for s, a in _Recorder.calls}
    expected_flag = inside if isinstance(before[0], str) else (inside == "tf32")
    assert seen == {((expected_flag, expected_flag), precision == "amp")}
    with cnnviz.RunReader(out) as r:
        assert r.precision == precision and r.attrs["precision"] == precision
        assert bool(r.attrs["amp"]) == (precision == "amp")


def test_precision_flags_are_restored_after_a_failing_scan(photo_dir, tmp_path):
    before = _switches()
    with pytest.raises(RuntimeError, match="a bug in the user's network"):
        scan(photo_dir, _recorder_model(fail_at=2), tmp_path / "run.h5", layers="net.3", top_k=2,
             batch_size=4, workers=0, progress=False, precision="tf32")
    assert _switches() == before and not torch.is_autocast_enabled("cpu")
    with pytest.raises(KeyboardInterrupt), precision_scope("tf32", "cpu"):
        raise KeyboardInterrupt
    assert _switches() == before


def test_amp_is_the_older_spelling_of_precision_amp(photo_dir, tmp_path):
    out = scan(photo_dir, _recorder_model(), tmp_path / "a.h5", layers="net.3", top_k=2, batch_size=4,
               workers=0, progress=False, amp=True)
    with cnnviz.RunReader(out) as r:
        assert r.precision == "amp"
    with pytest.raises(UsageError, match="disagree"):
        scan(photo_dir, _recorder_model(), tmp_path / "b.h5", amp=True, precision="fp32")
    with pytest.raises(UsageError, match="choose fp32"):
        scan(photo_dir, _recorder_model(), tmp_path / "b.h5", precision="fp16")


def test_files_without_a_precision_attribute_read_it_from_amp(photo_dir, tmp_path):
    out = scan(photo_dir, _recorder_model(), tmp_path / "run.h5", layers="net.3", top_k=2, batch_size=4,
               workers=0, progress=False, precision="amp")
    with h5py.File(out, "r+") as f:
        del f.attrs["precision"]
    with cnnviz.RunReader(out) as r:
        assert r.precision == "amp"
    with h5py.File(out, "r+") as f:
        f.attrs["amp"] = False
    with cnnviz.RunReader(out) as r:
        assert r.precision == "fp32"


# -- streamed rows, checkpoints and resumes ----------------------------------------------------

class _Hungry(torch.nn.Module):
    """A network that 'runs out of memory' for batches above ``limit`` once ``after`` batches
    went through (counted across copies)."""

    calls = 0

    def __init__(self, limit: int, after: int):
        super().__init__()
        self.net = tiny_cnn()
        self.limit, self.after = limit, after

    def forward(self, x):
        _Hungry.calls += 1
        if x.shape[0] > self.limit and _Hungry.calls > self.after:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.net(x)


def test_out_of_memory_keeps_the_scan_and_a_smaller_batch_resumes_it(photo_dir, tmp_path):
    """The batch that did not fit is named with what to do; everything before it is
    checkpointed; resuming with a smaller batch size gives the uninterrupted scan's results."""
    pre = Preprocessing(resize=72, crop=(64, 64))
    kw = dict(layers="net.3,net.6", top_k=3, workers=0, progress=False)
    hungry = from_module(_Hungry(limit=2, after=2), pre, name="hungry")
    cnnviz.list_layers(hungry)  # traced outside the scan
    _Hungry.calls = 0
    out = tmp_path / "run.h5"
    with pytest.raises(ScanError, match=r"ran out of memory for a batch of 4 images") as err:
        scan(photo_dir, hungry, out, batch_size=4, **kw)
    assert "`batch_size=2` and `resume=True`" in str(err.value)
    state = np.load(tmp_path / "run.h5.work" / "state.npz")
    assert int(state["next_image"]) == 8  # two batches of 4 went through
    scan(photo_dir, hungry, out, batch_size=2, resume=True, **kw)
    unlimited = from_module(_Hungry(limit=1 << 30, after=0), pre, name="hungry")
    ref = scan(photo_dir, unlimited, tmp_path / "ref.h5", batch_size=4, **kw)
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        for name in ("net.3", "net.6"):
            for key in ("topk/image_id", "topk/y", "topk/x", "position", "topk/patches"):
                np.testing.assert_array_equal(a[f"layers/{name}/{key}"][()], b[f"layers/{name}/{key}"][()])
            np.testing.assert_allclose(a[f"layers/{name}/maxima"][()], b[f"layers/{name}/maxima"][()],
                                       rtol=1e-6)
            for stat in b[f"layers/{name}/stats"]:
                np.testing.assert_allclose(a[f"layers/{name}/stats/{stat}"][()],
                                           b[f"layers/{name}/stats/{stat}"][()], rtol=1e-6)
        assert int(a.attrs["batch_size"]) == 2


def test_a_shard_resumes_only_with_its_batch_size(photo_dir, tmp_path):
    model = load_model("resnet18", None)
    kw = dict(layers="layer1.0", top_k=2, workers=0, progress=False, checkpoint_images=2)
    scan_shard(photo_dir, model, tmp_path / "run.h5", (0, 2), batch_size=2, **kw)
    with pytest.raises(ScanError, match="resumes with the batch size the scan started with"):
        scan_shard(photo_dir, model, tmp_path / "run.h5", (0, 2), batch_size=4, resume=True, **kw)


@pytest.mark.slow
def test_a_resume_drops_rows_no_state_counts_and_names_a_damaged_segment(photo_dir, tmp_path):
    lib = big_library(photo_dir, tmp_path, copies=1)
    model = load_model("resnet18", None)
    kw = dict(layers="layer1.0", top_k=2, batch_size=2, workers=0, progress=False, checkpoint_images=4)
    work = WorkDir(scan_shard(lib, model, tmp_path / "run.h5", (0, 1), **kw))
    listed = {p.name for p in work.path.glob("seg-*")}
    assert len(listed) >= 3
    (work.path / "part-0000000099").mkdir()  # rows of an interval no checkpoint finished
    stray = work.path / "seg-0000000090-0000000099"  # sealed, but its state was never written
    stray.mkdir()
    ref = scan(lib, model, tmp_path / "ref.h5", **kw)
    out = scan(lib, model, tmp_path / "run.h5", resume=True, **kw)
    assert_same_file(ref, out)
    work = WorkDir(scan_shard(lib, model, tmp_path / "again.h5", (0, 1), **kw))
    damaged = sorted(work.path.glob("seg-*/ids.npy"))[1]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: same size, other CRC
    damaged.write_bytes(bytes(data))
    with pytest.raises(ScanError, match=f"checkpoint {damaged} is damaged"):
        scan(lib, model, tmp_path / "again.h5", resume=True, **kw)


def test_rows_reach_disk_between_checkpoints(photo_dir, tmp_path, monkeypatch):
    """The writer appends each batch's rows as it comes (a checkpoint only seals them), so a
    scan that checkpoints rarely holds no more than a queue of rows in memory."""
    from cnnviz.scanner import workdir

    sizes = []
    append = workdir.SegmentWriter.append

    def watch(self, columns, end):
        append(self, columns, end)
        for f in self.files.values():
            f.flush()
        sizes.append(sum(p.stat().st_size for p in self.path.iterdir()))

    monkeypatch.setattr(workdir.SegmentWriter, "append", watch)
    scan(photo_dir, load_model("resnet18", None), tmp_path / "run.h5", layers="layer1.0", top_k=2,
         batch_size=2, workers=0, progress=False, checkpoint_seconds=3600)
    assert len(sizes) >= 4 and sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


# -- the host-only benchmark's stand-in --------------------------------------------------------

def test_the_stand_in_hands_the_scan_the_real_networks_shapes():
    model = load_model("resnet18", None)
    taps = resolve_layers(model, None)
    x = torch.randn(3, 3, 224, 224)
    with capture(model.module, [t.name for t in taps], reduce=TapReducer()) as cap, torch.no_grad():
        cap.forward(x.contiguous(memory_format=torch.channels_last))
    real = cap.outputs
    stand_in = StandInTaps(taps, pool=5)
    stand_in.forward(x)
    assert set(stand_in.outputs) == set(real)
    for tap in taps:
        for got, want in zip(stand_in.outputs[tap.name], real[tap.name], strict=True):
            if want is None:  # no bottom-k, no quantiles
                assert got is None
                continue
            assert got.shape == want.shape and got.dtype == want.dtype, tap.name
        index = stand_in.outputs[tap.name][1]
        assert 0 <= int(index.min()) and int(index.max()) < tap.shape[1] * tap.shape[2]


def test_host_only_scan_runs_the_scans_loop(tmp_path):
    taps = resolve_layers(load_model("resnet18", None), None)
    result = host_only_scan(taps, 40, tmp_path / "w", batch_size=16, top_k=4, maxima_dtype="float32")
    state = np.load(tmp_path / "w" / "state.npz")
    assert int(state["next_image"]) == 40 and result["images"] == 40
    assert (state["l0_stat_count"] == 40).all()
    assert result["row_bytes"] == sum(t.channels for t in taps) * 6


def test_torchrun_with_one_process_takes_the_distributed_path(monkeypatch):
    from cnnviz.scanner.distributed import torchrun_env

    for key in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None
    for key, value in (("TORCHELASTIC_RUN_ID", "x"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    assert torchrun_env() == (0, 1, 0)


def test_the_summary_names_the_limit_a_scan_waited_for():
    from cnnviz.cli.scan_cmds import timing_lines

    t = {"seconds": 100.0, "wait_data": 40.0, "wait_disk": 1.0, "row_bytes": 90_000, "assemble": 5.0,
         "precision": "amp"}
    lines = timing_lines(t, 10_000)
    assert lines[0].startswith("scanned at 100.0 img/s")
    assert "decoding was the limit" in lines[1] and "169 img/s" in lines[1] and len(lines) == 2
    t.update(wait_data=0.0, wait_disk=50.0)
    lines = timing_lines(t, 10_000)
    assert "the disk was the limit" in lines[1] and "needed 18 MB/s" in lines[1]
    assert os.cpu_count()


@pytest.mark.slow
def test_one_shard_folder_merges_under_the_runs_own_lock(photo_dir, tmp_path):
    """torchrun with one process scans into RUN.h5.work, whose lock is the run file's own:
    merging it must not take that lock for another process's."""
    from cnnviz.scanner import merge

    out = tmp_path / "run.h5"
    work = scan_shard(photo_dir, load_model("resnet18", None), out, (0, 1), layers="layer1.0", top_k=2,
                      batch_size=4, workers=0, progress=False)
    merge([work], out)
    ref = scan(photo_dir, load_model("resnet18", None), tmp_path / "ref.h5", layers="layer1.0", top_k=2,
               batch_size=4, workers=0, progress=False)
    assert_same_file(ref, out)
