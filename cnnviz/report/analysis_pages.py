"""Pages for :mod:`cnnviz.analysis`: an explain page (new images against a run) and a compare
page (two runs side by side), in the report's style, with a PNG for readers without a browser.

Layout of an explain folder::

    index.html                  per image and layer, the channels where it stands highest
    style.css
    img<i>.png                  the image as the network saw it
    img<i>-<layer>-c<N>.png     its own receptive-field patch for that channel
    <layer>-c<N>.png            the channel's dataset examples (the run's top-k patches)
    explain-<i>.png             the same as one figure per image

A compare folder holds ``index.html`` and ``<a|b>-<layer>-c<N>.png`` strips.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..run import format as fmt
from ..run.reader import RunReader, reading
from .collect import safe_name
from .folders import writing_to
from .pictures import patch_strip
from .templating import environment, render_page, save_png

__all__ = ["write_explain_page", "write_compare_page", "write_why_page"]


@dataclass
class _Shown:
    """One channel row of a page."""

    layer: str
    channel: int
    name: str
    numbers: str
    strip: str  # file of the dataset examples
    own: str | None = None  # file of the image's own patch
    strip_b: str | None = None


def _style(out: Path) -> None:
    (out / "style.css").write_text(resources.files(__package__).joinpath("style.css").read_text("utf-8"),
                                   encoding="utf-8")


def _tile_size(patch_shape) -> tuple[int, int]:
    """On-screen size of a patch: at least 64 px a side, whole multiples of its pixels."""
    f = max(1, min(8, -(-64 // max(patch_shape))))
    return int(patch_shape[0]) * f, int(patch_shape[1]) * f


def _examples(reader: RunReader, layer: str, channel: int, out: Path, name: str,
              rank_by: str = "max") -> str:
    """The channel's dataset examples (its stored top-k patches of the ``rank_by`` ranking, the
    part inside the network's input) as one strip; written once per page."""
    grp = reader.ranking(layer, rank_by)
    k = int((grp[fmt.IMAGE_ID][channel] >= 0).sum())
    patches = grp[fmt.PATCHES][channel][:k]
    if not (out / name).exists():
        save_png(patch_strip(patches, grp[fmt.PATCH_BOX][channel][:k], _crop(reader), _factor(reader, layer),
                             _tile_size(patches.shape[1:3])), out / name)
    return name


def _crop(reader: RunReader) -> tuple[int, int]:
    return tuple(int(v) for v in reader.preprocessing["crop"])


def _factor(reader: RunReader, layer: str) -> int:
    return reader.layer_meta(layer).patch_factor


def write_explain_page(explained, run: str | Path, out_dir: str | Path, *, top: int = 5,
                       back: str | None = None) -> Path:
    """Write the explain page of :func:`cnnviz.analysis.explanation.explain_images`'s result: per
    image, the model's top-5 classes, then per layer the ``top`` channels where the image stands
    highest against the library (never one where it does not respond; a logits layer's
    classes by value), its own patch beside the channel's dataset examples; ``back`` links a page
    (the report). The folder is written afresh (:func:`.folders.writing_to`). Returns the path of
    ``index.html``."""
    import matplotlib.pyplot as plt

    def entry(reader: RunReader, i: int, path: Path, folder: Path) -> tuple:
        sections = _sections(reader, explained, i, top, folder)
        prediction = explained.predictions[i] if explained.predictions is not None else None
        fig = _explain_figure(folder, path, prediction, sections)
        fig.savefig(folder / f"explain-{i}.png", dpi=90)
        plt.close(fig)
        return path, f"img{i}.png", prediction, sections

    with reading(run) as reader:
        return _image_page(explained, reader, out_dir, "explain.html", entry, top=top, back=back,
                           n_images=reader.header.n_images)


def _image_page(explained, reader: RunReader, out_dir: str | Path, template: str, entry, **context) -> Path:
    """A page with one section per image of ``explained`` (``entry(reader, i, path, folder)``
    its template values, after its crop is written as ``img<i>.png``), written afresh."""
    out = Path(out_dir)
    with writing_to(out) as folder:
        _style(folder)
        images = []
        for i, path in enumerate(explained.paths):
            save_png(Image.fromarray(explained.crops[i]), folder / f"img{i}.png")
            images.append(entry(reader, i, path, folder))
        render_page(environment(), template, folder / "index.html", root="", run_name=reader.path.name,
                    images=images, **context)
    return out / "index.html"


