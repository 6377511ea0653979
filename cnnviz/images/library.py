"""Image libraries: a stable, deterministic list of image files with optional labels.

A library is a directory (searched recursively for common image extensions; a file's label is
its top-level folder when every image sits in one, as in ImageNet's ``class/`` layout) or a
text/CSV file listing paths (relative to the list file), one per line, with an optional label
in a second column. Images are ordered by their path relative to the root, and an image's id
is its position in that order.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

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
        try:
            text = list_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"`library` {list_file} is not a UTF-8 text file listing image paths "
                             "(one per line, optionally a label after a comma or tab)") from None
        dialect = "excel-tab" if "\t" in text.split("\n", 1)[0] else "excel"
        rows = [r for r in csv.reader(text.splitlines(), dialect=dialect) if r and r[0].strip()]
        if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
            rows = rows[1:]
        rows = [r for r in rows if not r[0].lstrip().startswith("#")]
        entries = sorted((r[0].strip(), r[1].strip() if len(r) > 1 else "") for r in rows)
        rel = [e[0] for e in entries]
        labels = [e[1] for e in entries] if any(e[1] for e in entries) else None
        return cls(str(list_file), str(list_file.parent), rel, labels)


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
