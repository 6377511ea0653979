"""A static, self-contained HTML report of a run: open ``index.html`` from the file system.

Layout of the output folder::

    index.html            layers, each with a thumbnail (best patch) per channel
    style.css
    <layer>/index.html    one layer: every reported channel with its best patches
    <layer>/c<N>.html     one channel: montage, statistics, distribution, attributions,
                          links to the neighbouring channels
    <layer>/c<N>.png      the channel's top-k patches side by side (one image, used as sprite)
    <layer>/c<N>-attr.png its attributions, when computed

No script, font or stylesheet is loaded from the network; the pages need no server.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .runfile import open_run
from .tables import _strings, channel_stats

__all__ = ["write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
a { color: #1f5f99; text-decoration: none; } a:hover { text-decoration: underline; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.thumb { display: inline-block; text-align: center; font-size: 0.75em; color: #444; }
.tile { display: inline-block; background-repeat: no-repeat; image-rendering: pixelated;
        border: 1px solid #ccc; }
.card { display: inline-block; margin: 0 4px 8px 0; text-align: center; font-size: 0.72em;
        max-width: 140px; overflow-wrap: anywhere; vertical-align: top; }
table.stats td, table.stats th { padding: 2px 10px; text-align: left; font-size: 0.9em; }
nav { margin: 0.6em 0; }
nav a { margin-right: 1.2em; }
svg { background: #fafafa; border: 1px solid #ddd; }
"""


def _page(title: str, body: str, css: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            f'<link rel="stylesheet" href="{css}"></head>\n<body>\n{body}\n</body></html>\n')


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _strip(patches: np.ndarray, scale: int) -> Image.Image:
    k, h, w = patches.shape[:3]
    strip = np.concatenate(list(patches), axis=1) if k else np.zeros((h, w, 3), np.uint8)
    img = Image.fromarray(strip)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _tile(src: str, rank: int, w: int, h: int) -> str:
    return (f'<span class="tile" style="width:{w}px;height:{h}px;background-image:url(\'{src}\');'
            f'background-position:-{rank * w}px 0"></span>')


def _histogram_svg(values: np.ndarray, top: np.ndarray, width: int = 420, height: int = 140) -> str:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return "<p>no readable images</p>"
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=40, range=(lo, hi))
    peak = max(1, counts.max())
    bar_w = (width - 20) / len(counts)
    bars = "".join(
        f'<rect x="{10 + i * bar_w:.1f}" y="{height - 20 - c / peak * (height - 30):.1f}" '
        f'width="{bar_w - 1:.1f}" height="{c / peak * (height - 30):.1f}" fill="#7aa6c2"/>'
        for i, c in enumerate(counts))
    marks = "".join(
        f'<line x1="{10 + (v - lo) / (hi - lo) * (width - 20):.1f}" y1="5" '
        f'x2="{10 + (v - lo) / (hi - lo) * (width - 20):.1f}" y2="{height - 20}" stroke="#c0392b" '
        f'stroke-width="1"/>' for v in top[~np.isnan(top)])
    labels = (f'<text x="10" y="{height - 5}" font-size="10">{lo:.3g}</text>'
              f'<text x="{width - 10}" y="{height - 5}" font-size="10" text-anchor="end">{hi:.3g}</text>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="distribution of maxima">'
            f"{bars}{marks}{labels}</svg>")


def write_report(run: str | Path, out_dir: str | Path, layers=None, channels=None,
                 attributions: dict | None = None, model=None, scale: int = 2,
                 progress: bool = True) -> Path:
    """Write the HTML report of a run.

    Args:
        run: the run file.
        out_dir: folder to write (created; existing files in it are replaced).
        layers: layer names to include (default: all).
        channels: channels per layer: ``None`` (all), an int ``n`` (the first n), or a list.
        attributions: ``{layer: [channels]}`` for which to compute neuron attributions (needs
            ``model``).
        model: the :class:`~cnnviz.models.LoadedModel` of the run, for attributions.
        scale: pixel magnification of the patch images (small patches are magnified more, to at
            least 48 pixels).

    Returns:
        The path of ``index.html``.
    """
    from tqdm.auto import tqdm

    run = Path(run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "style.css").write_text(_CSS, encoding="utf-8")
    attributions = attributions or {}
    if attributions and model is None:
        raise ValueError("attributions need the run's model (pass model=..., or --model/--weights)")
    with open_run(run) as f:
        all_layers = json.loads(f.attrs["layers"])
        layers = all_layers if layers is None else list(layers)
        header = (f'<p class="meta">model <b>{html.escape(str(f.attrs["model"]))}</b> · weights '
                  f'{html.escape(str(f.attrs["weights_origin"]))} · {int(f.attrs["n_images"])} images '
                  f'({int(f.attrs["n_failed"])} unreadable) · top-{int(f.attrs["top_k"])} · '
                  f'library {html.escape(str(f.attrs["library"]))}</p>')
        paths = _strings(f["images/path"])
        labels = _strings(f["images/label"]) if "images/label" in f else None
    index_parts = [f"<h1>{html.escape(run.name)}</h1>", header, "<ul>"]
    index_parts += [f'<li><a href="#{_safe(n)}">{html.escape(n)}</a></li>' for n in layers]
    index_parts.append("</ul>")
    for layer in layers:
        stats = channel_stats(run, layer).set_index("channel")
        with open_run(run) as f:
            g = f[f"layers/{layer}"]
            n_ch = int(g.attrs["channels"])
            chosen = (list(range(n_ch)) if channels is None
                      else list(range(min(channels, n_ch))) if isinstance(channels, int)
                      else [c for c in channels if 0 <= c < n_ch])
            size, stride = ([int(v) for v in g.attrs[k]] for k in ("rf_size", "rf_stride"))
            rf = f"receptive field {size[0]}x{size[1]} px, stride {stride[0]}"
            # small patches (early layers) are magnified to at least 48 px on screen
            layer_scale = min(16, max(scale, math.ceil(48 / max(g.attrs["patch_shape"]))))
            ph, pw = (int(v) * layer_scale for v in g.attrs["patch_shape"])
            folder = out / _safe(layer)
            folder.mkdir(exist_ok=True)
            thumbs = []
            bar = tqdm(chosen, desc=f"report {layer}", disable=not progress, leave=False)
            for pos, c in enumerate(bar):
                neighbours = (chosen[pos - 1] if pos else None,
                              chosen[pos + 1] if pos + 1 < len(chosen) else None)
                page = _ChannelPage(g, layer, c, folder, layer_scale, (ph, pw), paths, labels)
                extra = page.optimized_html()
                if c in attributions.get(layer, []):
                    extra += page.attribution_html(model, run)
                body = page.body(header, stats.loc[c], neighbours, extra)
                (folder / f"c{c}.html").write_text(_page(f"{layer} channel {c}", body, "../style.css"),
                                                   encoding="utf-8")
                thumbs.append(f'<a class="thumb" href="{_safe(layer)}/c{c}.html" title="channel {c}">'
                              f'{_tile(f"{_safe(layer)}/c{c}.png", 0, pw, ph)}<br>{c}</a>')
        layer_thumbs = [t.replace(f'{_safe(layer)}/', "") for t in thumbs]
        (folder / "index.html").write_text(_page(
            layer, f'<nav><a href="../index.html">all layers</a></nav><h1>{html.escape(layer)}</h1>'
                   f"<p class='meta'>{n_ch} channels · {rf}</p>"
                   f'<div class="grid">{"".join(layer_thumbs)}</div>', "../style.css"), encoding="utf-8")
        index_parts.append(f'<h2 id="{_safe(layer)}"><a href="{_safe(layer)}/index.html">'
                           f"{html.escape(layer)}</a> <span class='meta'>{n_ch} channels · {rf}"
                           f"{'' if len(chosen) == n_ch else f' · {len(chosen)} shown'}</span></h2>"
                           f'<div class="grid">{"".join(thumbs)}</div>')
    index = out / "index.html"
    index.write_text(_page(f"cnnviz — {run.name}", "\n".join(index_parts), "style.css"), encoding="utf-8")
    return index


