"""Honest rankings: planted channels (one live and selective, one nearly silent, one that ties at 0
on most of the library) against brute-force statistics computed here with pandas and numpy."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz import Preprocessing, from_module, scan, write_report
from cnnviz.analysis.explanation import explain_images
from cnnviz.run.tables import SILENT_SHARE

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 0.9)}
# per channel of the 1x1 convolution (its ReLU is the scanned map): RGB weights and bias
RED, BRIGHT, SILENT, BLUE_ONLY, GREEN = range(5)
WEIGHTS = {RED: ([10, 2, 2], -1),  # strongest on red, a little on the others: selectivity about 0.65
           BRIGHT: ([1, 1, 1], 0),  # every class alike
           SILENT: ([0, 0, 1e-3], -0.95e-3),  # a whisper on the brightest blue pixels only: index 1.0
           BLUE_ONLY: ([-5, -5, 10], -1),  # blue alone (index 1.0 too); 0 on the 8 red and green photos
           GREEN: ([2, 10, 2], -1)}


def planted_model():
    conv = torch.nn.Conv2d(3, 5, 1)
    fc = torch.nn.Linear(5, 3)
    with torch.no_grad():
        for c, (w, b) in WEIGHTS.items():
            conv.weight[c, :, 0, 0] = torch.tensor(w, dtype=torch.float32)
            conv.bias[c] = b
        fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]]))
        fc.bias.copy_(torch.tensor([-20.0, 0.5, 0.5]))  # class 0's logit is negative on every photo
    module = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), fc)
    return from_module(module, Preprocessing(resize=32, crop=(32, 32), mean=(0, 0, 0), std=(1, 1, 1)),
                       class_names=["reddish", "greenish", "bluish"], name="planted")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Four photos per colour class (its colour plus noise), scanned: ``(run, model, library)``."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(4):
            pixels = np.clip(np.array(rgb) + rng.uniform(0, 0.1, (40, 40, 3)), 0, 1)
            Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / name / f"{name}{i}.png")
    model = planted_model()
    run = scan(root, model, root.parent / "planted.h5", layers="1,logits", top_k=3, workers=0, progress=False)
    return run, model, root


def _morcos(maxima: pd.DataFrame, labels: pd.Series) -> pd.Series:
    """(mu_best - mu_rest) / (mu_best + mu_rest) of the per-class means, the textbook way."""
    per_class = maxima.groupby(labels.to_numpy()).mean()
    best = per_class.max()
    rest = (per_class.sum() - best) / (len(per_class) - 1)
    return (best - rest) / (best + rest)


def test_a_nearly_silent_channel_is_not_the_most_selective(planted):
    run, _, _ = planted
    maxima = cnnviz.channel_maxima(run, "1")
    labels = pd.Series([p.split("/")[0] for p in maxima.index])
    index = _morcos(maxima, labels)
    # the plant works: ranked by the bare index (ties by channel), the whisper comes first
    assert sorted(range(5), key=lambda c: (-index[c], c))[0] == SILENT
    stats = cnnviz.channel_stats(run, "1").set_index("channel")
    top_mean = np.sort(maxima.to_numpy(), axis=0)[-3:].mean(axis=0)  # each channel's top-3
    silent = top_mean < SILENT_SHARE * np.median(top_mean)
    assert silent.tolist() == [c == SILENT for c in range(5)]
    assert stats.nearly_silent.tolist() == silent.tolist()
    assert np.isnan(stats.selectivity[SILENT])
    live = [c for c in range(5) if c != SILENT]
    np.testing.assert_allclose(stats.selectivity[live], index[live], rtol=1e-5)
    # the order page: the live channels by their index, the silent one last, with no number
    site = write_report(run, run.parent / "site", layers=["1"], context=False, progress=False).parent
    page = (site / "1" / "by-selectivity.html").read_text()
    shown = [int(c) for c in re.findall(r'href="c(\d+)\.html"', page)]
    assert shown == sorted(live, key=lambda c: (-index[c], c)) + [SILENT]
    assert f"<b>{SILENT}</b> · –" in page and f"<b>{RED}</b> · {index[RED]:.3g}" in page
    assert "nearly silent" in (site / "1" / f"c{SILENT}.html").read_text()


def test_selectivity_is_undefined_for_negative_responses(planted):
    """Logits can be negative: the index's denominator then crosses 0. Brute force decides
    which classes have a negative per-class mean."""
    run, _, _ = planted
    maxima = cnnviz.channel_maxima(run, "logits")
    labels = pd.Series([p.split("/")[0] for p in maxima.index])
    negative = (maxima.groupby(labels.to_numpy()).mean() < 0).any()
    assert negative.tolist() == [True, False, False]
    stats = cnnviz.channel_stats(run, "logits").set_index("channel")
    assert stats.selectivity.isna().tolist() == negative.tolist()
    np.testing.assert_allclose(stats.selectivity[[1, 2]], _morcos(maxima, labels)[[1, 2]], rtol=1e-5)


def test_explain_ties_silence_logits_and_the_prediction(planted, tmp_path):
    """A red photo of the library: ties counted as mid-ranks, no channel where it does not respond
    among its top channels, the logits in the model's order, and the model's prediction first."""
    from cnnviz.report.analysis_pages import write_explain_page

    run, model, root = planted
    image = root / "red" / "red0.png"
    result = explain_images([image], run, model=model)
    t = result.table
    maxima = cnnviz.channel_maxima(run, "1")
    own = maxima.loc["red/red0.png"].to_numpy()
    library = maxima.to_numpy()
    rows = t[t.layer == "1"].set_index("channel").sort_index()
    below, equal = (library < own).sum(0), (library == own).sum(0)
    np.testing.assert_allclose(rows.percentile, 100 * (below + equal / 2) / len(library))
    np.testing.assert_array_equal(rows.ties, equal - 1)
    # blue-only is 0 on all 8 red and green photos: rank 5 of 12 counting strictly larger values,
    # but no response, tied with 7 others, at the 33rd percentile (not the 67th)
    assert own[BLUE_ONLY] == 0 and rows.loc[BLUE_ONLY, "rank"] == 5 and rows.loc[BLUE_ONLY, "ties"] == 7
    assert rows.loc[BLUE_ONLY, "percentile"] == pytest.approx(100 * 4 / 12)
    assert not rows.responds[BLUE_ONLY] and not rows.responds[SILENT] and rows.responds[RED]
    order = t[t.layer == "1"].channel.tolist()
    responding = [c for c in order if rows.responds[c]]
    assert order[: len(responding)] == responding and RED in responding
    assert (np.diff(rows.percentile[responding].to_numpy()) <= 0).all()
    # the logits (the Linear "4"): by value, whatever their rank in the library
    logits = t[t.layer == "4"]
    assert len(logits) == 3 and logits.value.is_monotonic_decreasing
    assert logits.sort_values("rank").channel.tolist() != logits.channel.tolist()  # "reddish": rank 1
    # the prediction: a softmax of the network's output, computed here
    x = torch.from_numpy(result.crops).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        probs = model.module(x).softmax(1)[0].numpy()
    expected = [(int(i), model.class_names[i], float(probs[i])) for i in np.argsort(-probs)]
    assert [(i, n) for i, n, _ in result.predictions[0]] == [(i, n) for i, n, _ in expected]
    np.testing.assert_allclose([p for *_, p in result.predictions[0]], [p for *_, p in expected], rtol=1e-5)
    page = write_explain_page(result, run, tmp_path / "ex", top=5).read_text()
    assert page.index("The model's prediction") < page.index("<h3>")
    first = expected[0]
    assert f"<td>{first[1]}</td><td>{100 * first[2]:.1f} %</td>" in page
    section = page[page.index("<h3>1"): page.index("<h3>4")]  # the map layer; "4" is the Linear
    listed = [int(c) for c in re.findall(r"<b>channel (\d+)</b>", section)]
    assert listed == responding[:5] and BLUE_ONLY not in listed and SILENT not in listed
    classes = re.findall(r"<b>class (\d+)</b>", page)
    assert [int(c) for c in classes] == logits.channel.tolist()
