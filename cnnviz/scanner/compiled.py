"""``compile=True``: the network compiled, its taps read without hooks.

Hooks break ``torch.compile``'s graph, so the taps are captured by tracing instead: torchvision's
``create_feature_extractor`` (FX) returns the tapped outputs (and prunes the network after the
last one) and ``torch.compile`` compiles that. The reductions to per-channel (max, argmax,
mean) run after it, eagerly, with :func:`~cnnviz.scanner.reducers.spatial_max`: compiled into
the graph they cost 80 ms per batch (inductor writes its own loops for a max with its index),
the eager ATen pools 13 ms (ResNet50's 16 blocks, batch 16, 2 CPU cores). Batches are padded to
one shape so that it compiles once; compiled code is cached by torch
(``TORCHINDUCTOR_CACHE_DIR``), so a resumed scan compiles faster.
"""

from __future__ import annotations

import time
import warnings

import torch

from ..errors import CnnvizWarning, UsageError, user_level
from .reducers import TapReducer

__all__ = ["CompiledTaps"]


class CompiledTaps:
    """Same interface as :class:`cnnviz.model.taps.Capture` for the scan: ``forward(x)`` fills
    ``outputs[tap name]`` with the scan's :class:`~.reducers.TapReducer` (max, argmax, mean and
    what else the scan keeps)."""

    def __init__(self, module: torch.nn.Module, names: list[str], batch_size: int, example: torch.Tensor,
                 reducer: TapReducer | None = None):
        from torchvision.models.feature_extraction import create_feature_extractor

        try:
            extractor = create_feature_extractor(module, return_nodes={n: n for n in names})
        except Exception as exc:  # noqa: BLE001 - FX tracing fails in many ways; all mean the same
            raise UsageError(f"`compile`: this model cannot be traced with torch.fx ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); scan without `compile=True`") from None
        self.batch_size = batch_size
        self.reducer = reducer or TapReducer()
        self.compiled = torch.compile(extractor, dynamic=False)
        self.outputs: dict = {}
        started = time.monotonic()
        self.forward(example)  # compile now, not inside the scan's timing
        self.compile_seconds = time.monotonic() - started
        warnings.warn(f"compiled the network in {self.compile_seconds:.1f} s", CnnvizWarning,
                      stacklevel=user_level())

    def forward(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        if n < self.batch_size:  # one shape, one compilation: pad, then drop the padding
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        out = self.compiled(x)
        self.outputs = {k: self.reducer(k, act[:n]) for k, act in out.items()}
