"""Writing the report: images and pages from what :mod:`.collect` read.

Layout of the output folder::

    index.html            layers, each with a thumbnail (best patch) per channel
    failures.html         the images the scan could not read, and why (when there are any)
    style.css
    photos/<id>.jpg       each photo shown, at most 1024 px a side: the channel pages cut every
                          patch from it at the photo's own resolution, and enlarge it on a click
    <layer>/index.html    one layer: every reported channel with its best patch
    <layer>/by-<order>.html  the same, ordered by selectivity, fire rate or strength
    <layer>/c<N>.html     one channel: each of its rankings (by max, by mean, most negative...)
                          with its patches and the photos they come from, statistics,
                          distribution, top classes, similar channels, attributions, optimized
                          image, neighbouring channels
    <layer>/c<N>.png      the channel's stored top-k patches side by side (one image, used as
                          sprite: thumbnails, and the patches when the photos are not shown);
                          also written for a similar channel that is not shown (its thumbnail)
    <layer>/c<N>-context.jpg  each patch's whole photo, box drawn, activation map overlaid, mask
                          outlined
    <layer>/c<N>-maps.png the activation maps alone, laid over an enlarged photo
    <layer>/c<N>-masks.png mask outlines over the patches (runs with quantiles)
    <layer>/c<N>-mean.png, c<N>-mean-context.jpg...  the same for each other ranking (.views)
    <layer>/c<N>-attr.png its attributions, when computed
    explain/index.html    where chosen images stand against the run (``explain=[...]``)

The report is written into a fresh folder beside ``out_dir`` that replaces it when complete
(:mod:`.folders`): a second report into one folder leaves no page of the first. Pages come from
the Jinja2 templates beside this file, with autoescaping on: a file or label name cannot inject
markup. No script, font or stylesheet is loaded from the network; the pages need no server.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from markupsafe import Markup
from PIL import Image

from ..errors import CnnvizWarning, UsageError, user_level
from ..run.reader import RunReader, reading
from ..types import ChannelSpec, DeviceSpec, ImageSpec, LayerSpec, RunSpec
from .collect import (
    ChannelInfo,
    LayerInfo,
    RunInfo,
    channels_of,
    class_charts,
    hidden_statistics,
    layer_info,
    layer_stats,
    run_info,
    similar_of,
    stat_rows,
)
from .folders import writing_to
from .pictures import histogram_svg, patch_strip
from .templating import environment, render_page, save_png, write_text
from .views import PAGE_TILE, View, layer_masks, write_views

__all__ = ["write_report"]


def write_report(run: RunSpec, out_dir: str | Path, *, layers: LayerSpec = None, channels: ChannelSpec = None,
                 attributions: dict | None = None, model=None, scale: int = 2,
                 progress: bool = True, context: bool = True, explain: ImageSpec | None = None,
                 library: str | Path | None = None, device: DeviceSpec = "cpu") -> Path:
    """Write the HTML report of a run.

    Args:
        run: the run file (or a :class:`~cnnviz.run.reader.RunReader` open on it).
        out_dir: folder to write. It is written as a fresh folder beside it that replaces it when
            complete: an earlier report there goes whole (no stale pages), and a report that
            fails leaves it as it was. A folder holding anything but pages cnnviz wrote is
            refused.
        layers: layer names to include (default: all).
        channels: channels per layer: ``None`` (all), an int ``n`` (the first n), or a list
            (every index must be one of each layer's).
        attributions: ``{layer: [channels]}`` for which to compute neuron attributions (needs
            ``model``).
        model: the :class:`~cnnviz.model.LoadedModel` of the run, for attributions, activation
            maps and the explain page; default: reloaded from the run file when needed.
        scale: pixel magnification of the patch images (small patches are magnified more, to at
            least 64 pixels).
        context: show each patch's whole photo with its box and the channel's activation map
            (one forward pass per photo shown; each photo's thumbnail, ~45 KB, is held until the
            pages are written; without a loadable model, photo and box only; without the
            library folder, nothing).
        explain: image files for an explain page (:func:`cnnviz.analysis.explain`), linked
            from the index.
        library: the folder of the run's images, when it moved since the scan. A run written
            before cnnviz 0.2 records no image identities: its photos are shown only from a
            folder named here (a run file from someone else must not make the report read and
            embed any local file).
        device: where the model runs (activation maps, attributions, explain).

    Everything that can be refused (layers, channels, the model, the device, explain images) is
    checked before any page is written; a report that fails leaves ``out_dir`` as it was.

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir)
    if str(device) != "cpu":
        from ..model.device import check_device

        check_device(device)
    asked = _Request(layers, channels, attributions or {}, model, scale, progress, context, explain, library,
                     str(device))
    with writing_to(out) as folder:
        _write_report(run, folder, asked)
    return out / "index.html"


