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
        scale: pixel magnification of the patch images.

    Returns:
        The path of ``index.html``.
    """
    from tqdm.auto import tqdm

    from .attribution import attribution_image, neuron_attributions

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
            rf = f"rf {list(g.attrs['rf_size'])}, stride {list(g.attrs['rf_stride'])}"
            ph, pw = (int(v) * scale for v in g.attrs["patch_shape"])
            folder = out / _safe(layer)
            folder.mkdir(exist_ok=True)
            thumbs = []
            bar = tqdm(chosen, desc=f"report {layer}", disable=not progress, leave=False)
            for pos, c in enumerate(bar):
                patches = g["topk/patches"][c]
                ids = g["topk/image_id"][c]
                acts = g["topk/activation"][c]
                k = int((ids >= 0).sum())
                _strip(patches[:k], scale).save(folder / f"c{c}.png", optimize=False)
                attr_html = ""
                if c in attributions.get(layer, []):
                    attr = attribution_image(neuron_attributions(model, run, layer, c))[:k]
                    _strip((attr * 255).round().astype(np.uint8), scale).save(folder / f"c{c}-attr.png")
                    attr_html = ("<h2>Why it fires: guided backpropagation of each unit, same box</h2>"
                                 '<div class="grid">' + "".join(
                                     f'<span class="card">{_tile(f"c{c}-attr.png", r, pw, ph)}<br>#{r + 1}</span>'
                                     for r in range(k)) + "</div>")
                cards = "".join(
                    f'<span class="card">{_tile(f"c{c}.png", r, pw, ph)}<br>#{r + 1} · {acts[r]:.3g}<br>'
                    f'{html.escape(Path(str(paths[ids[r]])).name)}'
                    + (f"<br><i>{html.escape(str(labels[ids[r]]))}</i>" if labels is not None else "")
                    + "</span>" for r in range(k))
                prev_link = f'<a href="c{chosen[pos - 1]}.html">&larr; channel {chosen[pos - 1]}</a>' if pos else ""
                next_link = (f'<a href="c{chosen[pos + 1]}.html">channel {chosen[pos + 1]} &rarr;</a>'
                             if pos + 1 < len(chosen) else "")
                st = stats.loc[c]
                rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{_fmt(st[key])}</td></tr>"
                               for key in st.index if key != "layer")
                body = (f'<nav><a href="../index.html">all layers</a><a href="index.html">{html.escape(layer)}</a>'
                        f"{prev_link}{next_link}</nav>"
                        f"<h1>{html.escape(layer)} · channel {c}</h1>{header}"
                        f'<h2>Top {k} receptive-field patches</h2><div class="grid">{cards}</div>'
                        f"{attr_html}"
                        f'<h2>Statistics</h2><table class="stats">{rows}</table>'
                        f"<h2>Distribution of the per-image maxima (top-k in red)</h2>"
                        f"{_histogram_svg(g['maxima'][:, c].astype(np.float64), acts)}")
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


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))
