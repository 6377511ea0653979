"""The dataset scan against brute force: its top-k, maxima, patches, tables and statistics, for
whole-image units, downsampled patches, amp, compiled scans and left-out maxima too; its
determinism and its ties."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import cnnviz
from cnnviz import ImageLibrary, load_model, scan
from cnnviz.errors import UsageError
from cnnviz.images import load_rgb
from cnnviz.model.taps import capture

from ..conftest import assert_same_file

LAYERS = ["layer1.0", "layer2.1", "layer3.0.conv2", "layer4.1"]
K = 5

@pytest.fixture(scope="module")
def resnet18():
    return load_model("resnet18", weights=None, seed=0)


@pytest.fixture(scope="module")
def run_file(photo_dir, resnet18, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run.h5"
    return scan(photo_dir, resnet18, out, layers=LAYERS, top_k=K, batch_size=4, workers=1,
                progress=False, patch_size=512)


def brute_force(library: ImageLibrary, model, layers):
    """Each image alone through the network; maxima with numpy; top-k by a full sort."""
    maxima = {n: [] for n in layers}
    where = {n: [] for n in layers}
    ok = []
    for i in range(len(library)):
        try:
            img = load_rgb(library.path(i))
        except Exception:  # noqa: BLE001
            ok.append(False)
            for n in layers:
                maxima[n].append(None)
                where[n].append(None)
            continue
        ok.append(True)
        with capture(model.module, layers) as rec, torch.no_grad():
            model.module(model.preprocessing(img))
        for n in layers:
            a = rec.outputs[n][0].numpy()
            flat = a.reshape(a.shape[0], -1)
            maxima[n].append(flat.max(axis=1))
            where[n].append(flat.argmax(axis=1))
    return ok, maxima, where


def test_scan_equals_brute_force(photo_dir, resnet18, run_file):
    lib = ImageLibrary.open(photo_dir)
    ok, maxima, where = brute_force(lib, resnet18, LAYERS)
    assert ok.count(False) == 1  # corrupt.jpg
    readable = [i for i, o in enumerate(ok) if o]
    with h5py.File(run_file, "r") as f:
        assert [p.decode() for p in f["images/path"][()]] == lib.relpaths
        assert f["images/ok"][()].tolist() == ok
        for n in LAYERS:
            g = f[f"layers/{n}"]
            bf_max = np.stack([maxima[n][i] for i in readable])
            bf_pos = np.stack([where[n][i] for i in readable])
            np.testing.assert_allclose(g["maxima"][()][readable], bf_max, rtol=1e-4, atol=1e-5)
            assert np.isnan(g["maxima"][()][~np.array(ok)]).all()
            np.testing.assert_array_equal(g["position"][()][readable], bf_pos)
            width = g.attrs["width"]
            for c in range(bf_max.shape[1]):
                order = sorted(range(len(readable)), key=lambda j: (-bf_max[j, c], readable[j]))[:K]
                ids = [readable[j] for j in order]
                assert g["topk/image_id"][c].tolist() == ids, (n, c)
                np.testing.assert_allclose(g["topk/activation"][c], bf_max[order, c], rtol=1e-4, atol=1e-5)
                assert g["topk/y"][c].tolist() == (bf_pos[order, c] // width).tolist()
                assert g["topk/x"][c].tolist() == (bf_pos[order, c] % width).tolist()
            stats = cnnviz.channel_stats(run_file, n)
            np.testing.assert_allclose(stats["mean_max"], bf_max.mean(0), rtol=1e-4)
            np.testing.assert_allclose(stats["fire_rate"], (bf_max > 0).mean(0))
            assert (stats["count"] == len(readable)).all()


def test_patches_are_the_receptive_field_cut_pixel_by_pixel(photo_dir, resnet18, run_file):
    lib = ImageLibrary.open(photo_dir)
    df = cnnviz.top_patches(run_file)
    assert set(df.columns) >= {"layer", "channel", "rank", "activation", "image_path", "y", "x",
                               "rf_y0", "rf_x1", "patch_y0", "orig_y0", "orig_x1", "label"}
    assert len(df) == sum(cnnviz.model.resolve_layer(resnet18, n).channels for n in LAYERS) * K
    rng = np.random.default_rng(0)
    with h5py.File(run_file, "r") as f:
        for n in LAYERS:
            tap = cnnviz.model.resolve_layer(resnet18, n)
            rows = df[df.layer == n]
            for _, row in rows.iloc[rng.choice(len(rows), 6, replace=False)].iterrows():
                crop, geom = resnet18.preprocessing.crop_uint8(load_rgb(lib.path(row.image_id)))
                y0, x0, y1, x1 = tap.rf.box(row.y, row.x)
                assert (row.rf_y0, row.rf_x0, row.rf_y1, row.rf_x1) == (y0, x0, y1, x1)
                if tap.rf.size[0] <= 224:
                    assert (row.patch_y0, row.patch_x1) == (y0, x1)
                else:  # bigger than the input: input-sized, centred on the field's centre
                    assert row.patch_y1 - row.patch_y0 == 224
                    assert abs((row.patch_y0 + row.patch_y1) - (y0 + y1)) <= 1
                expected = np.zeros((row.patch_y1 - row.patch_y0, row.patch_x1 - row.patch_x0, 3), np.uint8)
                for yy in range(row.patch_y0, row.patch_y1):
                    for xx in range(row.patch_x0, row.patch_x1):
                        if 0 <= yy < 224 and 0 <= xx < 224:
                            expected[yy - row.patch_y0, xx - row.patch_x0] = crop[yy, xx]
                patch = f[f"layers/{n}/topk/patches"][row.channel, row["rank"]]
                np.testing.assert_array_equal(patch, expected)
                oy0, ox0, oy1, ox1 = geom.to_original((max(row.patch_y0, 0), max(row.patch_x0, 0),
                                                       min(row.patch_y1, 224), min(row.patch_x1, 224)))
                assert row.orig_y0 == pytest.approx(oy0) and row.orig_x1 == pytest.approx(ox1)
                assert 0 <= row.orig_x0 <= row.orig_x1 <= geom.orig_width + 1e-3


def test_tables_and_failures(photo_dir, run_file):
    with h5py.File(run_file, "r") as f:
        reasons = [r.decode() for r in f["failures/reason"][()]]
        paths = [p.decode() for p in f["failures/path"][()]]
        assert paths == ["things/corrupt.jpg"] and reasons[0].startswith("OSError")
        assert f.attrs["n_failed"] == 1 and f.attrs["format_version"] == 1
        assert f.attrs["weights_origin"] == "random (seed 0)"
    fails = cnnviz.failures(run_file)
    assert fails.path.tolist() == paths and fails.reason.tolist() == reasons
    assert fails.kind.tolist() == ["OSError"]
    assert fails.image_id.tolist() == [ImageLibrary.open(photo_dir).relpaths.index("things/corrupt.jpg")]
    m = cnnviz.channel_maxima(run_file, "layer2.1")
    assert m.shape == (len(ImageLibrary.open(photo_dir)), 128)
    assert m.loc["things/corrupt.jpg"].isna().all()
    df = cnnviz.top_patches(run_file, layer="layer4.1")
    assert set(df.label) <= {"animals", "things"}
    assert not any(isinstance(v, (list, dict, np.ndarray)) for v in df.iloc[0].tolist())
    back = pd.read_csv(io.StringIO(df.to_csv(index=False)), keep_default_na=False)
    assert back.shape == df.shape and (back.image_path == df.image_path).all()
    stats = cnnviz.channel_stats(run_file, "layer4.1")
    assert {"top_label", "top_label_share", "selectivity"} <= set(stats.columns)
    # against pandas on the whole matrix: per-label means of the maxima, best vs the rest
    maxima = cnnviz.channel_maxima(run_file, "layer4.1").dropna()
    labels = maxima.index.str.split("/").str[0]
    per_label = maxima.groupby(labels).mean()
    best, rest = per_label.max(), (per_label.sum() - per_label.max()) / (len(per_label) - 1)
    np.testing.assert_allclose(stats["selectivity"], ((best - rest) / (best + rest)).to_numpy(), rtol=1e-6)
    top = cnnviz.top_patches(run_file, layer="layer4.1")
    for c in (0, 7, 100):
        counts = top[top.channel == c].label.value_counts()
        assert stats.loc[c, "top_label_share"] == counts.iloc[0] / K
        assert counts[stats.loc[c, "top_label"]] == counts.iloc[0]
    with pytest.raises(UsageError, match="layers are: layer1.0"):
        cnnviz.top_patches(run_file, layer="nope")


@pytest.mark.slow
def test_same_inputs_and_seed_give_the_same_file(photo_dir, tmp_path):
    """Determinism: two scans (different worker counts) write identical contents."""
    a = scan(photo_dir, load_model("resnet18", None, seed=1), tmp_path / "a.h5", layers="layer2.0",
             top_k=3, batch_size=4, workers=0, progress=False)
    b = scan(photo_dir, load_model("resnet18", None, seed=1), tmp_path / "b.h5", layers="layer2.0",
             top_k=3, batch_size=4, workers=2, progress=False)
    assert_same_file(a, b)


def test_ties_go_to_the_smaller_image_id(photo_dir, tmp_path):
    """A network whose output is constant: every image ties; the top-k is the k smallest ids
    of readable images, at position (0, 0)."""
    from cnnviz import Preprocessing, from_module

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))
    torch.nn.init.zeros_(net[0].weight)
    torch.nn.init.constant_(net[0].bias, 0.5)
    model = from_module(net, Preprocessing(resize=40, crop=(32, 32)))
    run = scan(photo_dir, model, tmp_path / "t.h5", layers="0", top_k=4, batch_size=3, workers=0,
               progress=False)
    lib = ImageLibrary.open(photo_dir)
    readable = [i for i, p in enumerate(lib.relpaths) if not p.endswith("corrupt.jpg")]
    with h5py.File(run, "r") as f:
        assert f["layers/0/topk/image_id"][()].tolist() == [readable[:4]] * 2
        assert (f["layers/0/topk/y"][()] == 0).all() and (f["layers/0/topk/x"][()] == 0).all()


@pytest.mark.slow
def test_whole_image_units_rank_images_like_brute_force_logits(photo_dir, resnet18, tmp_path):
    """avgpool (512x1x1) and the logits (fc, a 2-D output) are whole-image units: their top-k is
    the library sorted by each image's own value, and each patch is the network's input."""
    lib = ImageLibrary.open(photo_dir)
    out = scan(photo_dir, resnet18, tmp_path / "run.h5", layers="avgpool,logits", top_k=3, batch_size=4,
               workers=0, progress=False, patch_size=512)
    readable, logits, pooled, crops = [], [], [], {}
    for i in range(len(lib)):
        try:
            img = load_rgb(lib.path(i))
        except Exception:  # noqa: BLE001
            continue
        readable.append(i)
        crops[i] = resnet18.preprocessing.crop_uint8(img)[0]
        with capture(resnet18.module, ["avgpool"]) as cap, torch.no_grad():
            logits.append(cap.forward(resnet18.preprocessing(img))[0].numpy())
        pooled.append(cap.outputs["avgpool"][0, :, 0, 0].numpy())
    with h5py.File(out, "r") as f:
        assert cnnviz.run.tables.run_layers(out) == ["avgpool", "fc"]  # "logits" is fc's alias
        for name, values in (("avgpool", np.stack(pooled)), ("fc", np.stack(logits))):
            g = f[f"layers/{name}"]
            assert g.attrs["unit"] == "image" and bool(g.attrs["logits"]) == (name == "fc")
            np.testing.assert_allclose(g["maxima"][()][readable], values, rtol=1e-4, atol=1e-5)
            row_of = {i: j for j, i in enumerate(readable)}
            for c in range(values.shape[1]):
                # random weights give near-equal logits: compare the values the chosen images
                # have in the brute force with the brute force's own best three
                chosen = [row_of[int(i)] for i in g["topk/image_id"][c]]
                best = np.sort(values[:, c])[::-1][:3]
                np.testing.assert_allclose(values[chosen, c], best, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{name} {c}")
            assert (g["topk/y"][()] == 0).all() and (g["topk/x"][()] == 0).all()
            assert (g["topk/rf_box"][()] == [0, 0, 224, 224]).all()
            for c, r in ((0, 0), (5, 2)):
                np.testing.assert_array_equal(g["topk/patches"][c, r], crops[int(g["topk/image_id"][c, r])])
    df = cnnviz.top_patches(out, "fc")
    assert (df.unit == "image").all()
    assert (df.channel_name == [resnet18.class_names[c] for c in df.channel]).all()  # channel c is class c
    stats = cnnviz.channel_stats(out, "fc")
    np.testing.assert_allclose(stats["max_max"], np.stack(logits).max(0), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_downsampled_patches_are_block_means_of_the_grown_box(photo_dir, resnet18, tmp_path):
    """patch_size 40: resnet18's layer2.1 field (99 px) is cut at 3 x 33 = 99 px and averaged in
    3x3 blocks; layer4.1's (435 px) at the input's 224 -> 6 x 38 = 228 px. Checked against a
    float mean."""
    run = scan(photo_dir, resnet18, tmp_path / "small.h5", layers="layer2.1,layer4.1", top_k=2,
               batch_size=8, workers=0, progress=False, patch_size=40)
    lib = ImageLibrary.open(photo_dir)
    df = cnnviz.top_patches(run)
    with h5py.File(run, "r") as f:
        for layer, factor, side in (("layer2.1", 3, 33), ("layer4.1", 6, 38)):
            g = f[f"layers/{layer}"]
            assert g.attrs["patch_factor"] == factor and tuple(g.attrs["patch_shape"]) == (side, side)
            for _, row in df[df.layer == layer].head(12).iterrows():
                crop, _ = resnet18.preprocessing.crop_uint8(load_rgb(lib.path(row.image_id)))
                box = (row.patch_y0, row.patch_x0, row.patch_y1, row.patch_x1)
                assert box[2] - box[0] == factor * side
                centre_rf = (row.rf_y0 + row.rf_y1) / 2
                assert abs((box[0] + box[2]) / 2 - centre_rf) <= 0.5
                padded = np.pad(crop.astype(np.float64), ((300, 300), (300, 300), (0, 0)))
                cut = padded[box[0] + 300: box[2] + 300, box[1] + 300: box[3] + 300]
                means = cut.reshape(side, factor, side, factor, 3).mean(axis=(1, 3))
                expected = np.floor(means + 0.5).astype(np.uint8)
                np.testing.assert_array_equal(g["topk/patches"][row.channel, row["rank"]], expected)


@pytest.mark.slow
def test_amp_maxima_are_exact_for_the_activations_computed(photo_dir, tmp_path):
    """--amp (bfloat16 autocast on the CPU, float16 on CUDA): the stored maxima and positions
    are exactly those of the low-precision activations, reduced in float32."""
    model = load_model("resnet18", None, seed=5)
    run = scan(photo_dir, model, tmp_path / "amp.h5", layers="layer2.1", top_k=3, batch_size=4,
               workers=0, progress=False, amp=True)
    lib = ImageLibrary.open(photo_dir)
    with h5py.File(run, "r") as f:
        stored = f["layers/layer2.1/maxima"][()]
        where = f["layers/layer2.1/position"][()]
        assert f.attrs["amp"]
    from cnnviz.images.dataset import LibraryDataset, batch_ranges, collate

    ds = LibraryDataset(lib, model.preprocessing)
    for ids in batch_ranges(len(lib), 4):
        _, crops, _, _, errors = collate([ds[i] for i in ids])
        ok = [i for i, e in zip(ids, errors, strict=True) if not e]
        x = model.preprocessing.normalize(crops[[j for j, e in enumerate(errors) if not e]])
        with capture(model.module, ["layer2.1"]) as rec, torch.no_grad(), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            model.module(x)
        act = rec.outputs["layer2.1"]
        assert act.dtype == torch.bfloat16
        flat = act.float().flatten(2).numpy()
        np.testing.assert_array_equal(stored[ok], flat.max(axis=2))
        np.testing.assert_array_equal(where[ok], flat.argmax(axis=2))


@pytest.mark.slow
def test_maxima_can_be_left_out_or_kept_for_some_layers(photo_dir, resnet18, run_file, tmp_path):
    """Without per-image maxima a run keeps the same top-k, patches and statistics; whatever
    needs the maxima says they were not kept."""
    import warnings

    none = scan(photo_dir, resnet18, tmp_path / "none.h5", layers=LAYERS, top_k=K, batch_size=4,
                workers=1, progress=False, patch_size=512, maxima_dtype="none")
    some = scan(photo_dir, resnet18, tmp_path / "some.h5", layers=LAYERS, top_k=K, batch_size=4,
                workers=1, progress=False, patch_size=512, maxima_layers="layer2.1")
    pd.testing.assert_frame_equal(cnnviz.top_patches(none), cnnviz.top_patches(run_file))
    with h5py.File(none, "r") as f, h5py.File(run_file, "r") as g:
        for name in LAYERS:
            assert "maxima" not in f[f"layers/{name}"] and not f[f"layers/{name}"].attrs["maxima_kept"]
            key = f"layers/{name}/topk/patches"
            np.testing.assert_array_equal(f[key][()], g[key][()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = cnnviz.channel_stats(none)
    assert stats.selectivity.isna().all() and any("did not keep" in str(w.message) for w in caught)
    # the note names the caller's line (here), not a line inside cnnviz: a notebook shows the user's cell
    note = next(w for w in caught if "did not keep" in str(w.message))
    assert (note.category, note.filename) == (cnnviz.CnnvizWarning, __file__)
    ref = cnnviz.channel_stats(run_file)
    for col in ("count", "mean_max", "std_max", "max_max", "fire_rate", "top_label"):
        pd.testing.assert_series_equal(stats[col], ref[col])
    with pytest.raises(UsageError, match="did not keep the per-image maxima of layer1.0"):
        cnnviz.channel_maxima(none, "layer1.0")
    pd.testing.assert_frame_equal(cnnviz.channel_maxima(some, "layer2.1"),
                                  cnnviz.channel_maxima(run_file, "layer2.1"))
    with pytest.raises(UsageError, match="did not keep"):
        cnnviz.channel_maxima(some, "layer4.1")
    assert none.stat().st_size < run_file.stat().st_size


@pytest.mark.slow
def test_compiled_scan_equals_the_eager_scan(photo_dir, tiny_model, tmp_path):
    """compile=True: the same top-k images and positions, the maxima to float rounding."""
    kw = dict(layers="3,6", top_k=3, batch_size=4, workers=0, progress=False)
    eager = scan(photo_dir, tiny_model, tmp_path / "eager.h5", **kw)
    compiled = scan(photo_dir, tiny_model, tmp_path / "compiled.h5", compile=True, **kw)
    with h5py.File(eager, "r") as f, h5py.File(compiled, "r") as g:
        for name in ("3", "6"):
            for key in ("topk/image_id", "topk/y", "topk/x", "position", "topk/patches"):
                np.testing.assert_array_equal(f[f"layers/{name}/{key}"][()], g[f"layers/{name}/{key}"][()])
            np.testing.assert_allclose(g[f"layers/{name}/maxima"][()], f[f"layers/{name}/maxima"][()],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "2-D"])
def test_spatial_max_is_the_first_maximum_in_every_layout(layout):
    """Each layout takes its own fastest path (pools on channels_last, numpy on contiguous);
    all equal numpy's max, first argmax in row-major order, and mean, ties included."""
    from cnnviz.scanner.reducers import spatial_max

    gen = torch.Generator().manual_seed(0)
    act = torch.randn(3, 5, 7, 6, generator=gen).relu()
    act[0, 1, 2, 3] = act[0, 1, 5, 0] = act[0, 1, 6, 5] = 50.0  # a three-way tie
    act[2, 4] = 0.0  # a channel that never fires: every position ties at 0
    if layout == "2-D":
        act = act[:, :, 0, 0].clone()
    elif layout == "channels_last":
        act = act.contiguous(memory_format=torch.channels_last)
    values, index, mean = spatial_max(act)
    flat = act.reshape(act.shape[0], act.shape[1], -1).numpy()
    np.testing.assert_array_equal(values.numpy(), flat.max(axis=2))
    np.testing.assert_array_equal(index.numpy(), flat.argmax(axis=2))  # numpy: the first maximum
    np.testing.assert_allclose(mean.numpy(), flat.mean(axis=2), rtol=1e-6)
    if layout != "2-D":
        assert int(index[0, 1]) == 2 * 6 + 3 and int(index[2, 4]) == 0
