"""Distributed scans: two gloo processes under torchrun against one process; merging."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cnnviz import load_model, scan
from cnnviz.errors import RunFileError
from cnnviz.scanner import merge, scan_shard
from cnnviz.scanner.reducers import ChannelStats, merge_topk
from cnnviz.scanner.workdir import work_path

from ..conftest import assert_equal_runs

ARGS = ["--model", "resnet18", "--weights", "none", "--layers", "layer1.0,layer3.1", "--top-k", "3",
        "--batch-size", "3", "--workers", "0", "--no-progress"]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_one(photo_dir, tmp_path):
    single = tmp_path / "single.h5"
    subprocess.run([sys.executable, "-m", "cnnviz", "scan", str(photo_dir), *ARGS, "--out", str(single)],
                   check=True, capture_output=True)
    dist = tmp_path / "dist.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: a local rendezvous on a free port
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "cnnviz", "scan", str(photo_dir), *ARGS,
                          "--out", str(dist)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not work_path(dist, 0, 2).exists() and not work_path(dist, 1, 2).exists()
    with h5py.File(dist, "r") as f:
        assert f.attrs["world_size"] == 2 and f.attrs["n_failed"] == 1
    assert_equal_runs(single, dist)


@pytest.mark.slow
def test_shards_by_hand_merge_in_any_order(photo_dir, tmp_path):
    model = load_model("resnet18", None)
    # a map and a whole-image layer (the logits)
    kw = dict(layers="layer2.0,logits", top_k=4, batch_size=2, workers=0, progress=False)
    single = scan(photo_dir, model, tmp_path / "single.h5", **kw)
    out = tmp_path / "run.h5"
    for rank in (2, 0, 1):
        scan_shard(photo_dir, model, out, (rank, 3), **kw)
    shards = [work_path(out, r, 3) for r in (1, 2, 0)]
    with pytest.raises(RunFileError, match="every rank"):
        merge(shards[:2], tmp_path / "partial.h5", keep_shards=True)
    a = _merge_without_any_model(shards, tmp_path / "a.h5")
    b = merge(list(reversed(shards)), tmp_path / "b.h5", keep_shards=True)
    assert_equal_runs(single, a)
    assert_equal_runs(a, b)
    # a shard that stopped early (its checkpoint after its first batch) is refused, not merged
    state = dict(np.load(shards[0] / "state.npz"))
    state["next_batch"] = np.int64(2)
    np.savez(shards[0] / "state.npz", **state)
    with pytest.raises(RunFileError, match=r"unfinished.*`resume=True` with `shard=1/3`"):
        merge(shards, tmp_path / "c.h5", keep_shards=True)


def _merge_without_any_model(shards, out):
    """merge() with every way of loading a model made to fail: the shards must suffice."""
    import torchvision

    import cnnviz.model.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("merge loaded a model")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "load_model", no_model)
        mp.setattr(torchvision.models, "get_model", no_model)
        return merge(shards, out, keep_shards=True)


def test_topk_and_stats_merges_are_associative_and_commutative():
    rng = np.random.default_rng(0)
    parts = []
    for start in (0, 10, 20):
        vals = rng.integers(0, 5, (4, 10)).astype(np.float32)  # many ties
        ids = np.tile(np.arange(start, start + 10), (4, 1))
        parts.append((vals, ids))

    def m(a, b):
        v, i = merge_topk(np.concatenate([a[0], b[0]], 1), np.concatenate([a[1], b[1]], 1), 5)
        return v, i

    left = m(m(parts[0], parts[1]), parts[2])
    right = m(parts[0], m(parts[1], parts[2]))
    swapped = m(parts[2], m(parts[1], parts[0]))
    allv = np.concatenate([p[0] for p in parts], 1)
    alli = np.concatenate([p[1] for p in parts], 1)
    brute = [sorted(zip(-allv[c], alli[c], strict=True))[:5] for c in range(4)]
    for v, i in (left, right, swapped):
        assert [list(zip(-v[c], i[c], strict=True)) for c in range(4)] == brute
    stats = []
    for vals, _ in parts:
        s = ChannelStats.zeros(4)
        s.update(vals.T, vals.T)
        stats.append(s)
    x = stats[0].merged(stats[1]).merged(stats[2]).summary()
    y = stats[2].merged(stats[0].merged(stats[1])).summary()
    for k in x:
        np.testing.assert_allclose(x[k], y[k], rtol=1e-12)
    np.testing.assert_allclose(x["mean_max"], allv.mean(1))
