"""Patches inline in Jupyter: ``cnnviz.show(df)`` renders a top-patches table with each row's
patch beside it (PNG thumbnails embedded in the HTML, so a saved notebook keeps them).

The DataFrame is not changed: plain pandas use (filters, sorting, ``to_csv``) stays as it
was; :func:`show` only reads it. Needs h5py, numpy, pandas and Pillow, not torch.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import UsageError
from ..run import format as fmt
from ..run.reader import RunReader, reading

__all__ = ["show", "PatchTable"]

_COLUMNS = ("layer", "channel", "channel_name", "rank", "activation", "image_path", "label", "label_name")


class PatchTable:
    """What :func:`show` returns: Jupyter displays it (``_repr_html_``); ``html`` is the markup
    and :meth:`save` writes it as a page."""

    def __init__(self, markup: str, rows: int):
        self.html = markup
        self.rows = rows

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(f'<!DOCTYPE html><meta charset="utf-8">{self.html}', encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<PatchTable of {self.rows} rows: display it in Jupyter, or .save('page.html')>"


def show(df: pd.DataFrame, run: str | Path | None = None, *, max_rows: int = 100, size: int = 96,
         columns: tuple[str, ...] | None = None) -> PatchTable:
    """The rows of a :func:`cnnviz.top_patches` table with their patches, for Jupyter.

    Args:
        df: a top-patches table, or any filter or sort of one (rows need ``layer``,
            ``channel`` and ``rank``).
        run: the run file; default: the one ``top_patches`` recorded in ``df.attrs["run"]``.
        max_rows: rows shown (the first ones).
        size: largest side of a shown patch, pixels (patches are scaled up, never blurred).
        columns: the columns shown beside the patch (default: layer, channel, rank,
            activation, image, label and class names, where present).

    Example:
        >>> df = cnnviz.top_patches("run.h5", layer="layer4.2")              # doctest: +SKIP
        >>> cnnviz.show(df[df.channel == 7])                                 # doctest: +SKIP
    """
    run = run or df.attrs.get("run")
    if run is None:
        raise UsageError("`run`: this DataFrame does not say which run it came from (pandas drops "
                         "`df.attrs` in some operations); pass it: cnnviz.show(df, run='run.h5')")
    missing = [c for c in ("layer", "channel", "rank") if c not in df]
    if missing:
        raise UsageError(f"`df` lacks the columns {', '.join(missing)}: show a table made by "
                         "cnnviz.top_patches (or a filter of one)")
    rows = df.head(max_rows)
    shown = [c for c in (columns or _COLUMNS) if c in rows and (columns or rows[c].astype(str).any())]
    # rows of a per-class table (or of a ranking by mean, or a bottom-k) say where their patch is
    rank_by = rows["rank_by"] if "rank_by" in rows else pd.Series("max", index=rows.index)
    where = rows["patch_rank"] if "patch_rank" in rows else rows["rank"]
    with reading(run) as reader:
        cells = [_patch_cell(reader, str(layer), int(channel), int(rank), size, str(by))
                 for layer, channel, rank, by in zip(rows["layer"], rows["channel"], where, rank_by,
                                                     strict=True)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("patch", *shown))
    body = "".join(
        "<tr><td>" + cell + "</td>" + "".join(f"<td>{_text(v)}</td>" for v in row) + "</tr>"
        for cell, row in zip(cells, rows[shown].itertuples(index=False), strict=True))
    more = (f"<p>{len(df) - len(rows)} more rows not shown (max_rows={max_rows})</p>"
            if len(df) > len(rows) else "")
    return PatchTable(f'<table class="cnnviz-patches"><thead><tr>{head}</tr></thead><tbody>{body}'
                      f"</tbody></table>{more}", len(rows))


def _patch_cell(reader: RunReader, layer: str, channel: int, rank: int, size: int,
                rank_by: str = "max") -> str:
    reader.check_channels(layer, channel, "df")
    if rank < 0:
        return "<small>not stored</small>"  # a class's image outside the channel's top-k
    patch = reader.ranking(layer, rank_by)[fmt.PATCHES][channel, rank]
    scale = max(1, size // max(patch.shape[:2]))
    image = Image.fromarray(np.ascontiguousarray(patch))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" width="{patch.shape[1] * scale}" '
            f'height="{patch.shape[0] * scale}" style="image-rendering:pixelated" '
            f'alt="{html.escape(layer)} channel {channel} rank {rank}">')


def _text(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))
