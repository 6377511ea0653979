"""Explain images against a run: for each image and each channel of the run's layers, the
image's maximum and where it stands among the per-image maxima of the scanned library.

The images go through the run's model exactly as the scan sent the library
(:func:`cnnviz.scanner.reduce_images`: same decoding rules, crop, layout and reductions), so an
image that was in the library gets the value the scan recorded for it and its exact rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import RunFileError, UsageError
from ..images.decoding import decode_file
from ..images.patches import cut_patch, patch_box
from ..model.receptive_field import AxisField, ReceptiveField
from ..run import format as fmt
from ..run.reader import RunReader, reading
from ..types import DeviceSpec, ImageSpec, LayerSpec, RunSpec

__all__ = ["explain", "ExplainedImages", "explain_images", "layer_field"]


@dataclass
class ExplainedImages:
    """What :func:`explain_images` computes: the table, plus the crops the patches come from."""

    table: pd.DataFrame
    paths: list[Path]
    crops: np.ndarray  # uint8 (N, H, W, 3), as the network saw each image
    predictions: list[list[tuple[int, str, float]]] | None = None  # per image: the model's top-5


def explain(images: ImageSpec, run: RunSpec, layers: LayerSpec = None, *, model=None,
            device: DeviceSpec = "cpu", batch_size: int = 16) -> pd.DataFrame:
    """Where each image stands, per channel, among the library a run scanned.

    Args:
        images: image files (any the scan could read).
        run: the run file.
        layers: layers of the run (default: all of them).
        model: the run's :class:`~cnnviz.model.LoadedModel`; default: reloaded from the run file.
        device: where to run the network.

    Returns:
        One row per (image, layer, channel), best first within each image and layer: the
        channels where the image responds, by ``percentile`` (then ``ratio``), before those
        where it does not (``responds`` False, e.g. a ReLU channel at 0, however many library
        images tie with it there); a logits layer's classes by ``value``, the model's belief.
        Columns: ``image`` (path as given), ``library_id`` (the id of the library image with
        the same bytes, whose recorded maxima are then used, or -1), ``layer``, ``channel``,
        ``channel_name`` (class name of a logits layer, else empty), ``value`` (the image's
        maximum), ``y``, ``x`` (where), ``rank`` (1 + library images whose maximum is strictly
        larger: an image of the library gets its own rank), ``ties`` (other library images
        with exactly this maximum), ``n_images`` (readable library images), ``percentile``
        (mid-rank: 100 x (library images below ``value`` + half of those equal to it) /
        ``n_images``; the convention of rank statistics, equal to the plain percentile
        without ties: a value shared by 92 % of the library is at the 46th, not the 92nd or
        the 0th), ``responds`` (``value`` is above the channel's lowest value in the library;
        without the per-image maxima, above 0), ``ratio`` (``value`` / the channel's library
        maximum). Where the run did not keep a layer's per-image maxima, ``percentile`` is NaN,
        ``ties`` is -1 and ``rank`` is known only inside the top-k (else NaN).
        ``table.attrs["predictions"]`` holds, per image, the model's top-5 classes
        ``(index, name, probability)``.

    Example:
        >>> df = explain(["cat.jpg"], "run.h5")                              # doctest: +SKIP
        >>> df[df.layer == "layer4.2"].head()                                # doctest: +SKIP
    """
    return explain_images(images, run, layers, model=model, device=device, batch_size=batch_size).table


def explain_images(images, run, layers=None, *, model=None, device: str = "cpu",
                   batch_size: int = 16, param: str = "images") -> ExplainedImages:
    """:func:`explain`, keeping the decoded crops (for patches and pages); ``param`` names the
    images' argument in errors (``explain`` when the report asks)."""
    from ..model.device import check_device
    from ..model.loading import check_model_fits, model_of_run
    from ..scanner.loop import reduce_images

    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    if not paths:
        raise UsageError(f"`{param}`: give at least one image file")
    check_device(device)
    with reading(run) as reader:
        if isinstance(layers, str):
            layers = [n for n in layers.split(",") if n.strip()]
        names = reader.layers if layers is None else [reader.resolve_layer(n, "layers") for n in layers]
        names = list(dict.fromkeys(names))
        if model is None:
            model = model_of_run(reader, device=device)
        check_model_fits(model, reader, names)
        decoded = [_crop(p, model.preprocessing, param) for p in paths]
        crops = np.stack([c for c, _ in decoded])
        # in the scan's precision (under AMP the values are those of the float16/bfloat16 network)
        reduced = reduce_images(model, names, torch.from_numpy(crops), device, batch_size,
                                precision=reader.precision)
        library_ids = _library_ids(reader, [identity for _, identity in decoded], model)
        frames = []
        for name in names:
            values, index = reduced[name]
            _use_recorded(reader, name, library_ids, values, index)
            frames.append(_layer_table(reader, name, paths, library_ids, values, index))
        predictions = predict(model, crops, device, reader.precision)
    table = pd.concat(frames, ignore_index=True)
    if predictions is not None:
        table.attrs["predictions"] = {str(p): top for p, top in zip(paths, predictions, strict=True)}
    return ExplainedImages(table, paths, crops, predictions)


