"""cnnviz: what do the channels of a convolutional network respond to?

Dataset examples at scale (:func:`scan`), tables and pictures of the results
(:func:`top_patches`, :func:`channel_stats`, :func:`write_report`, :func:`feature_map_grid`,
:func:`show` for Jupyter), questions asked of finished runs (:func:`explain`,
:func:`compare_runs`), and feature visualization by optimization (:mod:`cnnviz.optim`).

The stages are packages: ``model`` (loading, preprocessing, taps, receptive fields), ``images``
(libraries, decoding, patches), ``scanner`` (the scan), ``run`` (the run file: schema, reader,
tables), ``analysis`` (a run's model asked again: explanations, attributions, relevance,
comparisons), ``viz`` (figures, feature maps, Jupyter), ``report`` (the HTML report), ``optim``
and ``cli``.
The names below load their package on first use (PEP 562), so ``import cnnviz`` is instant and
reading a run file never imports torch.
"""

from __future__ import annotations

import importlib

from .errors import (
    CnnvizError,
    CnnvizWarning,
    OutputError,
    RunFileError,
    ScanError,
    ScanInterrupted,
    UsageError,
    WeightsUnavailableError,
)

__version__ = "0.3.0"

_NAMES = {
    "load_model": "model", "from_module": "model", "available_models": "model",
    "LoadedModel": "model", "Preprocessing": "model", "list_layers": "model",
    "scan": "scanner", "ScanConfig": "scanner", "merge": "scanner",
    "ImageLibrary": "images",
    "RunReader": "run", "top_patches": "run", "channel_stats": "run", "channel_maxima": "run",
    "failures": "run", "class_table": "run", "channel_quantiles": "run", "channel_histogram": "run",
    "similar_channels": "run",
    "write_report": "report", "feature_map_grid": "viz", "layer_activation": "viz",
    "show": "viz.notebook", "explain": "analysis", "compare_runs": "analysis",
}
_MODULES = {"figures": "viz.figures", "attribution": "analysis.attribution", "report": "report",
            "optim": "optim", "model": "model", "images": "images", "scanner": "scanner",
            "run": "run", "viz": "viz", "analysis": "analysis"}

__all__ = ["__version__", "CnnvizError", "CnnvizWarning", "UsageError", "ScanError", "ScanInterrupted",
           "RunFileError", "OutputError", "WeightsUnavailableError", *_NAMES, "figures", "attribution",
           "report", "optim", "analysis"]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{_MODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'cnnviz' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES))
