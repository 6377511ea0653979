"""Why a unit fires: neuron attributions of the top-k entries, cut to their patches.

For each top-k entry ``(image, y, x)`` of a channel, Captum's ``NeuronGuidedBackprop`` (or
``NeuronDeconvolution``, Zeiler & Fergus' projection) attributes the unit ``(channel, y, x)`` of
the layer to the input pixels; the attribution is then cut with the same box as the stored
patch, so it lies beside it pixel for pixel.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

from ..errors import UsageError
from ..images.decoding import decode_file
from ..images.patches import cut_patch
from ..model.copying import without_inplace
from ..model.loading import check_model_fits, model_of_run  # noqa: F401 - also imported from here
from ..model.precision import precision_scope
from ..run import format as fmt
from ..run.reader import RunReader, reading

__all__ = ["neuron_attributions", "attribution_image", "model_of_run", "check_model_fits", "METHODS"]

METHODS = {"guided_backprop": NeuronGuidedBackprop, "deconvolution": NeuronDeconvolution}


def neuron_attributions(model, run: str | Path, layer: str, channel: int, *,
                        method: str = "guided_backprop", library_root: str | Path | None = None,
                        batch_size: int = 8) -> np.ndarray:
    """Attributions of a channel's top-k units, cut to the patch boxes.

    See :func:`neuron_attribution_maps` for the arguments.

    Returns:
        float32 ``(k, h, w, 3)``: the raw attribution (input-gradient-like, signed) in each
        patch box, at the stored patch size; zeros for empty slots.
    """
    maps = neuron_attribution_maps(model, run, layer, channel, method=method, library_root=library_root,
                                   batch_size=batch_size)
    with reading(run) as r:
        g = r.layer(layer)
        boxes = g[fmt.TOPK_PATCH_BOX][channel]
        ph, pw = (int(v) for v in g.attrs[fmt.LAYER_PATCH_SHAPE])
        factor = int(g.attrs[fmt.LAYER_PATCH_FACTOR])
    out = np.zeros((len(maps), ph, pw, 3), dtype=np.float32)
    for r, m in enumerate(maps):
        if m is not None:
            out[r] = cut_patch(m, boxes[r], factor)
    return out


def neuron_attribution_maps(model, run: str | Path, layer: str, channel: int, *,
                            method: str = "guided_backprop", library_root: str | Path | None = None,
                            batch_size: int = 8) -> list[np.ndarray | None]:
    """Whole-input attribution maps ``(H, W, 3)`` of a channel's top-k units (``None`` for
    empty slots).

    Args:
        model: the :class:`~cnnviz.models.LoadedModel` the run was made with.
        run: the run file.
        layer, channel: which channel.
        method: ``"guided_backprop"`` or ``"deconvolution"``.
        library_root: where the images are now, if the library moved since the scan (needed
            for runs written before cnnviz 0.2, which record no image identities). A photo whose
            bytes are not those scanned gets no attribution (``None``).

    """
    if method not in METHODS:
        raise UsageError(f"`method` {method!r}: choose one of {', '.join(METHODS)}")
    with reading(run) as r:
        r.check_channels(layer, channel)
        g = r.layer(layer)
        ids = g[fmt.TOPK_IMAGE_ID][channel]
        ys, xs = g[fmt.TOPK_Y][channel], g[fmt.TOPK_X][channel]
        check_model_fits(model, r, [layer], "model")
        pixels = _top_photos(r, model, ids, library_root)
    module = without_inplace(model.module).to(model.device)
    attributor = METHODS[method](module, module.get_submodule(layer))
    out: list[np.ndarray | None] = [None] * len(ids)
    valid = sorted(pixels)
    for start in range(0, len(valid), batch_size):
        ranks = valid[start: start + batch_size]
        attr = _attribute(attributor, model, [pixels[k] for k in ranks], channel,
                          [int(ys[k]) for k in ranks], [int(xs[k]) for k in ranks])
        for j, k in enumerate(ranks):
            out[k] = attr[j]
    return out


def _top_photos(r: RunReader, model, ids: np.ndarray, library_root) -> dict:
    """The decoded photos of the filled slots whose bytes are still those scanned."""
    valid = [k for k in range(len(ids)) if ids[k] >= 0]
    files = {k: r.image_file(int(ids[k]), library_root) for k in valid}
    if any(f is None for f in files.values()):
        raise UsageError(f"attributions need the photos of {r.path.name}, which records no image "
                         "identities (it was written before cnnviz 0.2), so cnnviz opens them only "
                         "in a folder you name: pass `library_root` (the library's folder)")
    pixels = {}
    for k in valid:
        try:
            decoded = decode_file(files[k], model.preprocessing.resize)
        except Exception:  # noqa: BLE001 - a photo gone or unreadable now gets no attribution
            continue
        if r.identity_matches(int(ids[k]), decoded.identity):  # else: another picture now
            pixels[k] = decoded
    return pixels


def _attribute(attributor, model, photos: list, channel: int, ys: list[int], xs: list[int]) -> np.ndarray:
    """Attributions ``(n, H, W, 3)`` of unit ``(channel, y, x)`` of each photo."""
    device = model.device
    pre = model.preprocessing
    x = torch.cat([pre.normalize(torch.from_numpy(pre.crop_uint8(p.image, p.original_size)[0]).unsqueeze(0))
                   for p in photos]).to(device)
    pos_y, pos_x = torch.tensor(ys, device=device), torch.tensor(xs, device=device)
    rows = torch.arange(len(photos), device=device)

    def select(layer_out):
        return layer_out[rows, channel, pos_y, pos_x]

    with warnings.catch_warnings(), precision_scope("fp32", device):
        warnings.simplefilter("ignore", UserWarning)  # Captum announces its ReLU hooks every call
        attr = attributor.attribute(x.requires_grad_(), neuron_selector=select)
    return attr.detach().permute(0, 2, 3, 1).cpu().numpy()


def attribution_image(attr: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Signed attributions -> displayable RGB in [0, 1] (grey = 0), contrast-normalised per
    patch: the ``percentile`` of its absolute values maps to full contrast and the few larger
    values saturate. (Scaling by the maximum leaves guided-backpropagation tiles faint grey: a
    handful of pixels take the whole range.)"""
    out = np.empty_like(attr)
    for i, a in enumerate(attr):
        magnitude = np.abs(a)
        scale = np.percentile(magnitude[magnitude > 0], percentile) if (magnitude > 0).any() else 0.0
        out[i] = 0.5 + 0.5 * a / scale if scale > 0 else 0.5
    return np.clip(out, 0, 1)
