"""Errors a user can act on.

Every error cnnviz raises on purpose is a :class:`CnnvizError`: the command line prints its
message on one line and exits 2; anything else is a bug and keeps its traceback.

Messages name options the way a Python caller spells them, in backticks (```top_k```,
```overwrite=True```); :meth:`CnnvizError.message` renders them for another audience, and the
command line uses that to say ``--top-k`` and ``--overwrite`` instead. So the library never
names a CLI flag, and the CLI never has to rewrite prose.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

__all__ = ["CnnvizError", "UsageError", "ScanError", "ScanInterrupted", "RunFileError", "OutputError",
           "WeightsUnavailableError", "MissingDependencyError", "CnnvizWarning", "spell_options",
           "user_level"]

_OPTION = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(=[^`]*)?`")


class CnnvizError(Exception):
    """Base of every error a user (not a bug) causes; its message says what to do."""

    def message(self, spell: Callable[[str, str | None], str | None] | None = None) -> str:
        """The message with each backticked option ``name`` or ``name=value`` passed through
        ``spell(name, value)``; ``spell`` returns the replacement, or ``None`` to keep it."""
        text = str(self.args[0]) if self.args else type(self).__name__
        return text if spell is None else spell_options(text, spell)


def spell_options(text: str, spell: Callable[[str, str | None], str | None]) -> str:
    """``text`` with each backticked option passed through ``spell`` (see
    :meth:`CnnvizError.message`)."""

    def sub(m: re.Match) -> str:
        value = m.group(2)[1:] if m.group(2) else None
        out = spell(m.group(1), value)
        return m.group(0) if out is None else out

    return _OPTION.sub(sub, text)


class UsageError(CnnvizError, ValueError):
    """A bad argument or input: an unknown name, a value out of range, a file that is not
    what it should be. (A ``ValueError``, as Python callers expect.)"""


class ScanError(CnnvizError):
    """A scan cannot start or go on (existing output, a resume that does not match...)."""


class ScanInterrupted(CnnvizError):
    """Ctrl-C during a scan; everything up to the last batch is checkpointed."""


class RunFileError(CnnvizError):
    """Not a cnnviz run file, one of an unsupported version, or a damaged one."""


class OutputError(CnnvizError):
    """Results cannot be written (a full disk): what is already written elsewhere is kept."""


class WeightsUnavailableError(CnnvizError):
    """Pretrained weights are neither cached nor downloadable."""


class MissingDependencyError(CnnvizError, ImportError):
    """An optional package is needed for this (the message says which extra installs it)."""


class CnnvizWarning(UserWarning):
    """Something a user should know that changes nothing they asked for (a layer named twice is
    tapped once; a list file names an image twice): ``warnings.warn`` it, never print it. The
    command line shows it as one ``note:`` line, options spelled as flags."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_level() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that attributes a note to the caller of the
    outermost cnnviz frame (pandas' ``find_stack_level`` habit): a notebook shows the user's own
    line, however deep inside the package the note was raised, and through whatever library
    sits between (a signal handler's note raised inside torch's code). Call it in the ``warn``
    call itself."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level, outermost = 1, 1
    while frame is not None:
        if frame.f_code.co_filename.startswith(_PACKAGE):
            outermost = level
        frame = frame.f_back
        level += 1
    return outermost + 1

