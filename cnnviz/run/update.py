"""Changing a finished run file without risking it: the change is written into a copy, by a
forked process, and the copy takes the run file's name only when it is complete.

Why not in place: HDF5 on a full disk leaves a file it was extending unreadable (its superblock
names space that was never written: "len not positive after adjustment for EOA"), and crashes
the process that holds it (a segfault after pages of errors). A night's scan must not be lost
to a side command such as ``channel-vis --run``. The copy costs the run file's size in free
space for a moment (nothing on filesystems that clone files: btrfs, XFS); it is checked first.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py

from ..errors import OutputError, RunFileError
from .isolated import durable_replace, write_isolated
from .reader import open_run

__all__ = ["update_run", "check_update_space"]

_FICLONE = 0x40049409  # ioctl: share the blocks of another file (copy-on-write), Linux
_MARGIN = 1 << 20  # HDF5's own bookkeeping for a few new datasets


def check_update_space(run: Path, extra_bytes: int) -> None:
    """Refuse, before any work, an update that cannot fit: the copy plus ``extra_bytes``."""
    need = run.stat().st_size + extra_bytes + _MARGIN
    free = shutil.disk_usage(run.parent).free
    if free < need:
        raise OutputError(f"the disk holding {run} has {free / 1e6:.1f} MB free; storing into it needs "
                          f"{need / 1e6:.1f} MB (a copy of the run file is written and swapped in, so "
                          "that a failure cannot damage it): free some space first")


def update_run(run: str | Path, write: Callable[[h5py.File], None], extra_bytes: int = 0,
               what: str = "the changes") -> None:
    """Apply ``write(f)`` (``f``: the run file open ``r+``) to a copy of ``run`` in a forked
    process, then swap the copy in. On any failure ``run`` is left exactly as it was and no
    copy remains.

    Raises:
        OutputError: the disk is (or became) full.
        RunFileError: another process holds the run file open for writing, or ``write`` failed.
    """
    from .lock import OutputLock  # one writer per run file, a scan's included

    run = Path(run)
    tmp = run.with_name(f".{run.name}.{os.getpid()}.update")
    with OutputLock(run, str(run)):
        try:
            source = open_run(run)  # held open while copied: HDF5's lock keeps writers out
            try:
                _copy(run, tmp, extra_bytes)
            finally:
                source.close()
            outcome, detail = write_isolated(write, tmp, "r+")
            if outcome == "ok":
                shutil.copymode(run, tmp)
                durable_replace(tmp, run)
        finally:
            tmp.unlink(missing_ok=True)
    if outcome == "disk full":
        raise OutputError(f"the disk holding {run} filled up while {what} were written; {run.name} is "
                          "unchanged: free some space and run the same command again")
    if outcome == "refused":
        raise RunFileError(detail)
    if outcome != "ok":
        raise RunFileError(f"writing {what} into a copy of {run} failed ({detail.strip().splitlines()[-1]}); "
                           f"{run.name} is unchanged")


def _copy(run: Path, tmp: Path, extra_bytes: int) -> None:
    with open(run, "rb") as src, open(tmp, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except OSError:
            pass  # not a cloning filesystem: copy the bytes
    check_update_space(run, extra_bytes)
    try:
        shutil.copyfile(run, tmp)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"the disk holding {run} is full ({exc.strerror}); {run.name} is unchanged: "
                              "free some space and run the same command again") from None
        raise
