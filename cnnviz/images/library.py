"""Image libraries: a stable, deterministic list of image files with optional labels.

A library is a directory (searched recursively for common image extensions; a file's label is
its top-level folder when every image sits in one, as in ImageNet's ``class/`` layout) or a
list file. Images are ordered by their path relative to the root, and an image's id is its
position in that order.

A list file is read as spreadsheets and scripts write them (the README has the same rules):

* UTF-8, with or without a byte-order mark, or UTF-16 with one; LF, CRLF or CR line ends;
* blank lines and lines starting with ``#`` are skipped (quote a path that starts with ``#``);
* one image per line: its path, then optionally a label; columns are separated by tabs when
  the first line has a tab, else by commas; fields may be quoted as CSV quotes them
  (``"a, b.jpg"``, ``"say ""hi"".jpg"``); spaces around fields are dropped; further columns
  are ignored;
* a first line naming its columns (``path,label``, ``filename,class``, pandas' ``,path,label``
  with its index column) is a header, and picks the path and label columns;
* an unquoted path holding a comma (``find > list.txt``) is taken whole when its first field
  has no image extension and the whole line has one;
* paths are relative to the list file's folder, or absolute;
* an image listed twice (``a.jpg`` and ``./a.jpg`` alike) is scanned once, with a warning; twice
  with different labels, the list is refused, naming both lines.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnvizWarning, UsageError, user_level

__all__ = ["ImageLibrary", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".avif", ".heic", ".heif")


@dataclass
class ImageLibrary:
    """An ordered list of images.

    Attributes:
        source: the directory or list file it was read from.
        root: the folder relative paths are resolved against.
        relpaths: paths relative to ``root``, in id order (``/`` separators).
        labels: one label per image, or ``None``.
    """

    source: str
    root: str
    relpaths: list[str]
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.relpaths)

    def path(self, image_id: int) -> Path:
        return Path(self.root) / self.relpaths[image_id]

    def fingerprint(self) -> str:
        """Hash of the ordered relative paths: a resumed scan checks it is the same library."""
        h = hashlib.sha256()
        for p in self.relpaths:
            h.update(p.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()[:16]

    @classmethod
    def open(cls, source: str | Path) -> ImageLibrary:
        """Read a library from a directory or a list file.

        Raises:
            UsageError: the source does not exist, or holds no images.
        """
        source = Path(source).expanduser()
        if source.is_dir():
            lib = cls._from_directory(source)
        elif source.is_file():
            lib = cls._from_list(source)
        else:
            raise UsageError(f"`library` {source}: no such directory or list file")
        if not lib.relpaths:
            raise UsageError(
                f"`library` {source}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
                f"{' recursively' if source.is_dir() else ' in the listed paths'})"
            )
        return lib

    @classmethod
    def _from_directory(cls, root: Path) -> ImageLibrary:
        rel = sorted(_image_files(root))
        labels = None
        if rel and all("/" in r for r in rel):
            labels = [r.split("/", 1)[0] for r in rel]
        return cls(str(root), str(root), rel, labels)

    def to_dict(self) -> dict:
        """The listing as JSON-ready data: a scan freezes its library in its work folder, so
        files added, removed or renamed while it runs change nothing about which image is which."""
        return {"source": self.source, "root": self.root, "relpaths": self.relpaths, "labels": self.labels}

    @classmethod
    def from_dict(cls, d: dict) -> ImageLibrary:
        return cls(d["source"], d["root"], list(d["relpaths"]), d["labels"])

    @classmethod
    def _from_list(cls, list_file: Path) -> ImageLibrary:
        if list_file.suffix.lower() in IMAGE_EXTENSIONS:
            raise UsageError(f"`library` {list_file} is an image; a library is a folder of images or "
                             "a text file listing them")
        entries = read_list_file(list_file)
        entries.sort(key=lambda e: e[0])
        rel = [e[0] for e in entries]
        labels = [e[1] for e in entries] if any(e[1] for e in entries) else None
        return cls(str(list_file), str(list_file.parent), rel, labels)


# column names that make a first line a header (compared lower-case)
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path",
                 "image_file", "img", "img_path", "relpath")
_LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "y", "wnid", "synset")


def read_list_file(list_file: Path) -> list[tuple[str, str]]:
    """``(path, label)`` per image listed in ``list_file``, in the order listed (grammar: the
    module's docstring and the README). Paths are relative to the list file's folder unless
    absolute, normalized (``./a.jpg`` is ``a.jpg``); an image listed twice is kept once (with a
    :class:`~cnnviz.errors.CnnvizWarning`), or refused when its labels differ.

    Raises:
        UsageError: not text, an unclosed quote, an entry without a path, or an image listed
            twice with two labels; each names its line.
    """
    lines = _text_lines(list_file)
    rows = list(_rows(list_file, lines))
    path_col, label_col = 0, 1
    if rows and _header(rows[0][1]) is not None:
        path_col, label_col = _header(rows[0][1])
        rows = rows[1:]
    entries: dict[str, tuple[int, str, str]] = {}  # normalized path -> (line, path, label)
    repeated: list[tuple[int, int, str]] = []
    for number, fields, raw in rows:
        path, label = _entry(fields, raw, path_col, label_col)
        if not path:
            raise UsageError(f"`library` {list_file}, line {number}: no image path in column "
                             f"{path_col + 1} ({raw.strip()[:60]!r})")
        path = os.path.normpath(path)
        key = os.path.normpath(os.path.join(list_file.parent, path))
        if key in entries:
            first, _, first_label = entries[key]
            if first_label != label:
                raise UsageError(f"`library` {list_file}: line {first} and line {number} both list {path}, "
                                 f"labelled {first_label!r} and {label!r}; list each image once")
            repeated.append((first, number, path))
            continue
        entries[key] = (number, path, label)
    if repeated:
        first, again, path = repeated[0]
        what = "an image" if len(repeated) == 1 else f"{len(repeated)} images"
        warnings.warn(f"{list_file} lists {what} more than once (e.g. {path} on lines "
                      f"{first} and {again}); each is scanned once", CnnvizWarning, stacklevel=user_level())
    return [(path, label) for _, path, label in entries.values()]


def _text_lines(list_file: Path) -> list[str]:
    """The lines of a list file: UTF-8 (a byte-order mark is dropped) or UTF-16 with its
    byte-order mark (Excel's "Unicode text"); LF, CRLF or CR line ends."""
    data = list_file.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"`library` {list_file} is not a UTF-8 text file listing image paths "
                         "(one per line, optionally a label after a comma or tab)") from None
    return text.splitlines()


def _rows(list_file: Path, lines: list[str]):
    """``(line number, fields, raw line)`` of each entry line: blank lines and ``#`` comments
    are skipped; fields are split at tabs when the first entry line has one, else at commas,
    with CSV quoting (a quoted field may hold commas, tabs and doubled quotes)."""
    dialect = None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if dialect is None:
            dialect = "excel-tab" if "\t" in line else "excel"
        try:
            fields = next(csv.reader([line], dialect=dialect, strict=True))
        except (csv.Error, StopIteration) as exc:
            raise UsageError(f"`library` {list_file}, line {number}: cannot read it as a CSV line ({exc}); "
                             "a quoted path must end with a quote") from None
        fields = [f.strip() for f in fields]
        if any(fields):
            yield number, fields, line


def _header(fields: list[str]) -> tuple[int, int] | None:
    """``(path column, label column)`` when ``fields`` are column names (``path,label``; pandas'
    ``,path,label`` with its index first), else ``None``."""
    names = [f.lower() for f in fields]
    path = next((i for i, n in enumerate(names) if n in _PATH_COLUMNS), None)
    if path is None:
        return None
    label = next((i for i, n in enumerate(names) if n in _LABEL_COLUMNS and i != path), path + 1)
    return path, label


def _entry(fields: list[str], raw: str, path_col: int, label_col: int) -> tuple[str, str]:
    path = fields[path_col] if path_col < len(fields) else ""
    label = fields[label_col] if label_col < len(fields) else ""
    whole = raw.strip()
    # an unquoted path with a comma (a shell's `find > list.txt`): the whole line is the path
    if (path_col == 0 and len(fields) > 1 and "\t" not in whole and not whole.startswith('"')
            and not _is_image_name(path) and _is_image_name(whole)):
        return whole, ""
    return path, label


def _is_image_name(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _image_files(root: Path):
    """Relative paths of every file with an image extension under ``root``: symlinked folders
    are followed (each real folder once, so a link loop ends), and links to files are listed
    even when broken (the scan then records why they could not be read)."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        base = Path(folder)
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield (base / name).relative_to(root).as_posix()
