"""Subpackages that load their modules on first use (PEP 562): ``cnnviz.run.masks.threshold_mask``
or ``cnnviz.analysis.attribution.neuron_attributions`` as the docs write them work after
``import cnnviz`` alone, and nothing is imported before it is needed."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

__all__ = ["submodules_on_first_use"]


def submodules_on_first_use(package: str, names: dict[str, tuple[str, str]] | None = None) -> Callable:
    """A module ``__getattr__`` for ``package``: each of its modules on first use, and each of
    ``names`` (``{name: (module, attribute)}``) from its module."""
    def __getattr__(name: str):
        if names and name in names:
            module, attribute = names[name]
            return getattr(importlib.import_module(module, package), attribute)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
