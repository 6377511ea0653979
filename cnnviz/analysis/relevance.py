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
from ..run import format as fmt
from ..run.reader import RunReader

__all__ = ["Relevance", "layer_relevance", "explain_prediction"]


@dataclass
class Relevance:
    """One batch's relevance: per layer ``(N, C)`` sums and ``(N, C)`` flat positions where each
    channel's relevance map peaks, the targets and the model's probabilities."""

    sums: dict[str, torch.Tensor]
    peaks: dict[str, torch.Tensor]
    targets: torch.Tensor
    probabilities: torch.Tensor


def layer_relevance(module: torch.nn.Module, x: torch.Tensor, layers: Sequence[str],
                    targets: torch.Tensor | None = None, precision: str = "fp32") -> Relevance:
    """Relevance of every channel of ``layers`` for the logits ``targets`` (default: each
    image's top-1 class), from one forward and one backward pass.

    Args:
        module: the network (its in-place activations are run out of place on a copy).
        x: the normalized input batch ``(N, 3, H, W)`` on the module's device.
        layers: module names of the taps.
        targets: ``(N,)`` class indices, or ``None`` for the model's top-1 classes.

    Raises:
        UsageError: a tap whose output the network changes in place afterwards (its gradient
            would not be the output's): tap the enclosing block instead.
    """
    net = without_inplace(module)
    outputs: dict[str, torch.Tensor] = {}
    handles = [net.get_submodule(name).register_forward_hook(_keeper(outputs, name)) for name in layers]
    try:
        with torch.enable_grad(), precision_scope(precision, x.device):
            logits = net(x.detach().requires_grad_(True))  # the model's weights are frozen
            _check_unchanged(outputs)
            chosen = logits.argmax(dim=1) if targets is None else targets.to(logits.device)
            score = logits.gather(1, chosen[:, None]).sum()
            grads = torch.autograd.grad(score, [outputs[n][0] for n in layers])
    finally:
        for h in handles:
            h.remove()
    sums, peaks = {}, {}
    for name, grad in zip(layers, grads, strict=True):
        product = (outputs[name][0] * grad).detach().float()
        flat = product.flatten(2) if product.dim() == 4 else product[:, :, None]
        sums[name], peaks[name] = flat.sum(dim=2), flat.argmax(dim=2)
    return Relevance(sums, peaks, chosen.detach(), logits.detach().float().softmax(dim=1))


def _keeper(outputs: dict, name: str):
    def hook(mod, inputs, output):
        outputs[name] = (output, output._version)
    return hook


def _check_unchanged(outputs: dict) -> None:
    changed = [n for n, (out, version) in outputs.items() if out._version != version]
    if changed:
        raise UsageError(f"`layers` {', '.join(changed)}: the network changes this output in place after it "
                         "is made (a residual sum?), so its relevance is not defined; use the enclosing "
                         "block's output")


def explain_prediction(image: str | Path, run: str | Path, target: int | str | None = None,
                       layers: Sequence[str] | None = None, top: int = 10, model=None,
                       device: str = "cpu", examples: int = 4) -> pd.DataFrame:
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
        One row per (layer, channel): ``layer``, ``channel``, ``channel_name``, ``relevance``
        (``R_c``), ``share`` (``R_c / sum |R|`` over the layer), ``rank`` (1 = most relevant in
        its layer), ``y``, ``x`` (where the channel's relevance peaks), ``target``,
        ``target_name``, ``probability`` (the model's, for ``target``), ``predicted``,
        ``predicted_name``, ``examples`` (paths of the channel's dataset examples) and
        ``examples_by`` (``relevance`` when the run ranked its examples by relevance, else
        ``max``).

    Example:
        >>> df = explain_prediction("cat.jpg", "run.h5")                       # doctest: +SKIP
        >>> df[df.layer == "layer4.2"].head()                                  # doctest: +SKIP
    """
    from ..images.decoding import decode_file
    from ..labels import class_indices
    from ..model.device import check_device
    from ..viz.attribution import model_of_run

    check_device(device)
    with RunReader(run) as reader:
        names = [n for n in reader.layers if reader.unit(n) == "map"] if layers is None else list(layers)
        for name in names:
            reader.check_layer(name, "layers")
        model = model or model_of_run(run, device=device)
        t = None if target is None else class_indices(str(target), model.class_names, "target")[0]
        try:
            decoded = decode_file(image, model.preprocessing.resize)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the user's file, named
            raise UsageError(f"`image`: cannot read {image} ({type(exc).__name__}: {exc})") from None
        crop = model.preprocessing.crop_uint8(decoded.image, decoded.original_size)[0]
        x = model.preprocessing.normalize(torch.from_numpy(crop[None]).to(model.device))
        rel = layer_relevance(model.module, x, names, None if t is None else torch.tensor([t]),
                              precision=reader.precision)
        frames = [_layer_rows(reader, model, name, rel, top, examples) for name in names]
    return pd.concat(frames, ignore_index=True)


def _layer_rows(reader: RunReader, model, name: str, rel: Relevance, top: int,
                n_examples: int) -> pd.DataFrame:
    sums = rel.sums[name][0].cpu().numpy().astype(np.float64)
    peaks = rel.peaks[name][0].cpu().numpy()
    total = float(np.abs(sums).sum()) or 1.0
    order = np.lexsort((np.arange(len(sums)), -sums))[:top]
    width = int(reader.layer(name).attrs["width"])
    names = reader.channel_names(name)
    ids = reader.layer(name)[fmt.TOPK_IMAGE_ID][()]
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
        "examples_by": "max",
    })
