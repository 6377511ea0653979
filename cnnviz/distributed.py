"""Scans split over processes: ``torchrun`` ranks (or ``--shard R/W`` by hand), merged exactly.

Batches are dealt round-robin: batch ``b`` of the library (the same fixed batches a single
process uses) goes to rank ``b % world_size``. Each rank checkpoints into its own folder
``RUN.h5.shard-R-of-W.work``; merging concatenates the per-image maxima by image id and merges
the top-k candidates and the statistics, which is associative and order-independent, so the
merged file has the same top-k, maxima and failure records as a single-process scan of the
same library with the same batch size.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import WorkDir
from .library import ImageLibrary
from .runfile import RunFileError, assemble_run

__all__ = ["torchrun_env", "scan_distributed", "merge"]


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def scan_distributed(library, model, out, device: str = "cpu", **scan_kwargs) -> Path | None:
    """Run this process's share of a torchrun scan; rank 0 merges when every rank is done.

    ``device="cuda"`` becomes ``cuda:LOCAL_RANK``. Backend: NCCL on CUDA, gloo on the CPU.
    Returns the run file on rank 0, ``None`` on the others.
    """
    import torch
    import torch.distributed as dist

    from .scan import scan

    rank, world, local = torchrun_env()
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    # a scan can run for days: the default 30-minute collective timeout would kill rank 0's
    # wait for a slower rank
    dist.init_process_group(backend, timeout=datetime.timedelta(days=7))
    try:
        scan(library, model, out, device=device, shard=(rank, world), finalize=False,
             progress=scan_kwargs.pop("progress", True) and rank == 0, **scan_kwargs)
        dist.barrier()
        result = None
        if rank == 0:
            result = merge(shard_folders(out, world), out, model=model,
                           overwrite=scan_kwargs.get("overwrite", False))
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def shard_folders(out: str | Path, world: int) -> list[Path]:
    from .scan import work_path

    return [work_path(Path(out), r, world) for r in range(world)]


def merge(shards: Sequence[str | Path], out: str | Path, model=None, overwrite: bool = False,
          keep_shards: bool = False) -> Path:
    """Merge the shard folders of a distributed scan into one run file.

    Args:
        shards: the ``RUN.h5.shard-R-of-W.work`` folders, in any order (all ranks needed).
        out: the run file to write.
        model: the scan's :class:`~cnnviz.models.LoadedModel` (default: reloaded from the
            shards' record of model name and weights origin).
        keep_shards: keep the shard folders after writing.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise RunFileError(f"--out {out} exists; pass --overwrite to replace it")
    works = []
    for s in shards:
        w = WorkDir(Path(s))
        if not w.exists():
            raise FileNotFoundError(f"{s} is not a shard folder (no meta.json): expected the "
                                    "RUN.h5.shard-R-of-W.work folders a distributed scan leaves")
        works.append(w)
    works.sort(key=lambda w: w.read_meta()["shard"][0])
    meta = works[0].read_meta()
    if model is None:
        from .models import reload_model

        model = reload_model(meta["model"], meta["weights_origin"])
    lib = ImageLibrary.open(meta["library_source"])
    if lib.fingerprint() != meta["library_fingerprint"]:
        raise RunFileError(f"the library {meta['library_source']} changed since the scan")
    return assemble_run(works, out, lib, model, keep_work=keep_shards)
