"""Writing an HDF5 file in a forked process, and giving it its name only when it is complete.

Why a process: when the disk fills, HDF5 cannot flush or close the file, keeps it open in its
own state, and crashes the interpreter when it tries again at exit (seen: SIGSEGV, after pages
of "Exception ignored" messages). The writer process ends with ``os._exit``, so none of that
reaches the scan, the command or the user's notebook; what went wrong comes back through a pipe.
Used by the scan's assembler (a new run file) and :func:`cnnviz.run.update_run` (a changed copy).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import h5py

from ..errors import CnnvizError

__all__ = ["write_isolated", "durable_replace"]


def write_isolated(write: Callable[[h5py.File], None], path: Path, mode: str) -> tuple[str, str]:
    """``write(h5py.File(path, mode))`` in a forked process. Returns ``("ok", "")``,
    ``("disk full", why)``, ``("refused", message)`` (a :class:`CnnvizError` raised by ``write``)
    or ``("failed", traceback)``. The process is not a daemon, so ``write`` may start worker
    processes of its own."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_writer, args=(write, path, mode, send))
    proc.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        outcome = ("failed", f"the writer process ended with exit code {proc.exitcode}")
    except BaseException:
        proc.terminate()
        proc.join()
        raise
    finally:
        receive.close()
    proc.join()
    return outcome


def _writer(write, path: Path, mode: str, send) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # HDF5 prints pages while it fails on a full disk
    sys.unraisablehook = lambda unraisable: None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    outcome = ("ok", "")
    try:
        f = h5py.File(path, mode)
        write(f)
        f.close()
    except CnnvizError as exc:
        outcome = ("refused", str(exc))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        text = traceback.format_exc()  # HDF5's errors name errno 28 in their text, of any type
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text
        outcome = ("disk full" if full else "failed", text)
    try:
        send.send(outcome)
    finally:
        os._exit(0)


def durable_replace(tmp: Path, target: Path) -> None:
    """Flush the finished file to disk before it takes ``target``'s name, and the rename after:
    a power cut leaves the old file or the whole new one."""
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
