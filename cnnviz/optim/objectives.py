"""Objectives: what an optimized image should excite, one value per image of the batch.

An objective is called with the captured activations (``{layer: tensor}``) and the model's
output, and returns a ``(batch,)`` tensor to *maximize*. Objectives add, subtract and scale::

    obj = channel("layer3.1", 12) + 0.5 * channel("layer4.0", 7) - 1e-3 * l2()

Units are named as Captum's ``neuron_selector`` names them: an ``int`` channel, or a
``(channel, y, x)`` tuple. Layers are named as :mod:`cnnviz.taps` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Objective", "channel", "channels", "neuron", "layer_energy", "direction",
           "class_logit", "class_logits", "l2", "diversity"]


@dataclass
class Objective:
    """A differentiable score per batch element.

    Attributes:
        fn: ``fn(acts, logits, image) -> (batch,)``.
        layers: the taps ``fn`` reads from ``acts``.
        needs_logits: whether it reads the model's output (the forward pass must run to the end).
        name: for progress bars and file names.
    """

    fn: Callable[[dict, torch.Tensor | None, torch.Tensor], torch.Tensor]
    layers: tuple[str, ...] = ()
    needs_logits: bool = False
    name: str = "objective"

    def __call__(self, acts: dict, logits: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
        return self.fn(acts, logits, image)

    def _combine(self, other: Objective | float, op, sym: str) -> Objective:
        if not isinstance(other, Objective):
            value = float(other)
            return Objective(lambda a, lo, im: op(self(a, lo, im), value), self.layers,
                             self.needs_logits, f"({self.name} {sym} {value:g})")
        return Objective(lambda a, lo, im: op(self(a, lo, im), other(a, lo, im)),
                         tuple(dict.fromkeys(self.layers + other.layers)),
                         self.needs_logits or other.needs_logits, f"({self.name} {sym} {other.name})")

    def __add__(self, other):
        return self._combine(other, torch.add, "+")

    def __sub__(self, other):
        return self._combine(other, torch.sub, "-")

    def __mul__(self, other):
        return self._combine(other, torch.mul, "*")

    __radd__ = __add__

    def __rmul__(self, other):
        return self.__mul__(other)

    def __neg__(self):
        return -1.0 * self


def _per_batch(values: Sequence[int] | int, batch: int, device) -> torch.Tensor:
    if isinstance(values, int):
        return torch.full((batch,), values, dtype=torch.long, device=device)
    t = torch.as_tensor(list(values), dtype=torch.long, device=device)
    if len(t) != batch:
        raise ValueError(f"{len(t)} targets for a batch of {batch} images")
    return t


def channel(layer: str, unit: int | tuple[int, int, int]) -> Objective:
    """Mean activation of one channel over all positions (``unit`` an int), or one neuron
    (``unit`` a ``(channel, y, x)`` tuple, Captum's neuron_selector form)."""
    if isinstance(unit, tuple):
        return neuron(layer, *unit)
    return Objective(lambda a, lo, im: a[layer][:, unit].mean(dim=(1, 2)), (layer,),
                     name=f"{layer}:{unit}")


def channels(layer: str, chans: Sequence[int]) -> Objective:
    """Batched: image ``i`` maximizes the mean of channel ``chans[i]`` (64 channels, one batch)."""
    chans = list(chans)

    def fn(a, lo, im):
        act = a[layer]
        idx = _per_batch(chans, act.shape[0], act.device)
        return act[torch.arange(act.shape[0], device=act.device), idx].mean(dim=(1, 2))

    return Objective(fn, (layer,), name=f"{layer}:{chans[0]}-{chans[-1]}")


def neuron(layer: str, ch: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel ``ch`` at ``(y, x)`` (default: the centre of the map)."""

    def fn(a, lo, im):
        act = a[layer]
        yy = act.shape[2] // 2 if y is None else y
        xx = act.shape[3] // 2 if x is None else x
        return act[:, ch, yy, xx]

    return Objective(fn, (layer,), name=f"{layer}:{ch}@{y},{x}")


def layer_energy(layer: str) -> Objective:
    """DeepDream: the mean squared activation of a whole layer."""
    return Objective(lambda a, lo, im: (a[layer] ** 2).mean(dim=(1, 2, 3)), (layer,),
                     name=f"{layer}:dream")


def direction(layer: str, vector: Sequence[float] | torch.Tensor) -> Objective:
    """Mean over positions of the dot product of the activation with a channel-space direction."""
    vec = torch.as_tensor(vector, dtype=torch.float32)

    def fn(a, lo, im):
        act = a[layer]
        v = vec.to(act.device, act.dtype).view(1, -1, 1, 1)
        return (act * v).sum(1).mean(dim=(1, 2))

    return Objective(fn, (layer,), name=f"{layer}:direction")


def class_logit(target: int) -> Objective:
    """The pre-softmax score of class ``target``."""
    return Objective(lambda a, lo, im: lo[:, target], needs_logits=True, name=f"class {target}")


def class_logits(targets: Sequence[int]) -> Objective:
    """Batched: image ``i`` maximizes the logit of ``targets[i]``."""
    targets = list(targets)

    def fn(a, lo, im):
        idx = _per_batch(targets, lo.shape[0], lo.device)
        return lo[torch.arange(lo.shape[0], device=lo.device), idx]

    return Objective(fn, needs_logits=True, name=f"classes {targets[0]}..{targets[-1]}")


def l2() -> Objective:
    """Squared L2 norm of the image the model sees (use with a negative weight)."""
    return Objective(lambda a, lo, im: (im ** 2).flatten(1).sum(1), name="l2")


def diversity(layer: str) -> Objective:
    """Lucid's diversity term: minus the mean cosine similarity of each image's Gram matrix at
    ``layer`` with the others of the batch (maximize it, with a weight, to make a batch of
    images of one objective differ)."""

    def fn(a, lo, im):
        act = a[layer]
        b, c = act.shape[:2]
        flat = act.reshape(b, c, -1)
        gram = torch.bmm(flat, flat.transpose(1, 2)).reshape(b, -1)
        gram = torch.nn.functional.normalize(gram, dim=1)
        sim = gram @ gram.t()
        off = sim.sum(1) - sim.diagonal()
        return -off / max(1, b - 1)

    return Objective(fn, (layer,), name=f"{layer}:diversity")
