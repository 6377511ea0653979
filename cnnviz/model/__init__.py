"""A loaded model and how to read it: weights and preprocessing (:mod:`.loading`,
:mod:`.preprocessing`), taps and the one hook mechanism (:mod:`.taps`), receptive fields
(:mod:`.receptive_field`)."""

from .loading import LoadedModel, available_models, from_module, load_model, reload_model
from .preprocessing import Preprocessing
from .receptive_field import ReceptiveField
from .taps import LayerTap, capture, default_layers, list_layers, resolve_layer, resolve_layers

__all__ = ["LoadedModel", "available_models", "from_module", "load_model", "reload_model",
           "Preprocessing", "ReceptiveField", "LayerTap", "capture", "default_layers", "list_layers",
           "resolve_layer", "resolve_layers"]
