"""Names for labels: a library's labels (class folders, list-file columns) are often class
indices (``468``) or WordNet ids (``n02930766``); people read ``cab``.

The ImageNet-1k class index (index, WordNet id, torchvision's class name, WordNet lemmas) is
the package data file ``imagenet_classes.tsv``, kept in the repository's ``data/`` folder
(source and licence in ``data/README.md``). Reading it needs neither torch nor pandas.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["data_file", "ImageNetClass", "imagenet_classes", "label_name", "label_names", "label_class",
           "class_indices"]

_WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str
    lemmas: str


def data_file(name: str) -> str:
    """The text of a file of the ``data/`` folder: package data ``cnnviz.data`` when installed
    (a wheel), the repository's ``data/`` when ``cnnviz`` is imported from a source checkout."""
    try:
        return resources.files("cnnviz.data").joinpath(name).read_text("utf-8")
    except ModuleNotFoundError:
        return (Path(__file__).resolve().parent.parent / "data" / name).read_text("utf-8")


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1000 ImageNet-1k classes in the order of torchvision's classifiers."""
    text = data_file("imagenet_classes.tsv")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line]
    return tuple(ImageNetClass(int(i), w, n, lem) for i, w, n, lem in rows)


@functools.cache
def _by_wnid() -> dict[str, ImageNetClass]:
    return {c.wnid: c for c in imagenet_classes()}


def label_name(label: str | None, class_names: Sequence[str] | None = None) -> str | None:
    """A readable name for one label, or ``None`` when there is nothing to add.

    * a class index (``"468"``) in range of ``class_names`` -> that class's name;
    * a WordNet id (``"n02930766"``, or a folder name starting with one such as
      ``n02930766_cab``) of an ImageNet-1k class -> the model's name for that class when the
      model has the 1000 ImageNet classes, else the ImageNet name;
    * anything else -> ``None`` (the label is already a name).
    """
    if not label:
        return None
    label = str(label)
    if label.isdigit() and class_names is not None and int(label) < len(class_names):
        return str(class_names[int(label)])
    match = _WNID.match(label)
    if match and match.group(0) in _by_wnid():
        cls = _by_wnid()[match.group(0)]
        if class_names is not None and len(class_names) == len(imagenet_classes()):
            return str(class_names[cls.index])
        return cls.name
    return None


def label_names(labels: Sequence[str] | None, class_names: Sequence[str] | None = None) -> list[str | None]:
    """:func:`label_name` of every label (``[]`` for ``None``); repeated labels are looked up once."""
    if labels is None:
        return []
    cache: dict[str, str | None] = {}
    return [cache.setdefault(str(lab), label_name(lab, class_names)) if lab is not None else None
            for lab in labels]


def label_class(label: str | None, class_names: Sequence[str] | None) -> int:
    """The model's class a label names, or -1: a class index in range, a WordNet id of an
    ImageNet-1k class (for a model of those 1000 classes), or a class name itself."""
    if not label or class_names is None:
        return -1
    label = str(label)
    if label.isdigit():
        return int(label) if int(label) < len(class_names) else -1
    match = _WNID.match(label)
    if match and match.group(0) in _by_wnid() and len(class_names) == len(imagenet_classes()):
        return _by_wnid()[match.group(0)].index
    names = [str(c) for c in class_names]
    return names.index(label) if label in names else -1


_NUMBERS = re.compile(r"\d+(\s*-\s*\d+)?")


def class_indices(spec: str, class_names: Sequence[str] | None, what: str = "target") -> list[int]:
    """Classes as people name them -> indices: ``"76"``, ``"76,130-132"``, ``"tarantula"``,
    ``"n01774750"`` (an ImageNet WordNet id, for a model of the 1000 ImageNet classes) or a mix.

    A name is matched without regard to case: the model's class name, else (ImageNet) one of the
    class's WordNet lemmas, else a part of one name only. A name that fits several classes is
    refused with their indices. ``what`` names the argument in error messages."""
    from .channels import parse_channels
    from .errors import UsageError

    n = len(class_names) if class_names is not None else 1 << 30
    out: list[int] = []
    for token in (t.strip() for t in spec.split(",")):
        if _NUMBERS.fullmatch(token):
            out.extend(parse_channels(token, n, what=what))
        elif token:
            if class_names is None:
                raise UsageError(f"`{what}` {token!r}: this model has no class names; give class indices")
            out.append(_class_by_name(token, [str(c) for c in class_names], what))
    if not out:
        raise UsageError(f"`{what}` {spec!r}: name at least one class (an index or a name)")
    return out


def _class_by_name(token: str, names: list[str], what: str) -> int:
    from .errors import UsageError

    key = token.lower()
    imagenet = len(names) == len(imagenet_classes())
    for found in ([i for i, n in enumerate(names) if n.lower() == key],
                  [_by_wnid()[token].index] if imagenet and token in _by_wnid() else [],
                  [c.index for c in imagenet_classes()
                   if key in (lemma.strip().lower() for lemma in c.lemmas.split(","))] if imagenet else [],
                  [i for i, n in enumerate(names) if key in n.lower()]):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(f"{names[i]} ({i})" for i in found[:8]) + (" ..." if len(found) > 8 else "")
            raise UsageError(f"`{what}` {token!r} fits several classes: {listed}; give the index of one")
    close = difflib.get_close_matches(key, [n.lower() for n in names], n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(f"`{what}` {token!r} is not a class of this model{hint} (give a class index 0-"
                     f"{len(names) - 1} or a name)")
