"""More than one view of a channel, each against an independent brute-force computation: the
images ranked by spatial mean and the bottom-k (torch activations of every image, sorted in
Python), the quantiles over positions (numpy over every position), masks, classes per channel
and similar channels (pandas over the per-image maxima). Ties, NaN and unreadable images;
shards and resumed scans; crafted and older run files."""

from __future__ import annotations

import json
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import cnnviz
from cnnviz import ImageLibrary, Preprocessing, from_module, scan
from cnnviz.errors import CnnvizWarning, RunFileError, ScanError, UsageError
from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate
from cnnviz.model.taps import capture
from cnnviz.run.quantiles import SCALE, quantiles_from_histogram
from cnnviz.scanner import merge, scan_shard
from cnnviz.scanner.reducers import sample_positions
from cnnviz.scanner.workdir import work_path

from ..conftest import tiny_cnn
from .test_distributed import assert_equal_runs
from .test_scan import assert_same_file

LAYERS = ["0", "3", "6", "9"]  # a signed map (before an in-place ReLU), two maps after one, the logits
K = 3
BATCH = 4
TOL = 1e-5


def _tiny():
    return from_module(tiny_cnn(), Preprocessing(resize=72, crop=(64, 64)),
                       class_names=[f"c{i}" for i in range(10)], name="tiny")


def _scan(library, out, model=None, **kw):
    options = dict(layers=",".join(LAYERS), top_k=K, batch_size=BATCH, workers=0, progress=False,
                   rank_by="max,mean", bottom_k=2, quantile_positions=0, maxima_means=True)
    options.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CnnvizWarning)  # "no bottom-k for 3, 6": tested below
        return scan(library, model or _tiny(), out, **options)


@pytest.fixture(scope="module")
def views_run(photo_dir, tmp_path_factory):
    return _scan(photo_dir, tmp_path_factory.mktemp("views") / "run.h5")


def activations(library, model, layers, batch_size=BATCH) -> dict[int, dict[str, np.ndarray]]:
    """Per readable image, each layer's whole activation map ``(C, H, W)`` float32, from the same
    decoded batches and layout as a scan (so that the reductions, not the convolutions, are what
    the tests compare)."""
    lib = ImageLibrary.open(library) if not isinstance(library, ImageLibrary) else library
    ds = LibraryDataset(lib, model.preprocessing)
    out = {}
    module = model.module.to(memory_format=torch.channels_last)
    for ids in batch_ranges(len(lib), batch_size):
        _, crops, _, _, errors = collate([ds[i] for i in ids])
        ok = [i for i, e in zip(ids, errors, strict=True) if not e]
        if not ok:
            continue
        x = model.preprocessing.normalize(crops[[j for j, e in enumerate(errors) if not e]])
        with capture(module, layers) as rec, torch.no_grad():
            module(x.contiguous(memory_format=torch.channels_last))
        for row, i in enumerate(ok):
            maps = {}
            for name in layers:
                a = rec.outputs[name][row].float()
                maps[name] = (a[:, None, None] if a.dim() == 1 else a).numpy().copy()
            out[i] = maps
    return out


def brute_ranking(values: dict[int, np.ndarray], c: int, k: int, ascending: bool = False) -> list[int]:
    """The k image ids of a full sort by (-value, id) (ascending: (value, id)); NaN never enters."""
    cand = [(float(v[c]), i) for i, v in values.items() if not np.isnan(v[c])]
    cand.sort(key=lambda p: (p[0] if ascending else -p[0], p[1]))
    return [i for _, i in cand[:k]]


def assert_ranking(group, values: dict[int, np.ndarray], k: int, ascending: bool = False) -> None:
    """A stored ranking (``topk/``, ``topk_mean/``, ``bottomk/``) equals a full sort: the same
    images in the same order (an image may trade places only with one whose brute-force value is
    within float rounding of its own), its activation the image's value."""
    ids, acts = group["image_id"][()], group["activation"][()]
    for c in range(ids.shape[0]):
        want = brute_ranking(values, c, k, ascending)
        got = [int(i) for i in ids[c] if i >= 0]
        assert len(got) == len(want), c
        for g, w in zip(got, want, strict=True):
            assert g == w or abs(values[g][c] - values[w][c]) <= TOL, (c, got, want)
        np.testing.assert_allclose(acts[c][: len(got)], [values[i][c] for i in got], rtol=1e-5, atol=TOL)
        assert (ids[c][len(got):] == -1).all() and np.isnan(acts[c][len(got):]).all()


