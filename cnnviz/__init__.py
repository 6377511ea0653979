"""cnnviz: what do the channels of a convolutional network respond to?

Dataset examples at scale (:func:`scan`), tables and pictures of the results
(:func:`top_patches`, :func:`channel_maxima`, :func:`channel_stats`, :func:`feature_map_grid`),
and feature visualization by optimization.
"""

__version__ = "0.1.0"

from . import attribution, figures, optim, report  # noqa: E402
from .distributed import merge  # noqa: E402
from .featuremaps import feature_map_grid, layer_activation  # noqa: E402
from .library import ImageLibrary  # noqa: E402
from .models import (  # noqa: E402
    LoadedModel,
    WeightsUnavailableError,
    available_models,
    from_module,
    load_model,
)
from .preprocessing import Preprocessing  # noqa: E402
from .receptive_field import ReceptiveField  # noqa: E402
from .report import write_report  # noqa: E402
from .scan import ScanError, ScanInterrupted, scan  # noqa: E402
from .tables import channel_maxima, channel_stats, top_patches  # noqa: E402
from .taps import LayerTap, default_layers, list_layers, resolve_layer  # noqa: E402

__all__ = [
    "__version__", "LoadedModel", "WeightsUnavailableError", "available_models", "from_module",
    "load_model", "Preprocessing", "ReceptiveField", "LayerTap", "list_layers", "resolve_layer",
    "default_layers", "layer_activation", "feature_map_grid", "ImageLibrary", "scan", "ScanError",
    "ScanInterrupted", "top_patches", "channel_maxima", "channel_stats", "write_report", "merge",
    "attribution", "figures", "optim", "report",
]
