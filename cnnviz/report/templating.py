"""What every page writer of the report shares: the Jinja2 environment of the templates beside
this package (autoescaping on, undefined names an error), and files written whole or not at all
(a full disk leaves no 0-byte page or image). :mod:`.pages` writes the report with it,
:mod:`.analysis_pages` the explain, why and compare pages."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from markupsafe import Markup, escape
from PIL import Image

__all__ = ["environment", "render_page", "write_text", "save_png", "save_photo", "breakable"]


def environment():
    """The templates of ``cnnviz/report/templates``, with the ``breakable`` filter."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("cnnviz.report", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["breakable"] = breakable
    return env


def breakable(text) -> Markup:
    """``text`` escaped, with a line-break opportunity after each ``_ - . /``: a long file name
    wraps between its words (``n04317175_8152_ / stethoscope.jpg``), not inside one."""
    return Markup(re.sub(r"([_\-./])", r"\1<wbr>", str(escape(str(text)))))


def render_page(env, template: str, path: Path, **context) -> None:
    """``template`` rendered with ``context`` into ``path``, whole or not at all."""
    write_text(path, env.get_template(template).render(**context))


@contextlib.contextmanager
def whole(path: Path):
    """A file is written whole or not at all (a full disk leaves no 0-byte page or image)."""
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with whole(path):
        path.write_text(text, encoding="utf-8")


def save_png(image: Image.Image, path: Path) -> None:
    """Lossless, at zlib level 1: the report writes thousands of strips, and Pillow's default
    level (6) spent 70 % of a report's time compressing them for files only ~12 % smaller."""
    with whole(path):
        image.save(path, format="PNG", compress_level=1)


def save_photo(image: Image.Image, path: Path) -> None:
    """Downscaled photos with an overlay: JPEG (quality 90, no chroma subsampling, so that the
    drawn box and the tint stay sharp) is over 20x faster to write than PNG and under a third of its size."""
    with whole(path):
        image.save(path, format="JPEG", quality=90, subsampling=0)
