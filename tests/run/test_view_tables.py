"""The views of a channel as the run's tables read them, each against an independent
computation: top_patches by each ranking and of one class, class_table and similar_channels
(pandas over the per-image maxima), quantile levels from a histogram (numpy over the counted
values); crafted and older run files; `cnnviz top`. The scan that computes the views:
tests/scanner/test_views.py."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

import cnnviz
from cnnviz.errors import RunFileError, UsageError
from cnnviz.run.quantiles import SCALE, quantiles_from_histogram

from ..conftest import VIEW_K, VIEW_LAYERS, scan_every_view


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


# -- classes and similar channels -----------------------------------------------------------

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
                                             not np.isnan(maxima.iloc[things[j], c])], strict=True))[:VIEW_K]
        rows = df[df.channel == c]
        assert rows.image_id.tolist() == [i for _, i in order]
        np.testing.assert_array_equal(rows.activation, [-v for v, _ in order])
        assert (rows.label == "things").all() and rows["rank"].tolist() == list(range(VIEW_K))
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
    run = scan_every_view(lst, tmp_path / "r.h5", layers="6", bottom_k=0, maxima_means=False)
    by_id = cnnviz.top_patches(run, "6", channel=3, label="n02123045")
    by_name = cnnviz.top_patches(run, "6", channel=3, label="Tabby")
    pd.testing.assert_frame_equal(by_id, by_name)
    assert set(by_id.label_name) == {"tabby"}
    table = cnnviz.class_table(run, "6", channel=3)
    assert set(table.label_name) == {"tabby", "goldfish"} and table["count"].sum() == len(files)
    none = scan_every_view(lst, tmp_path / "none.h5", layers="6", bottom_k=0, maxima_dtype="none",
                           maxima_means=False)
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


# -- crafted and older run files; the command line ------------------------------------------

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
        for name in VIEW_LAYERS:
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


def test_tables_read_through_an_open_reader_and_leave_it_open(views_run):
    """A notebook opens the run once and hands the reader to every table."""
    from cnnviz.run.reader import RunReader

    with RunReader(views_run) as reader:
        for table in (cnnviz.top_patches, cnnviz.channel_stats, cnnviz.failures):
            pd.testing.assert_frame_equal(table(reader), table(views_run))
        assert cnnviz.top_patches(reader).attrs["run"] == str(views_run.resolve())
        assert reader.file.id.valid  # still open for the next table
