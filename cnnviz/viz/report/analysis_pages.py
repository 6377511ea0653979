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

from ...run import format as fmt
from ...run.reader import RunReader
from .collect import safe_name
from .render import _environment, _render, _strip, save_png, writing_to

__all__ = ["write_explain_page", "write_compare_page"]


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
    out.mkdir(parents=True, exist_ok=True)
    (out / "style.css").write_text(resources.files(__package__).joinpath("style.css").read_text("utf-8"),
                                   encoding="utf-8")


def _scale(patch_shape) -> int:
    return max(1, min(8, -(-64 // max(patch_shape))))  # at least 64 px on screen


def _examples(reader: RunReader, layer: str, channel: int, out: Path, name: str) -> str:
    g = reader.layer(layer)
    k = int((g[fmt.TOPK_IMAGE_ID][channel] >= 0).sum())
    patches = g[fmt.TOPK_PATCHES][channel][:k]
    if not (out / name).exists():
        save_png(_strip(patches, _scale(patches.shape[1:3])), out / name)
    return name


def write_explain_page(explained, run: str | Path, out_dir: str | Path, top: int = 5,
                       back: str | None = None) -> Path:
    """Write the explain page of :func:`cnnviz.analysis.explanation.explain_images`'s result: per
    image and layer, the ``top`` channels where the image stands highest against the library,
    its own patch beside the channel's dataset examples; ``back`` links a page (the report).
    Returns the path of ``index.html``."""
    import matplotlib.pyplot as plt

    from ...analysis.explanation import own_patch

    out = Path(out_dir)
    with writing_to(out):
        _style(out)
        table: pd.DataFrame = explained.table
        images = []
        with RunReader(run) as reader:
            for i, path in enumerate(explained.paths):
                save_png(Image.fromarray(explained.crops[i]), out / f"img{i}.png")
                rows = table[table.image == str(path)]
                sections = []
                for layer in reader.layers:
                    chosen = rows[rows.layer == layer].head(top)
                    if chosen.empty:
                        continue
                    shown = []
                    for row in chosen.itertuples():
                        patch = own_patch(reader, layer, explained.crops[i], int(row.y), int(row.x))
                        own = f"img{i}-{_safe(layer)}-c{row.channel}.png"
                        save_png(_strip(patch[None], _scale(patch.shape[:2])), out / own)
                        c = int(row.channel)
                        strip = _examples(reader, layer, c, out, f"{_safe(layer)}-c{c}.png")
                        shown.append(_Shown(layer, c, row.channel_name, _standing(row), strip, own))
                    sections.append((layer, shown))
                images.append((path, f"img{i}.png", sections))
                fig = _explain_figure(out, path, sections)
                fig.savefig(out / f"explain-{i}.png", dpi=90)
                plt.close(fig)
            run_name, n_images = reader.path.name, int(reader.attrs["n_images"])
        index = out / "index.html"
        _render(_environment(), "explain.html", index, root="", run_name=run_name, n_images=n_images,
                images=images, top=top, back=back)
        return index


def _standing(row) -> str:
    rank = "rank ?" if np.isnan(row.rank) else f"rank {int(row.rank)} of {int(row.n_images)}"
    pct = "" if np.isnan(row.percentile) else f" · {row.percentile:.1f} %ile"
    library = " · in the library" if row.library_id >= 0 else ""
    return f"{row.value:.3g} · {rank}{pct}{library}"


def _explain_figure(out: Path, path: Path, sections):
    import matplotlib.pyplot as plt

    rows = [s for _, shown in sections for s in shown]
    fig, axes = plt.subplots(len(rows), 2, figsize=(9, 1.3 * len(rows) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 5]})
    for ax_row, s in zip(axes, rows, strict=True):
        ax_row[0].imshow(Image.open(out / s.own))
        ax_row[1].imshow(Image.open(out / s.strip))
        ax_row[0].set_title(f"{s.layer} c{s.channel} {s.name}".strip(), fontsize=7, loc="left")
        ax_row[1].set_title(f"{s.numbers}  | dataset examples", fontsize=7, loc="left")
        for ax in ax_row:
            ax.axis("off")
    fig.suptitle(f"{path.name}: where it stands against the library", fontsize=9)
    fig.tight_layout()
    return fig


def write_compare_page(table: pd.DataFrame, run_a: str | Path, run_b: str | Path, out_dir: str | Path,
                       top: int = 20) -> Path:
    """Write the compare page of :func:`cnnviz.analysis.compare_runs`'s table: the ``top``
    most changed channels, both runs' dataset examples side by side, and a per-layer summary."""
    out = Path(out_dir)
    with writing_to(out):
        _style(out)
        with RunReader(run_a) as a, RunReader(run_b) as b:
            shown = []
            for row in table.head(top).itertuples():
                key = f"{_safe(row.layer)}-c{row.channel}.png"
                shown.append(_Shown(row.layer, int(row.channel), row.channel_name, _change(row),
                                    _examples(a, row.layer, int(row.channel), out, "a-" + key), None,
                                    _examples(b, row.layer, int(row.channel), out, "b-" + key)))
            names = (a.path.name, b.path.name)
        summary = (table.groupby("layer", sort=False)
                   .agg(channels=("channel", "size"), median_change=("change", "median"),
                        mean_topk_overlap=("topk_overlap", "mean"), median_rank_corr=("rank_corr", "median"),
                        mean_d_mean_max=("d_mean_max", "mean"))
                   .reset_index())
        index = out / "index.html"
        _render(_environment(), "compare.html", index, root="", names=names, shown=shown,
                summary=[(r.layer, r.channels, _num(r.median_change), _num(r.mean_topk_overlap),
                          _num(r.median_rank_corr), _num(r.mean_d_mean_max)) for r in summary.itertuples()],
                shared=int(table["shared_images"].iloc[0]) if len(table) else 0)
        return index


def _change(row) -> str:
    parts = [f"change {_num(row.change)}", f"top-k overlap {_num(row.topk_overlap)}",
             f"rank corr. {_num(row.rank_corr)}",
             f"mean max {_num(row.mean_max_a)} → {_num(row.mean_max_b)}",
             f"fire rate {_num(row.fire_rate_a)} → {_num(row.fire_rate_b)}"]
    return " · ".join(parts)


def _num(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3g}"


def _safe(name: str) -> str:
    return safe_name(name)