class _ChannelPage:
    """The page of one channel: writes its images and returns HTML fragments."""

    def __init__(self, g, layer, channel, folder, scale, tile, paths, labels):
        self.g, self.layer, self.c, self.folder = g, layer, channel, folder
        self.scale, (self.ph, self.pw) = scale, tile
        self.ids = g["topk/image_id"][channel]
        self.acts = g["topk/activation"][channel]
        self.k = int((self.ids >= 0).sum())
        self.paths, self.labels = paths, labels
        _strip(g["topk/patches"][channel][: self.k], scale).save(folder / f"c{channel}.png")

    def _card(self, src: str, r: int, caption: str) -> str:
        return f'<span class="card">{_tile(src, r, self.pw, self.ph)}<br>{caption}</span>'

    def optimized_html(self) -> str:
        g, c = self.g, self.c
        if "optimized/done" not in g or not g["optimized/done"][c]:
            return ""
        Image.fromarray(g["optimized/images"][c]).save(self.folder / f"c{c}-optimized.png")
        recipe = html.escape(str(g["optimized"].attrs["recipe"]))
        return (f"<h2>Optimized image ({recipe} recipe)</h2>"
                f'<img src="c{c}-optimized.png" alt="optimized image of channel {c}" width="224">')

    def attribution_html(self, model, run) -> str:
        from .attribution import attribution_image, neuron_attributions

        c, k = self.c, self.k
        attr = attribution_image(neuron_attributions(model, run, self.layer, c))[:k]
        _strip((attr * 255).round().astype(np.uint8), self.scale).save(self.folder / f"c{c}-attr.png")
        cards = "".join(self._card(f"c{c}-attr.png", r, f"#{r + 1}") for r in range(k))
        return ("<h2>Why it fires: guided backpropagation of each unit, in the same box</h2>"
                f'<div class="grid">{cards}</div>')

    def body(self, header: str, stats, neighbours, extra: str) -> str:
        c, k, layer = self.c, self.k, self.layer
        cards = []
        for r in range(k):
            image_id = self.ids[r]
            caption = f"#{r + 1} · {self.acts[r]:.3g}<br>{html.escape(Path(str(self.paths[image_id])).name)}"
            if self.labels is not None:
                caption += f"<br><i>{html.escape(str(self.labels[image_id]))}</i>"
            cards.append(self._card(f"c{c}.png", r, caption))
        prev_c, next_c = neighbours
        nav = (f'<nav><a href="../index.html">all layers</a><a href="index.html">{html.escape(layer)}</a>'
               + (f'<a href="c{prev_c}.html">&larr; channel {prev_c}</a>' if prev_c is not None else "")
               + (f'<a href="c{next_c}.html">channel {next_c} &rarr;</a>' if next_c is not None else "")
               + "</nav>")
        rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{_fmt(stats[key])}</td></tr>"
                       for key in stats.index if key != "layer")
        maxima = self.g["maxima"][:, c].astype(np.float64)
        return (f"{nav}<h1>{html.escape(layer)} · channel {c}</h1>{header}"
                f'<h2>Top {k} receptive-field patches</h2><div class="grid">{"".join(cards)}</div>'
                f"{extra}"
                f'<h2>Statistics</h2><table class="stats">{rows}</table>'
                f"<h2>Distribution of the per-image maxima (top-k in red)</h2>"
                f"{_histogram_svg(maxima, self.acts)}")


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))
