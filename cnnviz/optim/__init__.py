"""Feature visualization by optimization: objectives, parameterizations, transforms, render."""

from . import objectives
from .render import (
    RenderResult,
    class_probabilities,
    cs231n_class_visualization,
    render,
    save_png,
    store_in_run,
    to_uint8,
)

__all__ = ["objectives", "RenderResult", "render", "cs231n_class_visualization", "save_png",
           "to_uint8", "class_probabilities", "store_in_run"]
