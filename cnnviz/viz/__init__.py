"""Pictures a person looks at: figures of a run (matplotlib: montages, distributions),
feature-map grids (Captum's LayerActivation) and patches inline in Jupyter (:mod:`.notebook`).
The HTML report is its own package, :mod:`cnnviz.report`; attributions and recomputed maps are
in :mod:`cnnviz.analysis`. Nothing loads on import; :mod:`.figures` and :mod:`.notebook` need no
torch, the feature-map grids do."""

from __future__ import annotations

import importlib

__all__ = ["feature_map_grid", "layer_activation"]


def __getattr__(name: str):
    if name in ("feature_map_grid", "layer_activation"):
        return getattr(importlib.import_module(".featuremaps", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
