"""Random transforms for transformation robustness, seeded by a CPU ``torch.Generator``
(:mod:`.seeding`: the same draws whatever device the image is on).

Each transform maps ``(batch, 3, H, W)`` to an image of (nearly) the same size, differently for
each step; the same generator state gives the same sequence. :func:`standard_transforms` is
Lucid's ``transforms.standard_transforms``: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10
degrees, jitter 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .seeding import choice, randint

__all__ = ["pad", "jitter", "random_scale", "random_rotate", "compose", "standard_transforms",
           "centre_fit", "roll", "gaussian_blur"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def pad(width: int, value: float = 0.5) -> Transform:
    """Constant padding (grey by default), so jitter does not show the border."""
    return lambda img, gen: F.pad(img, (width,) * 4, value=value)


def jitter(d: int) -> Transform:
    """Random crop shifted by up to ``d - 1`` pixels (the image shrinks by ``d - 1``)."""

    def fn(img, gen):
        dy, dx = randint(d, 2, gen)
        h, w = img.shape[-2:]
        return img[..., dy: h - (d - 1) + dy, dx: w - (d - 1) + dx]

    return fn


def random_scale(scales: Sequence[float]) -> Transform:
    """Bilinear resize by a factor drawn from ``scales``."""

    def fn(img, gen):
        s = choice(scales, gen)
        h, w = img.shape[-2:]
        return F.interpolate(img, size=(max(1, round(h * s)), max(1, round(w * s))),
                             mode="bilinear", align_corners=False)

    return fn


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotation about the centre by an angle drawn from ``degrees`` (bilinear, border copied)."""

    def fn(img, gen):
        a = math.radians(choice(degrees, gen))
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                             dtype=img.dtype, device=img.device).expand(img.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return fn


def compose(transforms: Sequence[Transform]) -> Transform:
    def fn(img, gen):
        for t in transforms:
            img = t(img, gen)
        return img

    return fn


def standard_transforms() -> Transform:
    return compose([pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
                    random_rotate(list(range(-10, 11))), jitter(4)])


def centre_fit(x: torch.Tensor, size: tuple[int, int], value: float = 0.5) -> torch.Tensor:
    """``x`` cut to ``size`` about its centre, padded with ``value`` where it is smaller. (A
    resize instead would show the network every feature at about 0.94 of its size and cost
    a tenth of the reached activation at the image's own size.)"""
    pads = []
    for dim, want in ((3, size[1]), (2, size[0])):
        have = x.shape[dim]
        lo = (have - want) // 2
        pads += [-lo, -(have - want - lo)]
    return F.pad(x, pads, value=value)


def roll(x: torch.Tensor, ox: int, oy: int) -> torch.Tensor:
    """cs231n's jitter: a circular shift by ``ox`` columns and ``oy`` rows."""
    return torch.roll(x, shifts=(oy, ox), dims=(2, 3))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter1d along rows then columns (truncate 4, mode 'reflect')."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    for dim in (2, 3):
        first = x.narrow(dim, 0, radius).flip(dim)
        last = x.narrow(dim, x.shape[dim] - radius, radius).flip(dim)
        xp = torch.cat([first, x, last], dim=dim)
        weight = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        x = F.conv2d(xp, weight.expand(c, 1, *weight.shape[2:]), groups=c)
    return x