def predict(model, crops: np.ndarray, device: str = "cpu", precision: str = "fp32",
            top: int = 5) -> list[list[tuple[int, str, float]]] | None:
    """The model's ``top`` classes ``(index, name, probability)`` for uint8 ``(N, H, W, 3)``
    network-input crops; ``None`` when its output is not one score per class."""
    from ..model.copying import inference_copy
    from ..model.precision import precision_scope

    device = torch.device(device)
    module = inference_copy(model.module, device)
    x = model.preprocessing.normalize(torch.from_numpy(crops).to(device))
    with torch.no_grad(), precision_scope(precision, device):
        out = module(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        return None
    probs, idx = out.float().softmax(dim=1).topk(min(top, out.shape[1]), dim=1)
    return [[(int(i), model.class_name(int(i)), float(p)) for p, i in zip(ps, ids, strict=True)]
            for ps, ids in zip(probs.tolist(), idx.tolist(), strict=True)]


def _crop(path: Path, preprocessing, param: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    try:
        decoded = decode_file(path, preprocessing.resize)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the user's file, named
        raise UsageError(f"`{param}`: cannot read {path} ({type(exc).__name__}: {exc})") from None
    return preprocessing.crop_uint8(decoded.image, decoded.original_size)[0], decoded.identity


def _library_ids(reader: RunReader, identities, model) -> np.ndarray:
    """Per image, the id of the library image with the same bytes (size and digest), or -1.
    Only when ``model`` has the run's weights: then the run's record of that image is its
    value (a network's arithmetic can differ in the last bit with the batch it ran in)."""
    from ..model.loading import weights_digest

    ids = np.full(len(identities), -1, np.int64)
    recorded = reader.attrs.get(fmt.ATTR_WEIGHTS_DIGEST)
    if fmt.IMAGE_IDENTITY not in reader.file or recorded is None or recorded != weights_digest(model.module):
        return ids
    table = reader.file[fmt.IMAGE_IDENTITY][()]
    ok = reader.file[fmt.IMAGE_OK][()]
    known = {(int(size), int(digest)): i for i, (size, _, digest) in enumerate(table) if ok[i]}
    for j, (size, _, digest) in enumerate(identities):
        ids[j] = known.get((int(size), int(digest)), -1)
    return ids


def _use_recorded(reader: RunReader, layer: str, library_ids: np.ndarray, values: np.ndarray,
                  index: np.ndarray) -> None:
    """Library images take the maxima and positions the run recorded for them."""
    if not (library_ids >= 0).any() or not reader.has_maxima(layer):
        return
    rows = np.flatnonzero(library_ids >= 0)
    g = reader.layer(layer)
    cells = int(g.attrs[fmt.LAYER_HEIGHT]) * int(g.attrs[fmt.LAYER_WIDTH])
    for j in rows:
        recorded = reader.maxima_dataset(layer, positions=True)[int(library_ids[j])]
        if (recorded >= cells).any():  # positions are read per image, not checked on open
            raise RunFileError(f"{reader.path} is damaged or was not written by cnnviz (a position of "
                               f"{layer} lies outside its map); it is not read")
        values[j] = reader.maxima_dataset(layer)[int(library_ids[j])]
        index[j] = recorded


def _layer_table(reader: RunReader, layer: str, paths: list[Path], library_ids: np.ndarray,
                 values: np.ndarray, index: np.ndarray) -> pd.DataFrame:
    g = reader.layer(layer)
    n_img, n_ch = values.shape
    width = int(g.attrs[fmt.LAYER_WIDTH])
    stats_max = g[fmt.STATS]["max_max"][()]
    constant = g[fmt.STATS]["std_max"][()] <= 0  # e.g. a dead ReLU: every image ties
    if reader.has_maxima(layer):
        rank, ties, percentile, responds, readable = _standing(reader, layer, values, library_ids)
    else:  # only the top-k: a rank inside it is exact, outside unknown
        top = np.nan_to_num(g[fmt.TOPK_ACTIVATION][()], nan=-np.inf)
        probe = values.astype(np.float32).astype(np.float64)
        greater = (top[None] > probe[:, :, None]).sum(axis=2)
        rank = np.where(greater < top.shape[1], greater + 1, np.nan)
        ties = np.full((n_img, n_ch), -1, np.int64)
        percentile = np.full((n_img, n_ch), np.nan)
        responds = values > 0
        readable = int(reader.attrs[fmt.ATTR_N_IMAGES]) - int(reader.attrs[fmt.ATTR_N_FAILED])
    channel_names = reader.channel_names(layer)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = values / stats_max[None, :]
    df = pd.DataFrame({
        "image": np.repeat([str(p) for p in paths], n_ch),
        "library_id": np.repeat(library_ids, n_ch),
        "layer": layer,
        "channel": np.tile(np.arange(n_ch), n_img),
        "channel_name": np.tile(channel_names.astype(str), n_img) if channel_names is not None else "",
        "value": values.reshape(-1).astype(np.float64),
        "y": (index // width).reshape(-1), "x": (index % width).reshape(-1),
        "rank": rank.reshape(-1), "ties": ties.reshape(-1), "n_images": readable,
        "percentile": percentile.reshape(-1), "responds": (responds & ~constant[None, :]).reshape(-1),
        "ratio": ratio.reshape(-1),
    })
    return df.iloc[_best_first(df, n_img, n_ch, _is_logits(g))].reset_index(drop=True)


def _is_logits(group) -> bool:
    return bool(group.attrs.get(fmt.LAYER_LOGITS, False))


def _standing(reader: RunReader, layer: str, values: np.ndarray, library_ids: np.ndarray):
    """``(rank, ties, percentile, responds, readable)`` of each image's values among the
    library's per-image maxima of ``layer`` (read once, in row blocks)."""
    n_img, n_ch = values.shape
    # compare in the stored precision: a library image equals its own stored value
    probe = values.astype(reader.maxima_dataset(layer).dtype).astype(np.float64)
    greater = np.zeros((n_img, n_ch), np.int64)
    equal = np.zeros((n_img, n_ch), np.int64)
    lowest = np.full(n_ch, np.inf)
    readable = 0
    for block in reader.maxima_blocks(layer):
        block = block[~np.isnan(block).any(axis=1)]
        readable += len(block)
        if len(block):
            lowest = np.minimum(lowest, block.min(axis=0))
        for i in range(n_img):
            greater[i] += (block > probe[i]).sum(axis=0)
            equal[i] += (block == probe[i]).sum(axis=0)
    below = readable - greater - equal
    percentile = 100.0 * (below + 0.5 * equal) / max(readable, 1)
    ties = equal - (library_ids >= 0)[:, None]  # a library image does not tie with itself
    return (greater + 1).astype(np.float64), ties, percentile, probe > lowest[None, :], readable


def _best_first(df: pd.DataFrame, n_img: int, n_ch: int, logits: bool) -> np.ndarray:
    """Row order: per image, a logits layer's classes by value; other layers' channels where the
    image responds first, by percentile (where the maxima were kept), rank, then ratio."""
    image = np.repeat(np.arange(n_img), n_ch)
    if logits:
        return np.lexsort((df["channel"].to_numpy(), -df["value"].to_numpy(), image))
    return np.lexsort((-df["ratio"].fillna(-np.inf).to_numpy(), df["rank"].fillna(np.inf).to_numpy(),
                       -df["percentile"].fillna(0.0).to_numpy(), ~df["responds"].to_numpy(), image))


def layer_field(reader: RunReader, layer: str) -> ReceptiveField:
    """The receptive field of a run's layer, from its attributes."""
    m = reader.layer_meta(layer)
    return ReceptiveField(*(AxisField(m.rf_size[i], m.rf_stride[i], m.rf_offset[i]) for i in (0, 1)))


def own_box(reader: RunReader, layer: str, crop_shape: tuple[int, int], y: int, x: int) -> tuple[int, ...]:
    """The box (network-input pixels) of the patch of unit ``(y, x)``, as the scan cut the run's."""
    return patch_box(layer_field(reader, layer), y, x, tuple(crop_shape[:2]), reader.header.patch_size)


def own_patch(reader: RunReader, layer: str, crop: np.ndarray, y: int, x: int) -> np.ndarray:
    """The patch of unit ``(y, x)`` cut from ``crop`` as the scan cut the run's patches."""
    a = reader.layer(layer).attrs
    return cut_patch(crop, own_box(reader, layer, crop.shape, y, x), int(a[fmt.LAYER_PATCH_FACTOR]))
