"""One writer per output: an exclusive lock beside the run file, taken before anything is written.

``RUN.h5.lock`` guards the run file and its work folder; each shard of a distributed scan has
its own ``RUN.h5.shard-R-of-W.lock``. The lock is ``flock`` on the lock file (POSIX), so the
system releases it when its process dies (``kill -9``, power cut): a stale lock never blocks a
``resume``. The file holds who took it (pid, host, time) so a refused process can say who is
writing. (filelock would do the locking, but truncates the file it locks on every attempt, so
it could not tell who holds it.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import ScanError

__all__ = ["OutputLock", "lock_path"]


def lock_path(path: Path) -> Path:
    """The lock file of a run file or work folder."""
    name = path.name.removesuffix(".work")
    return path.with_name(name + ".lock")


class OutputLock:
    """``with OutputLock(path, what):`` holds the lock of ``path`` or raises a ScanError naming
    the process that holds it."""

    def __init__(self, path: Path, what: str):
        self.path = lock_path(Path(path))
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ScanError(f"another cnnviz process ({holder}) is writing {self.what}; wait for it "
                                "to finish or stop it, then try again (a process that died holds "
                                "no lock)") from None
            # the holder before us may have removed the file while we opened it: lock the file
            # that is at the path now, not an unlinked one
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        except OSError:  # a full disk: the lock holds all the same, only unsigned
            pass

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def check_free(self) -> None:
        """Raise like :meth:`acquire` if someone holds the lock; hold nothing afterwards."""
        self.acquire()
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "pid unknown"
