"""The scan's writer thread: per-image rows streamed to disk, and checkpoints.

After every batch the main thread hands the batch's rows (:class:`~.state.Rows`, still being
copied from the device) to one background thread and goes on with the next batch; it waits
only when the writer is a queue's length behind (the disk is the limit; the time is counted).
The writer appends the rows to the open segment (:class:`~.workdir.SegmentWriter`) and, when a
checkpoint comes through the queue, seals the segment (fsync) and writes the state that lists
it. Items are handled in order, so a state never counts a batch whose rows are not durable.

A checkpoint is asked for every ``checkpoint_seconds`` (and, optionally, every
``checkpoint_images``): the rows never wait for it, so a fast scan checkpoints as rarely as a
slow one and holds a few batches of rows in memory at most.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings

from ..errors import CnnvizWarning, ScanError, user_level
from .state import Rows, ScanState, set_segments
from .workdir import SegmentWriter, WorkDir, is_disk_full

__all__ = ["CheckpointWriter"]

_STOP = object()


class CheckpointWriter:
    """Streams rows and checkpoints of one scan (or shard) into its work folder.

    :meth:`rows` and :meth:`checkpoint` only enqueue; :meth:`flush` waits until everything
    queued is on disk and raises what went wrong there (a full disk becomes one
    :class:`ScanError` saying so; the last complete checkpoint is kept)."""

    def __init__(self, work: WorkDir, state: ScanState, seconds: float, images: int | None,
                 queue_bytes: int = 256 << 20, row_bytes: int = 1, notes: tuple[int, int] | None = None):
        self.work, self.state = work, state
        self.notes, self.scanned = notes, 0  # (images done before, in all): a note per checkpoint
        self.seconds, self.images = seconds, images
        self.elapsed_before = state.elapsed_seconds
        self.session_start = self.last = time.monotonic()
        self.pending = 0
        self._columns = state.column_dtypes()
        self._segments = list(state.segments)
        self._open: SegmentWriter | None = None
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, queue_bytes // max(1, row_bytes)))
        self._thread = threading.Thread(target=self._run, name="cnnviz-writer", daemon=True)
        self._thread.start()

    # main thread -------------------------------------------------------------------------
    def rows(self, rows: Rows) -> None:
        """Hand one batch's rows to the writer; checkpoint when it is time."""
        self._put(rows)
        self.pending += len(rows.ids)
        self.scanned += len(rows.ids)
        due = time.monotonic() - self.last >= self.seconds
        if due or (self.images is not None and self.pending >= self.images):
            self.checkpoint()

    def checkpoint(self, wait: bool = False) -> None:
        """Checkpoint what has been scanned so far (``wait``: until it is on disk)."""
        self.state.elapsed_seconds = self.elapsed_before + time.monotonic() - self.session_start
        self._put(self.state.to_arrays())
        self.last, self.pending = time.monotonic(), 0
        if self.notes is not None:  # without a progress bar, a line per checkpoint says it goes on
            done, total = self.notes[0] + self.scanned, self.notes[1]
            rate = self.scanned / max(self.last - self.session_start, 1e-9)
            warnings.warn(f"checkpoint: {done:,} of {total:,} images ({done / max(total, 1):.0%}), "
                          f"{rate:.1f} img/s", CnnvizWarning, stacklevel=user_level())
        if wait:
            self.flush()

    def _put(self, item) -> None:
        self._raise()
        started = time.monotonic()
        self._queue.put(item)
        self.state.wait_disk_seconds += time.monotonic() - started

    def flush(self) -> None:
        """Wait until everything handed over is written; a failure to write it is raised here."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Stop the writer once what is queued is written (an error was raised by
        :meth:`flush`; here it is let go, as the scan already stops for another reason)."""
        self._queue.put(_STOP)
        self._thread.join()

    def _raise(self) -> None:
        exc = self._error
        if exc is None:
            return
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise ScanError(f"the disk holding {self.work.path} is full ({exc.strerror or exc}); the last "
                            "complete checkpoint is kept: free some space, then run the same scan "
                            "with `resume=True`") from None
        raise exc

    # writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    self._abandon()
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc
                self._abandon()
            finally:
                self._queue.task_done()

    def _write(self, item) -> None:
        if isinstance(item, Rows):
            if self._open is None:
                self._open = self.work.open_segment(item.first, self._columns)
            self._open.append(item.columns(), item.end)
            return
        if self._open is not None:  # a checkpoint: seal the rows, then the state that lists them
            self._segments.append(self._open.seal())
            self._open = None
        set_segments(item, self._segments)
        self.work.save_state(**item)

    def _abandon(self) -> None:
        if self._open is not None:
            self._open.abandon()
            self._open = None
