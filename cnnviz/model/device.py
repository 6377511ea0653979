"""Devices a user names (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked before any work: a
machine without the GPU named is one line that says so, not torch's RuntimeError."""

from __future__ import annotations

import torch

from ..errors import UsageError

__all__ = ["check_device"]


def check_device(device: str | torch.device, param: str = "device") -> torch.device:
    """The device, once it is known to be here.

    Raises:
        UsageError: not a device name, or a device this machine does not have.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"`{param}` {device!r}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"`{param}` {device}: this machine has no CUDA GPU that torch can use "
                             f"(use `{param}=cpu`)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise UsageError(f"`{param}` {device}: there are {n} GPUs (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"`{param}` {device}: this machine has no Apple GPU (use `{param}=cpu`)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"`{param}` {device}: use cpu, cuda or cuda:N")
    return dev