def _sections(reader: RunReader, explained, i: int, top: int, out: Path) -> list:
    """Per layer of image ``i``: ``(layer, logits, shown channels)``, their strips written."""
    from ..analysis.explanation import own_box, own_patch

    rows = explained.table[explained.table.image == str(explained.paths[i])]
    crop = explained.crops[i]
    sections = []
    for layer in reader.layers:
        logits = _is_logits(reader, layer)
        # a channel where the image does not respond is never one of its top channels
        chosen = rows[(rows.layer == layer) & (rows.responds | logits)].head(top)
        if chosen.empty:
            continue
        shown = []
        for row in chosen.itertuples():
            c, y, x = int(row.channel), int(row.y), int(row.x)
            patch = own_patch(reader, layer, crop, y, x)
            own = f"img{i}-{_safe(layer)}-c{c}.png"
            box = np.array([own_box(reader, layer, crop.shape, y, x)])
            save_png(patch_strip(patch[None], box, _crop(reader), _factor(reader, layer),
                                 _tile_size(patch.shape[:2])), out / own)
            strip = _examples(reader, layer, c, out, f"{_safe(layer)}-c{c}.png")
            shown.append(_Shown(layer, c, row.channel_name, _standing(row, logits), strip, own))
        sections.append((layer, logits, shown))
    return sections


def _is_logits(reader: RunReader, layer: str) -> bool:
    return bool(reader.layer(layer).attrs.get(fmt.LAYER_LOGITS, False))


def _standing(row, logits: bool = False) -> str:
    """``2.2 · rank 242 of 1000 · 75.9 %ile``: the value, then where it stands in the library
    (ties named; a logit's rank is the library's, its order on the page the model's)."""
    rank = "rank ?" if np.isnan(row.rank) else f"rank {int(row.rank)} of {int(row.n_images)}"
    if row.ties > 0:
        rank += f", tied with {int(row.ties)}"
    pct = "" if np.isnan(row.percentile) else f" · {row.percentile:.1f} %ile"
    library = " · in the library" if row.library_id >= 0 else ""
    if logits:
        return f"logit {row.value:.3g} · library {rank}{pct}{library}"
    return f"{row.value:.3g} · {rank}{pct}{library}"


def _explain_figure(out: Path, path: Path, prediction, sections):
    import matplotlib.pyplot as plt

    rows = [s for _, _, shown in sections for s in shown]
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(9, 1.3 * len(rows) + 0.9), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 5]})
    for ax in axes.flat:
        ax.axis("off")
    for ax_row, s in zip(axes, rows, strict=False):
        ax_row[0].imshow(Image.open(out / s.own))
        ax_row[1].imshow(Image.open(out / s.strip))
        ax_row[0].set_title(f"{s.layer} c{s.channel} {s.name}".strip(), fontsize=7, loc="left")
        ax_row[1].set_title(f"{s.numbers}  | dataset examples", fontsize=7, loc="left")
    said = "" if not prediction else "\nthe model: " + ", ".join(f"{n} {p:.0%}" for _, n, p in prediction[:3])
    fig.suptitle(f"{path.name}: where it stands against the library{said}", fontsize=9)
    fig.tight_layout()
    return fig


def write_why_page(explained, run: str | Path, out_dir: str | Path, *, top: int = 5) -> Path:
    """Write the page of :func:`cnnviz.analysis.relevance.explain_predictions`'s result: per
    image, the model's top-5 classes and the class explained, then per layer the ``top``
    channels that contributed most (relevance and share), each with the image's relevance map
    for it (the box: the patch where it peaks) beside the channel's dataset examples (ranked by
    relevance when the run kept that ranking). Written afresh; returns ``index.html``."""
    def entry(reader: RunReader, i: int, path: Path, folder: Path) -> tuple:
        rows = explained.table[explained.table.image == str(path)]
        first = rows.iloc[0]
        target = (int(first.target), str(first.target_name), float(first.probability))
        return (path, f"img{i}.png", explained.predictions[i], target,
                _why_sections(reader, explained, i, rows, top, folder))

    with reading(run) as reader:
        return _image_page(explained, reader, out_dir, "why.html", entry, top=top)


def _why_sections(reader: RunReader, explained, i: int, rows: pd.DataFrame, top: int, out: Path) -> list:
    from ..analysis.explanation import own_box

    crop = explained.crops[i]
    sections = []
    for layer, chosen in rows.groupby("layer", sort=False):
        shown = []
        for row in chosen.head(top).itertuples():
            c = int(row.channel)
            own = f"img{i}-{_safe(layer)}-c{c}.png"
            box = own_box(reader, layer, crop.shape, int(row.y), int(row.x))
            save_png(relevance_overlay(crop, explained.maps[(i, layer, c)], box), out / own)
            strip = _examples(reader, layer, c, out, f"{row.examples_by}-{_safe(layer)}-c{c}.png",
                              row.examples_by)
            numbers = (f"relevance {row.relevance:.3g} · {100 * row.share:.1f} % of the layer's · "
                       f"rank {row.rank}")
            shown.append(_Shown(layer, c, row.channel_name, numbers, strip, own))
        sections.append((layer, str(chosen.examples_by.iloc[0]), shown))
    return sections


