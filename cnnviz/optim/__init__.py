"""Feature visualization by optimization: objectives, parameterizations, transforms, the
gradient-ascent loops (:mod:`.ascent`) and what they produce as images (:mod:`.images`)."""

from ..lazy import submodules_on_first_use
from . import objectives
from .ascent import RenderResult, cs231n_class_visualization, render
from .images import class_probabilities, save_png, store_in_run, to_uint8

__all__ = ["objectives", "RenderResult", "render", "cs231n_class_visualization", "save_png",
           "to_uint8", "class_probabilities", "store_in_run"]

__getattr__ = submodules_on_first_use(__name__)  # cnnviz.optim.<module> as the docs write it
