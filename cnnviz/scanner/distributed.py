"""Scans split over processes: ``torchrun`` ranks (or ``--shard R/W`` by hand), merged exactly.

Batches are dealt round-robin: batch ``b`` of the library (the same fixed batches a single
process uses) goes to rank ``b % world_size``. Each rank checkpoints into its own folder
``RUN.h5.shard-R-of-W.work``; merging concatenates the per-image maxima by image id and merges
the top-k candidates and the statistics, which is associative and order-independent, so the
merged file has the same top-k, maxima and failure records as a single-process scan of the
same library with the same batch size.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ScanError, UsageError
from ..run.lock import OutputLock, lock_path
from .assemble import assemble_run
from .config import ScanConfig, check_output
from .workdir import WorkDir, work_path

__all__ = ["torchrun_env", "scan_distributed", "merge"]


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun (even with one process: its
    process group, NCCL on a GPU, is then used as with many)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


def scan_distributed(library, model, out, config: ScanConfig) -> Path | None:
    """Run this process's share of a torchrun scan; rank 0 merges when every rank is done.

    ``device="cuda"`` becomes ``cuda:LOCAL_RANK``. Backend: NCCL on CUDA, gloo on the CPU.
    Returns the run file on rank 0, ``None`` on the others.
    """
    import torch
    import torch.distributed as dist

    from .loop import scan_shard

    rank, world, local = torchrun_env()
    device = config.device
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    config = dataclasses.replace(config, device=device, progress=config.progress and rank == 0)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    # a scan can run for days: the default 30-minute collective timeout would kill rank 0's
    # wait for a slower rank
    dist.init_process_group(backend, timeout=datetime.timedelta(days=7))
    try:
        scan_shard(library, model, out, (rank, world), config=config)
        dist.barrier()
        result = None
        if rank == 0:
            result = merge(shard_folders(out, world), out, overwrite=config.overwrite)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def shard_folders(out: str | Path, world: int) -> list[Path]:
    return [work_path(Path(out), r, world) for r in range(world)]


def merge(shards: Sequence[str | Path], out: str | Path, overwrite: bool = False,
          keep_shards: bool = False) -> Path:
    """Merge the shard folders of a distributed scan into one run file (no model is loaded:
    the shards record everything the run file needs).

    Args:
        shards: the ``RUN.h5.shard-R-of-W.work`` folders, in any order (all ranks needed).
        out: the run file to write.
        keep_shards: keep the shard folders after writing.
    """
    out = Path(out)
    check_output(out, overwrite)
    works = []
    for s in shards:
        w = WorkDir(Path(s))
        if not w.exists():
            raise UsageError(f"{s} is not a shard folder (no meta.json): expected the "
                             "RUN.h5.shard-R-of-W.work folders a distributed scan leaves")
        works.append(w)
    metas = {w.path: w.read_meta() for w in works}
    if any("taps" not in m for m in metas.values()):
        raise ScanError("these shards were written by cnnviz 0.1, which merges them itself: merge "
                        "with that version, or scan again")
    works.sort(key=lambda w: metas[w.path]["shard"][0])
    with OutputLock(out, str(out)):
        for w in works:
            if lock_path(w.path) != lock_path(out):  # one process's folder shares the run's lock
                OutputLock(w.path, f"{w.path}").check_free()  # no rank is still scanning it
        return assemble_run(works, out, keep_work=keep_shards)
