"""Seeded randomness for optimization, the same on every device.

Every random draw of :mod:`cnnviz.optim` (the starting image, each step's transforms and
jitter) comes from one CPU ``torch.Generator`` seeded here, and what it draws is moved to the
device afterwards. So a seed gives the same starting image and the same sequence of transforms
on a CPU and on a GPU (CUDA generators would draw other numbers, and mixing a CUDA generator
with a CPU draw is an error), and no code path exists that only CUDA takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["generator", "randn", "randint", "choice"]


def generator(seed: int) -> torch.Generator:
    """The generator of one optimization: on the CPU, whatever device the images are on."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def randn(shape: Sequence[int], gen: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal values drawn on the CPU, then moved to ``device``."""
    return torch.randn(tuple(shape), generator=gen, dtype=dtype).to(device)


def randint(high: int, count: int, gen: torch.Generator) -> list[int]:
    """``count`` integers in ``[0, high)``."""
    return [int(v) for v in torch.randint(high, (count,), generator=gen)]


def choice(values: Sequence, gen: torch.Generator):
    return values[randint(len(values), 1, gen)[0]]
