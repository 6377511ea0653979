"""Why did the model say that? Channel relevance for a decision, and the channels' dataset
examples beside it.

The relevance of channel ``c`` of a tap for an image ``x`` and a target class ``t`` is the sum
over the map's positions of activation times gradient::

    R_c(x) = sum_positions A_c(x) * d y_t(x) / d A_c(x)

(Captum's ``LayerGradientXActivation`` summed over positions: the first-order share of the
target logit ``y_t`` that passes through the channel). One backward pass from ``y_t`` gives it
for every tap. ``t`` is the given class, else the model's top-1 class. A channel's *share* is
``R_c / sum_c' |R_c'|`` over the layer's channels. See ``docs/relevance.md`` for the
definition's limits (skip connections, saturation) and the faithfulness measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import UsageError
from ..model.copying import without_inplace
from ..model.precision import precision_scope
from ..model.relevance import relevance_pass
from ..run import format as fmt
from ..run.reader import RunReader, reading
from ..types import ClassSpec, DeviceSpec, ImageSpec, LayerSpec, RunSpec

__all__ = ["Relevance", "layer_relevance", "explain_prediction", "explain_predictions",
           "ExplainedPredictions"]


@dataclass
class Relevance:
    """One batch's relevance: per layer ``(N, C)`` sums and ``(N, C)`` flat positions where each
    channel's relevance map peaks, the targets and the model's probabilities."""

    sums: dict[str, torch.Tensor]
    peaks: dict[str, torch.Tensor]
    targets: torch.Tensor
    probabilities: torch.Tensor
    maps: dict[str, np.ndarray] | None = None  # (N, C, H', W') activation x gradient, on request


def layer_relevance(module: torch.nn.Module, x: torch.Tensor, layers: Sequence[str],
                    targets: torch.Tensor | None = None, *, precision: str = "fp32",
                    keep_maps: bool = False) -> Relevance:
    """Relevance of every channel of ``layers`` for the logits ``targets`` (default: each
    image's top-1 class), from one forward and one backward pass
    (:func:`cnnviz.model.relevance.relevance_pass`, on a copy without in-place activations).

    Args:
        module: the network.
        x: the normalized input batch ``(N, 3, H, W)`` on the module's device.
        layers: module names of the taps.
        targets: ``(N,)`` class indices, or ``None`` for the model's top-1 classes.
    """
    with precision_scope(precision, x.device):
        p = relevance_pass(without_inplace(module), x, layers, targets)
    sums, peaks, maps = {}, {}, {}
    for name in layers:
        product = p.products[name].float()
        flat = product.flatten(2) if product.dim() == 4 else product[:, :, None]
        sums[name], peaks[name] = flat.sum(dim=2), flat.argmax(dim=2)
        if keep_maps:
            maps[name] = (product if product.dim() == 4 else product[:, :, None, None]).cpu().numpy()
    return Relevance(sums, peaks, p.targets, p.logits.float().softmax(dim=1), maps if keep_maps else None)


@dataclass
class ExplainedPredictions:
    """What :func:`explain_predictions` computes: the table, the crops the network saw, the
    model's top-5 classes per image and, per ``(image, layer, channel)`` row of the table, the
    channel's relevance map ``(H', W')``."""

    table: pd.DataFrame
    paths: list[Path]
    crops: np.ndarray
    predictions: list[list[tuple[int, str, float]]]
    maps: dict[tuple[int, str, int], np.ndarray]


def explain_prediction(image: str | Path, run: RunSpec, target: ClassSpec | None = None, *,
                       layers: LayerSpec = None, top: int = 10, model=None, device: DeviceSpec = "cpu",
                       examples: int = 4) -> pd.DataFrame:
    """The channels of each of the run's layers that contributed most to the model's decision
    about ``image`` (or to ``target``), beside the channels' dataset examples from the run.

    Args:
        image: an image file.
        run: a run file of the model (its layers, its library's examples).
        target: a class (index, name, WordNet lemma or id); default: the model's top-1 class.
        layers: layers of the run (default: those with a spatial map).
        top: channels per layer, most relevant first.
        model: the run's :class:`~cnnviz.model.LoadedModel`; default: reloaded from the run.
        examples: dataset examples per channel (the run's top-k images).

    Returns:
        One row per (layer, channel): ``image``, ``layer``, ``channel``, ``channel_name``,
        ``relevance`` (``R_c``), ``share`` (``R_c / sum |R|`` over the layer), ``rank`` (1 = most
        relevant in its layer), ``y``, ``x`` (where the channel's relevance peaks), ``target``,
        ``target_name``, ``probability`` (the model's, for ``target``), ``predicted``,
        ``predicted_name``, ``examples`` (paths of the channel's dataset examples) and
        ``examples_by`` (``relevance`` when the run ranked its examples by relevance, else
        ``max``).

    Example:
        >>> df = explain_prediction("cat.jpg", "run.h5")                       # doctest: +SKIP
        >>> df[df.layer == "layer4.2"].head()                                  # doctest: +SKIP
    """
    return explain_predictions([image], run, target, layers=layers, top=top, model=model, device=device,
                               examples=examples).table


def explain_predictions(images: ImageSpec, run: RunSpec, target: ClassSpec | None = None, *,
                        layers: LayerSpec = None, top: int = 10, model=None, device: DeviceSpec = "cpu",
                        examples: int = 4) -> ExplainedPredictions:
    """:func:`explain_prediction` for several images, keeping what a page shows of them."""
    from ..model.device import check_device
    from ..model.loading import check_model_fits, model_of_run

    check_device(device)
    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    with reading(run) as reader:
        if isinstance(layers, str):
            layers = [n for n in layers.split(",") if n.strip()]
        names = [n for n in reader.layers if reader.unit(n) == "map"] if not layers else \
            [reader.resolve_layer(n, "layers") for n in layers]
        model = model or model_of_run(reader, device=device)
        check_model_fits(model, reader, names)
        t = _target(target, model)
        crops, frames, predictions, maps = [], [], [], {}
        for i, path in enumerate(paths):
            crop = _crop(path, model)
            x = model.preprocessing.normalize(torch.from_numpy(crop[None]).to(model.device))
            rel = layer_relevance(model.module, x, names, None if t is None else torch.tensor([t]),
                                  precision=reader.precision, keep_maps=True)
            rows = pd.concat([_layer_rows(reader, model, name, rel, top, examples) for name in names],
                             ignore_index=True)
            rows.insert(0, "image", str(path))
            for row in rows.itertuples():
                maps[(i, row.layer, int(row.channel))] = rel.maps[row.layer][0, int(row.channel)]
            crops.append(crop)
            frames.append(rows)
            predictions.append(_top5(model, rel.probabilities[0]))
    return ExplainedPredictions(pd.concat(frames, ignore_index=True), paths, np.stack(crops), predictions,
                                maps)


def _target(target, model) -> int | None:
    from ..labels import class_indices

    return None if target is None else class_indices(str(target), model.class_names, "target")[0]


def _crop(path: Path, model) -> np.ndarray:
    from ..images.decoding import decode_file

    try:
        decoded = decode_file(path, model.preprocessing.resize)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the user's file, named
        raise UsageError(f"`images`: cannot read {path} ({type(exc).__name__}: {exc})") from None
    return model.preprocessing.crop_uint8(decoded.image, decoded.original_size)[0]


def _top5(model, probabilities: torch.Tensor) -> list[tuple[int, str, float]]:
    values, indices = probabilities.topk(min(5, len(probabilities)))
    return [(int(i), model.class_name(int(i)), float(v)) for v, i in zip(values, indices, strict=True)]


def _layer_rows(reader: RunReader, model, name: str, rel: Relevance, top: int,
                n_examples: int) -> pd.DataFrame:
    sums = rel.sums[name][0].cpu().numpy().astype(np.float64)
    peaks = rel.peaks[name][0].cpu().numpy()
    total = float(np.abs(sums).sum()) or 1.0
    order = np.lexsort((np.arange(len(sums)), -sums))[:top]
    width = int(reader.layer(name).attrs[fmt.LAYER_WIDTH])
    names = reader.channel_names(name)
    by = "relevance" if "relevance" in reader.rankings(name) else "max"
    ids = reader.ranking(name, by)[fmt.IMAGE_ID][()]
    paths = reader.paths
    target = int(rel.targets[0])
    predicted = int(rel.probabilities[0].argmax())
    return pd.DataFrame({
        "layer": name, "channel": order,
        "channel_name": [str(names[c]) if names is not None else "" for c in order],
        "relevance": sums[order], "share": sums[order] / total, "rank": np.arange(1, len(order) + 1),
        "y": peaks[order] // width, "x": peaks[order] % width,
        "target": target, "target_name": model.class_name(target),
        "probability": float(rel.probabilities[0, target]),
        "predicted": predicted, "predicted_name": model.class_name(predicted),
        "examples": [[str(paths[i]) for i in ids[c] if i >= 0][:n_examples] for c in order],
        "examples_by": by,
    })
