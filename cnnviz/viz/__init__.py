"""Pictures of a run and of a network: figures (matplotlib), feature-map grids (Captum's
LayerActivation), neuron attributions (Captum) and the static HTML report. Only the report and
figures load eagerly: neither needs torch."""

from __future__ import annotations

import importlib

from .report import write_report

__all__ = ["write_report", "feature_map_grid", "layer_activation"]


def __getattr__(name: str):
    if name in ("feature_map_grid", "layer_activation"):
        return getattr(importlib.import_module(".featuremaps", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
