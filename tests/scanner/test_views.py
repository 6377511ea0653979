"""More than one view of a channel as the scan computes it, each against an independent
brute-force computation: the images ranked by spatial mean and the bottom-k (torch activations
of every image, sorted in Python), the quantiles over positions (numpy over every position).
Ties, NaN and unreadable images; shards and resumed scans; the scan's options; the reductions in
every memory layout. The tables that read the views: tests/run/test_view_tables.py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import cnnviz
from cnnviz import ImageLibrary, Preprocessing, from_module, scan
from cnnviz.errors import CnnvizWarning, ScanError, UsageError
from cnnviz.run.quantiles import SCALE, quantiles_from_histogram
from cnnviz.scanner import merge, scan_shard
from cnnviz.scanner.reducers import sample_positions
from cnnviz.scanner.workdir import work_path

from ..conftest import (
    VIEW_K,
    VIEW_LAYERS,
    StopsOnce,
    activations,
    assert_equal_runs,
    assert_ranking,
    assert_same_file,
    make_tiny_model,
    scan_every_view,
)

# -- rank by max and by mean ----------------------------------------------------------------

def test_mean_ranking_equals_a_full_sort_and_cuts_around_the_maximum(photo_dir, views_run):
    model = make_tiny_model()
    acts = activations(photo_dir, model, VIEW_LAYERS)
    lib = ImageLibrary.open(photo_dir)
    assert len(acts) == len(lib) - 1  # corrupt.jpg is never ranked
    with h5py.File(views_run, "r") as f:
        assert json.loads(f.attrs["rank_by"]) == ["max", "mean"]
        for name in VIEW_LAYERS:
            g = f[f"layers/{name}"]
            means = {i: a[name].reshape(a[name].shape[0], -1).mean(axis=1) for i, a in acts.items()}
            maxima = {i: a[name].reshape(a[name].shape[0], -1).max(axis=1) for i, a in acts.items()}
            assert_ranking(g["topk_mean"], means, VIEW_K)
            assert_ranking(g["topk"], maxima, VIEW_K)
            # the patch of a mean-ranked image is cut around that image's maximum
            width = g.attrs["width"]
            ids, ys, xs = g["topk_mean/image_id"][()], g["topk_mean/y"][()], g["topk_mean/x"][()]
            for c in range(ids.shape[0]):
                for r, i in enumerate(ids[c]):
                    flat = acts[int(i)][name][c].reshape(-1)
                    assert ys[c, r] * width + xs[c, r] == int(np.argmax(flat))
            # one image, one position: the same box and patch in both rankings
            top, mean = g["topk/image_id"][()], g["topk_mean/image_id"][()]
            for c, r in zip(*np.nonzero(mean == top[:, :1]), strict=True):
                for key in ("patch_box", "rf_box", "orig_box", "patches"):
                    np.testing.assert_array_equal(g[f"topk_mean/{key}"][c, r], g[f"topk/{key}"][c, 0])
            # the per-image means kept beside the maxima
            stored = g["means"][()]
            assert np.isnan(stored[lib.relpaths.index("things/corrupt.jpg")]).all()
            for i, m in means.items():
                np.testing.assert_allclose(stored[i], m, rtol=1e-5, atol=1e-6)


def test_ties_go_to_the_smaller_id_in_every_ranking_and_histogram(photo_dir, tmp_path):
    """A constant output: every image ties in max, mean and min; each ranking holds the k
    smallest readable ids; every position counts in the bucket of the constant."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))
    torch.nn.init.zeros_(net[0].weight)
    torch.nn.init.constant_(net[0].bias, -0.5)
    model = from_module(net, Preprocessing(resize=40, crop=(32, 32)))
    run = scan(photo_dir, model, tmp_path / "t.h5", layers="0", top_k=4, batch_size=3, workers=0,
               progress=False, bottom_k=3, quantile_positions=0)
    lib = ImageLibrary.open(photo_dir)
    readable = [i for i, p in enumerate(lib.relpaths) if not p.endswith("corrupt.jpg")]
    with h5py.File(run, "r") as f:
        g = f["layers/0"]
        assert g["topk/image_id"][()].tolist() == [readable[:4]] * 2
        assert g["topk_mean/image_id"][()].tolist() == [readable[:4]] * 2
        assert g["bottomk/image_id"][()].tolist() == [readable[:3]] * 2
        assert (g["bottomk/activation"][()] == -0.5).all()
        hist = g["quantiles/histogram"][()]
        bucket = int(SCALE.bucket_of(np.float32(-0.5)))
        assert hist[:, bucket].tolist() == [len(readable) * 30 * 30] * 2
        assert hist.sum() == hist[:, bucket].sum()
    q = cnnviz.channel_quantiles(run, "0")
    assert abs(q.to_numpy() + 0.5).max() <= 0.5 * 2 ** -4  # the bound: half a bucket, relatively