def relevance_overlay(crop: np.ndarray, rel_map: np.ndarray, box, size: int = 160) -> Image.Image:
    """The image with a channel's positive relevance over it (red, by share of its peak; the map
    upsampled to the input) and the box of the patch where it peaks."""
    from PIL import ImageDraw

    h, w = crop.shape[:2]
    positive = np.clip(rel_map, 0, None)
    peak = float(positive.max())
    heat = np.asarray(Image.fromarray((255 * positive / peak if peak > 0 else positive).astype(np.uint8))
                      .resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    alpha = 0.6 * heat[..., None]
    tint = crop.astype(np.float32) * (1 - alpha) + np.array([255.0, 0, 0]) * alpha
    image = Image.fromarray(tint.clip(0, 255).astype(np.uint8))
    y0, x0, y1, x1 = (int(v) for v in box)
    ImageDraw.Draw(image).rectangle([max(x0, 0), max(y0, 0), min(x1, w) - 1, min(y1, h) - 1],
                                    outline=(0, 255, 255), width=2)
    return image.resize((size, round(size * h / w)), Image.NEAREST)


# the compare page's per-layer table: (column, heading, one-line definition)
SUMMARY = (("channels", "channels", ""),
           ("median_change", "change (median)", "1 − rank correlation of the per-image maxima (else 1 − "
            "top-k overlap): 0 = the channel ranks the images as before, 1 = unrelated, 2 = reversed"),
           ("median_rank_corr", "rank correlation (median)", "Spearman correlation of the channel's "
            "per-image maxima in A and B, over the images both read"),
           ("mean_topk_overlap", "top-k images kept (mean)", "share of A's top-k images that are among "
            "B's top-k (ties at B's k-th value count)"),
           ("mean_d_mean_max", "strength change (mean)", "B's mean max − A's (mean max: the mean over "
            "images of the channel's maximum in each)"))


def write_compare_page(table: pd.DataFrame, run_a: str | Path, run_b: str | Path, out_dir: str | Path, *,
                       top: int = 20) -> Path:
    """Write the compare page of :func:`cnnviz.analysis.compare_runs`'s table: a per-layer
    summary in network order, then the ``top`` most changed channels with both runs' dataset
    examples side by side. The folder is written afresh (:func:`.folders.writing_to`)."""
    out = Path(out_dir)
    with writing_to(out) as folder:
        _style(folder)
        with reading(run_a) as a, reading(run_b) as b:
            shown = []
            for row in table.head(top).itertuples():
                key = f"{_safe(row.layer)}-c{row.channel}.png"
                shown.append(_Shown(row.layer, int(row.channel), row.channel_name, _change(row),
                                    _examples(a, row.layer, int(row.channel), folder, "a-" + key), None,
                                    _examples(b, row.layer, int(row.channel), folder, "b-" + key)))
            names = (a.path.name, b.path.name)
            network_order = a.layers
        render_page(environment(), "compare.html", folder / "index.html", root="", names=names, shown=shown,
                    columns=SUMMARY, summary=_summary(table, network_order),
                    shared=int(table["shared_images"].iloc[0]) if len(table) else 0)
    return out / "index.html"


def _summary(table: pd.DataFrame, network_order: list[str]) -> list[tuple]:
    """Per layer, in the network's order: its name and the :data:`SUMMARY` columns, formatted."""
    summary = (table.groupby("layer")
               .agg(channels=("channel", "size"), median_change=("change", "median"),
                    mean_topk_overlap=("topk_overlap", "mean"), median_rank_corr=("rank_corr", "median"),
                    mean_d_mean_max=("d_mean_max", "mean")))
    layers = [n for n in network_order if n in summary.index]
    return [(layer, *(str(summary.at[layer, c]) if c == "channels" else _num(summary.at[layer, c])
                      for c, _, _ in SUMMARY)) for layer in layers]


def _change(row) -> str:
    parts = [f"change {_num(row.change)}", f"top-k images kept {_num(row.topk_overlap)}",
             f"rank correlation {_num(row.rank_corr)}",
             f"mean max {_num(row.mean_max_a)} → {_num(row.mean_max_b)}"]
    if not row.channel_name:  # a class's logit: its fire rate says nothing
        parts.append(f"fire rate {_num(row.fire_rate_a)} → {_num(row.fire_rate_b)}")
    return " · ".join(parts)


def _num(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3g}"


def _safe(name: str) -> str:
    return safe_name(name)