# -- rank by max and by mean ---------------------------------------------------------------------

def test_mean_ranking_equals_a_full_sort_and_cuts_around_the_maximum(photo_dir, views_run):
    model = _tiny()
    acts = activations(photo_dir, model, LAYERS)
    lib = ImageLibrary.open(photo_dir)
    assert len(acts) == len(lib) - 1  # corrupt.jpg is never ranked
    with h5py.File(views_run, "r") as f:
        assert json.loads(f.attrs["rank_by"]) == ["max", "mean"]
        for name in LAYERS:
            g = f[f"layers/{name}"]
            means = {i: a[name].reshape(a[name].shape[0], -1).mean(axis=1) for i, a in acts.items()}
            maxima = {i: a[name].reshape(a[name].shape[0], -1).max(axis=1) for i, a in acts.items()}
            assert_ranking(g["topk_mean"], means, K)
            assert_ranking(g["topk"], maxima, K)
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


def test_top_patches_shows_each_ranking(views_run):
    by_max = cnnviz.top_patches(views_run, "3")
    by_mean = cnnviz.top_patches(views_run, "3", rank_by="mean")
    assert (by_max.rank_by == "max").all() and (by_mean.rank_by == "mean").all()
    assert (by_mean.patch_rank == by_mean["rank"]).all()
    with h5py.File(views_run, "r") as f:
        ids = f["layers/3/topk_mean/image_id"][()]
        acts = f["layers/3/topk_mean/activation"][()]
    assert by_mean.image_id.tolist() == ids[ids >= 0].tolist()
    np.testing.assert_array_equal(by_mean.activation, acts[ids >= 0])
    with pytest.raises(UsageError, match="`rank_by` 'median': choose max, mean, relevance"):
        cnnviz.top_patches(views_run, "3", rank_by="median")


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


# -- bottom-k ------------------------------------------------------------------------------------

def test_bottom_k_equals_a_full_sort_by_the_signed_minimum(photo_dir, views_run):
    acts = activations(photo_dir, _tiny(), ["0", "9"])
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
    model = _tiny()
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


# -- quantiles and masks -------------------------------------------------------------------------

def test_quantiles_over_every_position_against_numpy(photo_dir, views_run):
    """quantile_positions=0: the histogram counts every position of every readable image exactly;
    each level is within half a bucket (2**-4 relatively, or 2**-16 around 0) of numpy's exact
    quantile over all of them."""
    acts = activations(photo_dir, _tiny(), LAYERS)
    levels = [0.5, 0.9, 0.99, 0.995, 0.999]
    for name in LAYERS:
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
    model = _tiny()
    run = _scan(photo_dir, tmp_path / "s.h5", model, layers="0", quantile_positions=100, bottom_k=0)
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