class _NaNForBrightImages(torch.nn.Module):
    """A signed map that is NaN for every image brighter than the middle grey: such images
    have no maximum, mean or minimum, and never enter a ranking or a histogram."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=2, padding=2)

    def forward(self, x):
        y = self.conv(x)
        bright = x.mean(dim=(1, 2, 3), keepdim=True) > 0
        return torch.where(bright, torch.full_like(y, float("nan")), y)


def test_nan_and_unreadable_images_enter_no_view(photo_dir, tmp_path):
    model = from_module(torch.nn.Sequential(_NaNForBrightImages()), Preprocessing(resize=40, crop=(32, 32)))
    run = scan(photo_dir, model, tmp_path / "nan.h5", layers="0", top_k=3, batch_size=3, workers=0,
               progress=False, bottom_k=2, quantile_positions=0, maxima_means=True)
    acts = activations(photo_dir, model, ["0"], batch_size=3)
    nan_images = {i for i, a in acts.items() if np.isnan(a["0"]).all()}
    assert 0 < len(nan_images) < len(acts) - 3  # some images are NaN, enough are not
    flat = {i: a["0"].reshape(4, -1) for i, a in acts.items()}
    with h5py.File(run, "r") as f:
        g = f["layers/0"]
        assert_ranking(g["topk"], {i: v.max(axis=1) for i, v in flat.items()}, 3)
        assert_ranking(g["topk_mean"], {i: v.mean(axis=1) for i, v in flat.items()}, 3)
        assert_ranking(g["bottomk"], {i: v.min(axis=1) for i, v in flat.items()}, 2, ascending=True)
        for key in ("topk", "topk_mean", "bottomk"):
            assert not set(g[f"{key}/image_id"][()].ravel().tolist()) & nan_images
        counted = [v for i, v in flat.items() if i not in nan_images]
        want = np.stack([np.bincount(SCALE.bucket_of(np.concatenate([v[c] for v in counted])),
                                     minlength=SCALE.n_buckets + 1)[:-1] for c in range(4)])
        np.testing.assert_array_equal(g["quantiles/histogram"][()], want)
    table = cnnviz.class_table(run, "0")
    maxima = cnnviz.channel_maxima(run, "0")
    assert table.groupby("channel")["count"].sum().tolist() == [maxima.notna().sum().iloc[0]] * 4
    assert len(cnnviz.similar_channels(run, "0", 0, n=3)) == 3


# -- bottom-k -------------------------------------------------------------------------------

def test_bottom_k_equals_a_full_sort_by_the_signed_minimum(photo_dir, views_run):
    acts = activations(photo_dir, make_tiny_model(), ["0", "9"])
    with h5py.File(views_run, "r") as f:
        assert int(f.attrs["bottom_k"]) == 2
        assert "bottomk" not in f["layers/3"] and "bottomk" not in f["layers/6"]  # after a ReLU
        for name in ("0", "9"):
            g = f[f"layers/{name}"]
            minima = {i: a[name].reshape(a[name].shape[0], -1).min(axis=1) for i, a in acts.items()}
            assert_ranking(g["bottomk"], minima, 2, ascending=True)
            assert (g["bottomk/activation"][()] < 0).any()
            width = g.attrs["width"]
            ids, ys, xs = (g[f"bottomk/{k}"][()] for k in ("image_id", "y", "x"))
            for c in range(ids.shape[0]):
                for r, i in enumerate(ids[c]):  # the patch is cut around the (first) minimum
                    assert ys[c, r] * width + xs[c, r] == int(np.argmin(acts[int(i)][name][c].reshape(-1)))
    df = cnnviz.top_patches(views_run, "0", bottom=True)
    assert (df.rank_by == "min").all()
    first = df[df["rank"] == 0].set_index("channel").activation
    assert (first <= df.groupby("channel").activation.min()).all()  # rank 0 is the most negative
    with pytest.raises(UsageError, match="kept no bottom-k for 3"):
        cnnviz.top_patches(views_run, "3", bottom=True)


def test_bottom_k_is_refused_or_left_out_where_a_layer_cannot_be_negative(photo_dir, tmp_path):
    model = make_tiny_model()
    kw = dict(top_k=2, batch_size=4, workers=0, progress=False, bottom_k=2)
    with pytest.raises(UsageError, match=r"`bottom_layers` 3: never negative \(its output comes after"):
        scan(photo_dir, model, tmp_path / "a.h5", layers="0,3", bottom_layers="3", **kw)
    with pytest.raises(UsageError, match="`bottom_k`: none of the scanned layers can be negative"):
        scan(photo_dir, model, tmp_path / "b.h5", layers="3,6", **kw)
    with pytest.raises(UsageError, match="`bottom_k` 99 is more than the 15 images"):
        scan(photo_dir, model, tmp_path / "c.h5", layers="0", **{**kw, "bottom_k": 99})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything is written
    with pytest.warns(CnnvizWarning, match="no bottom-k for 3: never negative"):
        run = scan(photo_dir, model, tmp_path / "d.h5", layers="3,logits", **kw)
    with cnnviz.RunReader(run) as r:
        assert r.rankings("3") == ["max", "mean"] and r.rankings("9") == ["max", "mean", "min"]


# -- quantiles ------------------------------------------------------------------------------

def test_quantiles_over_every_position_against_numpy(photo_dir, views_run):
    """quantile_positions=0: the histogram counts every position of every readable image exactly;
    each level is within half a bucket (2**-4 relatively, or 2**-16 around 0) of numpy's exact
    quantile over all of them."""
    acts = activations(photo_dir, make_tiny_model(), VIEW_LAYERS)
    levels = [0.5, 0.9, 0.99, 0.995, 0.999]
    for name in VIEW_LAYERS:
        q = cnnviz.channel_quantiles(views_run, name)
        assert list(q.columns) == levels and q.index.name == "channel"
        with h5py.File(views_run, "r") as f:
            hist = f[f"layers/{name}/quantiles/histogram"][()]
        for c in range(hist.shape[0]):
            values = np.concatenate([a[name][c].reshape(-1) for a in acts.values()])
            want = np.bincount(SCALE.bucket_of(values), minlength=SCALE.n_buckets + 1)[:-1]
            np.testing.assert_array_equal(hist[c], want, err_msg=f"{name} {c}")
            exact = np.quantile(values, levels, method="inverted_cdf")
            err = np.abs(q.loc[c].to_numpy() - exact)
            assert (err <= np.maximum(np.abs(exact) * 2 ** -4, 2.0 ** -16)).all(), (name, c, err)
    other = cnnviz.channel_quantiles(views_run, "0", levels=[0.0, 0.25, 1.0])
    assert list(other.columns) == [0.0, 0.25, 1.0]
    with h5py.File(views_run, "r") as f:
        stats_max = f["layers/0/stats/max_max"][()]
    assert (np.abs(other[1.0] - stats_max) <= np.abs(stats_max) * 2 ** -4).all()


def test_sampled_positions_are_the_images_own_and_spread_evenly():
    """The sample of an image depends on its id only (shards and resumes count the same
    positions), holds distinct positions, and over many images reaches every position about
    equally often."""
    ids = torch.arange(4096)
    idx = sample_positions(ids, 196, 64)
    assert idx.shape == (4096, 64)
    assert all(len(set(row)) == 64 for row in idx[:200].tolist())
    np.testing.assert_array_equal(sample_positions(ids[100:110], 196, 64), idx[100:110])
    counts = np.bincount(idx.reshape(-1).numpy(), minlength=196)
    assert abs(counts / (4096 * 64 / 196) - 1).max() < 0.15
    assert sample_positions(ids, 196, 196) is None and sample_positions(ids, 196, 0) is None
    spread = sample_positions(ids[:50], 169, 100)  # step 2 (coprime with 169): every other position
    assert all(len(set(row)) == 100 for row in spread.tolist())
    assert ((spread[:, 1] - spread[:, 0]) % 169 == 2).all()


def test_sampled_quantiles_count_the_sampled_positions(photo_dir, tmp_path):
    """A 32x32 map sampled at 100 positions per image: the histogram counts exactly the positions
    the documented sample names, and its levels come close to those over every position."""
    model = make_tiny_model()
    run = scan_every_view(photo_dir, tmp_path / "s.h5", model, layers="0", quantile_positions=100, bottom_k=0)
    acts = activations(photo_dir, model, ["0"])
    with h5py.File(run, "r") as f:
        hist = f["layers/0/quantiles/histogram"][()]
        assert f["layers/0/quantiles"].attrs["positions"] == 100
    ids = sorted(acts)
    idx = sample_positions(torch.tensor(ids), 32 * 32, 100).numpy()
    for c in range(hist.shape[0]):
        sampled = np.concatenate([acts[i]["0"][c].reshape(-1)[idx[j]] for j, i in enumerate(ids)])
        want = np.bincount(SCALE.bucket_of(sampled), minlength=SCALE.n_buckets + 1)[:-1]
        np.testing.assert_array_equal(hist[c], want)
    full = np.stack([np.quantile(np.concatenate([acts[i]["0"][c].reshape(-1) for i in ids]), [0.5, 0.9],
                                 method="inverted_cdf") for c in range(hist.shape[0])])
    spread = np.stack([np.ptp(np.concatenate([acts[i]["0"][c].reshape(-1) for i in ids]))
                       for c in range(hist.shape[0])])
    got = quantiles_from_histogram(hist, [0.5, 0.9])
    assert (np.abs(got - full) <= 0.1 * spread[:, None]).all()


# -- shards, resume, options ----------------------------------------------------------------

def test_shards_merge_every_view_exactly(photo_dir, tmp_path):
    model = make_tiny_model()
    kw = dict(layers="0,6,logits", top_k=VIEW_K, batch_size=2, workers=0, progress=False, rank_by="max,mean",
              bottom_k=2, bottom_layers="0,logits", quantile_positions=64, maxima_means=True)
    single = scan(photo_dir, model, tmp_path / "single.h5", **kw)
    out = tmp_path / "run.h5"
    for rank in (1, 0, 2):
        scan_shard(photo_dir, model, out, (rank, 3), **kw)
    merged = merge([work_path(out, r, 3) for r in (2, 0, 1)], tmp_path / "merged.h5")
    assert_equal_runs(single, merged)
    with h5py.File(merged, "r") as f:
        assert {"topk_mean", "bottomk", "quantiles", "means"} <= set(f["layers/0"])


def test_a_resumed_scan_equals_an_uninterrupted_one_in_every_view(photo_dir, tmp_path):
    pre = Preprocessing(resize=72, crop=(64, 64))
    model = from_module(StopsOnce(), pre, name="stops")
    kw = dict(layers="net.0,net.6,net.9", top_k=VIEW_K, batch_size=2, workers=0, progress=False,
              rank_by="max,mean", bottom_k=2, bottom_layers="net.0,net.9", quantile_positions=64,
              maxima_means=True, checkpoint_images=2)
    cnnviz.list_layers(model)  # traced (one forward) before the count starts
    StopsOnce.calls = -1  # the bottom-k probe is the first call
    out = tmp_path / "run.h5"
    with pytest.raises(ScanError, match="ran out of memory"):
        scan(photo_dir, model, out, **kw)
    assert (tmp_path / "run.h5.work" / "state.npz").exists()
    scan(photo_dir, model, out, resume=True, **kw)
    StopsOnce.calls = -10 ** 6
    ref = scan(photo_dir, model, tmp_path / "ref.h5", **kw)
    assert_same_file(ref, out)


def test_scan_options_are_checked_before_any_work(photo_dir, tmp_path):
    model = make_tiny_model()
    for options, match in [({"rank_by": "mean"}, "the ranking by max is always kept"),
                           ({"rank_by": "max,median"}, "`rank_by` median: choose among max, mean"),
                           ({"bottom_k": -1}, "`bottom_k` -1"),
                           ({"quantile_positions": -2}, "`quantile_positions`"),
                           ({"bottom_k": 1, "bottom_layers": "nope"}, "`bottom_layers` nope: not among")]:
        with pytest.raises(UsageError, match=match):
            scan(photo_dir, model, tmp_path / "run.h5", layers="0", top_k=2, progress=False, **options)
    assert list(tmp_path.iterdir()) == []
    run = scan(photo_dir, model, tmp_path / "plain.h5", layers="0", top_k=2, workers=0, progress=False,
               rank_by="max", quantiles=False)
    with h5py.File(run, "r") as f:
        assert set(f["layers/0"]) == {"maxima", "position", "stats", "topk"}
        assert json.loads(f.attrs["rank_by"]) == ["max"]


# -- the reductions in every layout ---------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "2-D"])
def test_spatial_min_is_the_first_minimum_in_every_layout(layout):
    from cnnviz.scanner.reducers import spatial_min

    gen = torch.Generator().manual_seed(0)
    act = torch.randn(3, 5, 7, 6, generator=gen)
    act[0, 1, 2, 3] = act[0, 1, 5, 0] = act[0, 1, 6, 5] = -50.0  # a three-way tie
    act[2, 4] = 0.0
    if layout == "2-D":
        act = act[:, :, 0, 0].clone()
    elif layout == "channels_last":
        act = act.contiguous(memory_format=torch.channels_last)
    values, index = spatial_min(act)
    flat = act.reshape(act.shape[0], act.shape[1], -1).numpy()
    np.testing.assert_array_equal(values.numpy(), flat.min(axis=2))
    np.testing.assert_array_equal(index.numpy(), flat.argmin(axis=2))
    if layout != "2-D":
        assert int(index[0, 1]) == 2 * 6 + 3 and int(index[2, 4]) == 0


def test_the_gpu_histogram_counts_what_the_cpu_one_counts():
    """The device path (integer keys and one index_add_ into a fixed-size tensor, run here on
    the CPU) and the CPU's numpy path give the same counts, NaN, zeros and infinities included."""
    from cnnviz.scanner.reducers import histogram_numpy, histogram_torch

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 50, 6, generator=gen) * 10.0 ** torch.randint(-8, 8, (7, 50, 6), generator=gen)
    rows[0, 0, 0], rows[1, 1, 1], rows[2, 2, 2], rows[3, 3, 3] = float("nan"), 0.0, -0.0, float("-inf")
    width = SCALE.n_buckets + 1
    device = histogram_torch(rows, SCALE, width).numpy()
    np.testing.assert_array_equal(device, histogram_numpy(rows.numpy(), SCALE, width))
    assert device.sum() == rows.numel() - 1  # NaN is not counted