@dataclass(frozen=True)
class _Request:
    """What :func:`write_report` was asked for (its arguments, as given)."""

    layers: object
    channels: object
    attributions: dict
    model: object
    scale: int
    progress: bool
    context: bool
    explain: object
    library: str | Path | None
    device: str


def _write_report(run, out: Path, asked: _Request) -> Path:
    env = environment()
    with reading(run) as reader:
        # 1. everything that can refuse, before any page is written
        attributions = _resolved(reader, asked.attributions)
        plan = _plan(reader, asked, attributions, out / "photos")
        # 2. the pages
        for layer in plan.shown:
            _write_layer(env, reader, plan, layer, out / layer.folder, attributions, asked.progress)
        explain_link = None
        if plan.explained is not None:
            from .analysis_pages import write_explain_page

            write_explain_page(plan.explained, reader, out / "explain", back="../index.html")
            explain_link = "explain/index.html"
        info = plan.info
        if info.n_failed:
            from ..run.tables import failure_kinds, failures

            table = failures(reader)
            render_page(env, "failures.html", out / "failures.html", root="", run=info,
                        kinds=list(failure_kinds(table).items()), rows=list(table.itertuples()))
    write_text(out / "style.css", resources.files(__package__).joinpath("style.css").read_text("utf-8"))
    index = out / "index.html"
    render_page(env, "index.html", index, root="", run=info, layers=plan.shown, explain=explain_link,
                failures=bool(info.n_failed))
    return index


@dataclass
class _Plan:
    """What a report will show, all of it checked."""

    info: RunInfo
    stats: dict
    shown: list[LayerInfo]
    model: object
    explained: object
    ctx: object
    library: Path | None


def _resolved(reader: RunReader, attributions: dict) -> dict:
    """``attributions`` keyed by the run's layer names (``logits`` is its logits layer)."""
    out: dict[str, list[int]] = {}
    for name, chans in attributions.items():
        key = reader.resolve_layer(name, "attributions")
        out[key] = list(dict.fromkeys([*out.get(key, []), *chans]))
    return out


def _plan(reader: RunReader, asked: _Request, attributions: dict, photo_dir: Path) -> _Plan:
    model, context, library, device = asked.model, asked.context, asked.library, asked.device
    for name, chans in attributions.items():
        reader.check_channels(name, chans, "attributions")
    if attributions and not reader.has_identity and library is None:
        raise UsageError(f"`attributions` need the photos of {reader.path.name}, which records no image "
                         "identities (it was written before cnnviz 0.2), so cnnviz opens them only in a "
                         "folder you name: give `library`")
    info = run_info(reader, asked.layers)
    stats = {name: _quiet_stats(reader, name) for name in info.layers}
    shown = [layer_info(reader, name, asked.channels, asked.scale, stats[name]) for name in info.layers]
    if context:
        context = _photos_available(reader, library)
    needed = bool(asked.explain or attributions)
    if model is None and (context or needed):
        model = _model_or_none(reader, needed, device)
    if model is not None:
        model = _fitting_model(model, reader, info.layers, needed)
    # explained first: an image it cannot read stops the report before any page is written
    explained = None
    if asked.explain:
        from ..analysis.explanation import explain_images

        explained = explain_images(asked.explain, reader, info.layers, model=model, device=device,
                                   param="explain")
    ctx = None
    if context:
        from .context import gather_context

        ctx = gather_context(reader, {layer.name: layer.shown for layer in shown}, model, device=device,
                             library=library, photo_dir=photo_dir)
    return _Plan(info, stats, shown, model, explained, ctx, None if library is None else Path(library))