def test_quantiles_from_a_histogram_against_numpy():
    """The reader's level of a histogram: numpy's inverted-CDF quantile of the counted values,
    within half a bucket, on signed values of every size (zeros, tiny, huge, infinite)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-8, 7, 5000), np.zeros(300),
                             [np.inf, -np.inf, 3e7]]).astype(np.float32)
    counts = np.bincount(SCALE.bucket_of(values), minlength=SCALE.n_buckets + 1)[None, :-1]
    levels = np.linspace(0, 1, 41)
    got = quantiles_from_histogram(counts, levels)[0]
    exact = np.quantile(values.astype(np.float64), levels, method="inverted_cdf")
    inside = np.abs(exact) < 2.0 ** 20
    err = np.abs(got[inside] - exact[inside])
    assert (err <= np.maximum(np.abs(exact[inside]) * 2 ** -4, 2.0 ** -16)).all()
    assert (np.sign(got[~inside]) == np.sign(exact[~inside])).all() and np.isinf(got[~inside]).all()
    assert np.isnan(quantiles_from_histogram(np.zeros((1, SCALE.n_buckets)), [0.5])).all()


def test_masks_threshold_the_map_at_the_mask_level(photo_dir, views_run):
    """The mask level is the 0.995 quantile; on the unit centres the mask is the map's units
    above it, between them the bilinear interpolation of the map; patch_montage outlines a
    mask on each patch whose map passes the level."""
    from cnnviz.run.geometry import LayerGeometry
    from cnnviz.run.masks import map_on_pixels, threshold_mask
    from cnnviz.viz import figures

    model = _tiny()
    q = cnnviz.channel_quantiles(views_run, "3")
    with cnnviz.RunReader(views_run) as r:
        levels = r.mask_levels("3")
        geo = LayerGeometry(r.layer("3").attrs, r.preprocessing["crop"], int(r.attrs["patch_size"]))
        ids = r.layer("3")["topk/image_id"][()]
        boxes = r.layer("3")["topk/patch_box"][()]
    np.testing.assert_array_equal(levels, q[0.995].to_numpy())
    acts = activations(photo_dir, model, ["3"])
    amap = acts[int(ids[2, 0])]["3"][2]
    ys, xs = geo.unit_centres()  # field 17 px, stride 4, offset -6: centres 2.5, 6.5, ... 62.5
    assert ys.tolist() == xs.tolist() == (2.5 + 4 * np.arange(16)).tolist()
    on = map_on_pixels(amap, geo, (2, 2, 66, 66))  # pixel (r, c) centred at (2.5 + r, 2.5 + c)
    np.testing.assert_allclose(on[::4, ::4], amap, rtol=1e-6)  # on the unit centres: the map
    quarter = map_on_pixels(amap, geo, (3, 2, 4, 3))  # centre y 3.5: a quarter of the way to row 1
    np.testing.assert_allclose(quarter[0, 0], amap[0, 0] * 0.75 + amap[1, 0] * 0.25, rtol=1e-6)
    mask = threshold_mask(amap, levels[2], geo, boxes[2, 0], geo.patch_factor)
    assert mask.shape == tuple(geo.patch_shape) and mask.any()
    fig = figures.patch_montage(views_run, "3", 2, mask=True, model=model)
    outlined = [ax for ax in fig.axes if ax.collections]
    assert len(outlined) == sum(acts[int(i)]["3"][2].max() > levels[2] for i in ids[2])


# -- classes and similar channels ----------------------------------------------------------------

def test_class_table_against_pandas(views_run):
    table = cnnviz.class_table(views_run, "6")
    maxima = cnnviz.channel_maxima(views_run, "6")
    labels = pd.Series(maxima.index.str.split("/").str[0], index=maxima.index)
    long = maxima.stack(future_stack=True).rename("m").reset_index()  # NaN rows stay, then drop
    long["label"] = labels.loc[long.image_path].to_numpy()
    long = long.dropna(subset=["m"])
    want = long.groupby(["channel", "label"]).m.agg(count="count", mean_max="mean",
                                                    fire_rate=lambda m: (m > 0).mean()).reset_index()
    got = table.set_index(["channel", "label"]).sort_index()
    want = want.set_index(["channel", "label"]).sort_index()
    assert (got["count"] == want["count"]).all()
    np.testing.assert_allclose(got.mean_max, want.mean_max, rtol=1e-6)
    np.testing.assert_allclose(got.fire_rate, want.fire_rate)
    for c, rows in table.groupby("channel", sort=False):  # best classes first
        assert rows.mean_max.is_monotonic_decreasing, c
    one = cnnviz.class_table(views_run, "6", channel=5)
    pd.testing.assert_frame_equal(one.reset_index(drop=True),
                                  table[table.channel == 5].reset_index(drop=True))


def test_top_patches_of_one_class_against_pandas(views_run):
    maxima = cnnviz.channel_maxima(views_run, "6")
    things = [i for i, p in enumerate(maxima.index) if p.startswith("things/")]
    df = cnnviz.top_patches(views_run, "6", label="things")
    stored = cnnviz.top_patches(views_run, "6")
    for c in range(maxima.shape[1]):
        col = maxima.iloc[things, c].dropna()
        order = sorted(zip(-col.to_numpy(), [things[j] for j in range(len(things)) if
                                             not np.isnan(maxima.iloc[things[j], c])], strict=True))[:K]
        rows = df[df.channel == c]
        assert rows.image_id.tolist() == [i for _, i in order]
        np.testing.assert_array_equal(rows.activation, [-v for v, _ in order])
        assert (rows.label == "things").all() and rows["rank"].tolist() == list(range(K))
        for row in rows.itertuples():  # an image also in the stored top-k: same boxes, its patch there
            same = stored[(stored.channel == c) & (stored.image_id == row.image_id)]
            assert row.patch_rank == (int(same["rank"].iloc[0]) if len(same) else -1)
            if len(same):
                for col_ in ("y", "x", "rf_y0", "rf_x1", "patch_y0", "patch_x1", "orig_y0", "orig_x1"):
                    assert getattr(row, col_) == pytest.approx(same[col_].iloc[0]), col_
    with pytest.raises(UsageError, match="`label` 'plants': no image of run.h5 has that label"):
        cnnviz.top_patches(views_run, "6", label="plants")


def test_classes_by_wordnet_id_or_class_name(photo_dir, tmp_path):
    files = sorted(p for p in photo_dir.rglob("*") if p.is_file() and p.name != "corrupt.jpg")
    lst = tmp_path / "list.csv"
    lst.write_text("".join(f"{p},{'n02123045' if n % 2 else 'n01443537'}\n" for n, p in enumerate(files)))
    run = _scan(lst, tmp_path / "r.h5", layers="6", bottom_k=0, maxima_means=False)
    by_id = cnnviz.top_patches(run, "6", channel=3, label="n02123045")
    by_name = cnnviz.top_patches(run, "6", channel=3, label="Tabby")
    pd.testing.assert_frame_equal(by_id, by_name)
    assert set(by_id.label_name) == {"tabby"}
    table = cnnviz.class_table(run, "6", channel=3)
    assert set(table.label_name) == {"tabby", "goldfish"} and table["count"].sum() == len(files)
    none = _scan(lst, tmp_path / "none.h5", layers="6", bottom_k=0, maxima_dtype="none", maxima_means=False)
    for call in (lambda: cnnviz.class_table(none, "6"), lambda: cnnviz.top_patches(none, "6", label="tabby"),
                 lambda: cnnviz.similar_channels(none, "6", 0)):
        with pytest.raises(UsageError, match="did not keep the per-image maxima of 6"):
            call()


def test_similar_channels_against_pandas_spearman(views_run):
    maxima = cnnviz.channel_maxima(views_run, "3").dropna()
    corr = maxima.corr(method="spearman")
    for c in (0, 5):
        want = corr[c].drop(c).dropna().sort_values(ascending=False, kind="stable").head(4)
        got = cnnviz.similar_channels(views_run, "3", c, n=4)
        np.testing.assert_allclose(got.spearman, want.to_numpy(), rtol=1e-9)
        assert got.spearman.is_monotonic_decreasing and c not in got.channel.tolist()
        assert sorted(got.channel) == sorted(want.index)  # (ties may come in another order)


# -- shards, resume, run files -------------------------------------------------------------------

def test_shards_merge_every_view_exactly(photo_dir, tmp_path):
    model = _tiny()
    kw = dict(layers="0,6,logits", top_k=K, batch_size=2, workers=0, progress=False, rank_by="max,mean",
              bottom_k=2, bottom_layers="0,logits", quantile_positions=64, maxima_means=True)
    single = scan(photo_dir, model, tmp_path / "single.h5", **kw)
    out = tmp_path / "run.h5"
    for rank in (1, 0, 2):
        scan_shard(photo_dir, model, out, (rank, 3), **kw)
    merged = merge([work_path(out, r, 3) for r in (2, 0, 1)], tmp_path / "merged.h5")
    assert_equal_runs(single, merged)
    with h5py.File(merged, "r") as f:
        assert {"topk_mean", "bottomk", "quantiles", "means"} <= set(f["layers/0"])


class _StopsOnce(torch.nn.Module):
    """The tiny network, out of memory once at its third batch."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x):
        _StopsOnce.calls += 1
        if _StopsOnce.calls == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.net(x)


