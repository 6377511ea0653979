"""Questions asked of finished runs: :mod:`.explanation` (where do new images stand against a
scanned library? runs the run's model), :mod:`.relevance` (which channels a prediction rests
on), :mod:`.attribution` (Captum's neuron attributions of a run's top units), :mod:`.unitmaps`
(a layer's maps recomputed for some of a run's images) and :mod:`.compare` (what changed
between two runs? reads the two files only; no torch)."""

from __future__ import annotations

import importlib

from .compare import compare_runs

__all__ = ["explain", "compare_runs"]


_SUBMODULES = ("attribution", "compare", "explanation", "relevance", "unitmaps")


def __getattr__(name: str):
    if name == "explain":
        return importlib.import_module(".explanation", __name__).explain
    if name in _SUBMODULES:  # cnnviz.analysis.attribution.neuron_attributions(...) without an import
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