def _write_layer(env, reader: RunReader, plan: _Plan, layer: LayerInfo, folder: Path, attributions: dict,
                 progress: bool) -> None:
    from tqdm.auto import tqdm

    folder.mkdir(exist_ok=True)
    wanted = set(attributions.get(layer.name, []))
    bar = tqdm(total=len(layer.shown), desc=f"report {layer.name}", disable=not progress, leave=False)
    extra = _Extra(class_charts(reader, layer), similar_of(reader, layer))
    masker = layer_masks(reader, layer, plan.ctx)
    for pos, ch in enumerate(channels_of(reader, layer, plan.stats[layer.name])):
        attribution = ch.channel in wanted and _write_attribution(plan, reader, ch, layer, folder)
        views = write_views(plan.ctx, reader, layer, ch, folder, masker)
        _write_channel(env, plan.info, layer, ch, pos, folder, attribution, plan.ctx, views, extra)
        bar.update()
    bar.close()
    _write_unshown_strips(reader, layer, extra.similar, folder)
    render_page(env, "layer.html", folder / "index.html", root="../", layer=layer, order=None,
            channels=layer.shown)
    for order in layer.orders:
        render_page(env, "layer.html", folder / f"{order.stem}.html", root="../", layer=layer, order=order,
                channels=order.channels)


