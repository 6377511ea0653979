"""The work folder of a running scan: crash-safe checkpoints from which a scan resumes.

``RUN.h5.work/`` holds

* ``meta.json`` — what the scan is (model and weights digest, layers, k, library...); a resume
  must match it;
* ``library.json`` — the library's listing when the scan started: a resumed scan and the
  assembler use it, so files added, removed or renamed meanwhile change no image's id;
* ``seg-<first>-<end>/`` — per-image maxima, positions, geometry and file identity of images
  ``[first, end)`` (those of this shard), one ``.npy`` file per array, one folder per
  checkpoint. The rows are appended to ``part-<first>/`` batch by batch while the scan runs (no
  waiting, no fsync); a checkpoint flushes them to disk and renames the folder;
* ``state.npz`` — the reducers (top-k, statistics), the failures so far, the progress and the
  sealed segments with the CRC-32 of each file; ``state.prev.npz`` the one before it, used when
  the newest is damaged.

Files are written to a temporary name (or folder), flushed to disk and renamed, so a crash
(Ctrl-C, ``kill -9``, power loss) leaves either the old or the new file, never a torn one. A
segment is sealed before the state that lists it; on resume every listed segment is read back
(sizes and CRCs checked) and anything a state does not list (a ``part-`` folder, a segment
sealed by a checkpoint that never finished) is discarded.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import CnnvizWarning, ScanError, user_level

__all__ = ["WorkDir", "work_path", "fsync_dir", "is_disk_full", "SegmentWriter", "WORK_FORMAT"]

# the version of the work folder's layout: a resume or merge refuses another
WORK_FORMAT = 3
_ARRAY_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
_HEADER_BYTES = 4096  # a .npy header of fixed size, rewritten with the row count when sealed


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
            _remove(p)
        _atomic_write(self.path / "library.json", lambda f: f.write(json.dumps(library).encode()))
        self.write_meta(meta)

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

    def verify_segments(self, segments: list[dict]) -> None:
        """Read back every segment a resumed scan relies on (sizes and CRCs); a damaged one is
        named."""
        for seg in segments:
            path = self.path / seg["name"]
            for key, crc in seg["crc"].items():
                try:
                    rows = len(self.read_column(seg, key))
                    ok = rows == seg["rows"] and _file_crc(path / f"{key}.npy") == crc
                except _ARRAY_ERRORS:
                    ok = False
                if not ok:
                    raise ScanError(f"checkpoint {path / (key + '.npy')} is damaged (its size or CRC differs "
                                    "from what the checkpoint recorded): the per-image maxima in it are "
                                    "lost; start the scan again with `overwrite=True`")

    def prepare(self, meta: dict, library: dict, resume: bool, overwrite: bool):
        """Start a fresh folder for the scan ``meta`` describes, or check that it is the scan
        to resume (``resume`` wins over ``overwrite``, which then only means that the output
        may be replaced). Returns the state to resume from (``None``: the first batch)."""
        if self.exists() and (resume or not overwrite):
            if not resume:
                raise ScanError(f"{self.path} holds an interrupted scan; pass `resume=True` to "
                                "continue it, or `overwrite=True` to start again from scratch")
            old = self.read_meta()
            check_work_format(old, self.path)
            self._check_same_scan(old, meta)
            if old.get("batch_size") != meta["batch_size"]:
                self.write_meta(meta)  # a single process may resume with another batch size
            return self.keep_counted(self.load_state(), meta)
        if resume:
            warnings.warn(f"resume asked for, but {self.path} does not exist; starting a new scan",
                          CnnvizWarning, stacklevel=user_level())
        self.create(meta, library)
        return None

    def _check_same_scan(self, old: dict, meta: dict) -> None:
        ignore = {"started", "cnnviz_version", "overwrite_output"}
        if tuple(meta["shard"])[1] == 1:
            ignore.add("batch_size")
        keys = [k for k in meta if k not in ignore and old.get(k) != meta[k]]
        if "batch_size" in keys:
            raise ScanError(f"`resume`: {self.path} is a shard of a distributed scan with `batch_size` "
                            f"{old.get('batch_size')}: every shard resumes with the batch size the scan "
                            "started with (batches are dealt to the ranks by it)")
        if keys:
            diff = "; ".join(f"{k}: was {_short(old.get(k))}, now {_short(meta[k])}" for k in keys)
            raise ScanError(f"`resume`: this is not the same scan as the one in {self.path} ({diff})")

    def keep_counted(self, state: dict | None, meta: dict) -> dict | None:
        """Drop what ``state`` does not count (segments it does not list, or past its progress:
        they would be counted twice), then read back every segment it lists."""
        from .state import progress_of, segments_of, set_segments

        segments = []
        if state is not None:
            upto = progress_of(state, meta["shard"][1], meta["batch_size"])
            listed = segments_of(state)
            segments = [s for s in listed if s["end"] <= upto]
            set_segments(state, segments)
            if len(segments) < len(listed):  # the state on disk must not list what is removed below
                self.save_state(**state)
        listed = {s["name"] for s in segments}
        for p in self.path.iterdir():
            if p.name.startswith(("seg-", "part-")) and p.name not in listed:
                _remove(p)
        self.verify_segments(segments)
        return state

    def segment_paths(self, segments: list[dict]) -> list[tuple[dict, Path]]:
        return [(s, self.path / s["name"]) for s in sorted(segments, key=lambda s: s["first"])]

    def read_column(self, segment: dict, key: str) -> np.ndarray:
        """One array of a sealed segment, memory-mapped."""
        return np.load(self.path / segment["name"] / f"{key}.npy", mmap_mode="r", allow_pickle=False)

    def open_segment(self, first: int, columns: dict) -> SegmentWriter:
        return SegmentWriter(self.path, first, columns)

    def write_meta(self, meta: dict) -> None:
        _atomic_write(self.meta_path, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else 0

    def remove(self) -> None:
        if self.path.exists():
            _remove(self.path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_work_format(meta: dict, path: Path) -> None:
    """A work folder of another layout (an older cnnviz) is named, with the way out."""
    if meta.get("work_format") != WORK_FORMAT:
        raise ScanError(f"{path} was written by an older cnnviz (checkpoint layout "
                        f"{meta.get('work_format', 1)}, this one reads {WORK_FORMAT}): finish that scan with "
                        "the cnnviz that started it, or start again with `overwrite=True`")


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(_HEADER_BYTES)
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly :data:`_HEADER_BYTES` bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = _HEADER_BYTES - 10
    head = text.ljust(body - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + head.encode("latin1")


class SegmentWriter:
    """The rows of one checkpoint interval, appended batch by batch to ``part-<first>/`` (one
    ``.npy`` per column, its header reserved); :meth:`seal` flushes them to disk, writes the
    headers and renames the folder ``seg-<first>-<end>``."""

    def __init__(self, folder: Path, first: int, columns: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.folder, self.first, self.columns = folder, first, columns
        self.path = folder / f"part-{first:010d}"
        self.path.mkdir()
        self.rows, self.end = 0, first
        self.crc = dict.fromkeys(columns, 0)
        self.files = {}
        for key, (dtype, shape) in columns.items():
            f = open(self.path / f"{key}.npy", "wb")  # noqa: SIM115 - closed by seal/abandon
            self.files[key] = f
            f.write(_npy_header(dtype, (0, *shape)))

    def append(self, columns: dict[str, np.ndarray], end: int) -> None:
        n = len(columns["ids"])
        for key, f in self.files.items():
            data = np.ascontiguousarray(columns[key], dtype=self.columns[key][0])
            view = memoryview(data).cast("B")
            f.write(view)
            self.crc[key] = zlib.crc32(view, self.crc[key])
        self.rows += n
        self.end = end

    def seal(self) -> dict:
        """Make the rows durable and name the segment; returns its entry for the state."""
        for key, f in self.files.items():
            dtype, shape = self.columns[key]
            f.seek(0)
            f.write(_npy_header(dtype, (self.rows, *shape)))
            f.flush()
            os.fsync(f.fileno())
            f.close()
        name = f"seg-{self.first:010d}-{self.end:010d}"
        os.replace(self.path, self.folder / name)
        fsync_dir(self.folder)
        return {"name": name, "first": self.first, "end": self.end, "rows": self.rows, "crc": self.crc}

    def abandon(self) -> None:
        """Close and delete the unsealed rows (a full disk must not be left fuller)."""
        for f in self.files.values():
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.path, ignore_errors=True)


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def work_path(out: Path, rank: int = 0, world: int = 1) -> Path:
    """The checkpoint folder of a scan (``RUN.h5.work``) or of one shard of a distributed scan
    (``RUN.h5.shard-R-of-W.work``)."""
    out = Path(out)
    suffix = ".work" if world == 1 else f".shard-{rank}-of-{world}.work"
    return out.with_name(out.name + suffix)
