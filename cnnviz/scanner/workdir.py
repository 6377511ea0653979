"""The work folder of a running scan: crash-safe checkpoints from which a scan resumes.

``RUN.h5.work/`` holds

* ``meta.json`` — what the scan is (model, layers, k, library fingerprint...); a resume must
  match it;
* ``seg-<first>-<end>.npz`` — per-image maxima of images ``[first, end)``, one file per
  checkpoint;
* ``state.npz`` — the reducers (top-k, statistics), the failures so far and the next batch.

Every file is written to a temporary name, flushed to disk and renamed, so a crash (Ctrl-C,
``kill -9``, power loss) leaves either the old or the new file, never a torn one. A segment is
written before the state that counts it; on resume segments beyond the state are discarded.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from ..errors import ScanError

__all__ = ["WorkDir", "work_path"]

_SEG = re.compile(r"seg-(\d+)-(\d+)\.npz$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class WorkDir:
    """Checkpoint files of one scan (or one shard of a distributed scan)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def state_path(self) -> Path:
        return self.path / "state.npz"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def create(self, meta: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.iterdir():
            p.unlink()
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1, sort_keys=True))

    def read_meta(self) -> dict:
        return json.loads(self.meta_path.read_text(encoding="utf-8"))

    def save_segment(self, first: int, end: int, **arrays) -> None:
        atomic_save_npz(self.path / f"seg-{first:010d}-{end:010d}.npz", **arrays)

    def save_state(self, **arrays) -> None:
        atomic_save_npz(self.state_path, **arrays)

    def load_state(self) -> dict[str, np.ndarray] | None:
        if not self.state_path.exists():
            return None
        with np.load(self.state_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def segments(self, upto: int | None = None) -> list[tuple[int, int, Path]]:
        """Segments in image order; with ``upto``, drops (and deletes) those past it."""
        segs = []
        for p in sorted(self.path.glob("seg-*.npz")):
            m = _SEG.search(p.name)
            first, end = int(m.group(1)), int(m.group(2))
            if upto is not None and end > upto:
                p.unlink()
                continue
            segs.append((first, end, p))
        return segs

    def prepare(self, meta: dict, resume: bool, overwrite: bool) -> dict[str, np.ndarray] | None:
        """Start a fresh folder for the scan ``meta`` describes, or check that it is the scan
        to resume; returns the state to resume from (``None``: start from the first batch)."""
        if self.exists() and not overwrite:
            if not resume:
                raise ScanError(f"{self.path} holds an interrupted scan; pass `resume=True` to "
                                "continue it, or `overwrite=True` to start again from scratch")
            old = self.read_meta()
            ignore = ("started", "cnnviz_version")
            keys = [k for k in meta if k not in ignore and old.get(k) != meta[k]]
            if keys:
                diff = "; ".join(f"{k}: was {_short(old.get(k))}, now {_short(meta[k])}" for k in keys)
                raise ScanError(f"`resume`: this is not the same scan as the one in {self.path} ({diff})")
            return self.load_state()
        if resume and not self.exists():
            print(f"note: resume asked for, but {self.path} does not exist; starting a new scan",
                  file=sys.stderr)
        self.create(meta)
        return None

    def remove(self) -> None:
        if self.path.exists():
            for p in self.path.iterdir():
                p.unlink()
            self.path.rmdir()


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def work_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """The checkpoint folder of a scan (``RUN.h5.work``) or of one shard of a distributed scan
    (``RUN.h5.shard-R-of-W.work``)."""
    out = Path(out)
    suffix = ".work" if world == 1 else f".shard-{rank}-of-{world}.work"
    return out.with_name(out.name + suffix)
