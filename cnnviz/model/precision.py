"""Numeric precision of forward passes: exact float32 by default, TF32 or AMP when asked.

PyTorch runs cuDNN convolutions in TF32 by default on Ampere and later GPUs (10 mantissa bits
instead of 23): a "float32" GPU scan then differs from the CPU scan (measured on an H200 with
SqueezeNet: 17-28 % of the channels' top-k lists differ, maxima by 1.7e-3 of the layer's
maximum). cnnviz makes the choice explicit:

* ``fp32`` (default): IEEE float32 everywhere; a GPU scan equals the CPU scan;
* ``tf32``: TF32 convolutions and matrix products on GPUs that have them (no effect on a CPU);
* ``amp``: the forward pass under autocast (float16 on CUDA, bfloat16 on a CPU); reductions
  are still computed in float32 from the activations the network produced.

:func:`precision_scope` sets torch's switches for the scope of a forward loop and restores them
afterwards, whatever happens inside (an error, Ctrl-C), so a scan never changes the settings of
the notebook that called it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import UsageError

__all__ = ["PRECISIONS", "check_precision", "resolve_precision", "precision_scope", "autocast",
           "tf32_switches"]

PRECISIONS = ("fp32", "tf32", "amp")


def check_precision(precision: str, param: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"`{param}` {precision!r}: choose fp32 (exact, the default), tf32 or amp")
    return precision


def resolve_precision(precision: str | None, amp: bool) -> str:
    """The precision that ``precision`` and the older ``amp`` flag ask for together."""
    if precision is None:
        return "amp" if amp else "fp32"
    check_precision(precision)
    if amp and precision != "amp":
        raise UsageError(f"`amp=True` and `precision` {precision!r} disagree: pass one of them "
                         "(`precision=amp` is what `amp=True` means)")
    return precision


def tf32_switches() -> list[tuple[object, str, object]]:
    """``(owner, attribute, value meaning IEEE float32)`` (what :func:`precision_scope` sets and
    restores; ``getattr(owner, attribute)`` reads the current setting) of torch's TF32 switches, through the
    API this torch has: since 2.9 ``fp32_precision`` (mixing it with the older ``allow_tf32``
    flags is an error there), before that ``allow_tf32``."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        return [(cudnn_conv, "fp32_precision", "ieee"),
                (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False),
            (torch.backends.cuda.matmul, "allow_tf32", False)]


def _tf32_value(ieee_value):
    return "tf32" if isinstance(ieee_value, str) else True


@contextlib.contextmanager
def precision_scope(precision: str, device) -> Iterator[None]:
    """Forward passes inside run in ``precision`` on ``device``; torch's TF32 switches are
    restored on exit."""
    check_precision(precision)
    switches = tf32_switches()
    saved = [getattr(owner, name) for owner, name, _ in switches]
    try:
        for owner, name, ieee in switches:
            setattr(owner, name, _tf32_value(ieee) if precision == "tf32" else ieee)
        with autocast(torch.device(device), precision == "amp"):
            yield
    finally:
        for (owner, name, _), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)


def autocast(device: torch.device, enabled: bool):
    """Autocast on ``device``'s type: float16 on CUDA, bfloat16 elsewhere; disabled explicitly
    otherwise (so an enclosing autocast does not leak in)."""
    if not enabled:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)
