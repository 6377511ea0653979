"""The work folder of a running scan: crash-safe checkpoints from which a scan resumes.

``RUN.h5.work/`` holds

* ``meta.json`` — what the scan is (model and weights digest, layers, k, library...); a resume
  must match it;
* ``library.json`` — the library's listing when the scan started: a resumed scan and the
  assembler use it, so files added, removed or renamed meanwhile change no image's id;
* ``seg-<first>-<end>.npz`` — per-image maxima, positions, geometry and file identity of images
  ``[first, end)``, one file per checkpoint;
* ``state.npz`` — the reducers (top-k, statistics), the failures so far and the next batch;
  ``state.prev.npz`` the one before it, used when the newest is damaged.

Every file is written to a temporary name, flushed to disk and renamed, so a crash (Ctrl-C,
``kill -9``, power loss) leaves either the old or the new file, never a torn one; numpy's zip
format carries a CRC-32 per array, so damage is found when a file is read back, and a resume
reads every file back before scanning. A segment is written before the state that counts it;
on resume segments beyond the state are discarded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ScanError

__all__ = ["WorkDir", "work_path", "fsync_dir", "is_disk_full"]

_SEG = re.compile(r"seg-(\d+)-(\d+)\.npz$")
_ARRAY_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT)
                                         or "No space left" in str(exc))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not be left fuller
        raise
    fsync_dir(path.parent)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz file, read in full (so that each CRC is checked)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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

    @property
    def prev_state_path(self) -> Path:
        return self.path / "state.prev.npz"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def create(self, meta: dict, library: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.iterdir():
            p.unlink()
        _atomic_write(self.path / "library.json", lambda f: f.write(json.dumps(library).encode()))
        _atomic_write(self.meta_path, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))

    def _read_json(self, name: str) -> dict:
        path = self.path / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ScanError(f"{path} is damaged ({type(exc).__name__}: {exc}); the scan in {self.path} "
                            "cannot be resumed: start it again with `overwrite=True`") from None

    def read_meta(self) -> dict:
        return self._read_json("meta.json")

    def read_library(self) -> dict:
        return self._read_json("library.json")

    def save_segment(self, first: int, end: int, **arrays) -> None:
        _atomic_write(self.path / f"seg-{first:010d}-{end:010d}.npz", lambda f: np.savez(f, **arrays))

    def save_state(self, **arrays) -> None:
        """The new state; the one it replaces is kept as ``state.prev.npz``. ``state.npz`` is
        never missing meanwhile (the old one is linked as the previous one before the new one
        takes its name), so a reader or a crash at any moment finds a complete state there."""
        tmp = self.path / "state.next.npz"
        _atomic_write(tmp, lambda f: np.savez(f, **arrays))
        if self.state_path.exists():
            prev_tmp = self.path / "state.prev.npz.tmp"
            prev_tmp.unlink(missing_ok=True)
            try:
                try:
                    os.link(self.state_path, prev_tmp)
                except OSError:  # a filesystem without hard links: a copy does the same
                    shutil.copyfile(self.state_path, prev_tmp)
                os.replace(prev_tmp, self.prev_state_path)
            except BaseException:
                prev_tmp.unlink(missing_ok=True)
                tmp.unlink(missing_ok=True)  # a full disk must not be left fuller
                raise
        os.replace(tmp, self.state_path)
        fsync_dir(self.path)

    def load_state(self) -> dict[str, np.ndarray] | None:
        """The newest readable state (``state.npz``, else ``state.prev.npz``), or ``None`` when
        the scan never finished a batch."""
        damaged = []
        for path in (self.state_path, self.prev_state_path):
            if not path.exists():
                continue
            try:
                return _read_npz(path)
            except _ARRAY_ERRORS as exc:
                damaged.append(f"{path.name} ({type(exc).__name__}: {exc})")
        if damaged:
            raise ScanError(f"the checkpoints in {self.path} are damaged: {'; '.join(damaged)}; start the "
                            "scan again with `overwrite=True`")
        return None

    def verify_segments(self, upto: int) -> None:
        """Read back every segment a resumed scan relies on; a damaged one is named."""
        for _, _, path in self.segments(upto):
            try:
                _read_npz(path)
            except _ARRAY_ERRORS as exc:
                raise ScanError(f"checkpoint {path} is damaged ({type(exc).__name__}: {exc}): the per-image "
                                "maxima in it are lost; start the scan again with `overwrite=True`") from None

    def prepare(self, meta: dict, library: dict, resume: bool, overwrite: bool):
        """Start a fresh folder for the scan ``meta`` describes, or check that it is the scan
        to resume (``resume`` wins over ``overwrite``, which then only means that the output
        may be replaced). Returns the state to resume from (``None``: the first batch)."""
        if self.exists() and (resume or not overwrite):
            if not resume:
                raise ScanError(f"{self.path} holds an interrupted scan; pass `resume=True` to "
                                "continue it, or `overwrite=True` to start again from scratch")
            old = self.read_meta()
            ignore = ("started", "cnnviz_version", "overwrite_output")
            keys = [k for k in meta if k not in ignore and old.get(k) != meta[k]]
            if keys:
                diff = "; ".join(f"{k}: was {_short(old.get(k))}, now {_short(meta[k])}" for k in keys)
                raise ScanError(f"`resume`: this is not the same scan as the one in {self.path} ({diff})")
            state = self.load_state()
            upto = int(state["next_batch"]) * meta["batch_size"] if state is not None else 0
            self.segments(upto=upto)  # drop segments their state never counted
            self.verify_segments(upto)
            return state
        if resume:
            print(f"note: resume asked for, but {self.path} does not exist; starting a new scan",
                  file=sys.stderr)
        self.create(meta, library)
        return None

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

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir()) if self.path.is_dir() else 0

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
