"""How many torch threads an optimization uses on a CPU.

Optimization runs many small steps, each a forward and a backward pass split over torch's
threads. Torch starts a thread per core and its threads wait for each other at every operation;
when another process keeps a core busy, every step waits for the thread that shares it. On 2
cores beside other work (``scripts/bench_threads.py``; README, *Threads*), 1 thread ran a step
of 8 channels in 0.33 s and 2 threads in 0.56 s; with two more busy processes, 0.81 s and
1.87 s. Hence the default: a thread per core that is free now.
"""

from __future__ import annotations

import os

__all__ = ["default_threads", "free_cores"]


def free_cores() -> tuple[int, float]:
    """``(cores this process may use, the 1-minute load average)`` (load 0 where the system does
    not say)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return cores, load


def default_threads() -> int:
    """Torch threads for an optimization on a CPU: torch's own number (one per core, or what
    ``OMP_NUM_THREADS`` says), less the cores other processes keep busy (the load average, as
    it was before this optimization started), and at least 1."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores, load = free_cores()
    return max(1, min(torch.get_num_threads(), int(cores - load + 0.5)))
