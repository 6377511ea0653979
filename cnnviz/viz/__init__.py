"""Pictures a person looks at: figures of a run (matplotlib: montages, distributions),
feature-map grids (Captum's LayerActivation) and patches inline in Jupyter (:mod:`.notebook`).
The HTML report is its own package, :mod:`cnnviz.report`; attributions and recomputed maps are
in :mod:`cnnviz.analysis`. Nothing loads on import; :mod:`.figures` and :mod:`.notebook` need no
torch, the feature-map grids do."""

from __future__ import annotations

from ..lazy import submodules_on_first_use

__all__ = ["feature_map_grid", "layer_activation"]

__getattr__ = submodules_on_first_use(__name__, {"feature_map_grid": (".featuremaps", "feature_map_grid"),
                                                 "layer_activation": (".featuremaps", "layer_activation")})
