"""``rank_by=relevance``: the scan's taps with one backward pass per batch.

Each batch goes through the whole network (no early stop: the logits are needed) with grad,
then back from each image's target logit once (:func:`cnnviz.model.relevance.relevance_pass`):
every tap gets its usual reduction (:class:`~.reducers.TapReducer`) plus, per channel, the sum
of activation x gradient over positions and the position where that product peaks. The target
of an image is its label's class where the label names one of the model's classes, else the
model's top-1 class (``docs/relevance.md``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..labels import label_class
from ..model.copying import without_inplace
from ..model.relevance import relevance_pass
from .reducers import TapReducer

__all__ = ["RelevanceTaps", "label_targets", "TARGET_RULE"]

#: what the run file records as its ``relevance_target``
TARGET_RULE = ("the label's class where the label names one of the model's classes, else the model's "
               "top-1 class")


def label_targets(labels, class_names) -> np.ndarray:
    """Per image the class its label names (-1: none, the model's top-1 class is used)."""
    if labels is None:
        return np.zeros(0, dtype=np.int64)
    cache: dict[str, int] = {}
    return np.array([cache.setdefault(str(lab), label_class(lab, class_names)) for lab in labels],
                    dtype=np.int64)


class RelevanceTaps:
    """Same interface as the scan's taps: ``forward(x)`` fills ``outputs[tap name]`` with the
    tap's :class:`~.reducers.Reduced`, its ``relevance`` and ``relevance_index`` filled.

    Args:
        targets: per image id of the library, the target class (-1: the top-1 class); indexed
            by the reducer's ``ids`` (the batch's readable images)."""

    def __init__(self, module: torch.nn.Module, names: list[str], reducer: TapReducer, targets: np.ndarray,
                 device):
        self.net = without_inplace(module)
        self.names, self.reducer = names, reducer
        self.targets = torch.as_tensor(targets, dtype=torch.int64, device=device)
        self.outputs: dict = {}

    def forward(self, x: torch.Tensor) -> None:
        ids = self.reducer.ids
        wanted = self.targets[ids] if ids is not None and len(self.targets) else None
        p = relevance_pass(self.net, x, self.names, wanted)
        self.outputs = {}
        for name in self.names:
            product = p.products[name].float()
            flat = product.flatten(2) if product.dim() == 4 else product[:, :, None]
            self.outputs[name] = self.reducer(name, p.activations[name])._replace(
                relevance=flat.sum(dim=2), relevance_index=flat.argmax(dim=2))
