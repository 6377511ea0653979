"""Where pages are written: a fresh folder beside the one asked for, swapped in when complete.

A report, explain or compare page written again into its folder replaces it whole: no page of
the earlier run is left behind (unlinked, yet looking current), and a report that fails midway
leaves the earlier one as it was. A folder that holds something else than pages cnnviz wrote is
never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from ..errors import OutputError, UsageError

__all__ = ["writing_to", "check_replaceable"]


def check_replaceable(out: Path) -> None:
    """Refuse an ``out`` a report must not replace: a file, a folder holding the current
    directory, or a folder with anything in it but pages cnnviz wrote."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"`out` {out} is a file; a report is a folder of pages: name a folder to write "
                         "it in")
    if not out.is_dir():
        return
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise UsageError(f"`out` {out} holds the current folder; a report replaces its folder whole: "
                         "run this from elsewhere, or name another folder")
    if any(out.iterdir()) and not _written_by_cnnviz(out):
        raise UsageError(f"`out` {out} holds files that are not pages cnnviz wrote; a report replaces its "
                         "folder whole (no stale pages): name a new folder, or an earlier report's")


def _written_by_cnnviz(folder: Path) -> bool:
    """An earlier report, explain or compare page: its ``style.css`` and an ``index.html``
    whose title or generator names cnnviz."""
    index = folder / "index.html"
    if not (folder / "style.css").is_file() or not index.is_file():
        return False
    with open(index, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    return "<title>cnnviz" in head or 'name="generator" content="cnnviz' in head


@contextlib.contextmanager
def writing_to(out: Path):
    """Yield a fresh folder beside ``out`` to write pages in; when the block completes, it
    replaces ``out`` (an earlier report's pages go with it). A failure removes it and leaves
    ``out`` as it was; a disk that fills is one error naming the folder, not the errno."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier process of the same pid
    staging.mkdir()
    try:
        yield staging
        _swap(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OutputError(f"the disk holding {out} is full ({exc.strerror or exc}): the pages are not "
                          "complete; free some space and run the same command again") from None


def _swap(staging: Path, out: Path) -> None:
    """``staging`` takes the place of ``out``; the earlier ``out`` is removed once it has."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)  # the earlier pages back where they were
        raise
    if old.is_symlink():  # `out` was a link: the link goes, never what it pointed to
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
