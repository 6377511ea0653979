"""Type aliases for what the public API takes (as Captum's ``captum._utils.typing`` does), so a
signature says what a user may pass: names written the way the command line takes them, or
lists. Annotations only: importing this loads nothing heavy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:
    import torch

    from .run.reader import RunReader

#: A run file: its path, or a :class:`~cnnviz.run.reader.RunReader` already open (used as it
#: is and left open: a notebook or a report reads one file through one reader).
RunSpec = Union[str, os.PathLike, "RunReader"]  # noqa: UP007 - a forward reference
#: Layers: names (``layer3.1``, ``features[12]``, ``logits``) as a list or comma-separated;
#: ``None`` for the default (the block outputs of a scan, every layer of a run).
LayerSpec = str | Sequence[str] | None
#: Channels: ``"0-63"``, ``"3,7,10-20"``, a list, a count (the first n) or ``None`` (all).
ChannelSpec = int | str | Sequence[int] | None
#: Image files: one path, or several.
ImageSpec = str | os.PathLike | Sequence[str | os.PathLike]
#: A device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
DeviceSpec = Union[str, "torch.device"]  # noqa: UP007 - a forward reference: torch is not imported
#: The arithmetic of forward passes (:mod:`cnnviz.model.precision`).
Precision = Literal["fp32", "tf32", "amp"]
#: A class: its index, its name, a WordNet lemma or id.
ClassSpec = int | str

__all__ = ["RunSpec", "LayerSpec", "ChannelSpec", "ImageSpec", "DeviceSpec", "Precision", "ClassSpec"]