def _quiet_stats(reader: RunReader, layer: str):
    """The layer's statistics; a run without its per-image maxima says so on its pages (and in
    one note), not in a warning per layer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        stats = layer_stats(reader, layer)
    if not reader.has_maxima(layer):
        warnings.warn(f"{reader.path.name} kept no per-image maxima of {layer} (scanned with "
                      "`maxima_dtype=none` or other `maxima_layers`): its pages show no distributions "
                      "or selectivity", CnnvizWarning, stacklevel=user_level())
    return stats


def _photos_available(reader: RunReader, library) -> bool:
    """Whether the report can show photos: their folder is here, and the run vouches for the
    files (recorded identities), or the user named the folder."""
    root = Path(library) if library is not None else reader.library_root
    if not reader.has_identity and library is None:
        warnings.warn(f"the report shows no photos: {reader.path.name} records no image identities (it "
                      "was written before cnnviz 0.2), so its paths are not trusted to name the scanned "
                      "files; give `library` (the folder of its images) to show them", CnnvizWarning,
                      stacklevel=user_level())
        return False
    if not root.is_dir():
        where = "`library`" if library is not None else "the library folder"
        warnings.warn(f"the report shows no photos: {where} {root} is not here (moved? the paths in the "
                      "run file are relative to it: give `library`)", CnnvizWarning, stacklevel=user_level())
        return False
    return True


def _model_or_none(reader: RunReader, needed: bool, device: str):
    """The run's model reloaded, or ``None`` (with a note) when it cannot be (a user module,
    weights not available here); ``needed``: raise instead."""
    from ..analysis.attribution import model_of_run
    from ..errors import CnnvizError

    try:
        return model_of_run(reader, device=device)
    except CnnvizError as exc:
        return _without_maps(exc, needed)


def _fitting_model(model, reader: RunReader, layers: list[str], needed: bool):
    """``model``, once it is known to have the run's layers; else (not ``needed``: only for
    activation maps) ``None`` with a note."""
    from ..analysis.attribution import check_model_fits

    try:
        check_model_fits(model, reader, layers)
    except UsageError as exc:
        return _without_maps(exc, needed)
    return model


def _without_maps(exc: Exception, needed: bool) -> None:
    """A model the report cannot use: raised when ``needed`` (explain, attributions), else a
    note, and the photos go without activation maps."""
    if needed:
        raise exc
    warnings.warn(f"the report shows photos without activation maps: {exc}", CnnvizWarning,
                  stacklevel=user_level())


@dataclass
class _Extra:
    """A layer's tables beside the rankings: per channel its top classes and its similar
    channels, or one line saying why the run has none."""

    classes: dict | str
    similar: dict | str


def _write_channel(env, info: RunInfo, layer: LayerInfo, ch: ChannelInfo, pos: int, folder: Path,
                   attribution: bool, ctx, views: list[View], extra: _Extra) -> None:
    c = ch.channel
    if ch.optimized is not None:
        save_png(Image.fromarray(ch.optimized), folder / f"c{c}-optimized.png")
    prev_c = layer.shown[pos - 1] if pos else None
    next_c = layer.shown[pos + 1] if pos + 1 < len(layer.shown) else None
    from .context import TILE

    render_page(env, "channel.html", folder / f"c{c}.html", root="../", run=info, layer=layer, ch=ch,
            prev=prev_c, next=next_c, stats=stat_rows(ch.stats, layer), attribution=attribution,
            views=views, cards=views[0].cards, page_tile=PAGE_TILE,
            context=None if ctx is None else {"tile": TILE, "maps": ctx.with_maps},
            mask_level=None if layer.mask_levels is None else float(layer.mask_levels[c]),
            outlined=any(v.outlined for v in views),
            classes=extra.classes if isinstance(extra.classes, str) else extra.classes.get(c, []),
            similar=extra.similar if isinstance(extra.similar, str) else extra.similar.get(c, []),
            shown=set(layer.shown), fire_rate="fire_rate" not in hidden_statistics(layer.unit, layer.logits),
            histogram=Markup(histogram_svg(ch.maxima, ch.activations) if ch.maxima is not None
                             else "<p>not kept in this run (scanned without per-image maxima)</p>"))


def _write_unshown_strips(reader: RunReader, layer: LayerInfo, similar: dict | str, folder: Path) -> None:
    """The patch strips of the similar channels the report does not show (their thumbnails)."""
    from ..run import format as fmt

    if isinstance(similar, str):
        return
    shown = set(layer.shown)
    wanted = sorted({s.channel for rows in similar.values() for s in rows} - shown)
    g = reader.layer(layer.name)
    for c in wanted:
        k = int((g[fmt.TOPK_IMAGE_ID][c] >= 0).sum())
        strip = patch_strip(g[fmt.TOPK_PATCHES][c][:k], g[fmt.TOPK_PATCH_BOX][c][:k], layer.crop,
                            layer.patch_factor, (layer.tile_h, layer.tile_w))
        save_png(strip, folder / f"c{c}.png")


def _write_attribution(plan: _Plan, reader: RunReader, ch: ChannelInfo, layer: LayerInfo,
                       folder: Path) -> bool:
    from ..analysis.attribution import attribution_image, neuron_attributions

    maps = neuron_attributions(plan.model, reader, ch.layer, ch.channel, library_root=plan.library)
    attr = attribution_image(maps)[: ch.k]
    save_png(_strip((attr * 255).round().astype(np.uint8), layer.scale), folder / f"c{ch.channel}-attr.png")
    return True


def _strip(patches: np.ndarray, scale: int) -> Image.Image:
    k, h, w = patches.shape[:3]
    strip = np.concatenate(list(patches), axis=1) if k else np.zeros((h, w, 3), np.uint8)
    img = Image.fromarray(strip)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img