def test_a_resumed_scan_equals_an_uninterrupted_one_in_every_view(photo_dir, tmp_path):
    pre = Preprocessing(resize=72, crop=(64, 64))
    model = from_module(_StopsOnce(), pre, name="stops")
    kw = dict(layers="net.0,net.6,net.9", top_k=K, batch_size=2, workers=0, progress=False,
              rank_by="max,mean", bottom_k=2, bottom_layers="net.0,net.9", quantile_positions=64,
              maxima_means=True, checkpoint_images=2)
    cnnviz.list_layers(model)  # traced (one forward) before the count starts
    _StopsOnce.calls = -1  # the bottom-k probe is the first call
    out = tmp_path / "run.h5"
    with pytest.raises(ScanError, match="ran out of memory"):
        scan(photo_dir, model, out, **kw)
    assert (tmp_path / "run.h5.work" / "state.npz").exists()
    scan(photo_dir, model, out, resume=True, **kw)
    _StopsOnce.calls = -10 ** 6
    ref = scan(photo_dir, model, tmp_path / "ref.h5", **kw)
    assert_same_file(ref, out)


def _edit(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize("what", ["topk_mean shape", "bottomk id", "histogram width", "quantile levels",
                                  "rank_by", "means shape"])
def test_crafted_views_are_refused_in_one_line(views_run, tmp_path, what):
    path = tmp_path / "crafted.h5"
    shutil.copy(views_run, path)

    def edit(f):
        g = f["layers/0"]
        if what == "topk_mean shape":
            data = g["topk_mean/image_id"][()][:, :2]
            del g["topk_mean/image_id"]
            g.create_dataset("topk_mean/image_id", data=data)
        elif what == "bottomk id":
            ids = g["bottomk/image_id"][()]
            ids[1, 1] = 10_000
            g["bottomk/image_id"][...] = ids
        elif what == "histogram width":
            data = g["quantiles/histogram"][()][:, :-1]
            del g["quantiles/histogram"]
            g.create_dataset("quantiles/histogram", data=data)
        elif what == "quantile levels":
            g["quantiles"].attrs["levels"] = np.array([0.5, 2.0])
        elif what == "rank_by":
            f.attrs["rank_by"] = json.dumps(["mean"])
        else:
            data = g["means"][()][:-1]
            del g["means"]
            g.create_dataset("means", data=data)

    _edit(path, edit)
    with pytest.raises(RunFileError, match="is damaged or was not written by cnnviz") as err:
        cnnviz.top_patches(path)
    assert "\n" not in str(err.value)


def test_older_run_files_read_as_before(views_run, tmp_path):
    """A file without the views of cnnviz 0.4 (its rank_by, groups and means removed): the max
    ranking reads as before; asking for a view it lacks is one line saying how to get it."""
    path = tmp_path / "old.h5"
    shutil.copy(views_run, path)

    def strip(f):
        for key in ("rank_by", "bottom_k"):
            del f.attrs[key]
        for name in LAYERS:
            g = f[f"layers/{name}"]
            for sub in ("topk_mean", "bottomk", "quantiles", "means"):
                if sub in g:
                    del g[sub]

    _edit(path, strip)
    pd.testing.assert_frame_equal(cnnviz.top_patches(path), cnnviz.top_patches(views_run))
    with cnnviz.RunReader(path) as r:
        assert r.rank_by == ["max"] and r.bottom_k == 0 and r.rankings("0") == ["max"]
    with pytest.raises(UsageError, match=r"images of 3 by max only \(scan with `rank_by=max,mean`\)"):
        cnnviz.top_patches(path, "3", rank_by="mean")
    with pytest.raises(UsageError, match="has no quantiles of 3"):
        cnnviz.channel_quantiles(path, "3")
    assert len(cnnviz.class_table(path, "3")) and len(cnnviz.similar_channels(path, "3", 0))


def test_scan_options_are_checked_before_any_work(photo_dir, tmp_path):
    model = _tiny()
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


def test_the_command_line_shows_each_view(photo_dir, views_run, tmp_path, capsys):
    from cnnviz.cli import main

    assert main(["top", str(views_run), "--layer", "3", "--channel", "1", "--rank-by", "mean", "--csv"]) == 0
    df = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out), keep_default_na=False)
    want = cnnviz.top_patches(views_run, "3", channel=1, rank_by="mean")
    assert df.image_id.tolist() == want.image_id.tolist() and (df.rank_by == "mean").all()
    assert main(["top", str(views_run), "--layer", "9", "--bottom"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3] == "min"  # the rank_by column
    assert main(["top", str(views_run), "--layer", "6", "--label", "animals", "--csv"]) == 0
    assert set(pd.read_csv(__import__("io").StringIO(capsys.readouterr().out)).label) == {"animals"}
    assert main(["top", str(views_run), "--layer", "3", "--bottom"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "kept no bottom-k for 3" in err
    out = tmp_path / "cli.h5"
    assert main(["scan", str(photo_dir), "--model", "resnet18", "--weights", "none", "--layers", "layer1.0",
                 "--top-k", "2", "--workers", "0", "--no-progress", "--bottom-k", "2",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--bottom-k: none of the scanned layers can be negative" in err


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
