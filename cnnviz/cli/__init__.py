"""The ``cnnviz`` command: a thin layer over the Python API, one module per command group.

Each command's flags are declared beside its handler (``add_parser`` then ``run``); the group
modules import nothing heavy at import time, so ``cnnviz --help`` is instant.
"""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
